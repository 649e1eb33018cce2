"""Class attribution vectors, the class matrix C and CAS (docs/PAPER.md, "The attribution metric: C and CAS").

For a classifier ``f(x) = W g(x) + b`` with features g (N, n) and head weight W (K, n):

1. attribution of a class-i sample to its own class: ``A_i(x) = g(x) * W[i]`` (element-wise);
2. class attribution vector: ``a_i = mean over the class-i samples of A_i(x)``, then ``a_i / ||a_i||_2``;
3. ``C[i, j] = <a_i, a_j>`` (a cosine similarity, so ``C[i, i] = 1``);
4. ``CAS = sum over i != j of clamp(C[i, j], 0, 1)``.

Unlike the official code this averages over *all* samples of each class (it drops the last
``n mod 100``). Sums are accumulated in float64, batch by batch, so the result does not depend on
batch size beyond float64 rounding. A class whose mean attribution is exactly zero has no direction:
its row and column of C are NaN and CAS is NaN (with a warning), never a silent 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .attacks import preserve_mode

__all__ = ["AttributionAccumulator", "Attribution", "class_matrix", "cas_from_matrix", "attribution",
           "attribution_ensemble", "head_weight"]


def head_weight(model: nn.Module) -> torch.Tensor:
    """The (K, n) weight of the model's linear head, with a clear error when there is none."""
    head = getattr(model, "head", None)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not hasattr(model, "features"):
        raise ValueError(f"{type(model).__name__} must expose features(x) and a linear `head` with a 2-d weight "
                         "to compute attributions")
    return weight


@dataclass(frozen=True)
class Attribution:
    """Result of an attribution analysis.

    Attributes:
        vectors: normalised class attribution vectors, (K, n) float64 (NaN rows for zero vectors).
        matrix: class matrix C, (K, K) float64.
        cas: class attribution similarity.
        counts: number of samples per class, (K,).
    """

    vectors: np.ndarray
    matrix: np.ndarray
    cas: float
    counts: np.ndarray


