"""Verdicts on the paper's three claims, per formalisation, computed from the population engine."""

from __future__ import annotations

import numpy as np

from synthmodel.population import ATTACKS, NORMS, WEIGHTS, Formalisation, World, optimal_weights, threshold

from .derivations import claim2_numeric

__all__ = ["formalisations", "check_claim2", "check_formalisation"]


def formalisations(weight_decay: float = 0.01, weights: tuple[str, ...] | None = None,
                   attacks: tuple[str, ...] | None = None) -> list[dict]:
    """Every (attack, norm, weights) combination; joint + l2 is listed as not computable exactly."""
    out = []
    for attack in attacks or ATTACKS:
        for norm in NORMS:
            for w in weights or tuple(WEIGHTS):
                out.append({"attack": attack, "norm": norm, "weights": w,
                            "weight_decay": weight_decay if w == "weight-decay" else 0.0})
    return out


def check_claim2(world: World, norm: str, n_eps: int = 6, n_w2: int = 11) -> dict:
    """Claim 2: for w2 in [0, w1] (scale-free: w1 = 1), dP(robust correct)/dw2 > 0, on a grid of eps in (0, mu/2).

    dP/dw2 comes from the sympy Gaussian-CDF expression (derivations.claim2_probability) integrated
    numerically; w2 = 0 is approached from the right (w2 = 1e-3).
    """
    eps_grid = np.linspace(world.mu / 2 / (n_eps + 1), world.mu / 2 * n_eps / (n_eps + 1), n_eps)
    w2_grid = np.linspace(1e-3, 1.0, n_w2)
    slopes = np.array([[claim2_numeric(world.k, norm, 1.0, w2, e, world.mu, world.sigma)[1] for w2 in w2_grid]
                       for e in eps_grid])
    ok = slopes > 0
    if ok.all():
        verdict = "holds"
    elif not ok.any():
        verdict = "fails"
    else:
        # Claim 2 asks for a positive slope at *every* w2 in [0, w1]; report where the slope is negative
        bad_rows = ~ok.all(axis=1)
        neg_w2 = [w2_grid[~row] for row in ok[bad_rows]]
        lo, hi = min(w.min() for w in neg_w2), max(w.max() for w in neg_w2)
        where = ("at every eps of the grid" if bad_rows.all()
                 else f"at eps in [{eps_grid[bad_rows].min():.4g}, {eps_grid[bad_rows].max():.4g}] of the grid")
        verdict = (f"fails {where} ({eps_grid.min():.4g}..{eps_grid.max():.4g}): dP(robust correct)/dw2 < 0 for "
                   f"some w2 in [0, w1] (on {int((~ok).sum())} of {ok.size} (eps, w2/w1) grid points, w2/w1 within "
                   f"[{lo:.3g}, {hi:.3g}]); positive elsewhere")
    return {"verdict": verdict, "eps_grid": eps_grid.tolist(), "w2_grid": w2_grid.tolist(),
            "min_slope": float(slopes.min()), "slopes": slopes.tolist()}


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


