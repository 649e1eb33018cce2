"""Seeded sampling from a :class:`~synthmodel.spec.FeatureModel`."""

from __future__ import annotations

import numpy as np
import torch

from .spec import FeatureModel

__all__ = ["sample", "class_counts", "derive_seed"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def derive_seed(seed: int, *path: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and a path of labels (order matters, stable across runs)."""
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF]
    for part in path:
        if isinstance(part, str):
            words.extend(part.encode())
        else:
            words.append(int(part) & 0xFFFFFFFFFFFFFFFF)
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def class_counts(priors: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` samples over classes in proportion to ``priors`` (largest remainder, exact total)."""
    raw = np.asarray(priors) * n
    counts = np.floor(raw).astype(int)
    short = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def sample(model: FeatureModel, n: int, seed: int, *, dtype: torch.dtype | str = torch.float32,
           stratified: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled samples.

    Args:
        model: the world.
        n: number of samples (>= 1).
        seed: integer seed; the same seed gives the same tensors bit for bit.
        dtype: torch.float32 / torch.float64 (or their names).
        stratified: if True the class counts are exactly proportional to the priors (largest
            remainder), in shuffled order; if False labels are drawn i.i.d. from the priors.

    Returns:
        x: shape (n, d), y: shape (n,) int64 class labels.
    """
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(derive_seed(seed, "sample"))
    priors = torch.tensor(model.class_priors, dtype=torch.float64)
    if stratified:
        counts = torch.as_tensor(class_counts(model.class_priors, n))
        y = torch.repeat_interleave(torch.arange(model.n_classes), counts)
        y = y[torch.randperm(n, generator=gen)]
    else:
        y = torch.multinomial(priors, n, replacement=True, generator=gen)
    noise = torch.randn(n, model.dim, generator=gen, dtype=torch.float64)
    means = torch.tensor(model.class_means(), dtype=torch.float64)[y]
    stds = torch.tensor(model.class_stds(), dtype=torch.float64)[y]
    x = means + stds * noise
    return x.to(dtype), y
