"""Models for the synthetic world.

Every model is ``forward(x) = head(features(x))`` with ``head`` linear: a module with a
``weight`` of shape (K, n) and a ``bias`` of shape (K,) or None. The attribution code
(:mod:`synthmodel.attribution`) relies on exactly this and nothing else, so it treats the
tied model, the full linear model, the MLP and the real-data networks the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .sample import derive_seed
from .spec import FeatureModel

__all__ = ["TiedLinear", "FullLinear", "MLP", "MODELS", "build_model", "is_linear_model", "linear_parameters"]


class TiedHead(nn.Module):
    """Linear head whose weight is ``w1 * exclusive_mask + w2 * shared_mask`` (no bias)."""

    def __init__(self, exclusive_mask: torch.Tensor, shared_mask: torch.Tensor, w1: float = 0.0, w2: float = 0.0):
        super().__init__()
        self.register_buffer("exclusive_mask", exclusive_mask)
        self.register_buffer("shared_mask", shared_mask)
        self.w1 = nn.Parameter(torch.tensor(float(w1), dtype=exclusive_mask.dtype))
        self.w2 = nn.Parameter(torch.tensor(float(w2), dtype=exclusive_mask.dtype))
        self.bias = None

    @property
    def weight(self) -> torch.Tensor:
        """Shape (K, d)."""
        return self.w1 * self.exclusive_mask + self.w2 * self.shared_mask

    @property
    def out_features(self) -> int:
        return self.exclusive_mask.shape[0]

    @property
    def in_features(self) -> int:
        return self.exclusive_mask.shape[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T


class _FeatureHeadModel(nn.Module):
    """``forward(x) = head(features(x))``."""

    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # identity unless overridden
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TiedLinear(_FeatureHeadModel):
    """The paper's two-weight linear model, for any world.

    Logit of class k: ``w1 * sum(x_f : f exclusive to k) + w2 * sum(x_f : f shared, k has f)``.
    Pure-noise dimensions get weight 0. Features are the input itself.
    """

    def __init__(self, world: FeatureModel, w1: float = 0.0, w2: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        exclusive, shared = world.tied_masks()
        self.head = TiedHead(torch.as_tensor(exclusive, dtype=dtype), torch.as_tensor(shared, dtype=dtype), w1, w2)

    @property
    def w1(self) -> float:
        return float(self.head.w1.detach())

    @property
    def w2(self) -> float:
        return float(self.head.w2.detach())


class FullLinear(_FeatureHeadModel):
    """Unconstrained linear model ``W x + b`` with W of shape (K, d)."""

    def __init__(self, dim: int, n_classes: int, bias: bool = True, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.head = nn.Linear(dim, n_classes, bias=bias, dtype=dtype)


class MLP(_FeatureHeadModel):
    """``Linear -> ReLU`` blocks giving the features, then a linear head."""

    def __init__(self, dim: int, n_classes: int, hidden: Sequence[int] = (64,), dtype: torch.dtype = torch.float32):
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden widths must be positive integers, got {list(hidden)}")
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, int(h), dtype=dtype), nn.ReLU()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes, dtype=dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _build_tied(world: FeatureModel, dtype: torch.dtype, **_: object) -> nn.Module:
    return TiedLinear(world, dtype=dtype)


def _build_linear(world: FeatureModel, dtype: torch.dtype, bias: bool = True, **_: object) -> nn.Module:
    return FullLinear(world.dim, world.n_classes, bias=bias, dtype=dtype)


def _build_mlp(world: FeatureModel, dtype: torch.dtype, hidden: Sequence[int] = (64,), **_: object) -> nn.Module:
    return MLP(world.dim, world.n_classes, hidden=hidden, dtype=dtype)


MODELS: dict[str, Callable[..., nn.Module]] = {"tied": _build_tied, "linear": _build_linear, "mlp": _build_mlp}


def build_model(name: str, world: FeatureModel, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                **options: object) -> nn.Module:
    """Build a model by registry name with a seeded initialisation.

    The tied model starts at w1 = w2 = 0 (the loss is smooth there and its gradient is not zero);
    the others use PyTorch's default initialisation drawn from a generator seeded by ``seed``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    # fork_rng keeps the caller's global CPU RNG untouched while the default initialisers use it; seed only that
    # generator (torch.manual_seed would also queue seeds for CUDA/XPU that fork_rng(devices=[]) does not restore,
    # and records a stack trace for each: a third of the cost of building a small model)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derive_seed(seed, "init", name))
        return MODELS[name](world, dtype=dtype, **options)


def is_linear_model(model: nn.Module) -> bool:
    """True when the logits are an affine function of the input (identity features)."""
    return isinstance(model, (TiedLinear, FullLinear))


def linear_parameters(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` of a linear model: logits = x @ W.T + b."""
    if not is_linear_model(model):
        raise ValueError(f"{type(model).__name__} is not a linear model")
    return model.head.weight, model.head.bias
