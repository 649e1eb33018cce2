"""Class attribution vectors, the class matrix C and CAS (PAPER.md, "The attribution metric").

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
           "head_weight"]


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
    """Streams batches of (features, labels) and returns :class:`Attribution` at the end."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach().to(torch.float64)
        self.n_classes, self.width = self.weight.shape
        self.sums = torch.zeros(self.n_classes, self.width, dtype=torch.float64, device=self.weight.device)
        self.counts = torch.zeros(self.n_classes, dtype=torch.int64, device=self.weight.device)

    def update(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: features (N, n), y (N,) int labels."""
        if features.dim() != 2 or features.shape[1] != self.width:
            raise ValueError(f"features must have shape (N, {self.width}), got {tuple(features.shape)}")
        if y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError(f"labels must lie in [0, {self.n_classes}), got range [{int(y.min())}, {int(y.max())}]")
        features = features.detach().to(torch.float64)
        self.sums.index_add_(0, y, features)
        self.counts += torch.bincount(y, minlength=self.n_classes)

    def result(self) -> Attribution:
        counts = self.counts.cpu().numpy()
        missing = np.flatnonzero(counts == 0)
        if missing.size:
            raise ValueError(f"classes {missing.tolist()} have no samples: their attribution is undefined")
        # mean_x (g(x) * W[i]) = (mean_x g(x)) * W[i]: the product is linear in g
        means = (self.sums / self.counts[:, None]) * self.weight
        vectors = means.cpu().numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            vectors = np.where(norms > 0, vectors / norms, np.nan)
        if np.any(norms == 0):
            warnings.warn(f"classes {np.flatnonzero(norms[:, 0] == 0).tolist()} have a zero mean attribution; "
                          "their rows of C and CAS are NaN", RuntimeWarning, stacklevel=2)
        matrix = class_matrix(vectors)
        return Attribution(vectors=vectors, matrix=matrix, cas=cas_from_matrix(matrix), counts=counts)


def class_matrix(vectors: np.ndarray) -> np.ndarray:
    """``C = V V^T`` for normalised class vectors V (K, n), with the diagonal set to exactly 1."""
    matrix = vectors @ vectors.T
    matrix = 0.5 * (matrix + matrix.T)
    finite = np.all(np.isfinite(vectors), axis=1)
    np.fill_diagonal(matrix, np.where(finite, 1.0, np.nan))
    return matrix


def cas_from_matrix(matrix: np.ndarray) -> float:
    """``sum_{i != j} clamp(C[i, j], 0, 1)`` (NaN if any entry is NaN)."""
    off = ~np.eye(matrix.shape[0], dtype=bool)
    return float(np.clip(matrix[off], 0.0, 1.0).sum())


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