def check_formalisation(world: World, spec: dict, alpha: float, n_eps: int = 8,
                        teacher: tuple[float, float, float] | None = None, skip_soft: str | None = None) -> dict:
    """Thresholds, optimal weights on an eps grid and verdicts on claims 1 and 3 for one formalisation.

    ``teacher``: (teacher_w1, teacher_w2, temperature) puts distillation from that tied teacher in place of
    label smoothing as the soft-label objective of Claim 3 (``alpha`` is then ignored; "eps1" is the
    distillation threshold and the "_ls" evidence the distilled weights). ``skip_soft``: a reason not to
    compute the soft-label objective (Claim 3 then says "not computed (reason)").
    """
    base = {"attack": spec["attack"], "norm": spec["norm"], "weights": spec["weights"], "loss": "cross-entropy",
            "alpha": alpha, "weight_decay": spec["weight_decay"]}
    if teacher is not None:
        base.update(loss="distillation", alpha=0.0, teacher=list(teacher))
    try:
        hard = Formalisation(alpha=0.0, **spec)
    except ValueError as exc:
        return {**base, "claims": {"1": "not computed", "2": "not computed", "3": "not computed"},
                "eps0": None, "eps1": None, "note": str(exc)}
    try:
        if teacher is None:
            smooth = Formalisation(alpha=alpha, **spec)
        else:
            smooth = Formalisation(loss="kd", teacher_w1=teacher[0], teacher_w2=teacher[1], temperature=teacher[2],
                                   **spec)
    except ValueError as exc:  # e.g. pgd + l2: hard labels only
        smooth, note = None, str(exc)
    if skip_soft is not None:
        smooth, note = None, skip_soft
    half = world.mu / 2
    grid = np.linspace(half / (n_eps + 1), half * n_eps / (n_eps + 1), n_eps)
    try:
        th0 = threshold(world, hard)
        opt0 = optimal_weights(world, hard, grid)
    except ValueError as exc:  # e.g. joint l2 beyond K = 3
        return {**base, "claims": {"1": "not computed", "2": "not computed", "3": "not computed"},
                "eps0": None, "eps1": None, "note": str(exc)}
    tol = 1e-6  # Newton stops at |step| < 1e-11; a weight below 1e-6 is zero at that precision
    w1_pos = bool(np.all(opt0["w1"] > tol))
    if th0.eps is None:
        claim1 = ("fails: no threshold in (0, mu/2) (dL/dw2 at w2=0 has one sign on the grid, "
                  f"from {th0.derivative[0]:.3g} to {th0.derivative[-1]:.3g})")
    else:
        after = grid > th0.eps
        zero_after = bool(np.all(np.abs(opt0["w2"][after]) <= tol))
        pos_before = bool(np.all(opt0["w2"][~after] > tol))
        if zero_after and pos_before and w1_pos:
            claim1 = "holds"
        else:
            claim1 = (f"fails: threshold {th0.eps:.6g} found but optimum has w2=0 after it: {zero_after}, "
                      f"w2>0 before it: {pos_before}, w1>0 throughout: {w1_pos}")
    evidence = {"eps_grid": grid.tolist(), "w1": opt0["w1"].tolist(), "w2": opt0["w2"].tolist(),
                "dL_dw2_at_0": {"eps": th0.grid.tolist(), "value": th0.derivative.tolist()}}
    if smooth is None:
        return {**base, "claims": {"1": claim1, "3": f"not computed ({note})"}, "eps0": th0.eps, "eps1": None,
                "method": opt0["method"], "convex": {"hard": hard.convex}, "evidence": evidence}
    try:
        th1 = threshold(world, smooth)
        opt1 = optimal_weights(world, smooth, grid)
    except ValueError as exc:  # e.g. label smoothing beyond K = 4
        return {**base, "claims": {"1": claim1, "3": f"not computed ({exc})"}, "eps0": th0.eps, "eps1": None,
                "method": opt0["method"], "convex": {"hard": hard.convex}, "evidence": evidence}
    # claim 3: eps1 > eps0 and w2_LS > w2 on (0, eps1)
    upto = th1.eps if th1.eps is not None else half
    inside = grid < upto
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio0 = np.where(opt0["w1"] != 0, opt0["w2"] / opt0["w1"], np.nan)
        ratio1 = np.where(opt1["w1"] != 0, opt1["w2"] / opt1["w1"], np.nan)
    # "larger" beyond the weights' precision: where the two optima coincide (joint + l1-share: to 1e-12) a bare
    # comparison would decide on rounding noise, and where the weights carry a larger error (joint l2 + label
    # smoothing: w_error up to ~3e-2) a difference inside it decides nothing (None: undecided)
    err = opt0["w_error"][inside] + opt1["w_error"][inside] + tol
    absolute = _larger(opt1["w2"][inside], opt0["w2"][inside], err)
    # error of w2 / w1 from errors e in both weights: e (1 + |w2 / w1|) / |w1|, for either optimum
    ratio_err = (opt0["w_error"][inside] * (1 + np.abs(ratio0[inside])) / np.abs(opt0["w1"][inside])
                 + opt1["w_error"][inside] * (1 + np.abs(ratio1[inside])) / np.abs(opt1["w1"][inside]) + tol)
    ratio = _larger(ratio1[inside], ratio0[inside], ratio_err)
    if th0.eps is None or th1.eps is None:
        soft = "label smoothing" if teacher is None else "distillation"
        order = "no threshold" + (f" with {soft}" if th1.eps is None else f" without {soft}")
        thresholds_ok = False
    else:
        thresholds_ok = th1.eps > th0.eps
        order = f"eps1 {'>' if thresholds_ok else '<='} eps0"
    tag = "LS" if teacher is None else "KD"
    shown = {True: "True", False: "False", None: "undecided (within the weights' errors)"}
    parts = [order, f"w2_{tag} > w2 on the grid: {shown[absolute]}", f"ratio_{tag} > ratio: {shown[ratio]}"]
    if thresholds_ok and absolute is True and ratio is True:
        claim3 = "holds"
    elif thresholds_ok and ratio is True and absolute is False:
        claim3 = "holds only as a ratio w2/w1"
    elif thresholds_ok and absolute is True and ratio is False:
        claim3 = "holds only in absolute w2"
    elif thresholds_ok and (absolute is None or ratio is None):
        claim3 = "undecided: " + "; ".join(parts)
    else:
        claim3 = "fails: " + "; ".join(parts)
    evidence.update(w_error=opt0["w_error"].tolist(), w_error_ls=opt1["w_error"].tolist())
    return {**base, "claims": {"1": claim1, "3": claim3}, "eps0": th0.eps, "eps1": th1.eps,
            "method": opt0["method"], "convex": {"hard": hard.convex, "smoothed": smooth.convex},
            "evidence": {**evidence, "w1_ls": opt1["w1"].tolist(), "w2_ls": opt1["w2"].tolist(),
                         "dL_dw2_at_0_ls": {"eps": th1.grid.tolist(), "value": th1.derivative.tolist()}}}
