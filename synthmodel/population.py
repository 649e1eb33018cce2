"""Exact infinite-sample quantities of the tied linear model, by quadrature (never by sampling).

World: ``all-but-one-K`` (``paper3`` is K = 3) with scalar mu, sigma and balanced classes; pure-noise
dimensions get weight 0 in the tied model and do not matter. Model: ``z_k = w1 x_Ek + w2 sum_{j != k} x_Cj``.

**Reduction to a low-dimensional integral.** For a class-y sample the margin over a wrong class k is
``M_k = z_y - z_k = w1 E + w2 C_k`` (E = x_Ey, C_k = x_Ck; every other coordinate cancels). With
standardised ``E = mu + sigma e`` and ``C_k = mu + sigma c_k``::

    M_k = (w1 + w2) mu + sigma * sd(w) * xi + sigma * w2 * (Q eta)_k,   sd(w) = sqrt(w1^2 + w2^2 / (K-1))

where ``xi ~ N(0, 1)`` carries ``w1 e + w2 mean(c)`` and ``eta ~ N(0, I_{K-2})`` the deviations of the
c_k from their mean (Q: an orthonormal basis of the vectors of R^{K-1} orthogonal to ones). The law of
(xi, eta) does not depend on w, so derivatives in w pass under the integral. The expectation is over
1 + (K-2) standard normal dimensions: 2 for paper3.

**Quadrature.** Each dimension uses the trapezoidal rule on [-9, 9] with Gaussian weights. The
integrands are analytic in a strip whose half-width is ~ pi / (scale of that dimension), so the rule
converges geometrically (error ~ exp(-2 pi^2 / (h * scale))); for wide integrands (large |w| sigma) it
needs far fewer nodes than Gauss-Hermite. Every value comes with an error estimate |Q(h) - Q(h/2)|,
and h is halved until that estimate is below ``tol`` (default 1e-8); the finer value is returned.

**Attacks** (DESIGN.md "Formalisations"), the robust margin against each wrong class being
``M_k - eps * r(w)`` with ``r = ||W_y - W_k||_*`` the same for every pair: ``r = 2(|w1| + |w2|)`` (l_inf,
dual l1) or ``sqrt(2 (w1^2 + w2^2))`` (l2).

* ``logitwise``: loss = ``sum_c t_c CE(z + eps r [k != c], c)`` exactly as
  :func:`synthmodel.train.logitwise_objective` (t = label-smoothed targets).
* ``joint`` (one delta for all logits, maximising the soft-target CE: ordinary AT, what PGD realises):
  for l_inf the coordinates of delta split into two shared ones (x_Ey, x_Cy: they move every
  ``z_k - z_y`` by the same amount) and term-specific ones (x_Ek, x_Ck: they move only ``z_k - z_y``),
  so ``z_k - z_y`` shifts by ``c (s_0 + s_k)`` with ``c = eps (|w1| + |w2|)`` and signs s in {-1, +1}^K
  chosen freely; the loss is convex in delta, so its maximum over the box is the maximum over these
  2^K sign patterns: *exact*. For hard labels the all-plus pattern wins and joint == logitwise.
  For l2 the joint inner maximum couples the coordinates through one norm budget; no exact engine
  here: ``joint`` + ``l2`` raises ValueError.

Robust accuracy (probability of being correct under every perturbation of the ball) is exact for
linear models and the same for both attacks: ``P(min_k M_k > eps r)``, a 1-d integral (see
:func:`robust_accuracy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np
import torch

from .spec import FeatureModel, all_but_one_incidence, make_preset

__all__ = [
    "ATTACKS", "NORMS", "WEIGHTS", "Formalisation", "World", "world_from", "robust_loss", "loss_derivatives",
    "robust_accuracy", "optimal_weights", "first_order_w2", "threshold", "population_cas", "theory_point",
    "THEORY_PARAMS",
]

ATTACKS = ("joint", "logitwise")
NORMS = ("linf", "l2")
# weights constraint -> meaning (documented in proofs_check/README.md)
WEIGHTS = {
    "unconstrained": "(w1, w2) in R^2",
    "weight-decay": "(w1, w2) in R^2, objective + weight_decay/2 (w1^2 + w2^2) (SGD weight decay)",
    "l1-share": "w1 + w2 = 1, w1, w2 >= 0 (shares of one budget)",
    "l2-norm": "w1^2 + w2^2 = 1",
    "class-l2-norm": "w1^2 + (K-1) w2^2 = 1 (the l2 norm of one class's weight row)",
}
_HALF_RANGE = 9.0       # trapezoid range in standard units: phi(9) ~ 1e-18
_KAPPA = 0.7            # h <= KAPPA / scale keeps exp(-2 pi^2 / (h scale)) below ~1e-12
_MAX_NODES = 400_000    # per (batch element) rule; beyond this the tensor rule is too slow
DTYPE = torch.float64


# -- world and formalisation -------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """The parameters of an all-but-one-K world that the population quantities depend on."""

    k: int
    mu: float
    sigma: float


def world_from(world: FeatureModel | str | World, mu: float | None = None, sigma: float | None = None) -> World:
    """Check that a world is all-but-one-K with scalar mu, sigma and balanced classes.

    Raises:
        ValueError: another incidence structure, per-feature mu/sigma, or unbalanced priors.
    """
    if isinstance(world, World):
        return world
    if isinstance(world, str):
        world = make_preset(world, mu=1.0 if mu is None else mu, sigma=0.5 if sigma is None else sigma)
    k = world.n_classes
    if world.incidence.shape != (k, 2 * k) or not np.array_equal(world.incidence, all_but_one_incidence(k)):
        raise ValueError(f"population engine supports all-but-one-K worlds (paper3 included), not {world.name}")
    if np.ptp(world.feature_mu) > 0 or np.ptp(world.feature_sigma) > 0:
        raise ValueError("population engine needs the same mu and sigma for every feature")
    if np.ptp(world.class_priors) > 1e-12:
        raise ValueError("population engine needs balanced classes")
    return World(k=k, mu=float(world.feature_mu[0]), sigma=float(world.feature_sigma[0]))


@dataclass(frozen=True)
class Formalisation:
    """One choice of attack model, norm, targets and weight constraint (DESIGN.md "Formalisations")."""

    attack: str = "logitwise"
    norm: str = "linf"
    alpha: float = 0.0
    weights: str = "unconstrained"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.attack == "joint" and self.norm == "l2":
            raise ValueError("attack 'joint' with norm 'l2' has no exact population engine (the inner maximum "
                             "couples all coordinates through one l2 budget); use attack 'logitwise' (an upper bound)")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha < 1.0):
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.weights == "weight-decay" and self.weight_decay == 0:
            raise ValueError("weights 'weight-decay' needs weight_decay > 0")

    @property
    def convex(self) -> bool:
        """Whether the robust loss is (established to be) jointly convex in (w1, w2).

        Hard labels: log(1 + sum exp(-(affine) + eps * norm(w))) is convex. Logitwise soft targets: a
        non-negative combination of such terms. Joint with alpha > 0: the adversary may *lower* some
        logits (signs -1), which breaks convexity: not established, global search.
        """
        return self.alpha == 0.0 or self.attack == "logitwise"


# -- quadrature rules --------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _rule(k: int, level_xi: int, level_eta: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _levels(world: World, w1: torch.Tensor, w2: torch.Tensor) -> tuple[int, int]:
    w1m = float(w1.detach().abs().max()) if w1.numel() else 0.0
    w2m = float(w2.detach().abs().max()) if w2.numel() else 0.0
    sd = math.sqrt(w1m ** 2 + w2m ** 2 / (world.k - 1))
    return _level_for(world.sigma * sd), _level_for(world.sigma * w2m)


# -- the robust loss -----------------------------------------------------------------------------
def _dual(w1: torch.Tensor, w2: torch.Tensor, norm: str) -> torch.Tensor:
    """``||W_y - W_k||_*`` for any pair of classes: 2(|w1|+|w2|) (l_inf) or sqrt(2(w1^2+w2^2)) (l2)."""
    if norm == "linf":
        # |w| as w * sign(w) with the sign held fixed: at w = +0 (-0) autograd then gives the right (left)
        # derivative instead of torch's subgradient 0 of abs
        return 2.0 * (w1 * torch.copysign(torch.ones_like(w1), w1) + w2 * torch.copysign(torch.ones_like(w2), w2))
    return torch.sqrt(2.0 * (w1 * w1 + w2 * w2) + 1e-300)


@lru_cache(maxsize=16)
def _joint_patterns(k: int) -> torch.Tensor:
    """Distinct shifts (P, K) of ``z_j - z_y`` in units of c: column 0 (true class) is 0, others s_0 + s_j."""
    rows = {(0,) + tuple(s0 + s for s in rest) for s0, *rest in product((-1, 1), repeat=k)}
    return torch.tensor(sorted(rows), dtype=DTYPE)


def _node_loss(world: World, form: Formalisation, w1: torch.Tensor, w2: torch.Tensor, eps: torch.Tensor,
               level: tuple[int, int]) -> torch.Tensor:
    """Per-node robust loss, shape (B, N); w1, w2, eps of shape (B,)."""
    k, mu, sigma = world.k, world.mu, world.sigma
    xi, dev, _ = _rule(k, *level)
    sd = torch.sqrt(w1 * w1 + w2 * w2 / (k - 1) + 1e-300)
    margins = ((w1 + w2) * mu)[:, None, None] + sigma * (sd[:, None, None] * xi[None, :, None]
                                                         + w2[:, None, None] * dev[None])  # (B, N, K-1)
    z = torch.cat([torch.zeros_like(margins[..., :1]), -margins], dim=-1)  # logits minus z_y; index 0 = y
    radius = eps * _dual(w1, w2, form.norm)  # (B,)
    alpha = form.alpha
    targets = torch.full((k,), alpha / k, dtype=DTYPE)
    targets[0] += 1.0 - alpha
    if form.attack == "logitwise":
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


def _as_batch(*arrays) -> list[torch.Tensor]:
    tensors = [torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE).reshape(-1) for a in arrays]
    size = max(t.numel() for t in tensors)
    return [t.expand(size).clone() if t.numel() == 1 else t for t in tensors]


def _loss_torch(world: World, form: Formalisation, w1: torch.Tensor, w2: torch.Tensor, eps: torch.Tensor,
                level: tuple[int, int] | None = None) -> torch.Tensor:
    level = level or _levels(world, w1, w2)
    weights = _rule(world.k, *level)[2]
    return _node_loss(world, form, w1, w2, eps, level) @ weights + _penalty(form, w1, w2)


@dataclass(frozen=True)
class QuadResult:
    """A quadrature value with its error estimate |Q(h) - Q(h/2)| (the finer value is returned)."""

    value: np.ndarray
    error: np.ndarray


def robust_loss(world: FeatureModel | World | str, form: Formalisation, w1, w2, eps, *,
                tol: float = 1e-8) -> QuadResult:
    """Expected robust loss (plus the weight-decay penalty if any) at weights (w1, w2), radius eps.

    Args:
        world: an all-but-one-K world (or preset name, or :class:`World`).
        form: the formalisation.
        w1, w2, eps: scalars or arrays broadcast to shape (B,).
        tol: refine (halve every step) until the error estimate is below tol.

    Returns:
        QuadResult with value and error, shape (B,).
    """
    world = world_from(world)
    w1, w2, eps = _as_batch(w1, w2, eps)
    level = _levels(world, w1, w2)
    with torch.no_grad():
        coarse = _loss_torch(world, form, w1, w2, eps, level)
        fine, error = coarse, torch.full_like(coarse, math.inf)
        for _ in range(8):
            level = (level[0] + 1, level[1] + 1)
            try:
                finer = _loss_torch(world, form, w1, w2, eps, level)
            except ValueError:  # node budget reached: return the best value with its (larger) error estimate
                break
            fine, error = finer, (finer - coarse).abs()
            if float(error.max()) < tol:
                break
            coarse = finer
    return QuadResult(fine.numpy(), error.numpy())


def loss_derivatives(world: World, form: Formalisation, w1, w2, eps, level: tuple[int, int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss (B,), gradient (B, 2) and Hessian (B, 2, 2) in (w1, w2) by autograd through the quadrature.

    At w1 = 0 or w2 = 0 the l_inf loss has a kink (|w|): the derivative returned there is the one of the
    side the sign of the value given selects (+0.0 -> right derivative).
    """
    w1, w2, eps = _as_batch(w1, w2, eps)
    # the kink: evaluate |w| as sign(w) * w with the sign frozen (copysign keeps the side of a signed zero)
    s1 = torch.copysign(torch.ones_like(w1), w1)
    s2 = torch.copysign(torch.ones_like(w2), w2)
    u = torch.stack([w1 * s1, w2 * s2], dim=1).requires_grad_(True)
    a1, a2 = u[:, 0] * s1, u[:, 1] * s2
    loss = _loss_torch(world, form, a1, a2, eps, level)
    (grad_u,) = torch.autograd.grad(loss.sum(), u, create_graph=True)
    rows = [torch.autograd.grad(grad_u[:, i].sum(), u, retain_graph=True)[0] for i in range(2)]
    hess_u = torch.stack(rows, dim=1)
    sign = torch.stack([s1, s2], dim=1)
    grad = grad_u * sign
    hess = hess_u * sign[:, :, None] * sign[:, None, :]
    return loss.detach().numpy(), grad.detach().numpy(), hess.detach().numpy()


