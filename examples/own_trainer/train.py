"""Your own training script with your own Lightning ``Trainer``, swept by hpo.

Three hpo callbacks connect it to the sweep; outside a sweep they do nothing but write files:

- :class:`hpo.callbacks.OptunaReporter` reports ``monitor`` after every validation to the
  trial (the pruner's input and the dashboard's curve), stores the curves for the LLM and
  raises ``optuna.TrialPruned`` when ``hydra.sweeper.pruner`` says so;
- :class:`hpo.callbacks.MetricsWriter` writes ``metrics.csv``, ``curves.png`` and
  ``summary.json`` into the job's folder; the sweeper uploads them as the trial's artifacts
  (``python -m hpo.dashboard`` shows them);
- :class:`hpo.callbacks.EpochProgress` prints one line per epoch (left out in sweeps here);
- :func:`hpo.tasks.lightning.quiet_lightning` silences Lightning's banners and tips.

    python train.py                    # one run
    python train.py -m                 # a sweep (conf/config.yaml: hydra/sweeper: hpo)
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hpo.callbacks import EpochProgress, MetricsWriter, OptunaReporter
from hpo.tasks.lightning import quiet_lightning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "own_module"))
from my_module import MoonsDataModule, TinyClassifier  # the other example's module


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    import torch

    L.seed_everything(cfg.seed, verbose=False)
    out_dir = HydraConfig.get().runtime.output_dir  # this job's folder
    data = MoonsDataModule(batch_size=cfg.batch_size, seed=cfg.seed)
    model = TinyClassifier(
        optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.lr),
        hidden=cfg.hidden, **data.model_kwargs(),
    )
    callbacks: list[L.Callback] = [OptunaReporter(monitor="val/acc"),
                                   MetricsWriter(out_dir=out_dir)]
    if HydraConfig.get().mode.name == "RUN":
        callbacks.append(EpochProgress(("train/loss", "val/loss", "val/acc")))
    with quiet_lightning():  # no GPU/TPU banner, no tips
        trainer = L.Trainer(max_epochs=cfg.epochs, accelerator="cpu", callbacks=callbacks,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=out_dir)
        trainer.fit(model, datamodule=data)
    return float(trainer.callback_metrics["val/acc"])


if __name__ == "__main__":
    main()
