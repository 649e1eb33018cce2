"""Robust accuracy, population CAS and the robust 0-1 objective of the tied model.

Robust accuracy is a 1-d integral (:func:`robust_accuracy`). Minimising the robust 0-1 error is scale-free: it
depends on the direction of w only, so it is a search over theta = atan(w2 / w1) in [0, pi/2] (w >= 0 suffices:
reflecting E and C about mu makes every margin stochastically larger at the same radius), certified by branch and
bound (:func:`optimal_ratio`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..spec import FeatureModel
from .engine import QuadResult
from .formalisation import ADVERSARIES, NORMS, Formalisation, World, world_from

__all__ = ["robust_accuracy", "population_cas", "ZeroOneOptimum", "optimal_ratio", "zero_one_slope_at_zero",
           "zero_one_threshold", "expected_max_normal"]

DTYPE = torch.float64


def _as_batch(*arrays) -> list[torch.Tensor]:
    tensors = [torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE).reshape(-1) for a in arrays]
    size = max(t.numel() for t in tensors)
    return [t.expand(size).clone() if t.numel() == 1 else t for t in tensors]


# -- robust accuracy ------------------------------------------------------------------------------
def _radius_torch(k: int, norm: str, adversary: str, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """r(w) of :func:`synthmodel.population.quadrature.attack_radius` in torch (values only)."""
    c2 = 1.0 if adversary == "pairwise" else float(k - 1)
    if norm == "linf":
        return 2.0 * (w1.abs() + c2 * w2.abs())
    return (2.0 if adversary == "scorewise" else math.sqrt(2.0)) * torch.sqrt(w1 * w1 + c2 * w2 * w2)


def _accuracy_torch(world: World, norm: str, w1: torch.Tensor, w2: torch.Tensor, eps: torch.Tensor,
                    h: float, adversary: str = "pairwise") -> torch.Tensor:
    """P(w1 E + w2 C_k > eps r for every wrong k): condition on the variable with the larger weight.

    If |w2| <= |w1|: condition on the binding shared feature (min of the K-1 C_k if w2 >= 0, else max),
    whose density is (K-1) phi(z) (1 - Phi(z))^(K-2) (resp. Phi(z)^(K-2)), then P(w1 E > t) is a normal
    CDF. Else condition on E, and the K-1 independent C_k give Phi(.)^(K-1). The integrand's slope is
    then at most 1 in standard units: the trapezoid rule is accurate to ~1e-14 at h = 0.1.
    """
    k, mu, sigma = world.k, world.mu, world.sigma
    n = int(math.ceil(10.0 / h))
    z = torch.arange(-n, n + 1, dtype=DTYPE) * h
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    radius = (eps * _radius_torch(k, norm, adversary, w1, w2))[:, None]
    a1, a2 = w1.abs()[:, None], w2.abs()[:, None]
    tiny = 1e-300
    # branch A: condition on the extreme C
    cdf = torch.special.ndtr(z)
    tail = torch.where(w2[:, None] >= 0, 1.0 - cdf, cdf)
    extreme_c = mu + sigma * z  # z: the standardised extreme (its law is in `tail`)
    t = radius - w2[:, None] * extreme_c
    cond_a = torch.special.ndtr((w1[:, None] * mu - t) / (a1 * sigma + tiny))
    cond_a = torch.where(a1 > 0, cond_a, (t < 0).to(DTYPE))
    branch_a = ((k - 1) * pdf * tail ** (k - 2) * cond_a).sum(dim=1) * h
    # branch B: condition on E
    t = radius - w1[:, None] * (mu + sigma * z)
    cond_b = torch.special.ndtr((w2[:, None] * mu - t) / (a2 * sigma + tiny)) ** (k - 1)
    cond_b = torch.where(a2 > 0, cond_b, (t < 0).to(DTYPE))
    branch_b = (pdf * cond_b).sum(dim=1) * h
    return torch.where(w2.abs() <= w1.abs(), branch_a, branch_b)


def robust_accuracy(world: FeatureModel | World | str, w1, w2, eps, norm: str = "linf", *,
                    adversary: str = "pairwise") -> QuadResult:
    """Probability that a sample is classified correctly under *every* perturbation of the ball.

    Exact for linear models, hence the same for the joint, logitwise and pgd formalisations (``adversary
    'pairwise'``: a margin loses eps ||W_y - W_k||_*; ties count as errors, as
    :func:`synthmodel.attacks.linear_robust_correct`). ``adversary='scorewise'``: every score attacked on its own,
    a margin loses eps (||W_y||_* + ||W_k||_*) (:func:`synthmodel.attacks.linear_scorewise_logits`). Shapes (B,).
    """
    world = world_from(world)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if adversary not in ADVERSARIES:
        raise ValueError(f"adversary must be one of {', '.join(ADVERSARIES)}, got {adversary!r}")
    w1, w2, eps = _as_batch(w1, w2, eps)
    coarse = _accuracy_torch(world, norm, w1, w2, eps, 0.2, adversary)
    fine = _accuracy_torch(world, norm, w1, w2, eps, 0.1, adversary)
    return QuadResult(fine.numpy(), (fine - coarse).abs().numpy())


# -- CAS ------------------------------------------------------------------------------------------
def population_cas(world: FeatureModel | World | str, w1: float, w2: float, eps: float | None = None,
                   norm: str = "linf") -> float | None:
    """Population CAS of the tied model (docs/DEFINITIONS.md, infinitely many samples).

    The class-i attribution vector is ``E[x + delta | i] * W_i``. On clean inputs (``eps=None``) it is
    ``mu * (w1 on E_i, w2 on every C_j, j != i)``, so ``C[i, j] = (K-2) b^2 / (a^2 + (K-1) b^2)`` with
    a = mu w1, b = mu w2, and CAS = K (K-1) clamp(C[i, j], 0, 1). On l_inf adversarial inputs (the exact
    worst case for hard labels, which PGD reaches on a linear model) delta is the same for every sample:
    ``-eps sign(w1)`` on E_i and ``-eps sign(w2)`` on C_j, so a = w1 (mu - eps sign w1), b = w2 (mu - eps
    sign w2). For l2 adversarial inputs it returns None (delta depends on the weights' direction only,
    but is not implemented). None also when the attribution vector is zero (CAS undefined).
    """
    world = world_from(world)
    k, mu = world.k, world.mu
    if eps is None or eps == 0:
        a, b = mu * w1, mu * w2
    elif norm == "linf":
        a = w1 * (mu - eps * math.copysign(1.0, w1)) if w1 else 0.0
        b = w2 * (mu - eps * math.copysign(1.0, w2)) if w2 else 0.0
    else:
        return None
    denom = a * a + (k - 1) * b * b
    if denom == 0:
        return None
    c = (k - 2) * b * b / denom
    return float(k * (k - 1) * min(max(c, 0.0), 1.0))



# -- the robust 0-1 objective: a certified search over the direction of w ---------------------------------
_Z_RANGE = 10.0


def expected_max_normal(n: int) -> float:
    """E[max of n independent N(0, 1)] (1/sqrt(pi) for n = 2), by a trapezoid on |x| <= 10 (error < 1e-14)."""
    if n == 1:
        return 0.0
    x = np.linspace(-_Z_RANGE, _Z_RANGE, 8001)
    from scipy.special import ndtr

    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return float(np.sum(x * n * pdf * ndtr(x) ** (n - 1)) * (x[1] - x[0]))


def _margin_mean_bounds(world: World, form: Formalisation, eps: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """An upper bound of m(theta) = mu (cos + sin) - eps r(cos, sin) over each cell [lo, hi] (exact for l_inf).

    At w = (cos theta, sin theta) every robust margin is ``m(theta) + sigma (cos theta Z0 + sin theta Z_k)`` with
    Z0, Z_k independent N(0, 1) (E = mu + sigma Z0, C_k = mu + sigma Z_k, R = eps r(w) constant in x).
    l_inf: m = alpha cos + beta sin (alpha = mu - 2 eps, beta = mu - eps b, b = 2 pairwise, 2 (K-1) scorewise),
    whose maximum over a cell is at an end or at atan2(beta, alpha). l2: mu max(cos + sin) - eps min r.
    """
    k, mu = world.k, world.mu
    if form.norm == "linf":
        b = 2.0 if form.adversary == "pairwise" else 2.0 * (k - 1)
        alpha, beta = mu - 2.0 * eps, mu - eps * b
        ends = np.maximum(alpha * np.cos(lo) + beta * np.sin(lo), alpha * np.cos(hi) + beta * np.sin(hi))
        peak = math.atan2(beta, alpha)
        inside = (lo <= peak) & (peak <= hi)
        return np.where(inside, math.hypot(alpha, beta), ends)
    pi4 = math.pi / 4
    cs = np.where((lo <= pi4) & (pi4 <= hi), math.sqrt(2.0),
                  np.maximum(np.cos(lo) + np.sin(lo), np.cos(hi) + np.sin(hi)))
    if form.adversary == "pairwise":
        r_min = np.full_like(lo, math.sqrt(2.0))
    else:  # 2 sqrt(1 + (K-2) sin^2): increasing on [0, pi/2]
        r_min = 2.0 * np.sqrt(1.0 + (k - 2) * np.sin(lo) ** 2)
    return mu * cs - eps * r_min


def _cell_upper(world: World, form: Formalisation, eps: float, lo: np.ndarray, hi: np.ndarray, h: float
                ) -> np.ndarray:
    """sup over theta in [lo, hi] of P(correct) is at most this (a point when lo == hi: P(theta) itself).

    Correct at theta iff ``cos Z0 + sin Z_k > t(theta) = -m(theta) / sigma`` for every k, i.e.
    ``cos Z0 + sin M > t`` with M = min_k Z_k. Over the cell, cos Z0 <= c*(Z0) Z0 (c* = cos lo for Z0 >= 0, cos hi
    below), sin M <= s*(M) M (s* = sin hi for M >= 0, sin lo below) and t >= t_min (from
    :func:`_margin_mean_bounds`), so the event lies in ``c*(Z0) Z0 + s*(M) M > t_min``, whose probability is one
    integral: over M (density (K-1) phi (1 - Phi)^(K-2)) for cells below pi/4, over Z0 above (the integrand's slope
    is then at most 1; trapezoid of step h on |z| <= 10).
    """
    from scipy.special import ndtr

    k, sigma = world.k, world.sigma
    t_min = -_margin_mean_bounds(world, form, eps, lo, hi) / sigma                     # (C,)
    z = np.arange(-_Z_RANGE, _Z_RANGE + 0.5 * h, h)
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cl, ch, sl, sh = np.cos(lo), np.cos(hi), np.sin(lo), np.sin(hi)
    out = np.empty(lo.shape)
    low = hi <= math.pi / 4
    if low.any():  # condition on M: need c*(Z0) Z0 > v = t_min - s*(M) M; c* Z0 is increasing in Z0
        s_star = np.where(z[None] >= 0, sh[low, None], sl[low, None])
        v = t_min[low, None] - s_star * z[None]
        c_div = np.where(v >= 0, cl[low, None], ch[low, None])
        cond = 1.0 - ndtr(v / np.maximum(c_div, 1e-300))
        density = (k - 1) * pdf * (1.0 - ndtr(z)) ** (k - 2)
        out[low] = (cond * density[None]).sum(-1) * h
    high = ~low
    if high.any():  # condition on Z0: each Z_k independently needs s*(Z_k) Z_k > q = t_min - c*(Z0) Z0
        c_star = np.where(z[None] >= 0, cl[high, None], ch[high, None])
        q = t_min[high, None] - c_star * z[None]
        s_div = np.where(q >= 0, sh[high, None], sl[high, None])
        with np.errstate(divide="ignore", invalid="ignore"):
            tail = np.where(s_div > 0, 1.0 - ndtr(q / np.where(s_div > 0, s_div, 1.0)), (q < 0).astype(float))
        out[high] = ((tail ** (k - 1)) * pdf[None]).sum(-1) * h
    return out


def _accuracy_at(world: World, form: Formalisation, eps: float, theta: np.ndarray) -> np.ndarray:
    """P(correct under every attack) at w = (cos theta, sin theta), by :func:`robust_accuracy`."""
    theta = np.asarray(theta, dtype=np.float64)
    return robust_accuracy(world, np.cos(theta), np.sin(theta), np.full(theta.shape, eps), form.norm,
                           adversary=form.adversary).value


@dataclass(frozen=True)
class ZeroOneOptimum:
    """The certified maximiser of robust accuracy (minimiser of the robust 0-1 error) over the direction of w.

    All arrays (B,) over eps. ``ratio`` = w2 / w1 = tan(theta) (inf at theta = pi/2); ``enclosure`` (B, 2): every
    global maximiser has its ratio in [lo, hi] (branch and bound: cells whose upper bound is below the best value
    found are excluded); ``gap``: sup P - P(theta) is at most this; ``accuracy``: P at theta.
    """

    eps: np.ndarray
    theta: np.ndarray
    ratio: np.ndarray
    accuracy: np.ndarray
    enclosure: np.ndarray
    gap: np.ndarray
    cells: np.ndarray
    method: str = ("branch and bound over theta = atan(w2/w1) in [0, pi/2] with cell upper bounds (certified "
                   "enclosure of every global maximiser), then bounded Brent inside the enclosure")

    @property
    def w1(self) -> np.ndarray:
        return np.cos(self.theta)

    @property
    def w2(self) -> np.ndarray:
        return np.sin(self.theta)


def _certified_search(world: World, form: Formalisation, eps: float, *, width_tol: float, gap_tol: float,
                      max_rounds: int = 60, h: float = 0.02):
    from scipy.optimize import minimize_scalar

    edges = np.linspace(0.0, math.pi / 2, 65)
    lo, hi = edges[:-1], edges[1:]
    values = _accuracy_at(world, form, eps, edges)
    best_i = int(values.argmax())
    best, best_theta = float(values[best_i]), float(edges[best_i])
    for _ in range(max_rounds):
        # the upper bound's own quadrature error: the difference of steps h and h/2 (trapezoid, kinks: O(h^2))
        upper = _cell_upper(world, form, eps, lo, hi, h)
        upper = upper + np.abs(upper - _cell_upper(world, form, eps, lo, hi, 2 * h)) + 1e-12
        keep = upper >= best
        lo, hi, upper = lo[keep], hi[keep], upper[keep]
        if hi.max() - lo.min() <= width_tol or upper.max() - best <= gap_tol or lo.size > 4_000:
            break
        mid = 0.5 * (lo + hi)
        mv = _accuracy_at(world, form, eps, mid)
        i = int(mv.argmax())
        if mv[i] > best:
            best, best_theta = float(mv[i]), float(mid[i])
        lo, hi = np.concatenate([lo, mid]), np.concatenate([mid, hi])
    a, b = float(lo.min()), float(hi.max())
    theta = best_theta
    if b > a:
        res = minimize_scalar(lambda t: -float(_accuracy_at(world, form, eps, np.array([t]))[0]), bounds=(a, b),
                              method="bounded", options={"xatol": 1e-11})
        if -res.fun >= best:
            theta, best = float(res.x), float(-res.fun)
        ends = _accuracy_at(world, form, eps, np.array([a, b]))
        for t, v in zip((a, b), ends, strict=True):
            if v >= best:  # an optimum at the end of the enclosure (e.g. theta = 0: r* = 0)
                theta, best = t, float(v)
    gap = max(0.0, float(upper.max()) - best)
    return theta, best, (a, b), gap, int(lo.size)


def optimal_ratio(world: FeatureModel | World | str, form: Formalisation, eps, *, width_tol: float = 1e-4,
                  gap_tol: float = 1e-6) -> ZeroOneOptimum:
    """Certified global minimiser of the robust 0-1 error (``form.objective == 'zero-one'``) for each eps.

    The error depends on the direction of w only (every margin and the radius are homogeneous of degree 1), and
    w >= 0 suffices (reflection about mu; :func:`optimal_weights`' docstring), so the search is over
    theta = atan(w2 / w1) in [0, pi/2]. Branch and bound: 64 cells, each bounded from above by
    :func:`_cell_upper` (a rigorous bound up to its quadrature error, which is added), cells below the best value
    found dropped, the rest halved, until the surviving cells span <= ``width_tol`` in theta or the bound is within
    ``gap_tol`` of the best value; then bounded Brent inside the enclosure (and both its ends). The enclosure is the
    certificate: no global maximiser lies outside it.
    """
    world = world_from(world)
    if not form.zero_one:
        raise ValueError("optimal_ratio is for objective 'zero-one'; use optimal_weights")
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64)).reshape(-1)
    if np.any(~np.isfinite(eps)) or np.any(eps < 0):
        raise ValueError("eps must be finite and >= 0")
    out = [_certified_search(world, form, float(e), width_tol=width_tol, gap_tol=gap_tol) for e in eps]
    theta = np.array([o[0] for o in out])
    with np.errstate(divide="ignore"):
        ratio = np.where(theta >= math.pi / 2, np.inf, np.tan(theta))
        enclosure = np.tan(np.array([o[2] for o in out]))
    enclosure = np.where(np.array([o[2] for o in out]) >= math.pi / 2, np.inf, enclosure)
    return ZeroOneOptimum(eps, theta, ratio, np.array([o[1] for o in out]), enclosure, np.array([o[3] for o in out]),
                          np.array([o[4] for o in out]))


def zero_one_slope_at_zero(world: FeatureModel | World | str, form: Formalisation, eps) -> np.ndarray:
    """dP(correct)/dtheta at theta = 0+ (w2 = 0, w1 = 1), closed form (proofs_check/README.md, "Zero-one").

    ``phi(t0) (m'(0) / sigma - e_{K-1})`` with t0 = -m(0) / sigma and e_n the expected maximum of n standard
    normals: m'(0) = mu - eps b (l_inf; b = 2 pairwise, 2 (K-1) scorewise) or mu (l2: dr/dtheta = 0 at 0).
    """
    world = world_from(world)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    k, mu, sigma = world.k, world.mu, world.sigma
    if form.norm == "linf":
        b = 2.0 if form.adversary == "pairwise" else 2.0 * (k - 1)
        m0, dm0 = mu - 2.0 * eps, mu - eps * b
    else:
        m0 = mu - eps * (math.sqrt(2.0) if form.adversary == "pairwise" else 2.0)
        dm0 = np.full_like(eps, mu)
    t0 = -m0 / sigma
    return np.exp(-0.5 * t0 * t0) / math.sqrt(2 * math.pi) * (dm0 / sigma - expected_max_normal(k - 1))


@lru_cache(maxsize=64)
def _zero_one_threshold(world: World, form: Formalisation, n_grid: int, xtol: float):
    return zero_one_threshold(world, form, n_grid=n_grid, xtol=xtol, cached=False)


def zero_one_threshold(world: FeatureModel | World | str, form: Formalisation, *, n_grid: int = 12,
                       xtol: float = 1e-5, cached: bool = True) -> tuple[float | None, np.ndarray, np.ndarray]:
    """eps0 of the 0-1 objective: the largest eps in (0, mu/2) where the certified optimal ratio goes from > 0 to
    exactly 0 (grid of ``n_grid``, then bisection on "r* = 0" to ``xtol``). Returns (eps0 or None, grid, r*);
    cached per (world, formalisation)."""
    world = world_from(world)
    if cached:
        return _zero_one_threshold(world, form, n_grid, xtol)
    half = world.mu / 2
    grid = np.linspace(half / n_grid, half * (1 - 1e-6), n_grid)
    ratio = optimal_ratio(world, form, grid).ratio
    zero = ratio == 0
    crossings = np.flatnonzero(~zero[:-1] & zero[1:])
    if crossings.size == 0 or not zero[crossings[-1] + 1:].all():
        return None, grid, ratio
    a, b = float(grid[crossings[-1]]), float(grid[crossings[-1] + 1])
    while b - a > xtol:
        m = 0.5 * (a + b)
        if optimal_ratio(world, form, [m]).ratio[0] == 0:
            b = m
        else:
            a = m
    return 0.5 * (a + b), grid, ratio
