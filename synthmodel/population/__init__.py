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

**Quadrature** (:mod:`synthmodel.population.quadrature`; which routine computes what:
:mod:`synthmodel.population.registry`). Each dimension uses the trapezoidal rule on |t| <= 8 with
Gaussian weights. The integrands are analytic in a strip whose half-width is ~ pi / (scale of that
dimension), so the rule converges geometrically; for wide integrands (large |w| sigma) it needs far fewer
nodes than Gauss-Hermite. Every eps gets the step its own weights need (bound ``exp(-21)`` from the strip
width and the Gaussian's growth off the axis). Every value comes with an error estimate |Q - Q_fine|,
Q_fine = (Q + Q') / 2 the body-centred lattice rule (Q' = Q shifted by h/2 in every dimension; the two see
the leading aliasing error with opposite signs); where the estimate is >= ``tol`` (default 1e-8) h is
halved and the pair recomputed; the finer value is returned.

**Attacks** (docs/DEFINITIONS.md, "Formalisations"), the robust margin against each wrong class being
``M_k - eps * r(w)`` with ``r = ||W_y - W_k||_*`` the same for every pair: ``r = 2(|w1| + |w2|)`` (l_inf,
dual l1) or ``sqrt(2 (w1^2 + w2^2))`` (l2); under the scorewise attacks ``r = ||W_y||_* + ||W_k||_*`` =
``2 (|w1| + (K-1) |w2|)`` or ``2 sqrt(w1^2 + (K-1) w2^2)`` (each score attacked on its own, a shared feature
that enters both scores of a margin counted in both).

* ``logitwise``: loss = ``sum_c t_c CE(z + eps r [k != c], c)`` exactly as
  :func:`synthmodel.train.logitwise_objective` (t = label-smoothed targets).
* ``joint`` (one delta for all logits, maximising the soft-target CE: ordinary AT, what PGD realises):
  for l_inf the coordinates of delta split into two shared ones (x_Ey, x_Cy: they move every
  ``z_k - z_y`` by the same amount) and term-specific ones (x_Ek, x_Ck: they move only ``z_k - z_y``),
  so ``z_k - z_y`` shifts by ``c (s_0 + s_k)`` with ``c = eps (|w1| + |w2|)`` and signs s in {-1, +1}^K
  chosen freely; the loss is convex in delta, so its maximum over the box is the maximum over these
  2^K sign patterns: *exact*. For hard labels the all-plus pattern wins and joint == logitwise. With label
  smoothing the integrand is a maximum of smooth pieces: each xi line is split at the patterns' tie points
  (closed form, :func:`synthmodel.population.quadrature.joint_split_eval`) and integrated piecewise by Gauss-Legendre.
  For l2 (hard labels, K = 3) the change of ``z_k - z_y`` is ``(u + v_k) . delta`` with u (shared) and
  v_1, v_2 (one per wrong class) orthogonal and of length |w|, so the inner maximum is over a 3-d ball: it
  sits on the sphere, parallel to the gradient, and reduces to a 1-d fixed point in q = the share of the
  first wrong class; every root is found and the best kept (exact;
  :func:`synthmodel.population.quadrature.joint_l2_eval`).
  Wrong class k then rises by ``eps |w| (1 + q_k) / sqrt(1 + q_1^2 + q_2^2)``, between eps |w| sqrt(3/2)
  (q = 1/2) and the logitwise eps |w| sqrt 2. With label smoothing (K = 3) the loss depends on delta only
  through the two wrong logits' shifts s (x1, x2), which fill an ellipse; it is convex, so the adversary's
  maximum is on the ellipse's boundary, one angle, searched per node (sampling + Newton,
  :func:`synthmodel.population.quadrature.joint_l2_soft_eval`); the integrand has kinks where two local maxima tie, and
  every xi line is split at them (found by bisection), so the xi direction converges geometrically; in eta
  the trapezoid remains. Joint l2 for K = 4 raises ValueError.

* ``scorewise``: the true score lowered by eps ||W_y||_*, each wrong score raised by eps ||W_k||_*, independently
  (no single input realises it). Hard labels: the logitwise loss with the scorewise r. Soft targets: the scores
  set by the hard label and the soft loss evaluated there, i.e. every wrong logit up by the same R = eps r(w)
  for every sample, so label smoothing adds ``(alpha (K-1)/K) ((w1 + w2) mu - R)`` in closed form (as ``pgd``
  l_inf); distillation: the teacher on the clean input. ``scorewise-termwise``: each target's CE term with its
  own per-score worst case (the logitwise sum with the scorewise r). Every K, every constraint.

