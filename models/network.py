"""The network: feature layers and a linear head that grows when new classes arrive.

The feature layers are Lepton's MLP (``train.hidden`` wide), its small CNN over an image column
(``cnn``), or the user's own, from a factory named ``module:function`` (``train.network``). The contract of a factory is small: called
with ``n_features`` and the keyword arguments of ``train.network_args``, it returns an
``nn.Module`` that maps a float32 batch ``(batch, n_features)`` of Lepton's standardised
inputs to ``(batch, width)`` features. Lepton adds the head (one output per class, grown
for new ones; one output for a numeric target), and stores the factory's name and
arguments with the weights, so that the version rebuilds it: the factory's module must be
importable wherever the model loads (Lepton ships it with the version when it is a file or
a package in the workspace).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# What a new CNN is built with, written into its version's arguments (older versions, built before
# the mix layer narrowed, rebuild from SmallCNN's own defaults). 128 wide, not 256: over six seeds of
# `lepton bench images` the default strategy went from 96.2% to 96.9% at 10% memory and from 94.0% to
# 95.1% at 5% (64: 96.9% and 94.8%; 96: 96.4% and 94.4%; 32: 95.0% and 93.4% on three).
CNN_DEFAULTS: dict[str, Any] = {"channels": [32, 64], "hidden": 128}

# Sharpness of the softmax over negative distances between unit vectors (distances lie in [0, 2]).
NME_SCALE = 20.0


class NetworkError(ValueError):
    """A network factory that cannot be imported or breaks the contract; the message names the setting."""


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The function ``module:function`` names, imported."""
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise NetworkError(f"train.network={spec!r}: cannot import {module!r} ({err}); put it in the workspace or install it") from None
    except AttributeError:
        raise NetworkError(f"train.network={spec!r}: module {module!r} has no {name!r}") from None
    if not callable(factory):
        raise NetworkError(f"train.network={spec!r}: {name!r} is not a function")
    return factory


def uncallable(spec: str, args: dict[str, Any], err: Exception) -> NetworkError:
    """A factory that cannot be called as the contract calls it (a signature other than the contract's, a misspelt argument)."""
    return NetworkError(
        f"train.network={spec!r} could not be called as factory(n_features=..., **train.network_args) with train.network_args={args!r}: {err}"
    )


