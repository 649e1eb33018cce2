"""One registry of the quadrature routines: what each computes, and :func:`supports` for everything else.

Every routine has the same signature ``evaluate(world, form, w1, w2, eps, levels, order, offset) -> (loss, grad,
hess)`` (shapes (B,), (B, 2), (B, 2, 2); None beyond ``order``; without the weight-decay penalty, which the
engine adds) and declares what it supports: the (attack, norm) cases, the targets ('hard', 'smoothed',
'teacher'), the range of K, how its Hessian is obtained, its node budget and what is known of convexity.
:func:`supports` answers the engine's validation, the sweep's pre-check and proofs_check's "not computed"
from these declarations alone. Routines are tried in order; the first that matches computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import quadrature as _pq
from .formalisation import FORMALISATION_ATTACKS, NORMS, Formalisation, World

__all__ = ["Routine", "ROUTINES", "Support", "supports", "routine_for", "targets_of"]

TARGETS = ("hard", "smoothed", "teacher")
HESSIANS = ("analytic", "autograd", "gradient differences", "envelope (autograd)", "closed form over another routine",
            "none")
NODE_BUDGET = 200_000  # nodes of one rule; beyond this refinement stops and the larger error estimate is kept


def targets_of(form: Formalisation) -> str:
    """'hard', 'smoothed' (label smoothing alpha > 0) or 'teacher' (distillation)."""
    return "teacher" if form.loss == "kd" else "smoothed" if form.alpha else "hard"


@dataclass(frozen=True)
class Routine:
    """A quadrature routine and what it supports.

    Args:
        name: short name (shown by proofs_check and in errors).
        evaluate: ``(world, form, w1, w2, eps, levels, order, offset) -> (loss, grad, hess)``.
        cases: the (attack, norm) pairs computed.
        targets: subset of ('hard', 'smoothed', 'teacher').
        k_range: (smallest K, largest K or None for any).
        hessian: how the Hessian is obtained (one of :data:`HESSIANS`).
        node_budget: the largest rule refinement may reach.
        nodes: ``(world, levels) -> int``, the size of the rule at these levels (work per batch element).
        convexity: what is known ('convex', 'convex per quadrant', 'not established').
        objective: 'cross-entropy' or 'zero-one'.
    """

    name: str
    evaluate: Callable
    cases: tuple[tuple[str, str], ...]
    targets: tuple[str, ...]
    k_range: tuple[int, int | None]
    hessian: str
    node_budget: int
    nodes: Callable[[World, tuple[int, int]], int]
    convexity: str
    objective: str = "cross-entropy"

    def matches(self, form: Formalisation) -> bool:
        """Everything but K."""
        return (form.objective == self.objective and (form.attack, form.norm) in self.cases
                and targets_of(form) in self.targets)

    def k_ok(self, k: int) -> bool:
        lo, hi = self.k_range
        return k >= lo and (hi is None or k <= hi)

    def describe(self) -> str:
        lo, hi = self.k_range
        ks = f"K >= {lo}" if hi is None else (f"K = {lo}" if lo == hi else f"K in [{lo}, {hi}]")
        return f"{self.name} ({ks}, Hessian: {self.hessian}, {self.convexity})"


def _tensor_nodes(world: World, levels: tuple[int, int]) -> int:
    xi, _, dev, _ = _pq.rule(world.k, *levels)
    return xi.size * dev.shape[0]


def _kd_nodes(world: World, levels: tuple[int, int]) -> int:
    # distillation integrates over (e, v) instead of xi alone: one more line of the xi level
    xi, _, dev, _ = _pq.rule(world.k, *levels)
    return xi.size * xi.size * dev.shape[0]


def _line_nodes(world: World, levels: tuple[int, int]) -> int:
    # the 1-d representation: (E and C lines) x ~100 v nodes (frullani_eval)
    return 100 * sum(int(16 / _pq.h_of(lv + 4)) for lv in levels)


# -- the routines (uniform signature) ----------------------------------------------------------------------
def _hard(world, form, w1, w2, eps, levels, order, offset):
    return _pq.hard_eval(world.k, world.mu, world.sigma, form.norm, w1, w2, eps, levels, order, offset,
                         form.adversary)


def _hard_line(world, form, w1, w2, eps, levels, order, offset):
    return _pq.frullani_eval(world.k, world.mu, world.sigma, form.norm, w1, w2, eps, levels, order, offset, 0.0,
                             form.adversary)


def _termwise_soft(world, form, w1, w2, eps, levels, order, offset):
    return _pq.soft_eval(world.k, world.mu, world.sigma, form.norm, "logitwise", form.alpha, w1, w2, eps, levels,
                         order, offset, form.adversary)


def _termwise_soft_line(world, form, w1, w2, eps, levels, order, offset):
    return _pq.frullani_eval(world.k, world.mu, world.sigma, form.norm, w1, w2, eps, levels, order, offset,
                             form.alpha, form.adversary)


def _hard_scores_smoothed(world, form, w1, w2, eps, levels, order, offset):
    """Label smoothing at the hard-label scores: every wrong logit up by the same R = eps r(w) over the true one
    (pgd l_inf: the all-plus vertex for every sample; scorewise: by definition), so
    ``E[LSE(z + R) - sum_c t_c (z + R)_c] = L_hard + (alpha (K-1) / K) ((w1 + w2) mu - R)``."""
    hard = Formalisation(attack="scorewise" if form.adversary == "scorewise" else "logitwise", norm=form.norm)
    base = routine_for(hard, world.k)
    loss, grad, hess = base.evaluate(world, hard, w1, w2, eps, levels, order, offset)
    c = form.alpha * (world.k - 1) / world.k
    r, dr, d2r = _pq.attack_radius(world.k, form.norm, form.adversary, w1, w2)
    loss = loss + c * ((w1 + w2) * world.mu - eps * r)
    if grad is not None:
        grad = grad + c * (world.mu - eps[:, None] * dr)
    if hess is not None:
        hess = hess - c * eps[:, None, None] * d2r
    return loss, grad, hess


def _joint_split(world, form, w1, w2, eps, levels, order, offset):
    from .engine import _with_tie_hessian

    def evaluate(a1, a2, o):  # a batch of (base, shifted) points: the eps repeat
        e = eps if a1.size == eps.size else np.tile(eps, a1.size // eps.size)
        return _pq.joint_split_eval(world.k, world.mu, world.sigma, form.norm, form.alpha, a1, a2, e, levels, o,
                                    offset)
    return _with_tie_hessian(evaluate, w1, w2, order)


def _joint_l2(world, form, w1, w2, eps, levels, order, offset):
    # pgd + label smoothing: the smoothed loss at the hard-label maximiser
    return _pq.joint_l2_eval(world.k, world.mu, world.sigma, w1, w2, eps, levels, order, offset, form.alpha)


def _joint_l2_soft(world, form, w1, w2, eps, levels, order, offset):
    return _pq.joint_l2_soft_eval(world.k, world.mu, world.sigma, form.alpha, w1, w2, eps, levels, order, offset)


def _kd(world, form, w1, w2, eps, levels, order, offset):
    attack = {"pgd": "vertex", "scorewise": "scores"}.get(form.attack, "logitwise")
    return _pq.kd_eval(world.k, world.mu, world.sigma, form.norm, form.teacher, w1, w2, eps, levels, order, offset,
                       attack, form.adversary)


def _zero_one(world, form, w1, w2, eps, levels, order, offset):
    """The robust 0-1 error 1 - P(correct under every attack) (1-d, :func:`accuracy.robust_accuracy`)."""
    from .accuracy import robust_accuracy

    acc = robust_accuracy(world, w1, w2, eps, form.norm, adversary=form.adversary)
    return 1.0 - acc.value, None, None


_ALL = tuple((a, n) for a in FORMALISATION_ATTACKS for n in NORMS)
_LINF_INPUT = (("joint", "linf"), ("pgd", "linf"))
_TERMWISE = tuple((a, n) for a in ("logitwise", "scorewise-termwise") for n in NORMS)
_NO_INPUT = _TERMWISE + (("scorewise", "linf"), ("scorewise", "l2"))

ROUTINES: tuple[Routine, ...] = (
    Routine("hard labels (xi, eta) rule", _hard, _NO_INPUT + _LINF_INPUT, ("hard",), (3, 4), "analytic",
            NODE_BUDGET, _tensor_nodes, "convex"),
    Routine("hard labels, 1-d Frullani representation", _hard_line, _NO_INPUT + _LINF_INPUT, ("hard",), (3, None),
            "autograd", NODE_BUDGET, _line_nodes, "convex"),
    Routine("label smoothing at the hard-label scores (closed form over hard labels)", _hard_scores_smoothed,
            (("pgd", "linf"), ("scorewise", "linf"), ("scorewise", "l2")), ("smoothed",), (3, None),
            "closed form over another routine", NODE_BUDGET, lambda w, lv: _tensor_nodes(w, lv) if w.k <= 4
            else _line_nodes(w, lv), "convex per quadrant (l_inf)"),
    Routine("termwise label smoothing (xi, eta) rule", _termwise_soft, _TERMWISE, ("smoothed",), (3, 4), "analytic",
            NODE_BUDGET, _tensor_nodes, "convex"),
    Routine("termwise label smoothing, 1-d Frullani representation", _termwise_soft_line, _TERMWISE, ("smoothed",),
            (3, None), "autograd", NODE_BUDGET, _line_nodes, "convex"),
    Routine("joint l_inf + label smoothing, lines split at the adversary's ties", _joint_split, (("joint", "linf"),),
            ("smoothed",), (3, 4), "gradient differences", NODE_BUDGET, _tensor_nodes, "not established"),
    Routine("joint l2 fixed point (hard labels)", _joint_l2, (("joint", "l2"), ("pgd", "l2")), ("hard",), (3, 3),
            "envelope (autograd)", NODE_BUDGET, _tensor_nodes, "convex"),
    Routine("pgd l2 + label smoothing at the hard-label fixed point", _joint_l2, (("pgd", "l2"),), ("smoothed",),
            (3, 3), "envelope (autograd)", NODE_BUDGET, _tensor_nodes, "per quadrant (not established)"),
    # each node runs a 1-d maximisation and each xi line a search for the ties of the adversary's maxima; in eta the
    # trapezoid still meets the kink at eta = 0 (algebraic convergence): refinement stops earlier
    Routine("joint l2 + label smoothing, ellipse search per node", _joint_l2_soft, (("joint", "l2"),),
            ("smoothed",), (3, 3), "envelope (autograd)", 40_000, _tensor_nodes, "not established"),
    # K = 3 only: for K = 4 the (e, v, eta1, eta2) rule has ~1e6 nodes already at the coarsest level (refused)
    Routine("distillation (e, v, eta) rule", _kd, tuple(c for c in _ALL if c[0] != "joint" and c != ("pgd", "l2")),
            ("teacher",), (3, 3), "analytic", NODE_BUDGET, _kd_nodes, "convex (termwise); per quadrant otherwise"),
    Routine("robust 0-1 error (1-d integral)", _zero_one, (("joint", "linf"), ("joint", "l2"), ("scorewise", "linf"),
                                                             ("scorewise", "l2")),
            ("hard",), (3, None), "none", NODE_BUDGET, lambda w, lv: 200, "not convex: certified 1-d search",
            objective="zero-one"),
)


@dataclass(frozen=True)
class Support:
    """The answer of :func:`supports`: the routine that computes, or why none does."""

    routine: Routine | None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.routine is not None


def supports(form: Formalisation, k: int) -> Support:
    """Which routine computes ``form`` on an all-but-one-K world, or the reason none does."""
    matching = [r for r in ROUTINES if r.matches(form)]
    for r in matching:
        if r.k_ok(k):
            return Support(r)
    what = (f"attack {form.attack!r} with norm {form.norm!r}, {targets_of(form)} targets"
            + (", objective 'zero-one'" if form.zero_one else ""))
    if matching:
        ranges = "; ".join(r.describe() for r in matching)
        return Support(None, f"K = {k}: {what} is computed by {ranges} only")
    return Support(None, f"{what} is not computed")


def routine_for(form: Formalisation, k: int) -> Routine:
    """The routine of :func:`supports`, or ValueError with its reason."""
    s = supports(form, k)
    if not s:
        raise ValueError(s.reason)
    return s.routine


def table() -> list[dict]:
    """The registry as rows (for docs and ``--list``)."""
    return [{"routine": r.name, "cases": ", ".join(f"{a}/{n}" for a, n in r.cases), "targets": ", ".join(r.targets),
             "K": r.describe().split("(")[1].split(",")[0], "hessian": r.hessian, "node budget": r.node_budget,
             "convexity": r.convexity, "objective": r.objective} for r in ROUTINES]



