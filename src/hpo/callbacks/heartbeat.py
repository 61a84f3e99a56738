"""Keep a running trial's heartbeat fresh in storage while it trains."""

from __future__ import annotations

import logging
import threading
from typing import Any

import lightning as L

from hpo.trial_context import TrialContext, current, open_storage

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat(L.Callback):
    """Record the trial's heartbeat every ``ctx.heartbeat_s`` seconds from fit start to teardown.

    A daemon thread calls ``storage.record_heartbeat(trial_id)``, so a driver that fails stale
    trials (Optuna's heartbeat with ``RDBStorage(heartbeat_interval=...)``) sees this job alive
    and notices when it dies. Nothing happens without a trial context, with ``heartbeat_s <= 0``,
    on ranks other than 0, or with a storage that keeps no heartbeats (in-memory, journal).
    Storage errors are logged once; the thread keeps trying.

    Args:
        ctx: Trial context; default :func:`hpo.trial_context.current`.
    """

    def __init__(self, *, ctx: TrialContext | None = None) -> None:
        super().__init__()
        self.ctx = ctx if ctx is not None else current()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.beats = 0

    @property
    def running(self) -> bool:
        """Whether the heartbeat thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the heartbeat thread."""
        ctx = self.ctx
        if ctx is None or ctx.heartbeat_s <= 0 or not trainer.is_global_zero or self.running:
            return
        try:
            storage = open_storage(ctx.storage)
        except Exception:
            log.warning("cannot open the storage for heartbeats of trial %d: no heartbeats",
                        ctx.trial_number, exc_info=True)
            return
        record = getattr(storage, "record_heartbeat", None)
        if record is None:
            log.info("storage %s keeps no heartbeats: none recorded", type(storage).__name__)
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, args=(record, ctx.trial_id, float(ctx.heartbeat_s)),
            name=f"hpo-heartbeat-{ctx.trial_number}", daemon=True,
        )
        self._thread.start()

    def _beat(self, record: Any, trial_id: int, interval_s: float) -> None:
        logged = False
        while not self._stop.is_set():
            try:
                record(trial_id)
                self.beats += 1
            except Exception:
                if not logged:
                    logged = True
                    log.warning("recording the heartbeat of trial id %d failed: retrying every "
                                "%.3g s", trial_id, interval_s, exc_info=True)
            if self._stop.wait(interval_s):
                return

    def stop(self) -> None:
        """Stop the heartbeat thread (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10.0)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Stop beating at the end of fit."""
        if stage == "fit":
            self.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Stop beating when training fails or is pruned."""
        self.stop()
