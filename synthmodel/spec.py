"""The synthetic cross-class world: K classes, exclusive and shared features.

A :class:`FeatureModel` is fully described by a class x feature *incidence* matrix
``incidence[k, f] = True`` when class ``k`` carries signal feature ``f``. A feature carried by
exactly one class is *exclusive* (class-specific); a feature carried by two or more classes is
*shared* (cross-class). For a sample of class ``k``::

    x_f ~ N(mu_f, sigma_f^2)   if incidence[k, f]
    x_f = 0                    otherwise
    x_noise ~ N(0, noise_sigma^2)   for each of the optional pure-noise dimensions

The paper's 3-class model (docs/PAPER.md, "The synthetic model and the three claims") is the preset ``paper3``:
features ordered ``[x_E1, x_E2, x_E3, x_C1, x_C2, x_C3]`` with ``x_Cj`` present in every class
but ``j``. Nothing in the code special-cases it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

__all__ = ["FeatureModel", "INCIDENCE_FAMILIES", "make_preset", "preset_names", "all_but_one_incidence",
           "pairs_incidence", "ring_incidence"]


def _as_feature_vector(value: float | Sequence[float] | np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per signal feature ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {_values_text(arr, ~np.isfinite(arr))}")
    return arr


def _values_text(values: np.ndarray, bad: np.ndarray) -> str:
    """A per-feature vector in words: the value when every feature has it, else the offending features."""
    if np.all(values == values[0]) or (np.all(np.isnan(values))):
        return f"{values[0]:g} (every feature)"
    index = np.flatnonzero(bad)
    return ", ".join(f"{values[i]:g} (feature {i})" for i in index[:4]) + (" ..." if index.size > 4 else "")


@dataclass(frozen=True, eq=False)
class FeatureModel:
    """A Gaussian-mixture world with exclusive and shared features.

    Args:
        incidence: bool array, shape (K, F): class k has signal feature f.
        mu: mean of a present feature; scalar or shape (F,).
        sigma: standard deviation of a present feature (> 0); scalar or shape (F,).
        noise_dims: number of extra pure-noise dimensions appended after the F signal features.
        noise_sigma: standard deviation of the noise dimensions (default: the mean of sigma).
        priors: class probabilities, shape (K,) (default: balanced).
        name: a label for reports.
    """

    incidence: np.ndarray
    mu: float | np.ndarray = 1.0
    sigma: float | np.ndarray = 0.5
    noise_dims: int = 0
    noise_sigma: float | None = None
    priors: np.ndarray | None = None
    name: str = "custom"
    _mu: np.ndarray = field(init=False, repr=False)
    _sigma: np.ndarray = field(init=False, repr=False)
    _priors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        inc = np.asarray(self.incidence)
        if inc.ndim != 2:
            raise ValueError(f"incidence must be a 2-d class x feature matrix, got shape {inc.shape}")
        if inc.dtype != bool:
            if not np.all(np.isin(inc, (0, 1))):
                raise ValueError("incidence must contain only 0/1 (or booleans)")
            inc = inc.astype(bool)
        k, f = inc.shape
        if k < 2:
            raise ValueError(f"need at least 2 classes, got K={k}")
        if f < 1:
            raise ValueError("need at least one signal feature")
        empty = np.flatnonzero(~inc.any(axis=1))
        if empty.size:
            raise ValueError(f"classes {empty.tolist()} have no feature: every class needs at least one")
        orphan = np.flatnonzero(~inc.any(axis=0))
        if orphan.size:
            raise ValueError(f"features {orphan.tolist()} belong to no class")
        rows = {tuple(r) for r in inc}
        if len(rows) < k:
            raise ValueError("two classes have identical feature sets: they cannot be told apart")
        mu = _as_feature_vector(self.mu, f, "mu")
        sigma = _as_feature_vector(self.sigma, f, "sigma")
        if np.any(sigma <= 0):
            raise ValueError(f"sigma must be > 0, got {_values_text(sigma, sigma <= 0)}")
        if not isinstance(self.noise_dims, (int, np.integer)) or self.noise_dims < 0:
            raise ValueError(f"noise_dims must be a non-negative integer, got {self.noise_dims!r}")
        noise_sigma = float(np.mean(sigma)) if self.noise_sigma is None else float(self.noise_sigma)
        if not math.isfinite(noise_sigma) or noise_sigma <= 0:
            raise ValueError(f"noise_sigma must be finite and > 0, got {noise_sigma}")
        if self.priors is None:
            priors = np.full(k, 1.0 / k)
        else:
            priors = np.asarray(self.priors, dtype=np.float64)
            if priors.shape != (k,) or not np.all(np.isfinite(priors)) or np.any(priors <= 0):
                raise ValueError(f"priors must be {k} positive finite numbers, got {np.asarray(self.priors).tolist()}")
            if abs(priors.sum() - 1.0) > 1e-9:
                raise ValueError(f"priors must sum to 1, got sum {priors.sum()}")
        inc.setflags(write=False)
        for arr in (mu, sigma, priors):
            arr.setflags(write=False)
        object.__setattr__(self, "incidence", inc)
        object.__setattr__(self, "noise_sigma", noise_sigma)
        object.__setattr__(self, "_mu", mu)
        object.__setattr__(self, "_sigma", sigma)
        object.__setattr__(self, "_priors", priors)

    # -- shape ---------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return self.incidence.shape[0]

    @property
    def n_signal(self) -> int:
        """Number of signal (non-noise) features F."""
        return self.incidence.shape[1]

    @property
    def dim(self) -> int:
        """Input dimension d = F + noise_dims."""
        return self.n_signal + self.noise_dims

    @property
    def feature_mu(self) -> np.ndarray:
        """Per-feature mean, shape (F,)."""
        return self._mu

    @property
    def feature_sigma(self) -> np.ndarray:
        """Per-feature standard deviation, shape (F,)."""
        return self._sigma

    @property
    def class_priors(self) -> np.ndarray:
        return self._priors

    @property
    def shared(self) -> np.ndarray:
        """bool (F,): feature is carried by two or more classes (cross-class)."""
        return self.incidence.sum(axis=0) >= 2

    @property
    def exclusive(self) -> np.ndarray:
        """bool (F,): feature is carried by exactly one class (class-specific)."""
        return self.incidence.sum(axis=0) == 1

    def class_means(self) -> np.ndarray:
        """Mean input of each class, shape (K, d) (noise dimensions have mean 0)."""
        means = np.zeros((self.n_classes, self.dim))
        means[:, : self.n_signal] = self.incidence * self._mu
        return means

    def class_stds(self) -> np.ndarray:
        """Per-class standard deviation of each input coordinate, shape (K, d)."""
        stds = np.full((self.n_classes, self.dim), self.noise_sigma)
        stds[:, : self.n_signal] = self.incidence * self._sigma
        return stds

    def tied_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Masks (K, d) of the tied two-weight model: class k's exclusive and shared features.

        The tied model's logit of class k is ``w1 * exclusive_mask[k] @ x + w2 * shared_mask[k] @ x``.
        """
        exclusive = np.zeros((self.n_classes, self.dim))
        shared = np.zeros((self.n_classes, self.dim))
        exclusive[:, : self.n_signal] = self.incidence & self.exclusive
        shared[:, : self.n_signal] = self.incidence & self.shared
        return exclusive, shared

    def with_params(self, **changes) -> FeatureModel:
        """A copy with some constructor arguments replaced (validated again)."""
        args = dict(
            incidence=self.incidence, mu=self.mu, sigma=self.sigma, noise_dims=self.noise_dims,
            noise_sigma=None if "sigma" in changes else self.noise_sigma, priors=self.priors, name=self.name,
        )
        args.update(changes)
        return FeatureModel(**args)

    def describe(self) -> dict:
        """A JSON-friendly summary."""
        return {
            "name": self.name,
            "n_classes": self.n_classes,
            "n_signal": self.n_signal,
            "noise_dims": self.noise_dims,
            "n_exclusive": int(self.exclusive.sum()),
            "n_shared": int(self.shared.sum()),
            "incidence": self.incidence.astype(int).tolist(),
            "mu": self._mu.tolist(),
            "sigma": self._sigma.tolist(),
            "noise_sigma": self.noise_sigma,
            "priors": self._priors.tolist(),
        }