def _feature_width(features: nn.Module, n_features: int, spec: str) -> int:
    """The width of a factory's features, from one forward pass of a zero batch; refuses what breaks the contract."""
    training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(2, n_features))
    except Exception as err:  # noqa: BLE001 - any failure here is the factory's, said in one line
        raise NetworkError(f"train.network={spec!r}: its module fails on a batch of shape (2, {n_features}): {type(err).__name__}: {err}") from None
    finally:
        features.train(training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NetworkError(f"train.network={spec!r}: its module must map (batch, {n_features}) to (batch, width), not to {shape}")
    return int(out.shape[1])


class SmallCNN(nn.Module):
    """Convolutions over the pixel block of one image column, the other inputs beside them, then a hidden layer.

    The inputs stay one flat float32 batch, as for the MLP (so replay memories, strategies and
    DDP see nothing new): the pixels of the image column, ``image_shape`` = (height, width,
    channels) in that order, start at input ``image_start``. Each of ``channels`` is a 3x3
    convolution, batch normalisation and a ReLU, halved by max pooling while the image is at least 4 pixels a side.
    """

    def __init__(self, n_features: int, *, image_start: int, image_shape: list[int], channels: list[int] | tuple[int, ...] = (32, 64), hidden: int = 256) -> None:
        super().__init__()
        height, width, depth = (int(n) for n in image_shape)
        self.start, self.shape = int(image_start), (height, width, depth)
        self.size = height * width * depth
        if self.start < 0 or self.start + self.size > n_features:
            raise NetworkError(f"train.network=cnn: an image of {height}x{width}x{depth} at input {self.start} does not fit in {n_features} inputs")
        layers: list[nn.Module] = []
        before, side = depth, min(height, width)
        for size in channels:
            # Batch normalisation after each convolution: on class-incremental digits as images it lifted the default
            # strategy from 95.2% to 95.9% at 10% memory and from 93.1% to 95.0% at 5% (`lepton bench images`, 3 seeds);
            # evaluation uses its running statistics.
            layers += [nn.Conv2d(before, int(size), kernel_size=3, padding=1), nn.BatchNorm2d(int(size)), nn.ReLU()]
            if side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            before = int(size)
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.conv.eval()  # one zero image: batch statistics of a single value per channel do not exist
            flat = self.conv(torch.zeros(1, depth, height, width)).shape[1]
            self.conv.train()
        self.mix = nn.Sequential(nn.Linear(flat + n_features - self.size, int(hidden)), nn.ReLU())
        self.width = int(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width, depth = self.shape
        pixels = x[:, self.start:self.start + self.size].reshape(-1, height, width, depth).permute(0, 3, 1, 2)
        if pixels.is_cuda:
            pixels = pixels.contiguous(memory_format=torch.channels_last)  # what cuDNN's convolutions run fastest on
        rest = torch.cat([x[:, :self.start], x[:, self.start + self.size:]], dim=1)
        return self.mix(torch.cat([self.conv(pixels), rest], dim=1))


class MLP(nn.Module):
    """Feature layers (Lepton's, or a factory's) followed by a linear head, one logit per known class."""

    def __init__(
        self, *, n_features: int, n_classes: int, hidden: tuple[int, ...] = (256, 256), classifier: str = "linear",
        factory: str | None = None, factory_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.factory, self.factory_args = factory, dict(factory_args or {})
        if factory is None:
            layers: list[nn.Module] = []
            width = n_features
            for size in hidden:
                layers += [nn.Linear(width, size), nn.ReLU()]
                width = size
            self.features: nn.Module = nn.Sequential(*layers)
        elif factory == "cnn":
            self.features = SmallCNN(n_features, **self.factory_args)
            width = self.features.width
            hidden = ()
        else:
            try:
                built = import_factory(factory)(n_features=n_features, **self.factory_args)
            except TypeError as err:
                raise uncallable(factory, self.factory_args, err) from None
            if not isinstance(built, nn.Module):
                raise NetworkError(f"train.network={factory!r}: it returned {type(built).__name__}, not a torch nn.Module")
            self.features = built
            width = _feature_width(built, n_features, factory)
            hidden = ()
        self.head = nn.Linear(width, n_classes)
        self.n_features = n_features
        self.hidden = tuple(hidden)
        # Nearest-mean-of-exemplars classification (iCaRL): one unit-norm class mean in
        # feature space per class, used for prediction when classifier == "nme".
        self.classifier = classifier
        self.register_buffer("prototypes", torch.zeros(n_classes, width))

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    @property
    def arch(self) -> dict[str, Any]:
        """Constructor arguments: enough to rebuild the network from a checkpoint."""
        arch = {"n_features": self.n_features, "n_classes": self.n_classes, "hidden": list(self.hidden), "classifier": self.classifier}
        if self.factory is not None:
            arch |= {"factory": self.factory, "factory_args": self.factory_args}
        return arch

    @property
    def name(self) -> str:
        """What the features are, as ``train.network`` names them: mlp, cnn, or the factory."""
        return self.factory or "mlp"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training logits (the linear head)."""
        return self.head(self.features(x))

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for prediction: the linear head, or negative scaled distances to the class means."""
        if self.classifier != "nme":
            return self.forward(x)
        embedding = F.normalize(self.features(x), dim=1)
        return -NME_SCALE * torch.cdist(embedding, self.prototypes)

    def expand_head(self, n_classes: int) -> None:
        """Add output units for new classes, keeping the weights of the known ones."""
        if n_classes < self.n_classes:
            raise ValueError(f"cannot shrink the head from {self.n_classes} to {n_classes} classes")
        if n_classes == self.n_classes:
            return
        old = self.head
        new = nn.Linear(old.in_features, n_classes).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.head = new
        prototypes = torch.zeros(n_classes, self.prototypes.shape[1], device=self.prototypes.device)
        prototypes[: self.prototypes.shape[0]] = self.prototypes
        self.prototypes = prototypes
        # New classes have no mean yet: predict with the head until one is computed.
        self.classifier = "linear"


def build(arch: dict[str, Any]) -> MLP:
    return MLP(
        n_features=arch["n_features"],
        n_classes=arch["n_classes"],
        hidden=tuple(arch["hidden"]),
        classifier=arch.get("classifier", "linear"),
        factory=arch.get("factory"),
        factory_args=arch.get("factory_args"),
    )
