"""LightningDataModules for image classification.

Every data module knows ``input_shape``, ``num_classes`` and ``class_names`` right after
``__init__``, before any data is loaded, so a config can build the net before ``setup``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hpo.errors import ConfigError, DataUnavailableError, first_line

__all__ = ["DigitsDataModule", "TorchvisionDataModule"]

log = logging.getLogger(__name__)

# Per socket operation, not per download: long enough for a slow mirror, short enough that a
# compute node without internet fails within a minute instead of hanging.
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


def _check_folds(folds: int, fold: int) -> None:
    if int(folds) < 1:
        raise ConfigError(f"folds={folds!r} must be at least 1: pass 1 (no CV) or e.g. 5")
    if not 0 <= int(fold) < int(folds):
        raise ConfigError(
            f"fold={fold!r} is outside [0, folds={folds}): pass 0 to {int(folds) - 1}"
        )


def _check_loader_args(*, batch_size: int, val_fraction: float, num_workers: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be at least 1: pass e.g. 64")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} is outside (0, 1): pass e.g. 0.1")
    if num_workers < 0:
        raise ConfigError(f"num_workers={num_workers!r} is negative: pass 0 or more")


class _ClassificationDataModule(L.LightningDataModule):
    """Shared loaders; subclasses fill ``train_set``, ``val_set`` and ``test_set`` in ``setup``."""

    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]

    def __init__(self, *, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.train_set: Dataset[Any] | None = None
        self.val_set: Dataset[Any] | None = None
        self.test_set: Dataset[Any] | None = None

    def _loader(self, dataset: Dataset[Any] | None, *, shuffle: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() was not called: call it first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches ``(x, y)``."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation batches ``(x, y)``."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        """Test batches ``(x, y)``."""
        return self._loader(self.test_set, shuffle=False)


class DigitsDataModule(_ClassificationDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images, offline), scaled to [0, 1].

    The stratified train/validation split depends only on ``seed``. With ``folds > 1`` it is
    instead fold ``fold`` of a stratified, shuffled ``folds``-fold split (``val_fraction`` is then
    unused): the K jobs of a cross-validated trial see disjoint validation sets covering the
    data. There is no separate test split: the test loader serves the validation set.

    Args:
        batch_size: Examples per batch.
        val_fraction: Share of the data held out for validation, in (0, 1).
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        seed: Seed of the train/validation split.
        folds: Number of cross-validation folds; 1 for the plain split.
        fold: Which fold is the validation set, in ``[0, folds)``.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
        folds: int = 1,
        fold: int = 0,
    ) -> None:
        _check_loader_args(batch_size=batch_size, val_fraction=val_fraction,
                           num_workers=num_workers)
        _check_folds(folds, fold)
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.folds = int(folds)
        self.fold = int(fold)
        self.input_shape = (1, 8, 8)
        self.num_classes = 10
        self.class_names = [str(i) for i in range(10)]

    def setup(self, stage: str | None = None) -> None:
        """Load the digits into memory and split them (once)."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.as_tensor(digits.target, dtype=torch.long)
        index = torch.arange(len(y)).numpy()
        if self.folds > 1:
            from sklearn.model_selection import StratifiedKFold

            splitter = StratifiedKFold(n_splits=self.folds, shuffle=True, random_state=self.seed)
            train_idx, val_idx = list(splitter.split(index, y.numpy()))[self.fold]
        else:
            train_idx, val_idx = train_test_split(
                index, test_size=self.val_fraction, stratify=y.numpy(), random_state=self.seed
            )
        train_idx_t, val_idx_t = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        self.train_set = TensorDataset(x[train_idx_t], y[train_idx_t])
        self.val_set = TensorDataset(x[val_idx_t], y[val_idx_t])
        self.test_set = self.val_set
        log.debug("digits: %d train, %d val (fold %d of %d)", len(train_idx), len(val_idx),
                  self.fold, self.folds)


_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                    "ship", "truck"]
_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot"]