# -- robust accuracy ------------------------------------------------------------------------------
def _accuracy_torch(world: World, norm: str, w1: torch.Tensor, w2: torch.Tensor, eps: torch.Tensor,
                    h: float) -> torch.Tensor:
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
    radius = (eps * _dual(w1, w2, norm))[:, None]
    a1, a2 = w1.abs()[:, None], w2.abs()[:, None]
    tiny = 1e-300
    # branch A: condition on the extreme C
    cdf = torch.special.ndtr(z)
    tail = torch.where(w2[:, None] >= 0, 1.0 - cdf, cdf)
    extreme_c = mu + sigma * torch.where(w2[:, None] >= 0, z, z)  # z standardised extreme
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


def robust_accuracy(world: FeatureModel | World | str, w1, w2, eps, norm: str = "linf") -> QuadResult:
    """Probability that a sample is classified correctly under *every* perturbation of the ball.

    Exact for linear models, hence the same for the joint and logitwise formalisations (ties count as
    errors, as :func:`synthmodel.attacks.linear_robust_correct`). Shapes (B,).
    """
    world = world_from(world)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    w1, w2, eps = _as_batch(w1, w2, eps)
    coarse = _accuracy_torch(world, norm, w1, w2, eps, 0.2)
    fine = _accuracy_torch(world, norm, w1, w2, eps, 0.1)
    return QuadResult(fine.numpy(), (fine - coarse).abs().numpy())


