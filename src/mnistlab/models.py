"""The networks: the lab notebook's own, PyTorch's example, and a few classics. Every model returns logits.

Models take a batch of shape (N, 1, 28, 28), already normalised by the data loader, and return (N, 10) logits.
`build_model(name, **kwargs)` looks a model up in the registry; `MODELS` lists them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import ConfigError


class DigitsClassifier(nn.Module):
    """The lab notebook's NnDigitsClassifier: one 3x3 convolution and two dense layers (2,770,634 parameters).

    The notebook applies softmax inside forward() and then CrossEntropyLoss on top ("double softmax"); here
    forward() returns logits, and the quirk is reproduced by the engine's `double_softmax` option instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1)  # 1x28x28 -> 32x26x26
        self.flatten = nn.Flatten()  # -> 21,632 features
        self.d1 = nn.Linear(32 * 26 * 26, 128)
        self.d2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)  # in place: the same values, one 2.8 MB tensor fewer per step
        x = self.flatten(x)
        x = F.relu(self.d1(x), inplace=True)
        return self.d2(x)


class PytorchExampleNet(nn.Module):
    """The Net of pytorch/examples mnist/main.py (about 99.2% after 14 epochs of Adadelta)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc2(x)


class LeNet5(nn.Module):
    """LeCun et al. (1998) LeNet-5 with ReLU and max-pooling, on 28x28 inputs padded by the first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)  # 6x28x28
        self.pool1 = nn.MaxPool2d(2)  # 6x14x14
        self.conv2 = nn.Conv2d(6, 16, 5)  # 16x10x10
        self.pool2 = nn.MaxPool2d(2)  # 16x5x5
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class MLP(nn.Module):
    """A plain multi-layer perceptron: 784 -> hidden... -> 10 with ReLU."""

    def __init__(self, hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias) + batch norm + ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FastNet(nn.Module):
    """The `fast` preset's network, after train_mnist_fast with fewer FLOPs where the image is largest:
    a 5x5 convolution with stride 2 (c1 channels, 12x12; replaces train_mnist_fast's stride-1 conv + 2x2
    max-pool, a quarter of the work), a 3x3 convolution (c2 channels, 10x10) + 2x2 max-pool, then dense
    c2*5*5 -> hidden -> 10. ReLU comes after pooling, where the tensor is four times smaller.

    `flatten="hwc"` (the preset's) has the dense layer read the features in (height, width, channel)
    order: for channels_last activations that is their memory order, so flattening copies nothing and the
    gradient comes back in the same layout (about 6% of a CPU step saved). "chw", the usual order, is the
    default so that models saved before the preset switched keep loading with the weights they learned."""

    def __init__(self, c1: int = 12, c2: int = 24, hidden: int = 128, flatten: str = "chw") -> None:
        super().__init__()
        if flatten not in ("chw", "hwc"):
            raise ValueError(f"flatten must be 'chw' or 'hwc', got {flatten!r}")
        self.hwc = flatten == "hwc"
        self.conv1 = nn.Conv2d(1, c1, 5, stride=2)  # 1x28x28 -> c1x12x12
        self.conv2 = nn.Conv2d(c1, c2, 3)  # -> c2x10x10 -> pool -> c2x5x5
        self.fc1 = nn.Linear(c2 * 5 * 5, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(F.max_pool2d(self.conv2(x), 2), inplace=True)
        x = x.permute(0, 2, 3, 1).flatten(1) if self.hwc else x.flatten(1)  # (N, 5*5*c2)
        x = F.relu(self.fc1(x), inplace=True)
        return self.fc2(x)


class Residual(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class BestNet(nn.Module):
    """The `best` preset's small batch-norm CNN: a 3x3 stem at 28x28, stride-2 convolutions down to 14x14
    and 7x7 (fewer FLOPs than conv + pool at full resolution), `extra` residual convs at 7x7, global
    average pooling and one linear layer."""

    def __init__(self, widths: tuple[int, int, int] = (32, 48, 96), extra: int = 1) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            conv_bn(1, a), conv_bn(a, b, 2), conv_bn(b, b), conv_bn(b, c, 2), conv_bn(c, c),
            *[Residual(conv_bn(c, c)) for _ in range(extra)],
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "notebook": DigitsClassifier,
    "pytorch-example": PytorchExampleNet,
    "lenet5": LeNet5,
    "mlp": MLP,
    "fast": FastNet,
    "best": BestNet,
}


def __getattr__(name: str) -> Callable[..., nn.Module]:
    if name == "NotebookNet":  # the name before DigitsClassifier, kept for code that imports it
        warnings.warn("mnistlab.models.NotebookNet is now DigitsClassifier", DeprecationWarning, stacklevel=2)
        return DigitsClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model constructor to the registry under `name`."""

    def add(ctor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ctor
        return ctor

    return add


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct the registered model `name` with constructor arguments `kwargs`."""
    try:
        ctor = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}") from None
    try:
        return ctor(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments for model {name!r}: {e}") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
