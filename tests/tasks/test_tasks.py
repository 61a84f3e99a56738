"""Data modules, nets and the classifier module (CPU, tiny runs, no downloads)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from hpo.errors import ConfigError, DataUnavailableError
from hpo.tasks import CNN, MLP, ClassifierModule, DigitsDataModule, ResNet9, TorchvisionDataModule

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
METRICS = ["train/loss", "train/acc", "val/loss", "val/acc", "val/f1", "lr"]


def trainer(**kwargs: Any) -> L.Trainer:
    args: dict[str, Any] = dict(
        max_epochs=2, limit_train_batches=5, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    return L.Trainer(**{**args, **kwargs})


# --- data ------------------------------------------------------------------------------------


def test_digits_attributes_before_setup() -> None:
    dm = DigitsDataModule(batch_size=32, seed=1)
    assert dm.input_shape == (1, 8, 8)
    assert dm.num_classes == 10
    assert dm.class_names == [str(i) for i in range(10)]
    assert dm.train_set is None  # nothing loaded yet


def test_digits_split_and_batches() -> None:
    dm = DigitsDataModule(batch_size=32, val_fraction=0.2, seed=3)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    n_train, n_val = len(dm.train_set), len(dm.val_set)  # type: ignore[arg-type]
    assert n_train + n_val == 1797
    assert n_val == pytest.approx(0.2 * 1797, abs=1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.long
    # stratified: every class in validation, in about the same share
    val_y = torch.cat([b[1] for b in dm.val_dataloader()])
    counts = torch.bincount(val_y, minlength=10)
    assert int(counts.min()) >= 30
    # the split depends only on the seed
    again = DigitsDataModule(batch_size=32, val_fraction=0.2, seed=3)
    again.setup("fit")
    assert torch.equal(again.val_set.tensors[1], dm.val_set.tensors[1])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"batch_size": 0}, "batch_size=0"), ({"val_fraction": 1.0}, "val_fraction=1.0"),
     ({"num_workers": -1}, "num_workers=-1")],
)
def test_digits_rejects_bad_args(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    ("name", "shape", "first"),
    [("mnist", (1, 28, 28), "0"), ("fashion_mnist", (1, 28, 28), "T-shirt/top"),
     ("cifar10", (3, 32, 32), "airplane")],
)
def test_torchvision_attributes_without_data(tmp_path: Path, name: str,
                                             shape: tuple[int, ...], first: str) -> None:
    dm = TorchvisionDataModule(name=name, data_dir=tmp_path, download=False)  # type: ignore[arg-type]
    assert dm.input_shape == shape
    assert dm.num_classes == 10
    assert dm.class_names[0] == first and len(dm.class_names) == 10
    assert list(tmp_path.iterdir()) == []  # nothing touched the disk


def test_torchvision_unknown_name() -> None:
    with pytest.raises(ConfigError, match="'svhn'"):
        TorchvisionDataModule(name="svhn")  # type: ignore[arg-type]


def test_torchvision_missing_without_download(tmp_path: Path) -> None:
    dm = TorchvisionDataModule(name="cifar10", data_dir=tmp_path / "none", download=False)
    with pytest.raises(DataUnavailableError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "\n" not in msg
    assert "'cifar10'" in msg and str(tmp_path / "none") in msg and "data=digits" in msg
    # setup without prepare_data gives the same error
    with pytest.raises(DataUnavailableError):
        dm.setup("fit")


def test_torchvision_download_fails_offline(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Route urllib through a proxy on a closed loopback port: the download fails at once, and
    # never reaches the internet even on a machine that has it.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    dm = TorchvisionDataModule(name="mnist", data_dir=tmp_path, download=True)
    with pytest.raises(DataUnavailableError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "\n" not in msg
    assert "'mnist'" in msg and "download failed" in msg and "run where you have internet" in msg


def _fake_mnist(root: Path, *, n_train: int = 40, n_test: int = 10) -> None:
    """Tiny MNIST-format files (IDX, uint8) where torchvision looks for them: no download."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        header = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        header = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.numpy().tobytes())


@pytest.mark.parametrize("augment", [False, True])
def test_torchvision_setup_from_local_files(tmp_path: Path, augment: bool) -> None:
    _fake_mnist(tmp_path)
    dm = TorchvisionDataModule(name="mnist", data_dir=tmp_path, batch_size=8, val_fraction=0.25,
                               num_workers=0, download=False, augment=augment, seed=1)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 10)  # type: ignore[arg-type]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) < 0.0  # normalized
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape == (8, 1, 28, 28)


# --- nets ------------------------------------------------------------------------------------

