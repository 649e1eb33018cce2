"""The population engine: robust loss, optimal weights, first-order conditions and thresholds.

Quadrature routines come from :mod:`synthmodel.population.registry` (one signature, each declaring what it
supports); this module refines their rules until the error estimate is below ``tol``, optimises the weights
over each formalisation's feasible set and finds the thresholds eps0 / eps1. The reduction to the Gaussian
coordinates (xi, eta) and the formalisations are described in :mod:`synthmodel.population` and
docs/DEFINITIONS.md; derivations in proofs_check/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

from ..spec import FeatureModel
from . import quadrature as _pq
from .formalisation import Formalisation, World, check_eps, world_from
from .registry import routine_for

__all__ = ["QuadResult", "Threshold", "robust_loss", "loss_derivatives", "optimal_weights", "first_order_w2",
           "threshold", "closed_form_sign", "closed_form_threshold"]


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
    """Objective (with penalty), gradient, Hessian by the registry's routine at fixed rule levels.

    ``levels``: one (xi, eta) pair for the whole batch, or an array (B, 2) of per-element levels; elements
    that share a pair are evaluated together (chunks of about ``max_work`` node-elements), so every eps
    pays only for the rule its own weights need.
    """
    routine = routine_for(form, world.k)
    b = w1.size
    lv = _level_array(levels, b)
    max_work = max_work or (1 << 17 if form.hard else 1 << 15)
    loss = np.empty(b)
    grad = np.empty((b, 2)) if order >= 1 else None
    hess = np.empty((b, 2, 2)) if order >= 2 else None
    pairs, inverse = np.unique(lv, axis=0, return_inverse=True)
    for g, pair in enumerate(pairs):
        members = np.flatnonzero(inverse.reshape(-1) == g)
        pair = (int(pair[0]), int(pair[1]))
        chunk = max(8, max_work // routine.nodes(world, pair))
        for lo in range(0, members.size, chunk):
            sl = members[lo:lo + chunk]
            out = routine.evaluate(world, form, w1[sl], w2[sl], eps[sl], pair, order, offset)
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
    The Hessian is therefore taken as differences of the analytic gradient, one-sided into the quadrant (the
    side the signed zeros select at an edge, where the l_inf radius has its kink), step 1e-4 max(1, |w|):
    truncation error ~1e-4 relative, which leaves Newton's convergence fast (each step shrinks the error by
    about that factor) and the optimum exact (it is where the exact gradient vanishes); the base point and
    both shifted ones are one batched evaluation. This needs the rule's value to be smooth in w, i.e. the ties
    located, as joint_split_eval (l_inf) does. Joint l2 + label smoothing locates its ties too
    (joint_l2_soft_eval) but keeps its envelope Hessian (cheaper per Newton step there).

    ``evaluate(w1, w2, order)`` returns (loss, grad, hess) of one batch at a fixed rule.
    """
    if order < 2:
        return evaluate(w1, w2, order)
    b = w1.size
    d = _FD_STEP * np.maximum(1.0, np.maximum(np.abs(w1), np.abs(w2)))
    s1, s2 = np.copysign(1.0, w1) * d, np.copysign(1.0, w2) * d       # into the quadrant, also from a signed zero
    loss, grads, _ = evaluate(np.concatenate([w1, w1 + s1, w1]), np.concatenate([w2, w2, w2 + s2]), 1)
    grad = grads[:b]
    hess = np.stack([(grads[b:2 * b] - grad) / s1[:, None], (grads[2 * b:] - grad) / s2[:, None]], axis=1)
    return loss[:b], grad, 0.5 * (hess + hess.transpose(0, 2, 1))


def _np_batch(*arrays) -> list[np.ndarray]:
    arrs = [np.atleast_1d(np.asarray(a, dtype=np.float64)).reshape(-1) for a in arrays]
    size = max(a.size for a in arrs)
    return [np.broadcast_to(a, (size,)).copy() if a.size == 1 else a.copy() for a in arrs]