* ``pgd`` (the training attack): delta* maximises the *hard-label* CE, as PGD on the labels does in
  synthmodel.train and real_data.train, and the objective (label smoothing or distillation) is evaluated at
  x + delta*. For hard labels pgd == joint. For the tied model and l_inf delta* is the all-plus vertex above,
  exactly, for every sample, so every wrong student logit rises by R = eps r(w):

  - label smoothing: ``E[LSE(z + R) - sum_c t_c (z + R)_c] = L_hard + (alpha (K-1)/K) ((w1 + w2) mu - R)``,
    the hard-label loss plus a term linear in each quadrant (concave kinks on the axes);
  - distillation: the teacher sees x + delta* too, its wrong logits rise by ``2 eps (a1 sign w1 + a2 sign
    w2)``; the targets depend on w only through its signs (the loss jumps where sign(w2) flips).

  For l2 (K = 3) delta* is the joint l2 maximiser below; with label smoothing the loss adds
  ``(alpha/K) (2 (w1 + w2) mu - 3 eps |w| E[1 / n(q*)])`` (:func:`synthmodel.population.quadrature.joint_l2_eval`).
  Not computed: ``joint`` + ``kd`` (an adversary maximising the distillation loss itself: its target moves
  with delta, the soft CE is not convex in delta, and the maximum over the box need not sit at a vertex), and
  pgd + distillation for l2. proofs_check/README.md ("Distillation") has the details and the Claim-3 check.

**Distillation** (``Formalisation(loss='kd', teacher_w1=a1, teacher_w2=a2, temperature=T)``; logitwise
here, pgd above): targets ``t = softmax(teacher_logits / T)`` of the tied teacher (a1, a2) on the *clean*
input (there is no single adversarial input under the logitwise attack; the clean input is also what
:func:`synthmodel.train.logitwise_objective` gets from the training loop), loss
``E sum_c t_c CE(z + eps r [k != c], c)`` at student temperature 1. The teacher's margins
``a1 E + a2 C_k`` involve another direction of (e, mean(c)) than the student's xi, so this integral is over
(e, v = sqrt(K-1) mean(c), eta): K dimensions, 3 for paper3 (:func:`synthmodel.population.quadrature.kd_eval`).

**Many classes** (K > 4; :func:`synthmodel.population.quadrature.frullani_eval`): the (K-1)-dimensional rule is too
large there, but the hard-label loss log(1 + B S), B = exp(R - w1 E), S = sum_k exp(-w2 C_k), has by Frullani's
integral log(1 + y) = int_0^inf (e^-t - e^-t(1+y)) dt / t and the independence of the C_k the representation
``int psi(v - R) (1 - phi(v)^(K-1)) dv`` with phi, psi one-dimensional Gaussian integrals: K is an exponent.
Logitwise label smoothing has the same form term by term. Both equal the (xi, eta) engine to 1e-12 at
K = 3, 4 (tested). Joint with label smoothing, joint l2 and distillation beyond K = 4 raise ValueError.

Robust accuracy (probability of being correct under every perturbation of the ball) is exact for
linear models and the same for the joint, logitwise and pgd attacks: ``P(min_k M_k > eps r)``, a 1-d integral
(see :func:`robust_accuracy`; the scorewise attack has its own r). **Objective 'zero-one'** minimises the robust
0-1 error ``1 - P``: scale-free, a certified 1-d search over w2/w1 (:func:`optimal_ratio`).

The autograd reference engine (:mod:`synthmodel.population.reference`) is an independent computation for the
tests, not on the production path.
"""

from __future__ import annotations

from .accuracy import (
    ZeroOneOptimum,
    expected_max_normal,
    optimal_ratio,
    population_cas,
    robust_accuracy,
    zero_one_slope_at_zero,
    zero_one_threshold,
)
from .engine import (
    QuadResult,
    Threshold,
    closed_form_sign,
    first_order_w2,
    loss_derivatives,
    optimal_weights,
    robust_loss,
    threshold,
)
from .formalisation import (
    ADVERSARIES,
    FORMALISATION_ATTACKS,
    LOSSES,
    NORMS,
    OBJECTIVES,
    WEIGHTS,
    Formalisation,
    World,
    world_from,
)
from .registry import ROUTINES, Routine, Support, supports

__all__ = [
    "FORMALISATION_ATTACKS", "NORMS", "WEIGHTS", "LOSSES", "OBJECTIVES", "ADVERSARIES", "Formalisation", "World",
    "world_from", "robust_loss", "loss_derivatives", "robust_accuracy", "optimal_weights", "first_order_w2",
    "threshold", "closed_form_sign", "population_cas", "QuadResult", "Threshold", "ROUTINES", "Routine", "Support",
    "supports", "optimal_ratio", "ZeroOneOptimum", "zero_one_slope_at_zero", "zero_one_threshold",
    "expected_max_normal", "theory_point", "validate_theory_params", "THEORY_DEFAULTS", "TheoryPoint",
]

_POINT_NAMES = ("theory_point", "validate_theory_params", "THEORY_DEFAULTS", "TheoryPoint", "theory_table")


def __getattr__(name: str):
    # the sweep's point kind imports the sweep package: loaded only when asked for
    if name in _POINT_NAMES:
        from . import point

        return getattr(point, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
