"""The optimizer (+ scheduler) of a LightningModule built from Hydra partials."""

from __future__ import annotations

from typing import Any

import torch


def optimizers_from_factories(module: Any, *, plateau_monitor: str) -> Any:
    """``configure_optimizers`` for a module holding ``_optimizer_factory``,
    ``_scheduler_factory`` (or None) and ``scheduler_interval``.

    ``plateau_monitor``: the metric a ``ReduceLROnPlateau`` scheduler watches.
    """
    optimizer = module._optimizer_factory(module.parameters())
    if module._scheduler_factory is None:
        return optimizer
    scheduler = module._scheduler_factory(optimizer)
    config: dict[str, Any] = {"scheduler": scheduler, "interval": module.scheduler_interval}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = plateau_monitor
    return {"optimizer": optimizer, "lr_scheduler": config}