NETS = {
    "mlp": functools.partial(MLP, hidden_dim=16, depth=2),
    "cnn": functools.partial(CNN, channels=4, depth=3),
    "resnet9": functools.partial(ResNet9, width=4),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("net", sorted(NETS))
def test_net_forward(net: str, shape: tuple[int, int, int]) -> None:
    model = NETS[net](input_shape=shape, num_classes=7)
    model.eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_nets_accept_list_shapes() -> None:
    # Hydra passes ListConfig/list, not tuples
    assert CNN(input_shape=[1, 8, 8], num_classes=2)(torch.zeros(1, 1, 8, 8)).shape == (1, 2)


@pytest.mark.parametrize(
    ("factory", "kwargs", "needle"),
    [
        (CNN, {"input_shape": (64,)}, "channels, height, width"),
        (ResNet9, {"input_shape": (1, 8)}, "channels, height, width"),
        (MLP, {"input_shape": (1, 8, 8), "depth": 0}, "depth=0"),
        (MLP, {"input_shape": (1, 8, 8), "dropout": 1.0}, "dropout=1.0"),
        (CNN, {"input_shape": (1, 8, 8), "kernel_size": 4}, "kernel_size=4"),
        (ResNet9, {"input_shape": (1, 0, 8)}, "positive"),
    ],
)
def test_nets_reject_bad_args(factory: Any, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        factory(num_classes=10, **kwargs)


# --- classifier ------------------------------------------------------------------------------


class _Recorder(L.Callback):
    """Keeps ``callback_metrics`` after every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.fixture(scope="module")
def fitted() -> tuple[ClassifierModule, _Recorder]:
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    module = ClassifierModule(
        net=functools.partial(MLP, hidden_dim=64),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        input_shape=dm.input_shape,
        num_classes=dm.num_classes,
        label_smoothing=0.05,
    )
    recorder = _Recorder()
    trainer(callbacks=[recorder]).fit(module, datamodule=dm)
    return module, recorder


def test_classifier_logs_every_metric(fitted: tuple[ClassifierModule, _Recorder]) -> None:
    _, recorder = fitted
    assert len(recorder.epochs) == 2
    for epoch in recorder.epochs:
        assert set(METRICS) <= set(epoch)


def test_classifier_learns(fitted: tuple[ClassifierModule, _Recorder]) -> None:
    _, recorder = fitted
    last = recorder.epochs[-1]
    assert last["val/acc"] > 0.3  # chance is 0.1
    assert last["val/f1"] > 0.2
    assert last["train/loss"] < recorder.epochs[0]["train/loss"]


def test_classifier_scheduler_steps_per_epoch(fitted: tuple[ClassifierModule, _Recorder]) -> None:
    _, recorder = fitted
    assert [e["lr"] for e in recorder.epochs] == pytest.approx([1e-2, 5e-3])


def test_classifier_per_class_and_params(fitted: tuple[ClassifierModule, _Recorder]) -> None:
    module, _ = fitted
    assert set(module.per_class) == {"f1", "acc"}
    assert list(module.per_class["f1"]) == [str(i) for i in range(10)]  # from the data module
    assert all(0.0 <= v <= 1.0 for v in module.per_class["acc"].values())
    assert module.num_parameters == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert module.hparams["input_shape"] == (1, 8, 8)
    assert "net" not in module.hparams and "optimizer" not in module.hparams


def test_classifier_plateau_scheduler_monitors_val_loss() -> None:
    module = ClassifierModule(
        net=functools.partial(MLP), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau),
        input_shape=[1, 8, 8], num_classes=10,
    )
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    assert config["lr_scheduler"]["interval"] == "epoch"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"net": "mlp"}, "net='mlp'"),
        ({"optimizer": 0.1}, "optimizer=0.1"),
        ({"scheduler_interval": "batch"}, "scheduler_interval='batch'"),
        ({"label_smoothing": 1.5}, "label_smoothing=1.5"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"class_names": ["a", "b"]}, "class_names has 2"),
    ],
)
def test_classifier_rejects_bad_args(kwargs: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = dict(net=functools.partial(MLP),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                                input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match=needle):
        ClassifierModule(**{**args, **kwargs})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("net", ["cnn", "resnet9"])
def test_classifier_mixed_precision_on_gpu(net: str) -> None:
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    module = ClassifierModule(
        net=NETS[net], optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        input_shape=dm.input_shape, num_classes=dm.num_classes,
    )
    recorder = _Recorder()
    trainer(accelerator="gpu", devices=1, precision="16-mixed", max_epochs=3,
            limit_train_batches=None, callbacks=[recorder]).fit(module, datamodule=dm)
    assert set(METRICS) <= set(recorder.epochs[-1])
    assert recorder.epochs[-1]["val/acc"] > 0.3