# -- CAS ------------------------------------------------------------------------------------------
def population_cas(world: FeatureModel | World | str, w1: float, w2: float, eps: float | None = None,
                   norm: str = "linf") -> float | None:
    """Population CAS of the tied model (PAPER.md attribution metric, infinitely many samples).

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


# -- optimal weights -----------------------------------------------------------------------------
def _newton_quadrant(world: World, form: Formalisation, eps: np.ndarray, start: np.ndarray,
                     signs: tuple[float, float], iters: int = 60, xtol: float = 1e-11
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Minimise over the closed quadrant sign(w) = signs, vectorised over eps, by projected Newton.

    Inside a quadrant the objective is smooth (the |w| of the l_inf radius is linear there). Active set:
    a coordinate at 0 whose derivative points out of the quadrant is held at 0. Backtracking keeps the
    loss non-increasing; a non-positive-definite Hessian is shifted.
    Returns u = (|w1|, |w2|) (B, 2) and the objective (B,).
    """
    sign = np.array(signs)
    u = np.maximum(start * sign, 0.0)
    eps_t = np.asarray(eps, dtype=np.float64)
    active = np.ones(len(eps_t), dtype=bool)

    def evaluate(uu, idx):
        w = uu * sign
        w1 = np.where(w[:, 0] == 0, 0.0 * sign[0], w[:, 0])  # signed zeros choose the quadrant's side
        w2 = np.where(w[:, 1] == 0, 0.0 * sign[1], w[:, 1])
        return loss_derivatives(world, form, w1, w2, eps_t[idx])

    loss, grad, hess = evaluate(u, np.arange(len(u)))
    for _ in range(iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        g = grad[idx] * sign
        hm = hess[idx] * sign[:, None] * sign[None, :]
        uu = u[idx]
        free = ~((uu <= 0) & (g > 0))  # coordinate pinned at the quadrant's edge
        # pinned coordinates: zero their row/column (identity there) and their gradient, then one batched solve
        mask = free[:, :, None] & free[:, None, :]
        hb = np.where(mask, hm, 0.0) + np.where(~free, 1.0, 0.0)[:, :, None] * np.eye(2)
        lam = np.linalg.eigvalsh(hb).min(axis=1)
        shift = np.where(lam <= 1e-12, 1e-12 - lam + 1e-6 * np.abs(hb).max(axis=(1, 2)), 0.0)
        hb = hb + shift[:, None, None] * np.eye(2)
        step = -np.linalg.solve(hb, (np.where(free, g, 0.0))[..., None])[..., 0]
        t = np.ones(idx.size)
        new_u = np.maximum(uu + step, 0.0)
        new_loss, new_grad, new_hess = evaluate(new_u, idx)
        for _ in range(30):
            worse = new_loss > loss[idx] + 1e-15 * np.abs(loss[idx])
            if not worse.any():
                break
            t = np.where(worse, t * 0.5, t)
            new_u = np.where(worse[:, None], np.maximum(uu + t[:, None] * step, 0.0), new_u)
            sub = np.flatnonzero(worse)
            nl, ng, nh = evaluate(new_u[sub], idx[sub])
            new_loss[sub], new_grad[sub], new_hess[sub] = nl, ng, nh
        moved = np.abs(new_u - uu).max(axis=1)
        improved = new_loss <= loss[idx] + 1e-15 * np.abs(loss[idx])
        u[idx] = np.where(improved[:, None], new_u, uu)
        loss[idx] = np.where(improved, new_loss, loss[idx])
        grad[idx] = np.where(improved[:, None], new_grad, grad[idx])
        hess[idx] = np.where(improved[:, None, None], new_hess, hess[idx])
        active[idx] = (moved > xtol) & improved
    return u * sign, loss


def _curve(form: Formalisation, k: int):
    """Feasible curve t -> (w1, w2) of a constrained formalisation, its t range and t at w2 = 0."""
    if form.weights == "l1-share":
        return (lambda t: (1.0 - t, t)), (0.0, 1.0), 0.0
    if form.weights == "l2-norm":
        return (lambda t: (torch.cos(t), torch.sin(t))), (-math.pi, math.pi), 0.0
    if form.weights == "class-l2-norm":
        return (lambda t: (torch.cos(t), torch.sin(t) / math.sqrt(k - 1))), (-math.pi, math.pi), 0.0
    raise ValueError(f"weights {form.weights!r} is not a fixed-norm constraint")


def _curve_derivatives(world: World, form: Formalisation, t: np.ndarray, eps: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objective, d/dt and d2/dt2 along the feasible curve (right derivatives at w2 = +0)."""
    curve = _curve(form, world.k)[0]
    tt = torch.as_tensor(t, dtype=DTYPE).clone().requires_grad_(True)
    w1, w2 = curve(tt)
    # t = +0 gives w2 = +0.0, so the l_inf |w2| takes its right derivative there (see _dual)
    ones = torch.ones_like(tt)
    w1, w2 = torch.as_tensor(w1, dtype=DTYPE) * ones, torch.as_tensor(w2, dtype=DTYPE) * ones
    loss = _loss_torch(world, form, w1, w2, torch.as_tensor(eps, dtype=DTYPE))
    (d1,) = torch.autograd.grad(loss.sum(), tt, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), tt)
    return loss.detach().numpy(), d1.detach().numpy(), d2.detach().numpy()


def _optimise_curve(world: World, form: Formalisation, eps: np.ndarray, grid: int = 48
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global search on a 1-d feasible set: a grid, then safeguarded Newton inside the best cell."""
    curve, (lo, hi), _ = _curve(form, world.k)
    b = len(eps)
    ts = np.linspace(lo, hi, grid + 1)
    tt = np.repeat(ts[None, :], b, axis=0).ravel()
    ee = np.repeat(eps, grid + 1)
    w1, w2 = curve(torch.as_tensor(tt, dtype=DTYPE))
    with torch.no_grad():
        values = _loss_torch(world, form, torch.as_tensor(w1, dtype=DTYPE) * torch.ones(tt.size, dtype=DTYPE),
                             torch.as_tensor(w2, dtype=DTYPE) * torch.ones(tt.size, dtype=DTYPE),
                             torch.as_tensor(ee, dtype=DTYPE)).numpy().reshape(b, grid + 1)
    best = values.argmin(axis=1)
    left = ts[np.maximum(best - 1, 0)]
    right = ts[np.minimum(best + 1, grid)]
    t = ts[best].copy()
    for _ in range(60):
        _, d1, d2 = _curve_derivatives(world, form, t, eps)
        newton = np.where(d2 > 0, t - d1 / np.where(d2 > 0, d2, 1.0), np.nan)
        # outside the cell or non-convex there: bisect towards the descent side
        bisect = np.where(d1 > 0, 0.5 * (left + t), 0.5 * (t + right))
        left = np.where(d1 > 0, left, t)
        right = np.where(d1 > 0, t, right)
        ok = np.isfinite(newton) & (newton > left) & (newton < right)
        new_t = np.where(ok, newton, bisect)
        if np.abs(new_t - t).max() < 1e-12:
            t = new_t
            break
        t = new_t
    # compare with the cell ends (the minimum may sit at the end of the range, e.g. t = 0 for l1-share)
    cands = np.stack([t, ts[np.maximum(best - 1, 0)], ts[best], ts[np.minimum(best + 1, grid)]], axis=1)
    loss_c = np.stack([_curve_derivatives(world, form, cands[:, j], eps)[0] for j in range(cands.shape[1])], axis=1)
    pick = loss_c.argmin(axis=1)
    t = cands[np.arange(b), pick]
    w1, w2 = curve(torch.as_tensor(t, dtype=DTYPE))
    w1 = np.broadcast_to(np.asarray(w1, dtype=np.float64), t.shape).copy()
    w2 = np.broadcast_to(np.asarray(w2, dtype=np.float64), t.shape).copy()
    return w1, w2, loss_c[np.arange(b), pick]


def _standard_start(world: World, b: int) -> np.ndarray:
    return np.tile([2.0 / max(world.sigma, 1e-3) ** 0.5, 0.5], (b, 1))


def optimal_weights(world: FeatureModel | World | str, form: Formalisation, eps, *, start: np.ndarray | None = None
                    ) -> dict[str, np.ndarray | str | bool]:
    """Global minimiser of the robust objective over the formalisation's feasible set, for each eps.

    Method, by case (reported as ``method``):

    * unconstrained / weight decay, convex (``form.convex``): projected Newton in each closed quadrant
      (the objective is smooth inside each); each quadrant minimum is global there, so the best is the
      global minimum. With hard labels only the first quadrant is searched: the loss is decreasing in
      every margin and replacing (w1, w2) by (|w1|, |w2|) makes the margins stochastically larger
      (reflect E and C about mu), so an optimum with w >= 0 exists.
    * unconstrained / weight decay, not established convex: the same from three starts per quadrant
      (multi-start global search, not a proof).
    * fixed norm / share: 1-d global search (grid of 49 points, then Newton/bisection in the best cell).

    Args:
        eps: radii, shape (B,).
        start: optional (B, 2) warm start for the 2-d cases.

    Returns:
        dict with w1, w2, objective (B,), method (str), convex (bool).
    """
    world = world_from(world)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if np.any(~np.isfinite(eps)) or np.any(eps < 0):
        raise ValueError("eps must be finite and >= 0")
    b = eps.size
    if form.weights in ("l1-share", "l2-norm", "class-l2-norm"):
        w1, w2, obj = _optimise_curve(world, form, eps)
        return {"w1": w1, "w2": w2, "objective": obj, "method": "1-d global search", "convex": form.convex}
    start = _standard_start(world, b) if start is None else np.asarray(start, dtype=np.float64).reshape(b, 2)
    if form.alpha == 0.0:
        quadrants = [(1.0, 1.0)]
    else:
        quadrants = list(product((1.0, -1.0), repeat=2))
    starts = [np.abs(start)] if form.convex else [np.abs(start), np.abs(start) * [1.0, 0.1],
                                                   np.abs(start) * [0.1, 1.0]]
    best_w, best_loss = None, None
    for signs in quadrants:
        for s in starts:
            w, loss = _newton_quadrant(world, form, eps, s * np.array(signs), signs)
            if best_w is None:
                best_w, best_loss = w, loss
            else:
                better = loss < best_loss
                best_w = np.where(better[:, None], w, best_w)
                best_loss = np.where(better, loss, best_loss)
    method = "projected Newton per quadrant (convex)" if form.convex else "multi-start projected Newton (global search)"
    return {"w1": best_w[:, 0], "w2": best_w[:, 1], "objective": best_loss, "method": method, "convex": form.convex}


# -- first-order condition at w2 = 0 and thresholds --------------------------------------------------
def first_order_w2(world: FeatureModel | World | str, form: Formalisation, eps) -> tuple[np.ndarray, np.ndarray]:
    """Right derivative of the objective in the w2 direction at the best point with w2 = 0.

    Unconstrained / weight decay: ``dL/dw2 (w1*, +0)`` with w1* the best w1 on the line w2 = 0. Fixed
    norm / share: the derivative along the feasible curve at its point with w2 = +0, w1 > 0. Negative
    means that raising w2 from 0 lowers the objective (so the optimum has w2 > 0 when the objective is
    convex). Returns (derivative, w1 at w2 = 0), shape (B,).
    """
    world = world_from(world)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if form.weights in ("l1-share", "l2-norm", "class-l2-norm"):
        t0 = np.zeros_like(eps)
        _, d1, _ = _curve_derivatives(world, form, t0, eps)
        return d1, np.ones_like(eps)
    # best w1 on the line w2 = 0 (1-d, convex when the objective is): Newton on w1 >= 0 and w1 <= 0
    best_w1, best_loss = None, None
    for s1 in (1.0, -1.0) if form.alpha else (1.0,):
        w1 = np.full(eps.size, s1 * 1.0)
        for _ in range(80):
            loss, g, h = loss_derivatives(world, form, w1, np.zeros_like(w1), eps)
            step = -g[:, 0] / np.maximum(h[:, 0, 0], 1e-12)
            new = w1 + step
            new = np.where(new * s1 < 0, 0.5 * w1, new)
            done = np.abs(new - w1).max() < 1e-12
            w1 = new
            if done:
                break
        loss = loss_derivatives(world, form, w1, np.zeros_like(w1), eps)[0]
        if best_w1 is None:
            best_w1, best_loss = w1, loss
        else:
            best_w1 = np.where(loss < best_loss, w1, best_w1)
            best_loss = np.minimum(loss, best_loss)
    w1_signed = np.where(best_w1 == 0, 0.0, best_w1)
    _, g, _ = loss_derivatives(world, form, w1_signed, np.zeros_like(best_w1), eps)
    return g[:, 1], best_w1


@dataclass(frozen=True)
class Threshold:
    """eps where the first-order condition at w2 = 0 changes sign in (0, mu/2), or None, with evidence."""

    eps: float | None
    grid: np.ndarray
    derivative: np.ndarray

    def to_dict(self) -> dict:
        return {"eps": self.eps, "grid": self.grid.tolist(), "derivative": self.derivative.tolist()}


def threshold(world: FeatureModel | World | str, form: Formalisation, *, n_grid: int = 24, xtol: float = 1e-7
              ) -> Threshold:
    """eps0 (alpha = 0) or eps1 (alpha > 0): the largest eps in (0, mu/2) where the right derivative in w2
    at w2 = 0 goes from negative (w2 > 0 pays) to non-negative, by bracketing (brentq, xtol) on a grid.

    None when the derivative keeps one sign on the grid (the evidence: grid and derivative values).
    """
    from scipy.optimize import brentq

    world = world_from(world)
    half = world.mu / 2
    grid = np.linspace(half / n_grid, half * (1 - 1e-6), n_grid)
    deriv, _ = first_order_w2(world, form, grid)
    crossings = np.flatnonzero((deriv[:-1] < 0) & (deriv[1:] >= 0))
    if crossings.size == 0:
        return Threshold(None, grid, deriv)
    i = crossings[-1]
    root = brentq(lambda e: float(first_order_w2(world, form, [e])[0][0]), grid[i], grid[i + 1], xtol=xtol)
    return Threshold(float(root), grid, deriv)


# -- the sweep's contract ------------------------------------------------------------------------------
THEORY_PARAMS: dict[str, tuple] = {
    "preset": ("paper3", "all-but-one-3", "all-but-one-4"),
    "mu": ("float", 0.0, math.inf),           # open interval (0, inf)
    "sigma": ("float", 0.0, math.inf),        # open interval (0, inf)
    "eps": ("float", 0.0, math.inf),          # [0, inf)
    "alpha": ("float", 0.0, 1.0),             # [0, 1)
    "attack": ATTACKS,
    "norm": NORMS,
    "weights": tuple(WEIGHTS),
    "weight_decay": ("float", 0.0, math.inf),  # [0, inf); > 0 for weights='weight-decay'
}
_DEFAULTS = {"alpha": 0.0, "attack": "logitwise", "norm": "linf", "weights": "unconstrained", "weight_decay": 0.0}


def _check_params(params: dict) -> dict:
    unknown = sorted(set(params) - set(THEORY_PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(THEORY_PARAMS)}")
    p = {**_DEFAULTS, **params}
    for key in ("preset", "mu", "sigma", "eps"):
        if key not in p:
            raise ValueError(f"missing parameter {key!r}")
    for key, allowed in THEORY_PARAMS.items():
        value = p[key]
        if allowed and allowed[0] == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
            lo = allowed[1]
            if key in ("mu", "sigma") and value <= lo:
                raise ValueError(f"{key} must be > 0, got {value}")
            if value < lo or (key == "alpha" and value >= 1.0):
                raise ValueError(f"{key} out of range, got {value}")
        elif key == "preset":
            if value != "paper3" and not (isinstance(value, str) and value.startswith("all-but-one-")):
                raise ValueError(f"preset must be paper3 or all-but-one-K, got {value!r}")
        elif value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return p


def validate_theory_params(params: dict) -> None:
    """Raise ValueError naming the first unknown key or impossible value of a theory point (the sweep's pre-check)."""
    _check_params(params)


def theory_point(params: dict) -> dict:
    """Population theory at one point of a sweep grid.

    Args:
        params: flat dict; keys of :data:`THEORY_PARAMS` (preset, mu, sigma, eps required; alpha,
            attack, norm, weights, weight_decay default to 0, logitwise, linf, unconstrained, 0).

    Returns:
        flat dict of floats / None: w1, w2, ratio (w2/w1), robust_loss (objective without penalty),
        robust_acc, cas (clean inputs), cas_adv (l_inf adversarial inputs), eps0 (threshold with alpha = 0),
        eps1 (threshold at the given alpha; None when alpha = 0), quad_error (largest error estimate),
        convex (1.0 if convexity is established, else 0.0).

    Raises:
        ValueError: unknown key, impossible value, unsupported combination (names the key).
    """
    p = _check_params(params)
    try:
        k_world = make_preset(p["preset"], mu=float(p["mu"]), sigma=float(p["sigma"]))
    except ValueError as exc:
        raise ValueError(f"preset: {exc}") from None
    world = world_from(k_world)
    form = Formalisation(attack=p["attack"], norm=p["norm"], alpha=float(p["alpha"]), weights=p["weights"],
                         weight_decay=float(p["weight_decay"]))
    eps = float(p["eps"])
    opt = optimal_weights(world, form, [eps])
    w1, w2 = float(opt["w1"][0]), float(opt["w2"][0])
    plain = Formalisation(attack=form.attack, norm=form.norm, alpha=form.alpha)  # no penalty
    loss = robust_loss(world, plain, w1, w2, eps)
    acc = robust_accuracy(world, w1, w2, eps, form.norm)
    hard = Formalisation(attack=form.attack, norm=form.norm, alpha=0.0, weights=form.weights,
                         weight_decay=form.weight_decay)
    eps0 = threshold(world, hard).eps
    eps1 = threshold(world, form).eps if form.alpha else None
    return {
        "w1": w1, "w2": w2, "ratio": w2 / w1 if w1 != 0 else None,
        "robust_loss": float(loss.value[0]), "robust_acc": float(acc.value[0]),
        "cas": population_cas(world, w1, w2), "cas_adv": population_cas(world, w1, w2, eps, form.norm),
        "eps0": eps0, "eps1": eps1, "quad_error": float(max(loss.error[0], acc.error[0])),
        "convex": 1.0 if form.convex else 0.0,
    }