class AttributionAccumulator:
    """Streams batches of (features, labels) and returns :class:`Attribution` at the end.

    One model: ``weight`` (K, n), batches ``features`` (N, n) and ``y`` (N,), then :meth:`result`.
    E models at once (an ensemble, e.g. :mod:`synthmodel.batched`): ``weight`` (E, K, n), batches
    ``features`` (E, N, n) and ``y`` (E, N), then :meth:`results` (one :class:`Attribution` per model).
    Both run the same code (one model is an ensemble of one), so they agree up to float64 rounding.
    """

    def __init__(self, weight: torch.Tensor):
        weight = weight.detach().to(torch.float64)
        if weight.dim() not in (2, 3):
            raise ValueError(f"weight must have shape (K, n) or (E, K, n), got {tuple(weight.shape)}")
        self.ensemble = weight.dim() == 3
        self.weight = weight if self.ensemble else weight[None]                   # (E, K, n)
        self.members, self.n_classes, self.width = self.weight.shape
        device = self.weight.device
        self.sums = torch.zeros(self.members, self.n_classes, self.width, dtype=torch.float64, device=device)
        self.counts = torch.zeros(self.members, self.n_classes, dtype=torch.int64, device=device)

    def update(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: features (N, n) and y (N,) int labels; for an ensemble (E, N, n) and (E, N)."""
        lead = (self.members,) if self.ensemble else ()
        if features.dim() != len(lead) + 2 or tuple(features.shape[:-2]) != lead or features.shape[-1] != self.width:
            raise ValueError(f"features must have shape ({', '.join(map(str, lead + ('N',)))}, {self.width}), "
                             f"got {tuple(features.shape)}")
        if y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError(f"labels must lie in [0, {self.n_classes}), got range [{int(y.min())}, {int(y.max())}]")
        features = features.detach().to(torch.float64).reshape(-1, self.width)  # (E * N, n)
        # row (member, class) of the flattened sums: member * K + class
        rows = (y.reshape(self.members, -1) + self.n_classes * torch.arange(self.members, device=y.device)[:, None])
        rows = rows.reshape(-1)
        self.sums.view(-1, self.width).index_add_(0, rows, features)
        self.counts += torch.bincount(rows, minlength=self.members * self.n_classes).view(self.members, -1)

    def result(self) -> Attribution:
        """The attribution of a single model (or of an ensemble of one)."""
        if self.members != 1:
            raise ValueError(f"this accumulator holds {self.members} models: use results()")
        return self.results()[0]

    def results(self) -> list[Attribution]:
        """One :class:`Attribution` per model of the ensemble (a list of one for a single model)."""
        counts = self.counts.cpu().numpy()
        missing = np.flatnonzero((counts == 0).any(axis=0))
        if missing.size:
            raise ValueError(f"classes {missing.tolist()} have no samples: their attribution is undefined")
        # mean_x (g(x) * W[i]) = (mean_x g(x)) * W[i]: the product is linear in g
        means = (self.sums / self.counts[..., None]) * self.weight
        vectors = means.cpu().numpy()                                            # (E, K, n)
        norms = np.linalg.norm(vectors, axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            vectors = np.where(norms > 0, vectors / norms, np.nan)
        zero = norms[..., 0] == 0                                                # (E, K)
        for member in np.flatnonzero(zero.any(axis=1)):
            where = f"model {member}: " if self.ensemble else ""
            warnings.warn(f"{where}classes {np.flatnonzero(zero[member]).tolist()} have a zero mean attribution; "
                          "their rows of C and CAS are NaN", RuntimeWarning, stacklevel=2)
        matrices = class_matrix(vectors)
        cas = cas_from_matrix(matrices)
        return [Attribution(vectors=vectors[m], matrix=matrices[m], cas=float(cas[m]), counts=counts[m])
                for m in range(self.members)]


def class_matrix(vectors: np.ndarray) -> np.ndarray:
    """``C = V V^T`` for normalised class vectors V (..., K, n), with the diagonal set to exactly 1: (..., K, K)."""
    matrix = vectors @ np.swapaxes(vectors, -1, -2)
    matrix = 0.5 * (matrix + np.swapaxes(matrix, -1, -2))
    finite = np.all(np.isfinite(vectors), axis=-1)                               # (..., K)
    diagonal = np.einsum("...ii->...i", matrix)  # a writable view of the diagonal(s)
    diagonal[...] = np.where(finite, 1.0, np.nan)
    return matrix


def cas_from_matrix(matrix: np.ndarray) -> float | np.ndarray:
    """``sum_{i != j} clamp(C[i, j], 0, 1)`` (NaN if any entry is NaN): a float for one (K, K) matrix, an
    array of shape (...,) for a stack (..., K, K)."""
    off = ~np.eye(matrix.shape[-1], dtype=bool)
    cas = np.clip(matrix[..., off], 0.0, 1.0).sum(axis=-1)
    return float(cas) if matrix.ndim == 2 else cas


def attribution_ensemble(weight: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> list[Attribution]:
    """Class attribution of E models from their features at once.

    Args:
        weight: head weights, (E, K, n).
        features: ``g(x)`` of each model on its own inputs, (E, N, n) (the inputs for linear models).
        y: labels, (E, N).

    Returns:
        one :class:`Attribution` per model, as :func:`attribution` would give for that model alone.
    """
    acc = AttributionAccumulator(weight)
    acc.update(features, y)
    return acc.results()


def attribution(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                batch_size: int = 4096, mode: str | None = "eval") -> Attribution:
    """Class attribution of ``model`` on (x, y), on clean inputs or on ``attack(model, x, y)``.

    Args:
        model: exposes ``features(x)`` (N, n) and ``head.weight`` (K, n).
        x: inputs (N, ...); y: labels (N,).
        attack: optional callable returning adversarial inputs for a batch.
        batch_size: samples per forward pass.
        mode: model mode while computing ('eval' as the official code; None keeps it); restored after.
    """
    weight = head_weight(model)
    acc = AttributionAccumulator(weight)
    with preserve_mode(model, mode):
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad():
                acc.update(model.features(xb).flatten(1), yb)
    return acc.result()
