"""Image classifiers for the real-data pipeline, all of the form ``head(features(x))``.

Every network here:

* takes pixels in [0, 1], shape (N, C, H, W), and normalises them *inside* ``forward`` with the
  data set's per-channel mean/std, so attacks (:func:`synthmodel.attacks.pgd` with ``clamp=(0, 1)``)
  work in pixel space. The statistics are *non-persistent* buffers: they follow ``.to(device)`` but
  are not in ``state_dict()``, so the state_dict of :class:`PreActResNet18` has exactly the keys and
  shapes of the paper's official code (which normalises outside the model) and loads its
  checkpoints unchanged;
* exposes ``feature_map(x)`` (N, n, h, w): the last activation map (after the last ReLU, before
  pooling; used by Grad-CAM), ``features(x)`` (N, n): its global average, flattened (the ``g`` of
  the paper's attribution metric), and ``head``: the final ``nn.Linear`` (K, n), so
  :mod:`synthmodel.attribution` treats them like the synthetic models.

Architectures (registry :data:`ARCHS`, resolved by :func:`arch_constructor`): ``preact-resnet18``
(He et al. 2016, the paper's network), ``resnet18``, ``wrn-D-W`` (Zagoruyko & Komodakis 2016, any
depth D = 6n + 4 and width W, in the state_dict layout of the TRADES repository and RobustBench;
``wrn-34-10`` is the registered default) and ``small-cnn`` (a fast CPU stand-in). Input channel
count, class count and image size come from the data; global average pooling makes any image size
>= 8 (>= 4 for the small CNN) valid. Loading checkpoints: :mod:`real_data.checkpoints`.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageClassifier", "PreActResNet18", "ResNet18", "WideResNet", "SmallCNN", "ARCHS", "ARCH_NAMES",
           "arch_constructor", "arch_name", "build_arch"]


class ImageClassifier(nn.Module):
    """Base class: normalisation, ``features`` and ``forward`` from a subclass's ``feature_map`` and ``head``."""

    head: nn.Linear

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean}, {std}")
        # persistent=False: not part of state_dict (see module docstring)
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel; x (N, C, H, W) in [0, 1]."""
        if x.dim() != 4 or x.shape[1] != self.input_mean.shape[1]:
            raise ValueError(f"expected images (N, {self.input_mean.shape[1]}, H, W), got {tuple(x.shape)}")
        return (x - self.input_mean) / self.input_std

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features g(x): (N, n), global average of :meth:`feature_map`."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of pixels x (N, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


# -- PreActResNet-18 (the paper's network) -------------------------------------------------------
class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the identity or a 1x1 projection.

    The projection (``shortcut.0``) is applied to the pre-activated input, as in He et al. (2016b).
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


def _stages(block: Callable[[int, int, int], nn.Module], widths: Sequence[int], depths: Sequence[int],
            in_planes: int) -> list[nn.Sequential]:
    stages = []
    for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        blocks = []
        for position in range(depth):
            stride = 2 if index > 0 and position == 0 else 1
            blocks.append(block(in_planes, width, stride))
            in_planes = width
        stages.append(nn.Sequential(*blocks))
    return stages


class PreActResNet18(ImageClassifier):
    """PreActResNet-18: conv3x3(64), four stages of two pre-activation blocks (64, 128, 256, 512 channels,
    stride 2 at the start of stages 2-4), a final BN-ReLU, global average pooling, ``linear``.

    ``state_dict`` keys: ``conv1``, ``layer{1..4}.{0,1}.{bn1,conv1,bn2,conv2}``,
    ``layer{2,3,4}.0.shortcut.0``, ``bn``, ``linear`` (the official code's names; ``head`` is ``linear``).
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 3, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = _stages(PreActBlock, (64, 128, 256, 512), (2, 2, 2, 2), 64)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, n_classes)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.linear

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.relu(self.bn(out))


# -- ResNet-18 ----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, plus identity or conv1x1-BN projection, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
                         if stride != 1 or in_planes != planes else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(ImageClassifier):
    """ResNet-18 for small images (3x3 stem, no max-pool), global average pooling, ``linear`` head."""

    def __init__(self, n_classes: int = 10, in_channels: int = 3, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = _stages(BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), 64)
        self.linear = nn.Linear(512, n_classes)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.linear

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))


