"""Verdicts on the paper's three claims, per formalisation, computed from the population engine."""

from __future__ import annotations

import numpy as np

from synthmodel.population import (
    FORMALISATION_ATTACKS,
    NORMS,
    WEIGHTS,
    Formalisation,
    World,
    optimal_ratio,
    optimal_weights,
    robust_accuracy,
    supports,
    threshold,
    zero_one_slope_at_zero,
    zero_one_threshold,
)

from .derivations import claim2_numeric, zero_one_slope
from .derivations import mu as MU
from .derivations import sigma as SIGMA
from .verdicts import Claim1Evidence, Claim2Evidence, Claim3Evidence, ClaimResult, Verdict

__all__ = ["formalisations", "check_claim2", "check_formalisation", "ZERO_ONE_ATTACKS"]

ZERO_ONE_ATTACKS = ("joint", "scorewise")  # the 0-1 error of logitwise and pgd is joint's (the same worst margins)
_TOL = 1e-6  # Newton stops at |step| < 1e-11; a weight below 1e-6 is zero at that precision


def formalisations(weight_decay: float = 0.01, weights: tuple[str, ...] | None = None,
                   attacks: tuple[str, ...] | None = None, zero_one: bool = True) -> list[dict]:
    """Every (attack, norm, weights) combination with the cross-entropy objective, then the zero-one rows.

    The robust 0-1 error is scale-free, so every weight constraint but weight decay gives the same optimal w2/w1:
    its rows are listed once, as 'unconstrained' (when that constraint is selected).
    """
    out = []
    for attack in attacks or FORMALISATION_ATTACKS:
        for norm in NORMS:
            for w in weights or tuple(WEIGHTS):
                out.append({"attack": attack, "norm": norm, "weights": w, "objective": "cross-entropy",
                            "weight_decay": weight_decay if w == "weight-decay" else 0.0})
    if zero_one and "unconstrained" in (weights or tuple(WEIGHTS)):
        for attack in attacks or FORMALISATION_ATTACKS:
            if attack in ZERO_ONE_ATTACKS:
                for norm in NORMS:
                    out.append({"attack": attack, "norm": norm, "weights": "unconstrained", "objective": "zero-one",
                                "weight_decay": 0.0})
    return out


def _eps_grid(world: World, n: int) -> np.ndarray:
    half = world.mu / 2
    return np.linspace(half / (n + 1), half * n / (n + 1), n)


# -- claim 2 ------------------------------------------------------------------------------------------------
def _weak_margin(world: World, norm: str, adversary: str, eps: float, ratios: np.ndarray) -> float:
    """min over r in (0, 1] of P(r) - P(0), P the robust accuracy at w = (1, r) (the weaker reading: >= 0)."""
    p = robust_accuracy(world, np.ones(ratios.size + 1), np.concatenate([[0.0], ratios]), eps, norm,
                        adversary=adversary).value
    return float((p[1:] - p[0]).min())


