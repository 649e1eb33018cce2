"""The world and the formalisation: what the population quantities depend on (docs/DEFINITIONS.md).

Closed vocabularies live here and nowhere else: :data:`FORMALISATION_ATTACKS`, :data:`NORMS`, :data:`WEIGHTS`,
:data:`LOSSES`, :data:`OBJECTIVES`, :data:`ADVERSARIES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec import FeatureModel, all_but_one_incidence, make_preset

__all__ = ["FORMALISATION_ATTACKS", "NORMS", "WEIGHTS", "LOSSES", "OBJECTIVES", "ADVERSARIES", "World", "world_from",
           "WORLD_SCALE", "MAX_EPS", "scale_problem", "check_eps",
           "Formalisation"]

# attack formalisations (names used by the engine, proofs_check, the sweep's theory points and the figures)
FORMALISATION_ATTACKS = ("joint", "logitwise", "pgd", "scorewise", "scorewise-termwise")
LOSSES = ("ce", "kd")  # cross-entropy (with label smoothing alpha) or distillation from a tied teacher
NORMS = ("linf", "l2")
# what is minimised: the (soft-target) cross-entropy of ``loss``, or the robust 0-1 error
OBJECTIVES = ("cross-entropy", "zero-one")
# how much a margin z_y - z_k loses under the attack: 'pairwise' eps ||W_y - W_k||_* (one input for the pair:
# joint, logitwise, pgd), 'scorewise' eps (||W_y||_* + ||W_k||_*) (each score attacked on its own)
ADVERSARIES = ("pairwise", "scorewise")
# weights constraint -> meaning (documented in proofs_check/README.md)
WEIGHTS = {
    "unconstrained": "(w1, w2) in R^2",
    "weight-decay": "(w1, w2) in R^2, objective + weight_decay/2 (w1^2 + w2^2) (SGD weight decay)",
    "l1-share": "w1 + w2 = 1, w1, w2 >= 0 (shares of one budget)",
    "l2-norm": "w1^2 + w2^2 = 1",
    "class-l2-norm": "w1^2 + (K-1) w2^2 = 1 (the l2 norm of one class's weight row)",
}


# The range the engine is accurate in. The problem is scale-invariant (mu, sigma, eps -> c mu, c sigma, c eps
# gives the optimal weights w / c), but the optimiser starts from unit-scale weights and stops on absolute
# tolerances, and the quadrature picks its levels from sigma |w|: measured on paper3 (logitwise l_inf,
# eps = 0.3 mu), the optimum at scales c in [1e-4, 1e3] is the unit world's to 1e-13, at c = 1e-6 it is off by
# 3e-4 (silently), at c = 1e4 the quadrature refuses the start. Rescale a world outside the range.
WORLD_SCALE = (1e-3, 1e3)
# The Newton step's Hessian squares the radius (the margin's derivative d radius / dw - mu, outer products):
# float64 overflows at sqrt(1.8e308) = 1.3e154, where the optimum turned into finite nonsense (measured: the
# exact collapse w = 0 up to eps = 1e153, w = (2.83, 0.5) at 1e200). Every eps >= mu is a collapse for
# l_inf already; the limit leaves room for K, mu and the weights in those products.
MAX_EPS = 1e100


def scale_problem(mu: float, sigma: float) -> str | None:
    """Why (mu, sigma) is outside :data:`WORLD_SCALE`, or None."""
    low, high = WORLD_SCALE
    for name, value in (("mu", mu), ("sigma", sigma)):
        if not (math.isfinite(value) and low <= value <= high):
            return (f"{name}={value:g} is outside [{low:g}, {high:g}], the world scales the population engine is "
                    "accurate for (the problem is scale-invariant: divide mu, sigma and eps by a common factor "
                    "c and multiply the optimal weights by c)")
    return None


def check_eps(eps) -> None:
    """ValueError unless every radius is finite and in [0, :data:`MAX_EPS`]."""
    eps = np.asarray(eps, dtype=np.float64)
    if eps.size and not (np.all(np.isfinite(eps)) and eps.min() >= 0 and eps.max() <= MAX_EPS):
        bad = eps[~(np.isfinite(eps) & (eps >= 0) & (eps <= MAX_EPS))].reshape(-1)[0]
        raise ValueError(f"eps={bad:g} is outside [0, {MAX_EPS:g}], the radii the population engine computes "
                         "(its Newton step squares eps, float64 overflows at 1.3e154; every eps >= mu is "
                         "already a collapse under l_inf)")


@dataclass(frozen=True)
class World:
    """The parameters of an all-but-one-K world that the population quantities depend on (mu and sigma in
    :data:`WORLD_SCALE`)."""

    k: int
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        problem = scale_problem(self.mu, self.sigma)
        if problem:
            raise ValueError(problem)


def world_from(world: FeatureModel | str | World, mu: float | None = None, sigma: float | None = None) -> World:
    """Check that a world is all-but-one-K with scalar mu > 0, sigma > 0 and balanced classes.

    Raises:
        ValueError: another incidence structure, per-feature mu/sigma, unbalanced priors, mu <= 0 or sigma <= 0.
    """
    if isinstance(world, World):
        return world
    if isinstance(world, str):
        for name, value in (("mu", mu), ("sigma", sigma)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        problem = scale_problem(1.0 if mu is None else mu, 0.5 if sigma is None else sigma)
        if problem:
            raise ValueError(problem)
        world = make_preset(world, mu=1.0 if mu is None else mu, sigma=0.5 if sigma is None else sigma)
    k = world.n_classes
    if world.incidence.shape != (k, 2 * k) or not np.array_equal(world.incidence, all_but_one_incidence(k)):
        raise ValueError(f"population engine supports all-but-one-K worlds (paper3 included), not {world.name}")
    if np.ptp(world.feature_mu) > 0 or np.ptp(world.feature_sigma) > 0:
        raise ValueError("population engine needs the same mu and sigma for every feature")
    if np.ptp(world.class_priors) > 1e-12:
        raise ValueError("population engine needs balanced classes")
    mu_, sigma_ = float(world.feature_mu[0]), float(world.feature_sigma[0])
    if not (mu_ > 0 and sigma_ > 0):
        raise ValueError(f"population engine needs mu > 0 and sigma > 0, got mu={mu_}, sigma={sigma_}")
    return World(k=k, mu=mu_, sigma=sigma_)


@dataclass(frozen=True)
class Formalisation:
    """One choice of attack model, norm, targets, objective and weight constraint (docs/DEFINITIONS.md).

    ``attack``:

    * ``'joint'``: one delta maximising the training objective itself;
    * ``'logitwise'``: each target's CE term against its own pairwise worst case (each wrong logit raised by
      ``eps ||W_y - W_k||_*``);
    * ``'pgd'``: one delta maximising the *hard-label* CE, the objective evaluated there (what AT with label
      smoothing or distillation trains on; == joint for hard labels);
    * ``'scorewise'``: every class score attacked on its own (true score lowered by ``eps ||W_y||_*``, each wrong
      one raised by ``eps ||W_k||_*``; no single input realises it), the scores set by the hard label and the
      soft loss evaluated there;
    * ``'scorewise-termwise'``: as scorewise, but each target's CE term gets its own per-score worst case.

    ``loss``: ``'ce'`` (cross-entropy, label-smoothed by ``alpha``) or ``'kd'`` (distillation: targets
    ``softmax(teacher_logits / temperature)`` of the tied teacher (teacher_w1, teacher_w2); needs alpha = 0; the
    teacher sees the clean input under ``logitwise`` and the scorewise attacks and x + delta* under ``pgd``
    (l_inf only)). The teacher fields are ignored for ``'ce'``.

    ``objective``: ``'cross-entropy'`` (the loss above) or ``'zero-one'`` (the robust 0-1 error, probability of
    misclassification under the worst attack; hard labels, attacks ``joint`` (== logitwise == pgd for the 0-1
    error) and ``scorewise``; scale-free, so weight decay has no minimiser and is refused).
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
    objective: str = "cross-entropy"

    def __post_init__(self) -> None:
        if self.attack not in FORMALISATION_ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(FORMALISATION_ATTACKS)}, got {self.attack!r}")
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
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
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
        if self.objective == "zero-one":
            if self.attack not in ("joint", "scorewise"):
                raise ValueError(f"objective 'zero-one' takes attack 'joint' (== logitwise == pgd for the 0-1 error: "
                                 f"the same worst margins) or 'scorewise', got {self.attack!r}")
            if self.alpha != 0.0 or self.loss != "ce":
                raise ValueError("objective 'zero-one' has no soft targets: alpha must be 0 and loss 'ce'")
            if self.weights == "weight-decay":
                raise ValueError("objective 'zero-one' is scale-free: weight decay has no minimiser (w -> 0); use "
                                 "weights unconstrained, l1-share, l2-norm or class-l2-norm (all give the same w2/w1)")

    @property
    def hard(self) -> bool:
        """Hard labels: cross-entropy against the one-hot label (no smoothing, no teacher)."""
        return self.alpha == 0.0 and self.loss == "ce"

    @property
    def zero_one(self) -> bool:
        """The robust 0-1 error is minimised (not a cross-entropy)."""
        return self.objective == "zero-one"

    @property
    def adversary(self) -> str:
        """'pairwise' (a margin loses eps ||W_y - W_k||_*) or 'scorewise' (eps (||W_y||_* + ||W_k||_*))."""
        return "scorewise" if self.attack.startswith("scorewise") else "pairwise"

    @property
    def termwise(self) -> bool:
        """Each target's CE term gets its own worst case (logitwise, scorewise-termwise)."""
        return self.attack in ("logitwise", "scorewise-termwise")

    @property
    def convex(self) -> bool:
        """Whether the robust loss is (established to be) jointly convex in (w1, w2).

        Hard labels: log(1 + sum exp(-(affine) + R(w))) with R a norm is convex. Termwise soft targets
        (logitwise, scorewise-termwise): a non-negative combination of such terms. Joint with alpha > 0: the
        adversary may *lower* some logits (signs -1), which breaks convexity: not established, global search.
        pgd / scorewise with soft targets: convex inside each closed quadrant at most (:attr:`quadrant_convex`).
        The 0-1 error is not convex (a certified 1-d search instead).
        """
        return not self.zero_one and (self.hard or self.termwise)

    @property
    def quadrant_convex(self) -> bool:
        """Convex inside each closed quadrant of (w1, w2), so projected Newton per quadrant is exact.

        pgd l_inf and scorewise l_inf + label smoothing: hard-label loss (convex) plus ``c ((w1 + w2) mu - R(w))``
        with R linear in each quadrant (concave kinks on the axes). pgd + distillation: targets fixed in each
        quadrant. pgd l2 + label smoothing keeps its historical treatment (per quadrant). scorewise l2 + label
        smoothing subtracts a multiple of a norm: not established, multi-start.
        """
        if self.zero_one:
            return False
        if self.attack == "scorewise":
            return self.convex or self.norm == "linf"
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

    @property
    def teacher(self) -> tuple[float, float, float]:
        """(teacher_w1, teacher_w2, temperature) of the distillation teacher."""
        return (float(self.teacher_w1), float(self.teacher_w2), float(self.temperature))

    def replace(self, **changes) -> Formalisation:
        """A copy with some fields changed (checked again)."""
        from dataclasses import replace

        return replace(self, **changes)
