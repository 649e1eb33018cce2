"""Autograd reference engine of the robust loss (torch, tensor trapezoid rule): an independent computation.

Not on the production path: tests compare the analytic routines of :mod:`synthmodel.population.quadrature`
with it (values, gradients and Hessians by autograd). It covers hard labels and label smoothing under the
joint (l_inf), logitwise, scorewise and scorewise-termwise attacks; no distillation, joint l2 or pgd with soft
targets.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import product

import numpy as np
import torch

from .formalisation import Formalisation, World

__all__ = ["loss_torch", "levels", "rule"]

_HALF_RANGE = 9.0       # trapezoid range in standard units: phi(9) ~ 1e-18
_KAPPA = 0.7            # h <= KAPPA / scale keeps exp(-2 pi^2 / (h scale)) below ~1e-12
_MAX_NODES = 400_000    # per (batch element) rule; beyond this the tensor rule is too slow
DTYPE = torch.float64


# -- quadrature rule --------------------------------------------------------------------------
@lru_cache(maxsize=64)
def rule(k: int, level_xi: int, level_eta: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes xi (N,), deviations (N, K-1) and weights (N,) of the tensor trapezoid rule.

    Step ``h = 0.5 / 2^level`` per dimension; nodes whose weight is below 1e-18 of the largest are dropped.
    """
    def line(level: int) -> tuple[np.ndarray, np.ndarray]:
        h = 0.5 / 2.0 ** level
        n = int(math.ceil(_HALF_RANGE / h))
        t = h * np.arange(-n, n + 1)
        return t, h * np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)

    xi, wxi = line(level_xi)
    dims = k - 2
    if dims == 0:
        nodes = xi[:, None]
        weights = wxi
    else:
        eta, weta = line(level_eta)
        n_total = xi.size * eta.size ** dims
        if n_total > 40 * _MAX_NODES:
            raise ValueError(f"quadrature for K={k} needs {n_total} nodes: too slow (K-2 = {dims} Gaussian dimensions)")
        grids = np.meshgrid(xi, *([eta] * dims), indexing="ij")
        wgrid = np.meshgrid(wxi, *([weta] * dims), indexing="ij")
        nodes = np.stack([g.ravel() for g in grids], axis=1)
        weights = np.prod(np.stack([g.ravel() for g in wgrid], axis=1), axis=1)
        keep = weights > 1e-18 * weights.max()
        nodes, weights = nodes[keep], weights[keep]
        if nodes.shape[0] > _MAX_NODES:
            raise ValueError(f"quadrature for K={k} needs {nodes.shape[0]} nodes: too slow; use a smaller K")
    # orthonormal basis of R^{K-1} orthogonal to the ones vector
    q, _ = np.linalg.qr(np.concatenate([np.ones((k - 1, 1)), np.eye(k - 1)], axis=1))
    basis = q[:, 1:k - 1]  # (K-1, K-2)
    deviations = nodes[:, 1:] @ basis.T if dims else np.zeros((nodes.shape[0], k - 1))
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=DTYPE)  # noqa: E731
    return as_t(nodes[:, 0]), as_t(deviations), as_t(weights)


def _level_for(scale: float) -> int:
    h = min(0.5, _KAPPA / max(scale, 1e-12))
    return max(0, int(math.ceil(math.log2(0.5 / h))))


def levels(world: World, w1: torch.Tensor, w2: torch.Tensor) -> tuple[int, int]:
    w1m = float(w1.detach().abs().max()) if w1.numel() else 0.0
    w2m = float(w2.detach().abs().max()) if w2.numel() else 0.0
    sd = math.sqrt(w1m ** 2 + w2m ** 2 / (world.k - 1))
    return _level_for(world.sigma * sd), _level_for(world.sigma * w2m)


