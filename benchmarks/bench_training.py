"""Benchmark 5: training throughput of the built-in tasks (samples/s per model).

Models and data are built from the shipped configs (``conf/model/*.yaml``,
``conf/optimizer/adamw.yaml``, ``conf/data/digits.yaml``) with ``hydra.utils.instantiate``, as
``hpo.train`` does, and trained by a Lightning ``Trainer`` (no checkpoints, no logger). Digits
are 8x8x1 (1,437 training images); the synthetic set is random 3x32x32 tensors (CIFAR-sized),
for the convolutional models. The first epoch is a warm-up; throughput is measured over the
others: training samples/s (forward + backward + step, data loading included) and validation
samples/s (inference). The GPU is measured only where one is available (``--accelerator``).
Usage::

    python benchmarks/bench_training.py                  # mlp, cnn, resnet9 on digits + synthetic
    python benchmarks/bench_training.py --quick          # one measured epoch, few batches
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings
from typing import Any

from _common import (
    REPO_ROOT,
    Table,
    base_parser,
    header,
    parse_ints,
    progress,
    setup_logging,
    write_json,
)

CONF = REPO_ROOT / "conf"
RESNET_BATCHES = 10  # ResNet-9 on 2 CPU cores: ~30 samples/s, so 10 batches of 64 per epoch


def _timer_callback() -> Any:
    """A Lightning callback that records, per epoch, training and validation seconds and samples.

    Defined on call so that ``--help`` does not import Lightning.
    """
    import lightning as L

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.train: list[tuple[float, int]] = []  # (seconds, samples) per epoch
            self.val: list[tuple[float, int]] = []
            self._t0 = 0.0
            self._last = 0.0
            self._n = 0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._n = 0
            self._t0 = self._last = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any,
                               batch: Any, batch_idx: int) -> None:
            self._n += int(batch[0].shape[0])
            self._last = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.train.append((self._last - self._t0, self._n))

        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._v0 = time.perf_counter()
            self._vn = 0

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any,
                                    batch: Any, batch_idx: int,
                                    dataloader_idx: int = 0) -> None:
            self._vn += int(batch[0].shape[0])

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self.val.append((time.perf_counter() - self._v0, self._vn))

    return Timer()


def synthetic_datamodule(*, n_train: int, n_val: int, batch_size: int, seed: int = 0) -> Any:
    """Random 3x32x32 images with 10 classes (CIFAR-sized), in memory."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class SyntheticDataModule(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.input_shape = (3, 32, 32)
            self.num_classes = 10
            g = torch.Generator().manual_seed(seed)
            self.train_set = TensorDataset(torch.randn(n_train, 3, 32, 32, generator=g),
                                           torch.randint(0, 10, (n_train,), generator=g))
            self.val_set = TensorDataset(torch.randn(n_val, 3, 32, 32, generator=g),
                                         torch.randint(0, 10, (n_val,), generator=g))

        def train_dataloader(self) -> Any:
            return DataLoader(self.train_set, batch_size=batch_size, shuffle=True)

        def val_dataloader(self) -> Any:
            return DataLoader(self.val_set, batch_size=batch_size)

    return SyntheticDataModule()


def measure(model_name: str, data: str, *, epochs: int, batch_size: int,
            limit_batches: int | None, accelerator: str) -> dict[str, Any]:
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    L.seed_everything(0, verbose=False)
    if data == "digits":
        dcfg = OmegaConf.load(CONF / "data" / "digits.yaml")
        dcfg.seed = 0
        dcfg.batch_size = batch_size
        dm = instantiate(dcfg)
    else:
        dm = synthetic_datamodule(n_train=2048, n_val=512, batch_size=batch_size)
    model = instantiate(
        OmegaConf.load(CONF / "model" / f"{model_name}.yaml"),
        optimizer=instantiate(OmegaConf.load(CONF / "optimizer" / "adamw.yaml")),
        input_shape=tuple(dm.input_shape),
        num_classes=int(dm.num_classes),
    )
    n_params = sum(p.numel() for p in model.parameters())
    timer = _timer_callback()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], num_sanity_val_steps=0,
        limit_train_batches=limit_batches, limit_val_batches=limit_batches,
    )
    trainer.fit(model, datamodule=dm)
    train = timer.train[1:] or timer.train
    val = timer.val[1:] or timer.val
    return {
        "device": str(trainer.strategy.root_device),
        "params": n_params,
        "train_sps": sum(n for _, n in train) / sum(s for s, _ in train),
        "val_sps": sum(n for _, n in val) / sum(s for s, _ in val) if val else float("nan"),
        "epoch_s": statistics.median(s for s, _ in train),
        "samples": train[0][1],
    }


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,resnet9", help="comma-separated models")
    p.add_argument("--data", default="digits,synthetic",
                   help="comma-separated: digits, synthetic (3x32x32; conv models only)")
    p.add_argument("--epochs", type=int, default=None, help="epochs, the first is a warm-up "
                   "(default 3; --quick: 2)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--max-batches", type=int, default=None,
                   help="training/validation batches per epoch (default: all, resnet9: "
                        f"{RESNET_BATCHES}; --quick: 3)")
    p.add_argument("--threads", type=parse_ints, default=None,
                   help="comma-separated torch intra-op thread counts to compare "
                        "(default: 1 and torch's default, the number of cores)")
    p.add_argument("--accelerator", default="cpu",
                   help="cpu (default), gpu, or auto; the GPU only where one is available")
    args = p.parse_args()
    setup_logging(args.verbose)
    header("Training throughput of the built-in tasks", args)

    import lightning  # noqa: F401  (its loggers exist only after the import)
    import torch

    for name in ("lightning", "lightning.pytorch", "lightning.fabric",
                 "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    epochs = args.epochs or (2 if args.quick else 3)
    limit = 3 if args.quick else args.max_batches
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    datas = [d.strip() for d in args.data.split(",") if d.strip()]
    default_threads = torch.get_num_threads()
    threads = args.threads or sorted({1, default_threads})
    print(f"- torch {torch.__version__}, default {default_threads} threads; CUDA available: "
          f"{torch.cuda.is_available()}\n", flush=True)
    table = Table(
        "Training throughput",
        ["model", "data", "device", "threads", "params", "batch", "train samples/s",
         "val samples/s",
         "s/epoch", "samples/epoch"],
    )
    for data in datas:
        for model_name in models:
            if data == "synthetic" and model_name == "mlp":
                continue
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                progress(f"{model_name} on {data} ({args.accelerator}, {n_threads} threads)")
                batches = limit
                if batches is None and model_name == "resnet9":
                    batches = RESNET_BATCHES
                r = measure(model_name, data, epochs=epochs, batch_size=args.batch_size,
                            limit_batches=batches, accelerator=args.accelerator)
                table.add(model_name,
                          "digits 1x8x8" if data == "digits" else "synthetic 3x32x32",
                          r["device"], n_threads, f"{r['params'] / 1e6:.2f} M",
                          args.batch_size, r["train_sps"], r["val_sps"], r["epoch_s"],
                          r["samples"])
    torch.set_num_threads(default_threads)
    table.notes += [
        f"{epochs} epochs, the first a warm-up; model/optimizer configs as shipped "
        "(conf/model/*.yaml, AdamW); train samples/s counts forward, backward, optimizer step "
        "and data loading; val samples/s is inference",
        "threads: torch intra-op threads (torch.set_num_threads); on a machine shared with "
        "other processes more threads than free cores stall each other",
    ]
    table.print()
    write_json(args.json, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