# -- presets ------------------------------------------------------------------------------
def _exclusive_block(k: int) -> np.ndarray:
    return np.eye(k, dtype=bool)


def all_but_one_incidence(k: int) -> np.ndarray:
    """K exclusive features, then K shared ones; shared feature j is in every class but j."""
    return np.concatenate([_exclusive_block(k), ~np.eye(k, dtype=bool)], axis=1)


def pairs_incidence(k: int) -> np.ndarray:
    """K exclusive features, then one shared feature per unordered pair of classes."""
    pairs = list(combinations(range(k), 2))
    shared = np.zeros((k, len(pairs)), dtype=bool)
    for col, (a, b) in enumerate(pairs):
        shared[[a, b], col] = True
    return np.concatenate([_exclusive_block(k), shared], axis=1)


def ring_incidence(k: int) -> np.ndarray:
    """K exclusive features, then K shared ones; shared feature j is in classes j and j+1 mod K."""
    shared = np.zeros((k, k), dtype=bool)
    for j in range(k):
        shared[[j, (j + 1) % k], j] = True
    return np.concatenate([_exclusive_block(k), shared], axis=1)


# family name -> (incidence builder taking K, the smallest K for which it is a valid world); the world presets
# are paper3 and <family>-K
INCIDENCE_FAMILIES: dict[str, tuple] = {
    "all-but-one": (all_but_one_incidence, 3),
    "pairs": (pairs_incidence, 2),
    "ring": (ring_incidence, 3),
}