# -- the robust loss -----------------------------------------------------------------------------
def _dual(w1: torch.Tensor, w2: torch.Tensor, norm: str, adversary: str = "pairwise", k: int = 3) -> torch.Tensor:
    """r(w): ``||W_y - W_k||_*`` (pairwise: 2(|w1|+|w2|) or sqrt(2(w1^2+w2^2))) or ``||W_y||_* + ||W_k||_*``
    (scorewise: 2(|w1| + (K-1)|w2|) or 2 sqrt(w1^2 + (K-1) w2^2))."""
    c2 = 1.0 if adversary == "pairwise" else float(k - 1)
    if norm == "linf":
        # |w| as w * sign(w) with the sign held fixed: at w = +0 (-0) autograd then gives the right (left)
        # derivative instead of torch's subgradient 0 of abs
        return 2.0 * (w1 * torch.copysign(torch.ones_like(w1), w1)
                      + c2 * w2 * torch.copysign(torch.ones_like(w2), w2))
    return (2.0 if adversary == "scorewise" else math.sqrt(2.0)) * torch.sqrt(w1 * w1 + c2 * w2 * w2 + 1e-300)


@lru_cache(maxsize=16)
def _joint_patterns(k: int) -> torch.Tensor:
    """Distinct shifts (P, K) of ``z_j - z_y`` in units of c: column 0 (true class) is 0, others s_0 + s_j."""
    rows = {(0,) + tuple(s0 + s for s in rest) for s0, *rest in product((-1, 1), repeat=k)}
    return torch.tensor(sorted(rows), dtype=DTYPE)


def _node_loss(world: World, form: Formalisation, w1: torch.Tensor, w2: torch.Tensor, eps: torch.Tensor,
               level: tuple[int, int]) -> torch.Tensor:
    """Per-node robust loss, shape (B, N); w1, w2, eps of shape (B,)."""
    if form.loss == "kd" or form.zero_one or (form.attack in ("joint", "pgd") and form.norm == "l2") or (
            form.attack == "pgd" and not form.hard):
        raise ValueError("the autograd reference has no distillation, joint l2 or pgd with soft targets; use "
                         "robust_loss / loss_derivatives")
    k, mu, sigma = world.k, world.mu, world.sigma
    xi, dev, _ = rule(k, *level)
    sd = torch.sqrt(w1 * w1 + w2 * w2 / (k - 1) + 1e-300)
    margins = ((w1 + w2) * mu)[:, None, None] + sigma * (sd[:, None, None] * xi[None, :, None]
                                                         + w2[:, None, None] * dev[None])  # (B, N, K-1)
    z = torch.cat([torch.zeros_like(margins[..., :1]), -margins], dim=-1)  # logits minus z_y; index 0 = y
    radius = eps * _dual(w1, w2, form.norm, form.adversary, k)  # (B,)
    alpha = form.alpha
    targets = torch.full((k,), alpha / k, dtype=DTYPE)
    targets[0] += 1.0 - alpha
    if form.attack == "scorewise" and alpha:  # the hard-label scores, the soft loss there
        lifted = z + radius[:, None, None] * (torch.arange(k) > 0).to(DTYPE)
        return torch.logsumexp(lifted, dim=-1) - lifted @ targets
    if form.termwise or form.attack == "scorewise":
        eye = torch.eye(k, dtype=DTYPE)
        # CE_c of logits z_j + R [j != c]: (B, N, c, j)
        lifted = z[..., None, :] + radius[:, None, None, None] * (1.0 - eye)
        ce = torch.logsumexp(lifted, dim=-1) - z
        if alpha == 0.0:
            return ce[..., 0]
        return ce @ targets
    shift = 0.5 * radius  # c = eps (|w1| + |w2|)
    patterns = _joint_patterns(k) if alpha else torch.tensor([[0.0] + [2.0] * (k - 1)], dtype=DTYPE)
    shifted = z[..., None, :] + shift[:, None, None, None] * patterns  # (B, N, P, K)
    value = torch.logsumexp(shifted, dim=-1) - shifted @ targets
    return value.max(dim=-1).values


def _penalty(form: Formalisation, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    if form.weights == "weight-decay":
        return 0.5 * form.weight_decay * (w1 * w1 + w2 * w2)
    return torch.zeros_like(w1)


def loss_torch(world: World, form: Formalisation, w1: torch.Tensor, w2: torch.Tensor, eps: torch.Tensor,
                level: tuple[int, int] | None = None) -> torch.Tensor:
    level = level or levels(world, w1, w2)
    weights = rule(world.k, *level)[2]
    return _node_loss(world, form, w1, w2, eps, level) @ weights + _penalty(form, w1, w2)