def check_claim2(world: World, norm: str, adversary: str = "pairwise", n_eps: int = 6, n_w2: int = 11,
                 r_max: float = 2.0) -> ClaimResult:
    """Claim 2: for w2 in [0, w1] (scale-free: w1 = 1), dP(robust correct)/dw2 > 0, on a grid of eps in (0, mu/2).

    dP/dw2 comes from the sympy Gaussian-CDF expression (derivations.claim2_probability) integrated numerically;
    w2 = 0 is approached from the right (w2 = 1e-3). Also r*(eps), the largest r with P rising on [0, r] (a scan of
    the engine's exact robust accuracy, the crossing refined by brentq on its central differences), and the weaker
    reading    P(w2) >= P(0) on (0, w1] with the eps range where it holds.
    """
    from scipy.optimize import brentq

    eps_grid = _eps_grid(world, n_eps)
    w2_grid = np.linspace(1e-3, 1.0, n_w2)
    slopes = np.array([[claim2_numeric(world.k, norm, 1.0, w2, e, world.mu, world.sigma, adversary)[1]
                        for w2 in w2_grid] for e in eps_grid])
    ok = slopes > 0
    scan = np.linspace(0.0, r_max, 401)
    r_star = []
    for e in eps_grid:
        p = robust_accuracy(world, np.ones(scan.size), scan, e, norm, adversary=adversary).value
        falls = np.flatnonzero(np.diff(p) <= 0)
        if falls.size == 0:
            r_star.append(r_max)
            continue
        i = int(falls[0])
        if i == 0:  # falls from w2 = 0 on
            r_star.append(0.0)
            continue

        def slope(r, e=e):  # central difference of the exact accuracy (accurate to ~1e-14): error ~1e-8
            p2 = robust_accuracy(world, np.ones(2), np.array([r - 1e-6, r + 1e-6]), e, norm, adversary=adversary).value
            return float(p2[1] - p2[0]) / 2e-6
        lo, hi = scan[i - 1], scan[i + 1]
        r_star.append(float(brentq(slope, lo, hi, xtol=1e-8)) if slope(lo) > 0 > slope(hi) else float(scan[i]))
    ratios = np.linspace(0.0, 1.0, 201)[1:]
    weak_grid = np.linspace(world.mu / 2 / 48, world.mu / 2 * (1 - 1e-6), 48)
    margins = np.array([_weak_margin(world, norm, adversary, e, ratios) for e in weak_grid])
    weak_range = None
    held = np.flatnonzero(margins >= 0)
    if held.size:
        def edge(i: int, j: int) -> float:  # bisection between a grid point where it holds (i) and one where not
            return float(brentq(lambda e: _weak_margin(world, norm, adversary, e, ratios), weak_grid[i],
                                weak_grid[j], xtol=1e-6))
        first, last = int(held[0]), int(held[-1])
        lo = 0.0 if first == 0 else edge(first, first - 1)
        hi = float(world.mu / 2) if last == weak_grid.size - 1 else edge(last, last + 1)
        weak_range = [lo, hi]
    contiguous = held.size == 0 or held.size == held[-1] - held[0] + 1
    weak = [bool(_weak_margin(world, norm, adversary, e, ratios) >= 0) for e in eps_grid]
    evidence = Claim2Evidence(adversary, norm, eps_grid.tolist(), w2_grid.tolist(), int((~ok).sum()), int(ok.size),
                              float(slopes.min()), r_star, r_max, weak, weak_range)
    if ok.all():
        return ClaimResult(Verdict.HOLDS, f"dP/dw2 > 0 at all {ok.size} (eps, w2/w1) grid points", evidence)
    rs = ", ".join(f"{r:.3g}" for r in r_star)
    where = ("nowhere in (0, mu/2)" if weak_range is None else
             f"for eps in [{weak_range[0]:.4g}, {weak_range[1]:.4g}]" + ("" if contiguous else " (not contiguous)"))
    reason = (f"dP/dw2 < 0 at {int((~ok).sum())} of {ok.size} (eps, w2/w1) grid points; P rises only on [0, r* w1], "
              f"r* = {rs} at eps = {eps_grid[0]:.3g}..{eps_grid[-1]:.3g}; P(w2) >= P(0) on (0, w1] {where}")
    if all(weak):
        return ClaimResult(Verdict.WEAKER, reason + " (every eps of the grid)", evidence)
    return ClaimResult(Verdict.FAILS, reason, evidence)


# -- claims 1 and 3 -------------------------------------------------------------------------------------------
def _larger(a: np.ndarray, b: np.ndarray, err: np.ndarray) -> bool | None:
    """True: a > b + err everywhere; False: a < b - err somewhere; None (undecided): neither.

    ``err`` bounds the errors of a - b; an unknown (NaN) error counts as unbounded.
    """
    err = np.nan_to_num(np.asarray(err, dtype=np.float64), nan=np.inf)
    if np.all(a > b + err):
        return True
    if np.any(a < b - err):
        return False
    return None


def _claim1(eps0: float | None, grid: np.ndarray, w1: np.ndarray, w2: np.ndarray, describe: str) -> tuple:
    w1_pos = bool(np.all(w1 > _TOL))
    if eps0 is None:
        return Verdict.FAILS, f"no threshold in (0, mu/2) ({describe})"
    after = grid > eps0
    zero_after = bool(np.all(np.abs(w2[after]) <= _TOL))
    pos_before = bool(np.all(w2[~after] > _TOL))
    if zero_after and pos_before and w1_pos:
        return Verdict.HOLDS, f"eps0 = {eps0:.6g}: w2 > 0 below, w2 = 0 above, w1 > 0 throughout ({describe})"
    return Verdict.FAILS, (f"threshold {eps0:.6g} found but the optimum has w2 = 0 after it: {zero_after}, w2 > 0 "
                           f"before it: {pos_before}, w1 > 0 throughout: {w1_pos}")


def _not_computed(base: dict, reason: str) -> dict:
    nc = ClaimResult(Verdict.NOT_COMPUTED, reason)
    return {**base, "claims": {"1": nc, "3": nc}, "eps0": None, "eps1": None}


