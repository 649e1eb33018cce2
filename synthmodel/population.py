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

**Quadrature** (:mod:`synthmodel._popquad`). Each dimension uses the trapezoidal rule on |t| <= 8 with
Gaussian weights. The integrands are analytic in a strip whose half-width is ~ pi / (scale of that
dimension), so the rule converges geometrically; for wide integrands (large |w| sigma) it needs far fewer
nodes than Gauss-Hermite. Every eps gets the step its own weights need (bound ``exp(-21)`` from the strip
width and the Gaussian's growth off the axis). Every value comes with an error estimate |Q - Q_fine|,
Q_fine = (Q + Q') / 2 the body-centred lattice rule (Q' = Q shifted by h/2 in every dimension; the two see
the leading aliasing error with opposite signs); where the estimate is >= ``tol`` (default 1e-8) h is
halved and the pair recomputed; the finer value is returned.

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
  2^K sign patterns: *exact*. For hard labels the all-plus pattern wins and joint == logitwise. With label
  smoothing the integrand is a maximum of smooth pieces: each xi line is split at the patterns' tie points
  (closed form, :func:`synthmodel._popquad.joint_split_eval`) and integrated piecewise by Gauss-Legendre.
  For l2 (hard labels, K = 3) the change of ``z_k - z_y`` is ``(u + v_k) . delta`` with u (shared) and
  v_1, v_2 (one per wrong class) orthogonal and of length |w|, so the inner maximum is over a 3-d ball: it
  sits on the sphere, parallel to the gradient, and reduces to a 1-d fixed point in q = the share of the
  first wrong class; every root is found and the best kept (exact; :func:`synthmodel._popquad.joint_l2_eval`).
  Wrong class k then rises by ``eps |w| (1 + q_k) / sqrt(1 + q_1^2 + q_2^2)``, between eps |w| sqrt(3/2)
  (q = 1/2) and the logitwise eps |w| sqrt 2. With label smoothing (K = 3) the loss depends on delta only
  through the two wrong logits' shifts s (x1, x2), which fill an ellipse; it is convex, so the adversary's
  maximum is on the ellipse's boundary, one angle, searched per node (sampling + Newton,
  :func:`synthmodel._popquad.joint_l2_soft_eval`); the integrand has kinks where two local maxima tie, and
  every xi line is split at them (found by bisection), so the xi direction converges geometrically; in eta
  the trapezoid remains. Joint l2 for K = 4 raises ValueError.

* ``pgd`` (the training attack): delta* maximises the *hard-label* CE, as PGD on the labels does in
  synthmodel.train and real_data.train, and the objective (label smoothing or distillation) is evaluated at
  x + delta*. For hard labels pgd == joint. For the tied model and l_inf delta* is the all-plus vertex above,
  exactly, for every sample, so every wrong student logit rises by R = eps r(w):

  - label smoothing: ``E[LSE(z + R) - sum_c t_c (z + R)_c] = L_hard + (alpha (K-1)/K) ((w1 + w2) mu - R)``,
    the hard-label loss plus a term linear in each quadrant (concave kinks on the axes);
  - distillation: the teacher sees x + delta* too, its wrong logits rise by ``2 eps (a1 sign w1 + a2 sign
    w2)``; the targets depend on w only through its signs (the loss jumps where sign(w2) flips).

  For l2 (K = 3) delta* is the joint l2 maximiser below; with label smoothing the loss adds
  ``(alpha/K) (2 (w1 + w2) mu - 3 eps |w| E[1 / n(q*)])`` (:func:`synthmodel._popquad.joint_l2_eval`).
  Not computed: ``joint`` + ``kd`` (an adversary maximising the distillation loss itself: its target moves
  with delta, the soft CE is not convex in delta, and the maximum over the box need not sit at a vertex), and
  pgd + distillation for l2. proofs_check/README.md ("Distillation") has the details and the Claim-3 check.

**Distillation** (``Formalisation(loss='kd', teacher_w1=a1, teacher_w2=a2, temperature=T)``; logitwise
here, pgd above): targets ``t = softmax(teacher_logits / T)`` of the tied teacher (a1, a2) on the *clean*
input (there is no single adversarial input under the logitwise attack; the clean input is also what
:func:`synthmodel.train.logitwise_objective` gets from the training loop), loss
``E sum_c t_c CE(z + eps r [k != c], c)`` at student temperature 1. The teacher's margins
``a1 E + a2 C_k`` involve another direction of (e, mean(c)) than the student's xi, so this integral is over
(e, v = sqrt(K-1) mean(c), eta): K dimensions, 3 for paper3 (:func:`synthmodel._popquad.kd_eval`).

**Many classes** (K > 4; :func:`synthmodel._popquad.frullani_eval`): the (K-1)-dimensional rule is too large
there, but the hard-label loss log(1 + B S), B = exp(R - w1 E), S = sum_k exp(-w2 C_k), has by Frullani's
integral log(1 + y) = int_0^inf (e^-t - e^-t(1+y)) dt / t and the independence of the C_k the representation
``int psi(v - R) (1 - phi(v)^(K-1)) dv`` with phi, psi one-dimensional Gaussian integrals: K is an exponent.
Logitwise label smoothing has the same form term by term. Both equal the (xi, eta) engine to 1e-12 at
K = 3, 4 (tested). Joint with label smoothing, joint l2 and distillation beyond K = 4 raise ValueError.

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

from . import _popquad as _pq
from .spec import FeatureModel, all_but_one_incidence, make_preset

__all__ = [
    "ATTACKS", "NORMS", "WEIGHTS", "Formalisation", "World", "world_from", "robust_loss", "loss_derivatives",
    "robust_accuracy", "optimal_weights", "first_order_w2", "threshold", "closed_form_sign", "population_cas",
    "theory_point",
    "THEORY_PARAMS",
]