# name -> (torchvision class name, input shape, class names, mean, std)
_TORCHVISION: dict[str, tuple[str, tuple[int, int, int], list[str], tuple[float, ...],
                              tuple[float, ...]]] = {
    "mnist": ("MNIST", (1, 28, 28), [str(i) for i in range(10)], (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", (1, 28, 28), _FASHION_CLASSES, (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", (3, 32, 32), _CIFAR10_CLASSES,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class _Transformed(Dataset[tuple[torch.Tensor, int]]):
    """The examples ``indices`` of ``dataset`` with ``transform`` applied to the input."""

    def __init__(self, dataset: Any, indices: Sequence[int], transform: Any) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[self.indices[i]]
        return self.transform(x), int(y)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give urllib sockets a timeout for the duration, unless one is already set."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class TorchvisionDataModule(_ClassificationDataModule):
    """MNIST, Fashion-MNIST or CIFAR-10 from torchvision, normalized per channel.

    The files are read from ``data_dir`` (``<data_dir>/MNIST/raw``, ``<data_dir>/FashionMNIST/raw``
    or ``<data_dir>/cifar-10-batches-py``) and downloaded there first when missing and
    ``download`` is true. Without the files and without internet it raises
    :class:`~hpo.errors.DataUnavailableError`. The validation set is a seeded random subset of
    the official training split (with ``folds > 1``: fold ``fold`` of a seeded ``folds``-way
    partition of it); the test loader serves the official test split.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: Directory holding (or receiving) the dataset files. Use an absolute path when
            Hydra changes the working directory of each job.
        batch_size: Examples per batch.
        val_fraction: Share of the training split held out for validation, in (0, 1).
        num_workers: DataLoader worker processes.
        download: Download missing files.
        seed: Seed of the train/validation split.
        augment: Random crops (and horizontal flips for CIFAR-10) on the training set.
        folds: Number of cross-validation folds; 1 for the plain split.
        fold: Which fold is the validation set, in ``[0, folds)``.
    """

    def __init__(
        self,
        *,
        name: Literal["mnist", "fashion_mnist", "cifar10"],
        data_dir: str | Path = "data",
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 2,
        download: bool = True,
        seed: int = 0,
        augment: bool = False,
        folds: int = 1,
        fold: int = 0,
    ) -> None:
        if name not in _TORCHVISION:
            raise ConfigError(
                f"dataset name={name!r} is unknown: use one of {sorted(_TORCHVISION)} "
                "(or data=digits)"
            )
        _check_loader_args(batch_size=batch_size, val_fraction=val_fraction,
                           num_workers=num_workers)
        _check_folds(folds, fold)
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        self.folds = int(folds)
        self.fold = int(fold)
        self.name = name
        self.data_dir = Path(data_dir).expanduser()
        self.val_fraction = float(val_fraction)
        self.download = bool(download)
        self.seed = int(seed)
        self.augment = bool(augment)
        self._cls_name, shape, classes, self._mean, self._std = _TORCHVISION[name]
        self.input_shape = shape
        self.num_classes = len(classes)
        self.class_names = list(classes)

    def _dataset_cls(self) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self._cls_name)

    def _unavailable(self, reason: str) -> DataUnavailableError:
        return DataUnavailableError(
            f"dataset {self.name!r} is not in {str(self.data_dir)!r} and {reason}: copy it "
            "there, or run where you have internet, or use data=digits"
        )

    def _ensure_files(self) -> None:
        """Check the files are on disk, downloading them if allowed; raise if they cannot be."""
        cls = self._dataset_cls()
        try:
            for train in (True, False):
                cls(str(self.data_dir), train=train, download=False)
            return
        except RuntimeError:
            if not self.download:
                raise self._unavailable("download=False") from None
        log.info("downloading %s to %s", self.name, self.data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
                for train in (True, False):
                    cls(str(self.data_dir), train=train, download=True)
        except Exception as exc:  # urllib, OSError, torchvision's RuntimeError: all mean "no"
            first = first_line(exc, default="")
            raise self._unavailable(
                f"the download failed ({type(exc).__name__}: {first})"
            ) from exc

    def prepare_data(self) -> None:
        """Make sure the files are on disk (download once per node when allowed)."""
        self._ensure_files()

    def _transform(self, *, train: bool) -> Any:
        from torchvision import transforms as T

        size = self.input_shape[1]
        steps: list[Any] = []
        if train and self.augment:
            steps.append(T.RandomCrop(size, padding=4 if size >= 32 else 2))
            if self.name == "cifar10":
                steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(self._mean, self._std)]
        return T.Compose(steps)

    def _open(self) -> tuple[Any, Any]:
        cls, root = self._dataset_cls(), str(self.data_dir)
        return cls(root, train=True, download=False), cls(root, train=False, download=False)

    def setup(self, stage: str | None = None) -> None:
        """Open the datasets and split the training set (once)."""
        if self.train_set is not None:
            return
        try:
            train_full, test = self._open()
        except RuntimeError:
            # prepare_data was skipped (or ran on another node without a shared directory)
            self._ensure_files()
            train_full, test = self._open()
        n = len(train_full)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        if self.folds > 1:
            lo, hi = n * self.fold // self.folds, n * (self.fold + 1) // self.folds
            val_idx, train_idx = order[lo:hi], order[:lo] + order[hi:]
        else:
            n_val = max(1, round(n * self.val_fraction))
            val_idx, train_idx = order[:n_val], order[n_val:]
        n_val = len(val_idx)
        # one copy of the images in memory, viewed through two transforms
        self.train_set = _Transformed(train_full, train_idx, self._transform(train=True))
        self.val_set = _Transformed(train_full, val_idx, self._transform(train=False))
        self.test_set = _Transformed(test, range(len(test)), self._transform(train=False))
        log.debug("%s: %d train, %d val, %d test", self.name, n - n_val, n_val, len(test))