def _zero_one_row(world: World, spec: dict, base: dict, n_eps: int) -> dict:
    form = Formalisation(**spec)
    grid = _eps_grid(world, n_eps)
    opt = optimal_ratio(world, form, grid)
    eps0, th_grid, _ = zero_one_threshold(world, form)
    derived = zero_one_slope(world.k, form.norm, form.adversary)["eps0"]
    eps0_derived = None
    if derived is not None:
        value = float(derived.subs({MU: world.mu, SIGMA: world.sigma}))
        eps0_derived = value if 0 < value < world.mu / 2 else None
    slope = zero_one_slope_at_zero(world, form, th_grid)
    evidence = Claim1Evidence(grid.tolist(), opt.w1.tolist(), opt.w2.tolist(), th_grid.tolist(), slope.tolist(), eps0,
                              eps0_derived, True, opt.method, ratio=opt.ratio.tolist(),
                              enclosure=opt.enclosure.tolist())
    describe = (f"certified optimal w2/w1 {opt.ratio[0]:.3g}..{opt.ratio[-1]:.3g} on the grid; the first-order "
                f"derivation gives " + ("none" if eps0_derived is None else f"{eps0_derived:.6g}"))
    verdict, reason = _claim1(eps0, grid, np.ones(grid.size), opt.ratio, describe)
    c3 = ClaimResult(Verdict.NOT_COMPUTED, "the robust 0-1 error has no soft targets (claim 3 is about label "
                                           "smoothing)")
    return {**base, "claims": {"1": ClaimResult(verdict, reason, evidence), "3": c3}, "eps0": eps0, "eps1": None,
            "method": opt.method, "convex": {"hard": False}}