ATTACKS = ("joint", "logitwise", "pgd")
LOSSES = ("ce", "kd")  # cross-entropy (with label smoothing alpha) or distillation from a tied teacher
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
    """One choice of attack model, norm, targets and weight constraint (DESIGN.md "Formalisations").

    ``attack``: ``'joint'`` (one delta maximising the training objective itself), ``'logitwise'`` (each
    wrong logit against its own worst case) or ``'pgd'`` (one delta maximising the hard-label CE, the
    objective evaluated there: what AT with label smoothing or distillation trains on; == joint for hard labels).
    ``loss``: ``'ce'`` (cross-entropy, label-smoothed by ``alpha``) or ``'kd'`` (distillation: targets
    ``softmax(teacher_logits / temperature)`` of the tied teacher (teacher_w1, teacher_w2); needs alpha = 0;
    the teacher sees the clean input under ``logitwise`` and x + delta* under ``pgd`` (l_inf only)). The
    teacher fields are ignored for ``'ce'``.
    """

    attack: str = "logitwise"
    norm: str = "linf"
    alpha: float = 0.0
    weights: str = "unconstrained"
    weight_decay: float = 0.0
    loss: str = "ce"
    teacher_w1: float = 1.0
    teacher_w2: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha < 1.0):
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.weights == "weight-decay" and self.weight_decay == 0:
            raise ValueError("weights 'weight-decay' needs weight_decay > 0")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("teacher_w1", "teacher_w2"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if self.loss == "kd":
            if self.alpha != 0.0:
                raise ValueError("loss 'kd' takes its targets from the teacher: alpha must be 0 (use either label "
                                 "smoothing or a teacher, not both)")
            if self.attack == "joint":
                raise ValueError("attack 'joint' with loss 'kd' (an adversary maximising the distillation loss, "
                                 "whose target moves with delta) is not computed; attack 'pgd' (hard-label attack, "
                                 "teacher on x + delta, as AT + distillation training does) is")
            if self.attack == "pgd" and self.norm != "linf":
                raise ValueError("attack 'pgd' with loss 'kd' is computed for l_inf only; use attack 'logitwise' "
                                 "for l2")

    @property
    def hard(self) -> bool:
        """Hard labels: cross-entropy against the one-hot label (no smoothing, no teacher)."""
        return self.alpha == 0.0 and self.loss == "ce"

    @property
    def teacher(self) -> tuple[float, float, float]:
        """(teacher_w1, teacher_w2, temperature) of the distillation teacher."""
        return (float(self.teacher_w1), float(self.teacher_w2), float(self.temperature))

    @property
    def convex(self) -> bool:
        """Whether the robust loss is (established to be) jointly convex in (w1, w2).

        Hard labels: log(1 + sum exp(-(affine) + eps * norm(w))) is convex. Logitwise soft targets: a
        non-negative combination of such terms. Joint with alpha > 0: the adversary may *lower* some
        logits (signs -1), which breaks convexity: not established, global search. pgd with soft targets:
        convex inside each closed quadrant only (:attr:`quadrant_convex`).
        """
        return self.hard or self.attack == "logitwise"

    @property
    def quadrant_convex(self) -> bool:
        """Convex inside each closed quadrant of (w1, w2), so projected Newton per quadrant is exact.

        pgd + label smoothing: hard-label loss (convex) plus ``c ((w1 + w2) mu - eps r(w))``, linear in each
        quadrant (concave kinks on the axes). pgd + distillation: targets fixed in each quadrant.
        """
        return self.convex or self.attack == "pgd"

    @property
    def sign_dependent(self) -> bool:
        """pgd distillation: the targets depend on sign(w) (the teacher sees the student's vertex), so the
        objective jumps across the axes; inside each closed quadrant the targets are fixed and it is convex.

        Gradient training never sees the jumps (the teacher's output is a constant target), so it stays in
        the quadrant it starts in; :func:`optimal_weights` and :func:`first_order_w2` use the first quadrant
        (w >= 0), where the claims live. Another quadrant can have a lower objective only through the jump:
        a student with w1 = -0 turns its own adversary's E moves to the teacher's advantage.
        """
        return self.loss == "kd" and self.attack == "pgd"


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
    if form.loss == "kd" or (form.attack in ("joint", "pgd") and form.norm == "l2") or (
            form.attack == "pgd" and not form.hard):
        raise ValueError("the autograd reference has no distillation, joint l2 or pgd with soft targets; use "
                         "robust_loss / loss_derivatives")
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
    """A quadrature value with its error estimate |Q - Q_fine| (the finer value Q_fine is returned; see _verified)."""

    value: np.ndarray
    error: np.ndarray


def _level_array(levels, b: int) -> np.ndarray:
    """Rule levels as an int array (B, 2): one (xi, eta) pair for the batch or one per element."""
    lv = np.asarray(levels, dtype=np.int64).reshape(-1, 2)
    return np.broadcast_to(lv, (b, 2)) if lv.shape[0] == 1 else lv


def _evaluate(world: World, form: Formalisation, w1: np.ndarray, w2: np.ndarray, eps: np.ndarray,
              levels, order: int = 2, max_work: int | None = None, offset: bool = False):
    """Objective (with penalty), gradient, Hessian by the analytic engine at fixed rule levels.

    ``levels``: one (xi, eta) pair for the whole batch, or an array (B, 2) of per-element levels; elements
    that share a pair are evaluated together (chunks of about ``max_work`` node-elements), so every eps
    pays only for the rule its own weights need.
    """
    if form.attack == "pgd" and form.loss == "ce" and form.alpha and form.norm == "linf":
        # the hard-label attack's delta* (all wrong logits up by R = eps r(w), exact for l_inf), label-smoothed CE
        # there: E[LSE(z + R) - sum_c t_c (z + R)_c] = L_hard + (alpha (K-1) / K) ((w1 + w2) mu - R)
        hard = Formalisation(attack="logitwise", norm=form.norm, weights=form.weights, weight_decay=form.weight_decay)
        loss, grad, hess = _evaluate(world, hard, w1, w2, eps, levels, order, max_work, offset)
        c = form.alpha * (world.k - 1) / world.k
        s1, s2 = np.copysign(1.0, w1), np.copysign(1.0, w2)
        loss = loss + c * ((w1 + w2) * world.mu - 2.0 * eps * (s1 * w1 + s2 * w2))
        if grad is not None:
            grad = grad + c * np.stack([world.mu - 2.0 * eps * s1, world.mu - 2.0 * eps * s2], axis=1)
        return loss, grad, hess
    b = w1.size
    lv = _level_array(levels, b)
    max_work = max_work or (1 << 17 if form.hard else 1 << 15)
    loss = np.empty(b)
    grad = np.empty((b, 2)) if order >= 1 else None
    hess = np.empty((b, 2, 2)) if order >= 2 else None
    pairs, inverse = np.unique(lv, axis=0, return_inverse=True)
    one_d = form.loss == "ce" and (form.attack == "logitwise" or (form.hard and form.norm == "linf"))  # K > 4
    for g, pair in enumerate(pairs):
        members = np.flatnonzero(inverse.reshape(-1) == g)
        pair = (int(pair[0]), int(pair[1]))
        chunk = max(8, max_work // _nodes(world, pair, form))
        for lo in range(0, members.size, chunk):
            sl = members[lo:lo + chunk]
            if world.k > 4 and one_d:
                out = _pq.frullani_eval(world.k, world.mu, world.sigma, form.norm, w1[sl], w2[sl], eps[sl], pair,
                                        order, offset, form.alpha)
            elif world.k > 4:
                raise ValueError(f"K = {world.k}: beyond K = 4 only the logitwise attack (any alpha) and hard-label "
                                 "joint l_inf are computed (joint with label smoothing, joint l2 and distillation "
                                 "need the (K-1)-dim rule)")
            elif form.attack in ("joint", "pgd") and form.norm == "l2" and (form.alpha == 0.0 or form.attack == "pgd"):
                # K = 3; pgd + label smoothing: the smoothed loss at the hard-label maximiser
                out = _pq.joint_l2_eval(world.k, world.mu, world.sigma, w1[sl], w2[sl], eps[sl], pair, order, offset,
                                        form.alpha)
            elif form.attack == "joint" and form.norm == "l2":  # label smoothing, K = 3: the ellipse search
                out = _pq.joint_l2_soft_eval(world.k, world.mu, world.sigma, form.alpha, w1[sl], w2[sl], eps[sl], pair,
                                             order, offset)
            elif form.loss == "kd":
                out = _pq.kd_eval(world.k, world.mu, world.sigma, form.norm, form.teacher, w1[sl], w2[sl], eps[sl],
                                  pair, order, offset, "vertex" if form.attack == "pgd" else "logitwise")
            elif form.alpha == 0.0:  # hard labels: joint == logitwise for l_inf (module docstring)
                out = _pq.hard_eval(world.k, world.mu, world.sigma, form.norm, w1[sl], w2[sl], eps[sl], pair, order,
                                   offset)
            elif form.attack == "joint" and _JOINT_SPLIT:  # xi lines split at the adversary's tie points
                out = _with_tie_hessian(lambda a1, a2, o, sl=sl, pair=pair: _pq.joint_split_eval(
                    world.k, world.mu, world.sigma, form.norm, form.alpha, a1, a2, eps[sl], pair, o, offset),
                    w1[sl], w2[sl], order)
            else:
                out = _pq.soft_eval(world.k, world.mu, world.sigma, form.norm, form.attack, form.alpha, w1[sl],
                                    w2[sl], eps[sl], pair, order, offset)
            loss[sl] = out[0]
            if order >= 1:
                grad[sl] = out[1]
            if order >= 2:
                hess[sl] = out[2]
    if form.weights == "weight-decay":
        lam = form.weight_decay
        loss = loss + 0.5 * lam * (w1 * w1 + w2 * w2)
        if grad is not None:
            grad = grad + lam * np.stack([w1, w2], axis=1)
        if hess is not None:
            hess = hess + lam * np.eye(2)[None]
    return loss, grad, hess


_FD_STEP = 1e-4  # relative step of the Hessian's differences (see _with_tie_hessian)


def _with_tie_hessian(evaluate, w1: np.ndarray, w2: np.ndarray, order: int):
    """Objective, gradient and the *whole* Hessian of an objective whose integrand has located ties.

    Where the adversary's best response switches (joint + label smoothing, l_inf: two sign patterns tie),
    the integrand is continuous with a jumping gradient. The analytic gradient (of the active piece) is then
    exact and continuous in w, but the integral of the active piece's Hessian misses the boundary terms the
    moving tie curves contribute: at a joint + label smoothing optimum (paper3, alpha 0.2, eps 0.33) it was a
    third of the true curvature, so Newton crept and stopped with a gradient of 4e-5, 2e-4 from the optimum.
    The Hessian is therefore taken as central differences of the analytic gradient (one-sided at a
    quadrant's edge, where the l_inf radius has its kink), step 1e-4 max(1, |w|): truncation error ~1e-8
    relative, far below what Newton needs; the gradient, and so the optimum, stay exact. This needs the
    rule's value to be smooth in w, i.e. the ties located, as joint_split_eval (l_inf) does. Joint l2 +
    label smoothing locates its ties too (joint_l2_soft_eval) but keeps its envelope Hessian (no tie terms:
    1.4% of a diagonal entry at one tested point, 75% at another): five evaluations per Newton step cost more
    there than the extra steps (a 6-eps curve: 2 min 19 s with differences, 1 min 13 s without, w_error
    <= 1.4e-4 either way; the final step and w_error then carry the envelope Hessian's error).

    ``evaluate(w1, w2, order)`` returns (loss, grad, hess) of one batch at a fixed rule.
    """
    if order < 2:
        return evaluate(w1, w2, order)
    loss, grad, _ = evaluate(w1, w2, 1)
    d = _FD_STEP * np.maximum(1.0, np.maximum(np.abs(w1), np.abs(w2)))
    hess = np.empty((w1.size, 2, 2))
    for j, w in enumerate((w1, w2)):
        side = np.copysign(1.0, w)                     # into the quadrant, also from a signed zero
        edge = np.abs(w) < d
        shift = np.zeros((2, w1.size))
        shift[j] = side * d
        g_in = evaluate(w1 + shift[0], w2 + shift[1], 1)[1]
        g_out = evaluate(w1 - shift[0], w2 - shift[1], 1)[1]
        central = (g_in - g_out) / (2.0 * side * d)[:, None]
        one_sided = (g_in - grad) / (side * d)[:, None]
        hess[:, j, :] = np.where(edge[:, None], one_sided, central)
    return loss, grad, 0.5 * (hess + hess.transpose(0, 2, 1))


def _np_batch(*arrays) -> list[np.ndarray]:
    arrs = [np.atleast_1d(np.asarray(a, dtype=np.float64)).reshape(-1) for a in arrays]
    size = max(a.size for a in arrs)
    return [np.broadcast_to(a, (size,)).copy() if a.size == 1 else a.copy() for a in arrs]


_JOINT_SPLIT = True  # joint + label smoothing: Gauss-Legendre on xi pieces between tie points (else trapezoid)
_NODE_BUDGET = 200_000  # nodes of one rule; beyond this refinement stops and the larger error estimate is kept
# joint l2 + label smoothing: each node runs a 1-d maximisation and each xi line a search for the ties of
# the adversary's maxima (located there since 2026-11-27; in eta the trapezoid still meets the kink at eta = 0,
# so it converges only algebraically): stop refining earlier
_NODE_BUDGET_KINKED = 40_000


def _node_budget(form: Formalisation) -> int:
    kinked = form.attack == "joint" and form.norm == "l2" and form.alpha != 0.0
    return _NODE_BUDGET_KINKED if kinked else _NODE_BUDGET


def _nodes(world: World, levels: tuple[int, int], form: Formalisation | None = None) -> int:
    if world.k > 4:  # the 1-d representation: (E and C lines) x ~100 v nodes (frullani_eval)
        return 100 * sum(int(16 / _pq.h_of(lv + 4)) for lv in levels)
    xi, _, dev, _ = _pq.rule(world.k, *levels)
    # distillation integrates over (e, v) instead of xi alone: one more line of the xi level
    return xi.size * dev.shape[0] * (xi.size if form is not None and form.loss == "kd" else 1)


def _level_weights(form: Formalisation, w1, w2) -> tuple[np.ndarray, np.ndarray]:
    """|weights| that set the rule's step: the student's, or for distillation the larger of the student's and
    the teacher's over T (softmax(teacher / T) has its complex singularities ~pi T / (sigma |a|) off the axis)."""
    w1, w2 = np.abs(np.asarray(w1, dtype=np.float64)), np.abs(np.asarray(w2, dtype=np.float64))
    if form.loss == "kd":
        a1, a2, temp = form.teacher
        w1, w2 = np.maximum(w1, abs(a1) / temp), np.maximum(w2, abs(a2) / temp)
    return w1, w2


def _levels_for(world: World, form: Formalisation, w1, w2) -> tuple[int, int]:
    return _pq.levels_for(world.k, world.sigma, *_level_weights(form, w1, w2))


def _level_arr(world: World, form: Formalisation, w1, w2) -> np.ndarray:
    return _pq.level_array(world.k, world.sigma, *_level_weights(form, w1, w2))


def _verified(world: World, form: Formalisation, w1, w2, eps, levels, tol: float, order: int = 0,
              coarse: tuple | None = None):
    """Value (and gradient) with an error estimate below ``tol`` where the node budget allows.

    The rule Q at ``levels`` (per element or one pair) is paired with the same lattice shifted by h/2 in
    every dimension, Q'. The finer value is the body-centred lattice rule ``(Q + Q') / 2``, whose leading
    aliasing errors cancel, and the estimate is ``|Q - (Q + Q') / 2|`` (~ the error of Q; see
    :func:`synthmodel._popquad.rule`). Elements whose estimate is >= tol are re-done at half the step.
    ``coarse``: (loss, grad) already computed with Q at these weights, if any (saves one pass).
    Returns (value, error, grad or None, levels (B, 2) of the last Q).
    """
    lv = _level_array(levels, w1.size).copy()
    if coarse is None:
        coarse = _evaluate(world, form, w1, w2, eps, lv, order)
    value = coarse[0].copy()
    grad = None if coarse[1] is None or order == 0 else coarse[1].copy()
    error = np.full_like(value, math.inf)
    todo = np.arange(w1.size)
    first = True
    while todo.size:
        if not first:  # halve the step
            finer = lv[todo] + 4
            pairs, inv = np.unique(finer, axis=0, return_inverse=True)
            ok = np.array([f[0] <= _pq.MAX_LEVEL and _nodes(world, (int(f[0]), int(f[1])), form) <= _node_budget(form)
                           for f in pairs])[inv.reshape(-1)]
            todo, finer = todo[ok], finer[ok]  # budget reached elsewhere: the last (larger) estimate is kept
            if not todo.size:
                break
            lv[todo] = finer
            base = _evaluate(world, form, w1[todo], w2[todo], eps[todo], finer, order)
        else:
            base = (value[todo], None if grad is None else grad[todo])
        first = False
        shifted = _evaluate(world, form, w1[todo], w2[todo], eps[todo], lv[todo], order, offset=True)
        error[todo] = 0.5 * np.abs(shifted[0] - base[0])
        value[todo] = 0.5 * (shifted[0] + base[0])
        if grad is not None:
            grad[todo] = 0.5 * (shifted[1] + base[1])
        todo = todo[error[todo] >= tol]
    return value, error, grad, lv


def robust_loss(world: FeatureModel | World | str, form: Formalisation, w1, w2, eps, *,
                tol: float = 1e-8) -> QuadResult:
    """Expected robust loss (plus the weight-decay penalty if any) at weights (w1, w2), radius eps.

    Args:
        world: an all-but-one-K world (or preset name, or :class:`World`).
        form: the formalisation.
        w1, w2, eps: scalars or arrays broadcast to shape (B,).
        tol: refine (halve the step) until the error estimate |Q - Q_fine| is below tol.

    Returns:
        QuadResult with value and error, shape (B,). For joint attacks with label smoothing the integrand
        is only piecewise smooth (a maximum over sign patterns), convergence is algebraic, and the error
        estimate may stay above tol when the node budget is reached: it is reported as it is.
    """
    world = world_from(world)
    w1, w2, eps = _np_batch(w1, w2, eps)
    levels = _levels_for(world, form, w1, w2)
    value, error, _, _ = _verified(world, form, w1, w2, eps, levels, tol)
    return QuadResult(value, error)


def loss_derivatives(world: World, form: Formalisation, w1, w2, eps, level: tuple[int, int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss (B,), gradient (B, 2) and Hessian (B, 2, 2) in (w1, w2), analytic, through the quadrature.

    At w1 = 0 or w2 = 0 the l_inf loss has a kink (|w|): the derivative returned there is the one of the
    side the sign of the value given selects (+0.0 -> right derivative). ``level``: the rule's
    quarter-octave levels (xi, eta); default from the weights (error ~1e-11 for hard labels).
    """
    world = world_from(world)
    w1, w2, eps = _np_batch(w1, w2, eps)
    level = level or _levels_for(world, form, w1, w2)
    return _evaluate(world, form, w1, w2, eps, level, 2)


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
                     signs: tuple[float, float], levels, iters: int = 80, xtol: float = 1e-11,
                     step_tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Minimise over the closed quadrant sign(w) = signs, vectorised over eps, by projected Newton.

    Inside a quadrant the objective is smooth (the |w| of the l_inf radius is linear there). Active set:
    a coordinate at 0 whose derivative points out of the quadrant is held at 0. Backtracking keeps the
    loss non-increasing; a non-positive-definite Hessian is shifted. Converged elements leave the batch.
    Returns w (B, 2), objective (B,), gradient (B, 2) and Hessian (B, 2, 2) at w, all at the fixed rule.
    """
    sign = np.array(signs)
    lv = _level_array(levels, len(eps))
    u = np.maximum(start * sign, 0.0)
    active = np.ones(len(eps), dtype=bool)

    def evaluate(uu, idx):
        w = uu * sign
        w1 = np.where(w[:, 0] == 0, 0.0 * sign[0], w[:, 0])  # signed zeros choose the quadrant's side
        w2 = np.where(w[:, 1] == 0, 0.0 * sign[1], w[:, 1])
        return _evaluate(world, form, w1, w2, eps[idx], lv[idx], 2)

    loss, grad, hess = evaluate(u, np.arange(len(u)))
    for _ in range(iters):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        g = grad[idx] * sign
        hm = hess[idx] * sign[:, None] * sign[None, :]
        uu = u[idx]
        free = ~((uu <= 0) & (g > 0))  # coordinate pinned at the quadrant's edge
        mask = free[:, :, None] & free[:, None, :]
        hb = np.where(mask, hm, 0.0) + np.where(~free, 1.0, 0.0)[:, :, None] * np.eye(2)
        lam = np.linalg.eigvalsh(hb).min(axis=1)
        shift = np.where(lam <= 1e-12, 1e-12 - lam + 1e-6 * np.abs(hb).max(axis=(1, 2)), 0.0)
        hb = hb + shift[:, None, None] * np.eye(2)
        step = -np.linalg.solve(hb, (np.where(free, g, 0.0))[..., None])[..., 0]
        # quadratic convergence: a proposed step below step_tol (Hessian positive definite) means the iterate
        # is within ~step_tol of this rule's optimum; it stops without evaluating the step (the caller's
        # final Newton step with the finer rule's gradient takes it, leaving an error ~ step_tol^2)
        tiny = ((np.abs(np.maximum(uu + step, 0.0) - uu).max(axis=1) <= step_tol * np.maximum(1.0, np.abs(uu).max(1)))
                & (shift == 0))
        if tiny.any():
            active[idx[tiny]] = False
            keep = ~tiny
            idx, g, hb, uu, step = idx[keep], g[keep], hb[keep], uu[keep], step[keep]
            if idx.size == 0:
                break
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
        # no measurable decrease (a kink of a piecewise-smooth objective, or rounding) counts as converged
        progress = new_loss < loss[idx] - 1e-15 * np.abs(loss[idx])
        u[idx] = np.where(improved[:, None], new_u, uu)
        loss[idx] = np.where(improved, new_loss, loss[idx])
        grad[idx] = np.where(improved[:, None], new_grad, grad[idx])
        hess[idx] = np.where(improved[:, None, None], new_hess, hess[idx])
        active[idx] = (moved > xtol * np.maximum(1.0, np.abs(uu).max(axis=1))) & improved & progress
    return u * sign, loss, grad, hess


def _solve_quadrant(world: World, form: Formalisation, eps: np.ndarray, start: np.ndarray,
                    signs: tuple[float, float]):
    """Newton at per-element rules chosen from the weights; re-run (warm) where the solution needs finer ones."""
    levels = _level_arr(world, form, start[:, 0], start[:, 1])
    for _ in range(6):
        w, loss, grad, hess = _newton_quadrant(world, form, eps, start, signs, levels)
        need = _level_arr(world, form, w[:, 0], w[:, 1])
        if np.all(need <= levels):
            break
        levels, start = np.maximum(need, levels), w
    return w, loss, grad, hess, levels


def _curve_scale(form: Formalisation, k: int) -> float:
    return 1.0 if form.weights != "class-l2-norm" else 1.0 / math.sqrt(k - 1)


def _curve(form: Formalisation, k: int):
    """Feasible curve of a constrained formalisation: t -> (w, dw/dt, d2w/dt2) as (B, 2) arrays, t range."""
    if form.weights == "l1-share":
        def curve(t):
            one = np.ones_like(t)
            return np.stack([1.0 - t, t], 1), np.stack([-one, one], 1), np.zeros((t.size, 2))
        return curve, (0.0, 1.0)
    if form.weights not in ("l2-norm", "class-l2-norm"):
        raise ValueError(f"weights {form.weights!r} is not a fixed-norm constraint")
    c = _curve_scale(form, k)

    def curve(t):
        cos, sin = np.cos(t), np.sin(t)  # sin(+0) = +0: w2 = +0 takes the right derivative at t = 0
        return np.stack([cos, c * sin], 1), np.stack([-sin, c * cos], 1), np.stack([-cos, -c * sin], 1)
    return curve, (-math.pi, math.pi)


def _curve_derivatives(world: World, form: Formalisation, t: np.ndarray, eps: np.ndarray,
                       levels: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objective, d/dt and d2/dt2 along the feasible curve (chain rule on the analytic gradient/Hessian)."""
    w, dw, d2w = _curve(form, world.k)[0](t)
    loss, grad, hess = _evaluate(world, form, w[:, 0], w[:, 1], eps, levels, 2)
    d1 = (grad * dw).sum(1)
    d2 = np.einsum("ba,bac,bc->b", dw, hess, dw) + (grad * d2w).sum(1)
    return loss, d1, d2


def _optimise_curve(world: World, form: Formalisation, eps: np.ndarray, grid: int = 48):
    """Global search on a 1-d feasible set: a grid, then safeguarded Newton inside the best cell."""
    curve, (lo, hi) = _curve(form, world.k)
    levels = _levels_for(world, form, np.ones(1), np.ones(1))  # |w1|, |w2| <= 1 on every curve
    b = len(eps)
    ts = np.linspace(lo, hi, grid + 1)
    tt = np.repeat(ts[None, :], b, axis=0).ravel()
    w = curve(tt)[0]
    values = _evaluate(world, form, w[:, 0], w[:, 1], np.repeat(eps, grid + 1), levels, 0)[0].reshape(b, grid + 1)
    best = values.argmin(axis=1)
    left = ts[np.maximum(best - 1, 0)]
    right = ts[np.minimum(best + 1, grid)]
    t = ts[best].copy()
    for _ in range(80):
        _, d1, d2 = _curve_derivatives(world, form, t, eps, levels)
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
    loss_c = np.stack([_evaluate(world, form, *curve(cands[:, j])[0].T, eps, levels, 0)[0]
                       for j in range(cands.shape[1])], axis=1)
    pick = loss_c.argmin(axis=1)
    t = cands[np.arange(b), pick]
    w = curve(t)[0]
    return w[:, 0].copy(), w[:, 1].copy(), levels


def _standard_start(world: World, b: int) -> np.ndarray:
    return np.tile([2.0 / max(world.sigma, 1e-3) ** 0.5, 0.5], (b, 1))


_CONTINUATION = 32  # batches larger than this are first solved on a subset of eps, then warm-started


def _optimise_free(world: World, form: Formalisation, eps: np.ndarray, start: np.ndarray | None):
    b = eps.size
    if start is None and b > _CONTINUATION:
        # continuation along eps: solve ~17 evenly spread eps cold, interpolate (PCHIP) as warm starts
        from scipy.interpolate import PchipInterpolator
        order = np.argsort(eps)
        sub = np.unique(np.linspace(0, b - 1, 17).round().astype(int))
        sub_eps = eps[order][sub]
        coarse = _optimise_free(world, form, sub_eps, None)
        keep = np.concatenate([[True], np.diff(sub_eps) > 0])
        if keep.sum() >= 2:
            start = np.stack([PchipInterpolator(sub_eps[keep], coarse[0][keep, j])(eps) for j in range(2)], 1)
    start = _standard_start(world, b) if start is None else np.asarray(start, dtype=np.float64).reshape(b, 2)
    quadrants = [(1.0, 1.0)] if form.hard or form.sign_dependent else list(product((1.0, -1.0), repeat=2))
    starts = [np.abs(start)] if form.quadrant_convex else [np.abs(start), np.abs(start) * [1.0, 0.1],
                                                   np.abs(start) * [0.1, 1.0]]
    best = None
    for signs in quadrants:
        for s in starts:
            w, loss, grad, hess, levels = _solve_quadrant(world, form, eps, s * np.array(signs), signs)
            if best is None:
                best = [w, loss, grad, hess, levels]
            else:
                better = loss < best[1]
                for i, new in enumerate((w, loss, grad, hess, levels)):
                    best[i] = np.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, best[i])
    return best


def optimal_weights(world: FeatureModel | World | str, form: Formalisation, eps, *, start: np.ndarray | None = None,
                    tol: float = 1e-8) -> dict[str, np.ndarray | str | bool]:
    """Global minimiser of the robust objective over the formalisation's feasible set, for each eps.

    Method, by case (reported as ``method``):

    * unconstrained / weight decay, convex (``form.convex``): projected Newton (analytic gradient and
      Hessian) in each closed quadrant (the objective is smooth inside each); each quadrant minimum is
      global there, so the best is the global minimum. With hard labels only the first quadrant is
      searched: the loss is decreasing in every margin and replacing (w1, w2) by (|w1|, |w2|) makes the
      margins stochastically larger (reflect E and C about mu), so an optimum with w >= 0 exists. Joint
      distillation (``form.sign_dependent``): the first quadrant only, convex there. Large
      batches are first solved on 17 spread eps and warm-started by interpolation (continuation).
    * unconstrained / weight decay, not established convex: the same from three starts per quadrant
      (multi-start global search, not a proof).
    * fixed norm / share: 1-d global search (grid of 49 points, then Newton/bisection in the best cell).

    The rule is fixed per call, chosen from the largest sigma |w| of the batch (and re-chosen, warm, if
    the solution needs a finer one); every result is then verified with the shifted rule (``_verified``).

    Args:
        eps: radii, shape (B,).
        start: optional (B, 2) warm start for the 2-d cases.
        tol: target of the quadrature error estimate of the objective.

    Returns:
        dict with w1, w2, objective (B,) (at the verified rule), quad_error (B,) (|Q - Q_fine| of the
        objective), w_error (B,) (max |H^-1 g| over free coordinates, g the gradient at the verified rule:
        how far the weights may be from the optimum of the more exact objective), method (str), convex (bool).
    """
    world = world_from(world)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64)).reshape(-1)
    if np.any(~np.isfinite(eps)) or np.any(eps < 0):
        raise ValueError("eps must be finite and >= 0")
    if form.weights in ("l1-share", "l2-norm", "class-l2-norm"):
        w1, w2, levels = _optimise_curve(world, form, eps)
        value, error, _, _ = _verified(world, form, w1, w2, eps, levels, tol)
        # Newton residual along the curve at the verified rule, in units of the curve parameter t
        t = w2 if form.weights == "l1-share" else np.arctan2(w2 / _curve_scale(form, world.k), w1)
        _, d1, d2 = _curve_derivatives(world, form, t, eps, (levels[0] + 4, levels[1] + 4))
        pinned = (form.weights == "l1-share") & (((t <= 0) & (d1 > 0)) | ((t >= 1) & (d1 < 0)))
        w_error = np.where(pinned, 0.0, np.abs(d1) / np.where(d2 > 0, d2, np.nan))
        return {"w1": w1, "w2": w2, "objective": value, "quad_error": error, "w_error": w_error,
                "method": "1-d global search", "convex": form.convex}
    w, loss, grad, hess, levels = _optimise_free(world, form, eps, start)
    value, error, grad_fine, _ = _verified(world, form, w[:, 0], w[:, 1], eps, levels, tol, order=1,
                                           coarse=(loss, grad))
    free = ~((w == 0) & (grad_fine * np.copysign(1.0, w) > 0))
    hb = np.where(free[:, :, None] & free[:, None, :], hess, 0.0) + np.where(~free, 1.0, 0.0)[:, :, None] * np.eye(2)
    # a singular Hessian (a degenerate optimum, e.g. w -> 0 at eps = mu/2 where no feature survives the
    # attack) gets no correction; its w_error is then the gradient norm over the Hessian's largest eigenvalue
    lam = np.linalg.eigvalsh(hb)
    regular = lam[:, 0] > 1e-10 * np.maximum(lam[:, 1], 1e-300)
    hb = np.where(regular[:, None, None], hb, np.eye(2)[None])
    correction = -np.linalg.solve(hb, np.where(free, grad_fine, 0.0)[..., None])[..., 0]
    correction = np.where(regular[:, None], correction, 0.0)
    # w_error: the distance between the optimum at the working rule and at the verified (finer) one, i.e. the
    # size of the final Newton step taken with the finer rule's gradient; the returned (corrected) weights
    # are closer than that (the step's own error is second order in it)
    w_error = np.where(regular, np.abs(correction).max(axis=1),
                       np.abs(np.where(free, grad_fine, 0.0)).max(axis=1) / np.maximum(lam[:, 1], 1e-300))
    same_side = np.sign(w + correction) * np.sign(w) >= 0
    w = np.where(same_side & free, w + correction, w)
    method = ("projected Newton per quadrant (convex)" if form.convex
              else "projected Newton in the first quadrant (convex there; targets depend on sign(w))"
              if form.sign_dependent else "projected Newton per quadrant (convex in each quadrant)"
              if form.quadrant_convex else "multi-start projected Newton (global search)")
    return {"w1": w[:, 0] + 0.0, "w2": w[:, 1] + 0.0, "objective": value, "quad_error": error, "w_error": w_error,
            "method": method, "convex": form.convex}


# -- first-order condition at w2 = 0 and thresholds --------------------------------------------------
def first_order_w2(world: FeatureModel | World | str, form: Formalisation, eps) -> tuple[np.ndarray, np.ndarray]:
    """Right derivative of the objective in the w2 direction at the best point with w2 = 0.

    Unconstrained / weight decay: ``dL/dw2 (w1*, +0)`` with w1* the best w1 on the line w2 = 0. Fixed
    norm / share: the derivative along the feasible curve at its point with w2 = +0, w1 > 0. Negative
    means that raising w2 from 0 lowers the objective (so the optimum has w2 > 0 when the objective is
    convex). Returns (derivative, w1 at w2 = 0), shape (B,).
    """
    world = world_from(world)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64)).reshape(-1)
    if form.weights in ("l1-share", "l2-norm", "class-l2-norm"):
        levels = _levels_for(world, form, np.ones(1), np.zeros(1))
        _, d1, _ = _curve_derivatives(world, form, np.zeros_like(eps), eps, levels)
        return d1, np.ones_like(eps)
    # best w1 on the line w2 = 0 (1-d, convex when the objective is): Newton on w1 >= 0 and w1 <= 0
    zero = np.zeros_like(eps)
    best_w1, best_loss = None, None
    for s1 in (1.0, -1.0) if not (form.hard or form.sign_dependent) else (1.0,):
        w1 = np.full(eps.size, s1 * 1.0)
        active = np.ones(eps.size, dtype=bool)
        for _ in range(100):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            levels = _levels_for(world, form, w1[idx], zero[idx])
            _, g, h = _evaluate(world, form, w1[idx], zero[idx], eps[idx], levels, 2)
            pinned = (w1[idx] == 0) & (g[:, 0] * s1 > 0)  # at the half-line's end, derivative pointing out
            step = -g[:, 0] / np.maximum(h[:, 0, 0], 1e-12)
            cap = np.maximum(1.0, np.abs(w1[idx]))  # trust region: a flat direction must not throw w1 away
            new = w1[idx] + np.clip(step, -cap, cap)
            new = np.where(new * s1 <= 0, 0.0 * s1, new)  # projected Newton (signed zero keeps the side)
            new = np.where(pinned, w1[idx], new)
            active[idx] = ~pinned & (np.abs(new - w1[idx]) > 1e-12 * np.maximum(1.0, np.abs(w1[idx])))
            w1[idx] = new
        levels = _levels_for(world, form, w1, zero)
        loss = _evaluate(world, form, w1, zero, eps, levels, 0)[0]
        if best_w1 is None:
            best_w1, best_loss = w1, loss
        else:
            best_w1 = np.where(loss < best_loss, w1, best_w1)
            best_loss = np.minimum(loss, best_loss)
    w1_signed = np.where(best_w1 == 0, 0.0, best_w1)
    levels = _levels_for(world, form, w1_signed, zero)
    _, g, _ = _evaluate(world, form, w1_signed, zero, eps, levels, 1)
    return g[:, 1], best_w1


@dataclass(frozen=True)
class Threshold:
    """eps where the first-order condition at w2 = 0 changes sign in (0, mu/2), or None, with evidence."""

    eps: float | None
    grid: np.ndarray
    derivative: np.ndarray
    method: str = "bracketing (brentq) on the first-order condition"

    def to_dict(self) -> dict:
        return {"eps": self.eps, "grid": self.grid.tolist(), "derivative": self.derivative.tolist(),
                "method": self.method}


def closed_form_sign(world: World, form: Formalisation, eps: np.ndarray) -> np.ndarray | None:
    """Sign of the first-order condition at w2 = 0 where the derivation gives it, else None.

    Hard labels (alpha = 0): at w2 = 0 every wrong logit is equal, so the per-sample derivative in w2 is
    ``sum_k dL/dm_k (C_k - eps dr/dw2)`` with the same dL/dm_k < 0 for every k, a function of E only;
    averaging C_k -> mu (independent of E) gives ``(mu - eps dr/dw2) E[sum_k dL/dm_k]``, whose sign is
    ``sign(eps dr/dw2 - mu)``: ``sign(2 eps - mu)`` for l_inf (dr/dw2 = 2 at w2 = +0) and -1 for l2
    (dr/dw2 = 0; also for joint l2: by the envelope theorem the derivative is taken at the maximiser, where
    the shift is eps |w| f with d|w|/dw2 = 0 at w2 = 0).
    This is the derivative in w2 for unconstrained weights, for weight decay (the penalty's
    derivative is 0 at w2 = 0) and along the l2 / class-l2 circles (tangent (0, c > 0) at w = (1, 0)); not
    for l1-share (tangent (-1, 1) mixes in dL/dw1). proofs_check/README.md step 4 derives it with sympy.
    """
    if not form.hard or form.weights == "l1-share":
        return None
    if form.norm == "linf":
        return np.sign(2.0 * eps - world.mu)
    return -np.ones_like(eps)


@lru_cache(maxsize=256)
def _threshold(world: World, form: Formalisation, n_grid: int, xtol: float) -> Threshold:
    from scipy.optimize import brentq

    half = world.mu / 2
    grid = np.linspace(half / n_grid, half * (1 - 1e-6), n_grid)
    deriv, _ = first_order_w2(world, form, grid)
    grid.setflags(write=False)
    deriv.setflags(write=False)
    sign = closed_form_sign(world, form, grid)
    if sign is not None:
        # the sign is known in closed form; it changes only at mu/2 (l_inf) or never (l2): no root inside
        return Threshold(None, grid, deriv, "closed form: sign(eps dr/dw2 - mu) (hard labels); grid values numeric")
    crossings = np.flatnonzero((deriv[:-1] < 0) & (deriv[1:] >= 0))
    if crossings.size == 0:
        return Threshold(None, grid, deriv)
    i = crossings[-1]
    root = brentq(lambda e: float(first_order_w2(world, form, [e])[0][0]), grid[i], grid[i + 1], xtol=xtol)
    return Threshold(float(root), grid, deriv)


def threshold(world: FeatureModel | World | str, form: Formalisation, *, n_grid: int = 24, xtol: float = 1e-7
              ) -> Threshold:
    """eps0 (alpha = 0) or eps1 (alpha > 0): the largest eps in (0, mu/2) where the right derivative in w2
    at w2 = 0 goes from negative (w2 > 0 pays) to non-negative.

    Where the sign of that derivative is known in closed form (:func:`closed_form_sign`) it decides;
    otherwise a grid of ``n_grid`` eps brackets the last sign change and brentq refines it to ``xtol``.
    None when there is no change in (0, mu/2) (the evidence: grid and derivative values, always computed
    numerically). Cached per (world, formalisation); the returned arrays are read-only.
    """
    return _threshold(world_from(world), form, int(n_grid), float(xtol))



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
    "loss": LOSSES,                            # 'kd': distillation from the tied teacher below (alpha = 0)
    "teacher_w1": ("float", -math.inf, math.inf),
    "teacher_w2": ("float", -math.inf, math.inf),
    "temperature": ("float", 0.0, math.inf),  # open interval (0, inf)
}
# what theory_point assumes for a key a grid leaves out
THEORY_DEFAULTS = {"alpha": 0.0, "attack": "logitwise", "norm": "linf", "weights": "unconstrained",
                   "weight_decay": 0.0, "loss": "ce", "teacher_w1": 1.0, "teacher_w2": 0.0, "temperature": 1.0}
_DEFAULTS = THEORY_DEFAULTS


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
            if key in ("mu", "sigma", "temperature") and value <= lo:
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
    p = _check_params(params)
    Formalisation(**{key: p[key] for key in ("attack", "norm", "alpha", "weights", "weight_decay", "loss",
                                             "teacher_w1", "teacher_w2", "temperature")})
    if p["attack"] in ("joint", "pgd") and p["norm"] == "l2" and p["preset"] not in ("paper3", "all-but-one-3"):
        raise ValueError(f"attack {p['attack']!r} with norm 'l2' is computed for K = 3 only, got preset "
                         f"{p['preset']!r}")
    k = 3 if p["preset"] == "paper3" else p["preset"].removeprefix("all-but-one-")
    if str(k).isdigit() and int(k) > 4 and (p["loss"] != "ce" or (p["attack"] == "joint" and p["alpha"] != 0)):
        raise ValueError(f"preset {p['preset']}: beyond K = 4 only loss ce with the logitwise attack (any alpha) "
                         "or hard-label joint l_inf is computed")


def theory_point(params: dict) -> dict:
    """Population theory at one point of a sweep grid.

    Args:
        params: flat dict; keys of :data:`THEORY_PARAMS` (preset, mu, sigma, eps required; alpha,
            attack, norm, weights, weight_decay default to 0, logitwise, linf, unconstrained, 0; loss,
            teacher_w1, teacher_w2, temperature to 'ce', 1, 0, 1 (they matter only for loss='kd').

    Returns:
        flat dict of floats / None: w1, w2, ratio (w2/w1), robust_loss (objective without penalty),
        robust_acc, cas (clean inputs), cas_adv (l_inf adversarial inputs), eps0 (threshold with alpha = 0),
        eps1 (threshold of the given soft-target objective, label smoothing or distillation; None for hard
        labels), quad_error (largest error estimate),
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
    teacher = dict(loss=p["loss"], teacher_w1=float(p["teacher_w1"]), teacher_w2=float(p["teacher_w2"]),
                   temperature=float(p["temperature"]))
    form = Formalisation(attack=p["attack"], norm=p["norm"], alpha=float(p["alpha"]), weights=p["weights"],
                         weight_decay=float(p["weight_decay"]), **teacher)
    eps = float(p["eps"])
    opt = optimal_weights(world, form, [eps])
    w1, w2 = float(opt["w1"][0]), float(opt["w2"][0])
    plain = Formalisation(attack=form.attack, norm=form.norm, alpha=form.alpha, **teacher)  # no penalty
    loss = robust_loss(world, plain, w1, w2, eps)
    acc = robust_accuracy(world, w1, w2, eps, form.norm)
    hard = Formalisation(attack=form.attack, norm=form.norm, alpha=0.0, weights=form.weights,
                         weight_decay=form.weight_decay)
    eps0 = threshold(world, hard).eps
    eps1 = threshold(world, form).eps if not form.hard else None
    return {
        "w1": w1, "w2": w2, "ratio": w2 / w1 if w1 != 0 else None,
        "robust_loss": float(loss.value[0]), "robust_acc": float(acc.value[0]),
        "cas": population_cas(world, w1, w2), "cas_adv": population_cas(world, w1, w2, eps, form.norm),
        "eps0": eps0, "eps1": eps1, "quad_error": float(max(loss.error[0], acc.error[0])),
        "convex": 1.0 if form.convex else 0.0,
    }