def _nodes(world: World, levels: tuple[int, int], form: Formalisation) -> int:
    return routine_for(form, world.k).nodes(world, levels)


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
    :func:`synthmodel.population.quadrature.rule`). Elements whose estimate is >= tol are re-done at half the step.
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
            budget = routine_for(form, world.k).node_budget
            ok = np.array([f[0] <= _pq.MAX_LEVEL and _nodes(world, (int(f[0]), int(f[1])), form) <= budget
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
    check_eps(eps)
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


_COLLAPSE = 1e-8  # |w| below this at an optimum: compared with the zero model (see _snap_collapsed)


def _snap_collapsed(world: World, form: Formalisation, eps: np.ndarray, w: np.ndarray, value: np.ndarray,
                    error: np.ndarray, w_error: np.ndarray):
    """A collapsed optimum is exactly w = 0.

    Where no feature survives the attack (e.g. eps = mu/2 under the joint adversary with label smoothing) the
    objective is minimised by the zero model, and Newton only creeps towards it (denormal weights such as
    w1 ~ -9e-43, w2 ~ -7e-23, whose ratio is meaningless). Every |w| below ``_COLLAPSE`` is compared with w = 0
    (every logit 0 and no attack shift: objective exactly log K, no penalty); where 0 is no worse within the
    quadrature error, 0 is
    returned, with w_error the distance moved.
    """
    near = np.abs(w).max(axis=1) < _COLLAPSE
    if not near.any():
        return w, value, w_error
    idx = np.flatnonzero(near)
    at_zero = np.full(idx.size, math.log(world.k))  # every logit 0 for every sample, no attack shift, no penalty
    better = at_zero <= value[idx] + error[idx]
    take = idx[better]
    w, value, w_error = w.copy(), value.copy(), w_error.copy()
    w_error[take] = np.maximum(w_error[take], np.abs(w[take]).max(axis=1))
    w[take] = 0.0
    value[take] = at_zero[better]
    return w, value, w_error


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
    check_eps(eps)
    routine_for(form, world.k)  # ValueError with the reason where nothing computes this formalisation
    if form.zero_one:  # scale-free: the certified direction, normalised as the constraint asks
        from .accuracy import optimal_ratio

        opt = optimal_ratio(world, form, eps)
        w1, w2 = opt.w1, opt.w2
        scale = {"l1-share": w1 + w2, "class-l2-norm": np.sqrt(w1 * w1 + (world.k - 1) * w2 * w2)}.get(form.weights)
        if scale is not None:
            w1, w2 = w1 / scale, w2 / scale
        width = np.abs(np.arctan(opt.enclosure[:, 1]) - np.arctan(opt.enclosure[:, 0]))
        return {"w1": w1, "w2": w2, "objective": 1.0 - opt.accuracy, "quad_error": opt.gap, "w_error": width,
                "ratio": opt.ratio, "enclosure": opt.enclosure, "method": opt.method, "convex": False}
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
    w, value, w_error = _snap_collapsed(world, form, eps, w, value, error, w_error)
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
    """eps where the first-order condition at w2 = 0 changes sign in (0, mu/2), or None, with evidence.

    ``closed_form``: the threshold the derivation gives (:func:`closed_form_threshold`), None where it gives
    "no sign change in (0, mu/2)"; ``derived`` says whether a derivation exists for this formalisation at all
    (the numeric ``eps`` is always computed, and compared with it by the tests and proofs_check).
    """

    eps: float | None
    grid: np.ndarray
    derivative: np.ndarray
    method: str = "bracketing (brentq) on the first-order condition"
    closed_form: float | None = None
    derived: bool = False

    def to_dict(self) -> dict:
        return {"eps": self.eps, "grid": self.grid.tolist(), "derivative": self.derivative.tolist(),
                "method": self.method, "closed_form": self.closed_form, "derived": self.derived}


def _dr_dw2_at_zero(world: World, form: Formalisation) -> float:
    """dr/dw2 at w = (1, +0): 2 (pairwise l_inf), 2 (K-1) (scorewise l_inf), 0 (l2)."""
    if form.norm == "l2":
        return 0.0
    return 2.0 if form.adversary == "pairwise" else 2.0 * (world.k - 1)


def closed_form_sign(world: World, form: Formalisation, eps: np.ndarray) -> np.ndarray | None:
    """Sign of the first-order condition at w2 = 0 where the derivation gives it, else None.

    Hard labels (alpha = 0): at w2 = 0 every wrong logit is equal, so the per-sample derivative in w2 is
    ``sum_k dL/dm_k (C_k - eps dr/dw2)`` with the same dL/dm_k < 0 for every k, a function of E only;
    averaging C_k -> mu (independent of E) gives ``(mu - eps dr/dw2) E[sum_k dL/dm_k]``, whose sign is
    ``sign(eps dr/dw2 - mu)``: ``sign(2 eps - mu)`` for pairwise l_inf (dr/dw2 = 2 at w2 = +0),
    ``sign(2 (K-1) eps - mu)`` for scorewise l_inf, and -1 for l2 (dr/dw2 = 0; also for joint l2: by the
    envelope theorem the derivative is taken at the maximiser, where the shift is eps |w| f with d|w|/dw2 = 0).
    Label smoothing at the hard-label scores (scorewise; pgd l_inf): the derivative is
    ``(eps dr/dw2 - mu) (E[P_wrong] - alpha (K-1)/K)`` and E[P_wrong] > alpha (K-1)/K at the best w1 > 0
    (a covariance argument, proofs_check/README.md step 8), so the sign is the hard labels' one.
    This is the derivative in w2 for unconstrained weights, for weight decay (the penalty's derivative is 0 at
    w2 = 0) and along the l2 / class-l2 circles (tangent (0, c > 0) at w = (1, 0)); not for l1-share (tangent
    (-1, 1) mixes in dL/dw1). proofs_check/README.md derives it with sympy.
    """
    if form.weights == "l1-share" or form.zero_one:
        return None
    scores = form.loss == "ce" and ((form.attack == "scorewise") or (form.attack == "pgd" and form.norm == "linf"))
    if not (form.hard or scores):
        return None
    return np.sign(eps * _dr_dw2_at_zero(world, form) - world.mu)


def closed_form_threshold(world: World, form: Formalisation) -> tuple[bool, float | None]:
    """(derived, eps): the threshold of :func:`closed_form_sign` (mu / (dr/dw2) if inside (0, mu/2), else None)."""
    if closed_form_sign(world, form, np.zeros(1)) is None:
        return False, None
    dr = _dr_dw2_at_zero(world, form)
    root = world.mu / dr if dr > 0 else math.inf
    return True, (root if 0 < root < world.mu / 2 else None)


@lru_cache(maxsize=256)
def _threshold(world: World, form: Formalisation, n_grid: int, xtol: float) -> Threshold:
    from scipy.optimize import brentq

    half = world.mu / 2
    grid = np.linspace(half / n_grid, half * (1 - 1e-6), n_grid)
    deriv, _ = first_order_w2(world, form, grid)
    grid.setflags(write=False)
    deriv.setflags(write=False)
    derived, closed = closed_form_threshold(world, form)
    crossings = np.flatnonzero((deriv[:-1] < 0) & (deriv[1:] >= 0))
    if crossings.size == 0:
        return Threshold(None, grid, deriv, closed_form=closed, derived=derived)
    i = crossings[-1]
    root = brentq(lambda e: float(first_order_w2(world, form, [e])[0][0]), grid[i], grid[i + 1], xtol=xtol)
    return Threshold(float(root), grid, deriv, closed_form=closed, derived=derived)


def threshold(world: FeatureModel | World | str, form: Formalisation, *, n_grid: int = 24, xtol: float = 1e-7
              ) -> Threshold:
    """eps0 (alpha = 0) or eps1 (alpha > 0): the largest eps in (0, mu/2) where the right derivative in w2
    at w2 = 0 goes from negative (w2 > 0 pays) to non-negative.

    A grid of ``n_grid`` eps brackets the last sign change and brentq refines it to ``xtol``, always numerically;
    where a derivation gives the threshold (:func:`closed_form_threshold`) it is reported beside it.
    None when there is no change in (0, mu/2) (the evidence: grid and derivative values, always computed
    numerically). Cached per (world, formalisation); the returned arrays are read-only.
    """
    world = world_from(world)
    if form.zero_one:  # the eps where the certified optimal ratio becomes 0; evidence: dP/dtheta at w2 = 0
        from .accuracy import zero_one_slope_at_zero, zero_one_threshold

        eps0, grid, _ = zero_one_threshold(world, form)
        derived = zero_one_slope_at_zero  # the first-order closed form (proofs_check/README.md step 9)
        return Threshold(eps0, grid, derived(world, form, grid), "bisection on the certified optimum being w2 = 0")
    return _threshold(world, form, int(n_grid), float(xtol))