def check_formalisation(world: World, spec: dict, alpha: float, n_eps: int = 8,
                        teacher: tuple[float, float, float] | None = None, skip_soft: str | None = None) -> dict:
    """Thresholds, optimal weights on an eps grid and verdicts on claims 1 and 3 for one formalisation.

    ``spec``: attack, norm, weights, weight_decay and optionally objective ('cross-entropy' or 'zero-one').
    ``teacher``: (teacher_w1, teacher_w2, temperature) puts distillation from that tied teacher in place of
    label smoothing as the soft-label objective of Claim 3 (``alpha`` is then ignored; "eps1" is the
    distillation threshold). ``skip_soft``: a reason not to compute the soft-label objective (Claim 3 then
    says "not computed (reason)"). Claims are :class:`ClaimResult`.
    """
    spec = {"objective": "cross-entropy", **spec}
    base = {"attack": spec["attack"], "norm": spec["norm"], "weights": spec["weights"],
            "objective": spec["objective"], "loss": "cross-entropy", "alpha": alpha,
            "weight_decay": spec["weight_decay"]}
    if teacher is not None:
        base.update(loss="distillation", alpha=0.0, teacher=list(teacher))
    try:
        hard = Formalisation(alpha=0.0, **spec)
    except ValueError as exc:
        return _not_computed(base, str(exc))
    support = supports(hard, world.k)
    if not support:
        return _not_computed(base, support.reason)
    if hard.zero_one:
        return _zero_one_row(world, spec, {**base, "loss": "zero-one", "alpha": 0.0}, n_eps)
    note = None
    try:
        smooth = (Formalisation(alpha=alpha, **spec) if teacher is None else
                  Formalisation(loss="kd", teacher_w1=teacher[0], teacher_w2=teacher[1], temperature=teacher[2],
                                **spec))
        s = supports(smooth, world.k)
        if not s:
            smooth, note = None, s.reason
    except ValueError as exc:  # e.g. pgd + l2 + distillation
        smooth, note = None, str(exc)
    if skip_soft is not None:
        smooth, note = None, skip_soft
    grid = _eps_grid(world, n_eps)
    th0 = threshold(world, hard)
    opt0 = optimal_weights(world, hard, grid)
    derived = ("derived: " + ("no sign change in (0, mu/2)" if th0.closed_form is None
                              else f"eps0 = {th0.closed_form:.6g}")) if th0.derived else "no derivation"
    describe = (f"dL/dw2 at w2 = 0 from {th0.derivative[0]:.3g} to {th0.derivative[-1]:.3g} on the grid; "
                f"{derived}")
    verdict, reason = _claim1(th0.eps, grid, opt0["w1"], opt0["w2"], describe)
    evidence1 = Claim1Evidence(grid.tolist(), opt0["w1"].tolist(), opt0["w2"].tolist(), th0.grid.tolist(),
                               th0.derivative.tolist(), th0.eps, th0.closed_form, th0.derived, opt0["method"])
    claim1 = ClaimResult(verdict, reason, evidence1)
    row = {**base, "claims": {"1": claim1}, "eps0": th0.eps, "eps1": None, "method": opt0["method"],
           "convex": {"hard": hard.convex}}
    if smooth is None:
        row["claims"]["3"] = ClaimResult(Verdict.NOT_COMPUTED, note)
        return row
    th1 = threshold(world, smooth)
    row.update(eps1=th1.eps, convex={"hard": hard.convex, "smoothed": smooth.convex})
    # claim 3: eps1 > eps0 and w2_LS > w2 on (0, eps1), compared on n_eps points inside (0, eps1) (claim 1's
    # grid spans (0, mu/2) and can hold a single point below a small eps1)
    half = world.mu / 2
    upper = th1.eps if th1.eps is not None else half
    if upper != half:
        grid = np.linspace(upper / (n_eps + 1), upper * n_eps / (n_eps + 1), n_eps)
        opt0 = optimal_weights(world, hard, grid)
    opt1 = optimal_weights(world, smooth, grid)
    inside = grid < upper
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio0 = np.where(opt0["w1"] != 0, opt0["w2"] / opt0["w1"], np.nan)
        ratio1 = np.where(opt1["w1"] != 0, opt1["w2"] / opt1["w1"], np.nan)
    # "larger" beyond the weights' precision: where the two optima coincide (joint + l1-share: to 1e-12) a bare
    # comparison would decide on rounding noise, and where the weights carry a larger error (joint l2 + label
    # smoothing) a difference inside it decides nothing (None: undecided)
    err = opt0["w_error"][inside] + opt1["w_error"][inside] + _TOL
    absolute = _larger(opt1["w2"][inside], opt0["w2"][inside], err)
    # error of w2 / w1 from errors e in both weights: e (1 + |w2 / w1|) / |w1|, for either optimum
    ratio_err = (opt0["w_error"][inside] * (1 + np.abs(ratio0[inside])) / np.abs(opt0["w1"][inside])
                 + opt1["w_error"][inside] * (1 + np.abs(ratio1[inside])) / np.abs(opt1["w1"][inside]) + _TOL)
    ratio = _larger(ratio1[inside], ratio0[inside], ratio_err)
    soft = "label smoothing" if teacher is None else "distillation"
    tag = "LS" if teacher is None else "KD"
    if th0.eps is None or th1.eps is None:
        order = ("no threshold " + ("on either side" if th0.eps is None and th1.eps is None else
                                    f"with {soft}" if th1.eps is None else f"without {soft}")
                 + ("" if th1.eps is None else f" (eps1 = {th1.eps:.6g})")
                 + ("" if th0.eps is None else f" (eps0 = {th0.eps:.6g})"))
        thresholds_ok = False
    else:
        thresholds_ok = th1.eps > th0.eps + 1e-6
        relation = ">" if thresholds_ok else ("=" if abs(th1.eps - th0.eps) <= 1e-6 else "<")
        order = f"eps1 = {th1.eps:.6g} {relation} eps0 = {th0.eps:.6g}"
    shown = {True: "yes", False: "no", None: "undecided (within the weights' errors)"}
    parts = [order, f"w2_{tag} > w2 on the grid below eps1: {shown[absolute]}",
             f"w2/w1 larger with {soft}: {shown[ratio]}"]
    if th1.derived:
        parts.append("derived: " + ("no sign change" if th1.closed_form is None else f"eps1 = {th1.closed_form:.6g}"))
    reason = "; ".join(parts)
    if thresholds_ok and absolute is True and ratio is True:
        verdict = Verdict.HOLDS
    elif thresholds_ok and (absolute is True or ratio is True) and None not in (absolute, ratio):
        verdict, reason = Verdict.WEAKER, ("only as a ratio w2/w1; " if ratio else "only in absolute w2; ") + reason
    elif thresholds_ok and (absolute is None or ratio is None):
        verdict = Verdict.UNDECIDED
    else:
        verdict = Verdict.FAILS
    evidence3 = Claim3Evidence(th0.eps, th1.eps, th1.closed_form, th1.derived, grid.tolist(), opt0["w1"].tolist(),
                               opt0["w2"].tolist(), opt1["w1"].tolist(), opt1["w2"].tolist(),
                               opt0["w_error"].tolist(), opt1["w_error"].tolist(), absolute, ratio, soft)
    row["claims"]["3"] = ClaimResult(verdict, reason, evidence3)
    return row