# -- WideResNet ---------------------------------------------------------------------------------
class WideBlock(nn.Module):
    """Pre-activation wide block (no dropout): BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, no conv biases.

    Where the channel count changes, the 1x1 ``convShortcut`` (stride, no bias) acts on the
    pre-activated input ReLU(BN(x)); elsewhere the shortcut is x itself (TRADES / RobustBench layout).
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        equal = in_planes == planes and stride == 1
        self.convShortcut = None if equal else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class _WideStage(nn.Module):
    def __init__(self, in_planes: int, planes: int, depth: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                                     for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(ImageClassifier):
    """WideResNet-depth-widen (default 34-10): stem ``conv1`` (3x3, 16 channels, no bias), three stages
    ``block{1,2,3}.layer.{i}`` of (depth - 4) / 6 wide blocks with 16 W, 32 W, 64 W channels (stride 2 at
    the start of stages 2 and 3), final ``bn1``-ReLU, global average pooling, ``fc`` head (with a bias
    unless ``head_bias=False``, RobustBench's ``bias_last=False``).

    The key names and shapes are those of the TRADES repository's and RobustBench's WideResNet; their
    checkpoints' ``sub_block1`` (a copy of ``block1``'s shapes that their forward never uses) is
    dropped on loading (:func:`real_data.checkpoints.load_weights`).
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 3, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), depth: int = 34, widen: int = 10, head_bias: bool = True):
        super().__init__(mean, std)
        if (depth - 4) % 6 or depth < 10 or widen < 1:
            raise ValueError(f"WideResNet depth must be 6n+4 (>= 10) and widen >= 1, got {depth}, {widen}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _WideStage(widths[0], widths[1], n, 1)
        self.block2 = _WideStage(widths[1], widths[2], n, 2)
        self.block3 = _WideStage(widths[2], widths[3], n, 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], n_classes, bias=head_bias)
        self.depth, self.widen = depth, widen

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.fc

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return F.relu(self.bn1(out))


# -- small CNN (CPU stand-in) -------------------------------------------------------------------
class SmallCNN(ImageClassifier):
    """Two conv-BN-ReLU-maxpool stages (``width``, 2 ``width`` channels) and a third conv-BN-ReLU, global
    average pooling, ``head``. Batch norm is kept so the batch-norm mode of attacks matters as in ResNets."""

    def __init__(self, n_classes: int = 10, in_channels: int = 3, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), width: int = 32):
        super().__init__(mean, std)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(*stage(in_channels, width), nn.MaxPool2d(2), *stage(width, 2 * width),
                                  nn.MaxPool2d(2), *stage(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, n_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


ARCHS: dict[str, Callable[..., ImageClassifier]] = {
    "preact-resnet18": PreActResNet18,
    "resnet18": ResNet18,
    "wrn-34-10": WideResNet,
    "small-cnn": SmallCNN,
}
ARCH_NAMES = "preact-resnet18 | resnet18 | small-cnn | wrn-D-W (depth D = 6n+4, width W: wrn-28-10, wrn-34-10, ...)"
_WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def arch_constructor(name: str) -> Callable[..., ImageClassifier]:
    """The constructor of a registered architecture, or of ``wrn-D-W`` for any depth D = 6n + 4 >= 10 and W >= 1.

    Raises:
        ValueError: an unknown name or an impossible depth / width.
    """
    if name in ARCHS:
        return ARCHS[name]
    match = _WRN_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown architecture {name!r}; choose from {ARCH_NAMES}")
    depth, widen = int(match[1]), int(match[2])
    if (depth - 4) % 6 or depth < 10 or widen < 1:
        raise ValueError(f"{name}: WideResNet depth must be 6n+4 (>= 10) and width >= 1, got depth {depth}, "
                         f"width {widen}")
    return functools.partial(WideResNet, depth=depth, widen=widen)


def arch_name(text: str) -> str:
    """argparse ``type=`` for architecture names (the message of a bad one reaches the error line)."""
    try:
        arch_constructor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_arch(name: str, *, n_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float],
               seed: int | None = None, **options: object) -> ImageClassifier:
    """Build an architecture by name (see :func:`arch_constructor`); with ``seed`` the initialisation is
    reproducible. The caller's global RNG is left untouched (``fork_rng``).
    """
    constructor = arch_constructor(name)
    if len(mean) != in_channels:
        raise ValueError(f"{in_channels} input channels but {len(mean)} normalisation values")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return constructor(n_classes=n_classes, in_channels=in_channels, mean=mean, std=std, **options)
