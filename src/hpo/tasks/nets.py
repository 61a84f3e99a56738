"""Classification networks: MLP, CNN and a DAWNBench-style ResNet-9.

Every net is built from ``input_shape`` (``(channels, height, width)``, or any shape for the MLP)
and ``num_classes`` and maps a batch ``(N, *input_shape)`` to logits ``(N, num_classes)``. The
convolutional nets pool only while the feature map is large enough and end in adaptive pooling,
so the same config works on 8x8 digits, 28x28 MNIST and 32x32 CIFAR-10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hpo.errors import ConfigError

__all__ = ["CNN", "MLP", "ResNet9"]


def _shape(input_shape: Sequence[int], *, images: bool) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints; for images exactly ``(C, H, W)``."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"input_shape={input_shape!r} is not a sequence of ints: pass e.g. (1, 28, 28)"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(
            f"input_shape={shape!r} must be non-empty with positive sizes: pass e.g. (1, 28, 28)"
        )
    if images and len(shape) != 3:
        raise ConfigError(
            f"input_shape={shape!r} is not (channels, height, width): convolutional nets need "
            "image data, use model=mlp for flat inputs"
        )
    return shape


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name}={value!r} must be at least 1: pass a positive integer")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout!r} is outside [0, 1): pass e.g. 0.1")


class MLP(nn.Module):
    """A multilayer perceptron on the flattened input.

    Args:
        input_shape: Shape of one example, without the batch dimension.
        num_classes: Number of output logits.
        hidden_dim: Width of every hidden layer.
        depth: Number of hidden layers (Linear, ReLU, Dropout).
        dropout: Dropout probability after each hidden layer.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_dim: int = 128,
        depth: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        shape = _shape(input_shape, images=False)
        _check_positive(num_classes=num_classes, hidden_dim=hidden_dim, depth=depth)
        _check_dropout(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape)
        for _ in range(int(depth)):
            layers += [nn.Linear(width, int(hidden_dim)), nn.ReLU(inplace=True),
                       nn.Dropout(dropout)]
            width = int(hidden_dim)
        layers.append(nn.Linear(width, int(num_classes)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.layers(x)


class CNN(nn.Module):
    """A plain convolutional net: ``depth`` conv-BN-ReLU blocks, then global pooling.

    Channels double after each block (``channels``, ``2*channels``, ...); each block halves the
    feature map with max pooling while it is at least 4 pixels on its short side.

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        num_classes: Number of output logits.
        channels: Channels of the first block.
        depth: Number of conv blocks.
        kernel_size: Odd convolution kernel size (padding keeps the spatial size).
        dropout: Dropout probability before the classifier.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        channels: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_ch, height, width = _shape(input_shape, images=True)
        _check_positive(num_classes=num_classes, channels=channels, depth=depth)
        _check_dropout(dropout)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={kernel_size!r} must be a positive odd integer: "
                              "pass 3, 5 or 7")
        layers: list[nn.Module] = []
        size = min(height, width)
        out_ch = int(channels)
        for _ in range(int(depth)):
            layers += [
                nn.Conv2d(in_ch, out_ch, int(kernel_size), padding=kernel_size // 2, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_ch, out_ch = out_ch, out_ch * 2
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                   nn.Linear(in_ch, int(num_classes))]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.layers(x)


def _conv_bn(in_ch: int, out_ch: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two 3x3 conv-BN-ReLU layers of constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels, pool=False),
                                  _conv_bn(channels, channels, pool=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The DAWNBench ResNet-9 (prep, three stages with two residual blocks, global max pool).

    Widths are ``width * (1, 2, 4, 8)``. Each stage max-pools by 2 only while the feature map is
    at least 2 pixels on its short side, so tiny inputs (8x8 digits) work too.

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        num_classes: Number of output logits.
        width: Channels of the prep layer (64 in the original).
        dropout: Dropout probability before the classifier.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_ch, height, w = _shape(input_shape, images=True)
        _check_positive(num_classes=num_classes, width=width)
        _check_dropout(dropout)
        c = int(width)
        size = min(height, w)

        def pool() -> bool:
            nonlocal size
            if size >= 2:
                size //= 2
                return True
            return False

        self.prep = _conv_bn(in_ch, c, pool=False)
        self.layer1 = nn.Sequential(_conv_bn(c, 2 * c, pool=pool()), _Residual(2 * c))
        self.layer2 = _conv_bn(2 * c, 4 * c, pool=pool())
        self.layer3 = nn.Sequential(_conv_bn(4 * c, 8 * c, pool=pool()), _Residual(8 * c))
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(8 * c, int(num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.head(self.layer3(self.layer2(self.layer1(self.prep(x)))))