def preset_names() -> list[str]:
    """The accepted preset spellings."""
    return ["paper3"] + [f"{name}-K" for name in INCIDENCE_FAMILIES]


def make_preset(name: str, *, k: int | None = None, mu: float | Sequence[float] = 1.0,
                sigma: float | Sequence[float] = 0.5, noise_dims: int = 0,
                noise_sigma: float | None = None, priors: Sequence[float] | None = None) -> FeatureModel:
    """Build a preset world.

    Names: ``paper3`` (the paper's model, K=3), ``all-but-one-K``, ``pairs-K``, ``ring-K`` where K
    is a number (``all-but-one-5``) or the letter ``K`` with ``k=`` given.

    Raises:
        ValueError: unknown name or impossible K.
    """
    if name == "paper3":
        if k not in (None, 3):
            raise ValueError(f"preset paper3 has K=3, got k={k}")
        incidence, label = all_but_one_incidence(3), "paper3"
    else:
        match = re.fullmatch(r"(all-but-one|pairs|ring)-(\d+|K)", name)
        if match is None:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")
        family, k_text = match.groups()
        if k_text == "K":
            if k is None:
                raise ValueError(f"preset {name!r} needs the number of classes (k=...)")
        else:
            if k is not None and k != int(k_text):
                raise ValueError(f"preset {name!r} has K={k_text}, got k={k}")
            k = int(k_text)
        builder, k_min = INCIDENCE_FAMILIES[family]
        if k < k_min:
            raise ValueError(f"preset {family}-K needs K >= {k_min}, got K={k}")
        incidence, label = builder(k), f"{family}-{k}"
    return FeatureModel(incidence=incidence, mu=mu, sigma=sigma, noise_dims=noise_dims,
                        noise_sigma=noise_sigma, priors=None if priors is None else np.asarray(priors),
                        name=label)
