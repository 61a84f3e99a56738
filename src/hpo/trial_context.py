"""How a trial job finds its Optuna trial: the sweeper's contract with the job.

The sweeper (driver) sets these environment variables for each job through Hydra's
``hydra.job.env_set``, so the user's app config is never touched and the same path works for
the basic, submitit_local and submitit_slurm launchers. A job started without them (a plain
``python -m hpo.train``) has no trial context and reports nothing.
"""

from __future__ import annotations

import base64
import os
import pickle
from dataclasses import dataclass

ENV_STORAGE = "HPO_STORAGE"
ENV_STUDY = "HPO_STUDY"
ENV_TRIAL_NUMBER = "HPO_TRIAL_NUMBER"
ENV_TRIAL_ID = "HPO_TRIAL_ID"
ENV_HEARTBEAT_S = "HPO_HEARTBEAT_S"
ENV_PRUNER = "HPO_PRUNER"  # the sweep's pruner, pickled: a loaded study would forget it

# In-process registry for storages that cannot be reopened from a URL (in-memory storage with the
# basic launcher): the sweeper registers the live storage object under its URL key.
_LIVE_STORAGES: dict[str, object] = {}


@dataclass(frozen=True)
class TrialContext:
    """Where the running job's trial lives in Optuna storage."""

    storage: str
    study_name: str
    trial_number: int
    trial_id: int
    heartbeat_s: float = 0.0

    def env(self) -> dict[str, str]:
        """The environment variables that carry this context to a job."""
        return {
            ENV_STORAGE: self.storage,
            ENV_STUDY: self.study_name,
            ENV_TRIAL_NUMBER: str(self.trial_number),
            ENV_TRIAL_ID: str(self.trial_id),
            ENV_HEARTBEAT_S: str(self.heartbeat_s),
        }


def current() -> TrialContext | None:
    """The trial context of this process, or None outside a sweep."""
    storage = os.environ.get(ENV_STORAGE)
    study = os.environ.get(ENV_STUDY)
    number = os.environ.get(ENV_TRIAL_NUMBER)
    trial_id = os.environ.get(ENV_TRIAL_ID)
    if not (storage and study and number and trial_id):
        return None
    return TrialContext(
        storage=storage,
        study_name=study,
        trial_number=int(number),
        trial_id=int(trial_id),
        heartbeat_s=float(os.environ.get(ENV_HEARTBEAT_S, "0") or 0),
    )


def register_live_storage(key: str, storage: object) -> None:
    """Make an in-process storage object reachable from in-process jobs by its key."""
    _LIVE_STORAGES[key] = storage


def open_storage(url: str) -> object:
    """The storage behind ``url``: a live in-process one if registered, else opened anew."""
    live = _LIVE_STORAGES.get(url)
    if live is not None:
        return live
    from hpo.storage import open_storage as _open

    return _open(url)


def encode_pruner(pruner: object) -> str:
    """``pruner`` as an environment-variable value (the driver writes it for its jobs)."""
    return base64.b64encode(pickle.dumps(pruner)).decode("ascii")


def decode_pruner() -> object | None:
    """The sweep's pruner from this process's environment; None when there is none."""
    raw = os.environ.get(ENV_PRUNER)
    if not raw:
        return None
    try:
        return pickle.loads(base64.b64decode(raw))  # written by our own driver
    except Exception:  # a foreign or stale value: better no pruning than a crash
        return None


def open_trial(ctx: TrialContext):  # -> optuna.trial.Trial
    """The live ``optuna.trial.Trial`` of this job, for ``report`` and ``should_prune``.

    The study is loaded with the sweep's own pruner (``HPO_PRUNER``); without one, no pruning.
    """
    import optuna

    storage = open_storage(ctx.storage)
    pruner = decode_pruner() or optuna.pruners.NopPruner()
    study = optuna.load_study(
        study_name=ctx.study_name, storage=storage, pruner=pruner  # type: ignore[arg-type]
    )
    return optuna.trial.Trial(study, ctx.trial_id)
