"""Symbolic pieces (sympy) of the tied model on all-but-one-K, and their numeric evaluation.

Each function derives one step of proofs_check/README.md from the data model itself (the weight matrix
and the feature distribution), not from a formula typed in by hand.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sympy as sp

__all__ = ["weight_rows", "worst_case", "radius", "first_order_condition", "hard_label_threshold",
           "smoothed_scores_factorisation", "zero_one_slope", "claim2_probability", "fo_numeric", "claim2_numeric"]

w1, w2, eps, mu, sigma, alpha = sp.symbols("w1 w2 epsilon mu sigma alpha", real=True)
E = sp.Symbol("E", real=True)


def weight_rows(k: int) -> sp.Matrix:
    """W (K x 2K) of the tied model: row k has w1 on E_k and w2 on every C_j, j != k."""
    return sp.Matrix(k, 2 * k, lambda i, f: w1 if f == i else (w2 if f >= k and f - k != i else 0))


def worst_case(k: int) -> dict:
    """l_inf worst case for class y = 0: D_k = W_0 - W_k, which coordinates are shared, the robust margins.

    Returns dict with ``diffs`` (list of D_k), ``shared`` (coordinates with the same nonzero coefficient in
    every D_k), ``specific`` (coordinates nonzero in exactly one D_k), ``separable`` (every coordinate is
    one or the other: then one delta attains every margin's own worst case and joint == logitwise for
    hard labels), ``linf_radius`` = ||D_k||_1 and ``l2_radius`` = ||D_k||_2 (w1, w2 > 0).
    """
    W = weight_rows(k)
    diffs = [W.row(0) - W.row(j) for j in range(1, k)]
    shared, specific, other = [], [], []
    for f in range(2 * k):
        coeffs = [sp.simplify(d[f]) for d in diffs]
        nonzero = [c for c in coeffs if c != 0]
        if not nonzero:
            continue
        if len(nonzero) == len(coeffs) and all(sp.simplify(c - coeffs[0]) == 0 for c in coeffs):
            shared.append(f)
        elif len(nonzero) == 1:
            specific.append(f)
        else:
            other.append(f)
    pos = {w1: sp.Symbol("w1", positive=True), w2: sp.Symbol("w2", positive=True)}
    l1 = sp.simplify(sum(sp.Abs(c.subs(pos)) for c in diffs[0]))
    l2 = sp.simplify(sp.sqrt(sum(c.subs(pos) ** 2 for c in diffs[0])))
    back = {v: k_ for k_, v in pos.items()}
    radii_equal = all(sp.simplify(sum(sp.Abs(c.subs(pos)) for c in d) - l1) == 0 for d in diffs)
    # scorewise: the true score falls by eps ||W_y||_*, the wrong one rises by eps ||W_k||_* (each on its own)
    row_l1 = [sp.simplify(sum(sp.Abs(c.subs(pos)) for c in W.row(i))) for i in range(k)]
    row_l2 = [sp.simplify(sp.sqrt(sum(c.subs(pos) ** 2 for c in W.row(i)))) for i in range(k)]
    return {"diffs": diffs, "shared": shared, "specific": specific, "separable": not other and radii_equal,
            "linf_radius": l1.subs(back), "l2_radius": l2.subs(back),
            "scorewise_linf_radius": sp.simplify(row_l1[0] + row_l1[1]).subs(back),
            "scorewise_l2_radius": sp.simplify(row_l2[0] + row_l2[1]).subs(back),
            "rows_equal_norms": len(set(row_l1)) == 1 and len(set(row_l2)) == 1}


def radius(k: int, norm: str, adversary: str = "pairwise") -> sp.Expr:
    """r(w) (w1, w2 >= 0) with the margin loss eps r(w), from the weight rows (:func:`worst_case`)."""
    wc = worst_case(k)
    key = ("" if adversary == "pairwise" else "scorewise_") + ("linf_radius" if norm == "linf" else "l2_radius")
    return wc[key]


def first_order_condition(k: int, norm: str = "linf", smoothed: bool = False, adversary: str = "pairwise",
                          termwise: bool = True) -> dict:
    """dL/dw2 at w2 = +0, integrated over the C_k: the integrand g(E) with E_E[g(E)] = dL/dw2(w1, +0).

    Per sample of class 0 (E = x_E0, C_j = x_Cj, z_0 - z_j = w1 E + w2 C_j) the loss is, with R = eps r(w)
    (:func:`radius`): ``termwise`` (logitwise, scorewise-termwise) sum_c t_c CE(z + R [j != c], c); otherwise
    (scorewise, and pgd for l_inf) the soft CE at the hard-label scores, sum_c t_c CE(z + R [j != 0], c).
    Differentiate in w2, set w2 = 0: every wrong logit is then equal, so the derivative is *linear* in the C_j
    with coefficients depending on E only; E and the C_j are independent, so E[. | E] replaces each C_j by mu.
    Returns the integrand ``g(E)`` (a sympy expression in E, w1, eps, mu, alpha) and the per-sample derivative.
    """
    C = sp.symbols(f"C1:{k}", real=True)
    r = radius(k, norm, adversary)
    z = [sp.Integer(0)] + [-(w1 * E + w2 * c) for c in C]
    a = alpha if smoothed else sp.Integer(0)
    t = [1 - a + a / k] + [a / k] * (k - 1)
    loss = 0
    for c in range(k):
        lift = c if termwise else 0  # the class whose score is not raised
        lifted = [z[j] + (eps * r if j != lift else 0) for j in range(k)]
        loss += t[c] * (sp.log(sum(sp.exp(v) for v in lifted)) - lifted[c])
    per_sample = sp.diff(loss, w2).subs(w2, 0)
    linear = sp.expand(per_sample)
    for c in C:
        assert sp.simplify(sp.diff(linear, c, 2)) == 0  # linear in every C_j
    g = sp.simplify(linear.subs({c: mu for c in C}))
    return {"per_sample": per_sample, "integrand": g}


def hard_label_threshold(k: int, norm: str, adversary: str = "pairwise") -> dict:
    """Hard labels: dL/dw2(w1, +0) = (eps dr/dw2 - mu) E[P_wrong], P_wrong > 0 (step 7 of the README).

    sympy factors the integrand of :func:`first_order_condition` as ``(eps dr/dw2 - mu) * h(E)`` and checks that
    h is a sum of positive terms; the threshold is the root of the first factor: ``mu / (dr/dw2)`` when that lies
    in (0, mu/2), else none (the sign is the same on all of (0, mu/2)). Returns ``factor``, ``h``, ``eps0``
    (sympy or None), ``dr_dw2``.
    """
    g = first_order_condition(k, norm, False, adversary)["integrand"]
    dr = sp.diff(radius(k, norm, adversary), w2).subs(w2, 0)
    factor = eps * dr - mu
    h = sp.simplify(g / factor)
    assert sp.simplify(sp.diff(h, mu)) == 0, "the factor (eps dr/dw2 - mu) carries every mu"
    e_pos = {E: sp.Symbol("E", positive=True), w1: sp.Symbol("w1", positive=True),
             eps: sp.Symbol("epsilon", positive=True)}
    positive = bool(sp.simplify(h.subs(e_pos)).is_positive)
    root = sp.solve(sp.Eq(factor, 0), eps)
    eps0 = None
    if root and dr != 0:
        value = sp.simplify(root[0])
        inside = sp.simplify(value - mu / 2).subs(mu, 1)
        eps0 = value if inside < 0 else None
    return {"factor": factor, "h": h, "h_positive": positive, "eps0": eps0, "dr_dw2": dr}


def smoothed_scores_factorisation(k: int, norm: str = "linf", adversary: str = "scorewise") -> dict:
    """Label smoothing at the hard-label scores (scorewise; pgd for l_inf): the integrand of dL/dw2(w1, +0) equals
    ``(eps dr/dw2 - mu) (P_wrong(E) - alpha (K-1)/K)`` with P_wrong(E) the wrong classes' softmax mass at w2 = 0.

    Returns ``difference`` (0 when the identity holds), ``p_wrong`` and the factor.
    """
    g = first_order_condition(k, norm, True, adversary, termwise=False)["integrand"]
    dr = sp.diff(radius(k, norm, adversary), w2).subs(w2, 0)
    r0 = radius(k, norm, adversary).subs(w2, 0)
    wrong = (k - 1) * sp.exp(-w1 * E + eps * r0)
    p_wrong = wrong / (1 + wrong)
    claim = (eps * dr - mu) * (p_wrong - alpha * (k - 1) / k)
    return {"difference": sp.simplify(g - claim), "p_wrong": p_wrong, "factor": eps * dr - mu}


def zero_one_slope(k: int, norm: str, adversary: str = "pairwise") -> dict:
    """d/dtheta at theta = 0+ of P(correct) at w = (cos theta, sin theta), and the eps where it vanishes.

    Every robust margin is m(theta) + sigma (cos theta Z0 + sin theta Z_k), m(theta) = mu (cos + sin) - eps r(cos,
    sin), so P = P(cos Z0 + sin M > t(theta)), M = min_k Z_k, t = -m / sigma. At theta = 0, d/dtheta of
    P(Y_theta > t) is f_Y(t) (E[dY/dtheta | Y = t] - t'(0)) = phi(t0) (E[M] + m'(0) / sigma) (Y_0 = Z0 independent
    of M). E[M] = -e_{K-1}, e_n the expected maximum of n standard normals (sympy integrates e_2 = 1/sqrt(pi)).
    Returns ``slope_factor`` = m'(0) / sigma - e_{K-1} (its sign is the slope's), ``e_max`` and ``eps0`` (the root
    in eps, or None when m'(0) does not depend on eps).
    """
    th = sp.Symbol("theta", real=True)
    r = radius(k, norm, adversary).subs({w1: sp.cos(th), w2: sp.sin(th)})
    m = mu * (sp.cos(th) + sp.sin(th)) - eps * r
    dm0 = sp.simplify(sp.diff(m, th).subs(th, 0))
    x = sp.Symbol("x", real=True)
    n = k - 1
    phi = sp.exp(-x ** 2 / 2) / sp.sqrt(2 * sp.pi)
    Phi = (1 + sp.erf(x / sp.sqrt(2))) / 2
    e_max = sp.integrate(x * n * phi * Phi ** (n - 1), (x, -sp.oo, sp.oo)) if n <= 2 else None
    if e_max is None:  # no closed form beyond n = 2: the integral stays symbolic (evaluated numerically)
        e_max = sp.Integral(x * n * phi * Phi ** (n - 1), (x, -sp.oo, sp.oo))
    factor = dm0 / sigma - e_max
    root = sp.solve(sp.Eq(factor, 0), eps) if factor.has(eps) else []
    return {"slope_factor": sp.simplify(factor), "e_max": e_max, "dm_dtheta_0": dm0,
            "eps0": sp.simplify(root[0]) if root else None}


def claim2_probability(k: int, norm: str = "linf", adversary: str = "pairwise") -> dict:
    """P(correct under attack) for w1 > 0, w2 > 0 as a Gaussian-CDF integral over e = (E - mu)/sigma.

    Correct iff w1 E + w2 C_j > eps r for every j; given E the C_j are independent N(mu, sigma^2), so
    P = E_e[ Phi((w1 (mu + sigma e) + w2 mu - eps r) / (w2 sigma))^(K-1) ]. Returns the integrand, its
    derivative in w2, and r.
    """
    e = sp.Symbol("e", real=True)
    r = radius(k, norm, adversary)
    Phi = lambda x: (1 + sp.erf(x / sp.sqrt(2))) / 2  # noqa: E731
    density = sp.exp(-e ** 2 / 2) / sp.sqrt(2 * sp.pi)
    integrand = density * Phi((w1 * (mu + sigma * e) + w2 * mu - eps * r) / (w2 * sigma)) ** (k - 1)
    return {"e": e, "integrand": integrand, "d_dw2": sp.diff(integrand, w2), "radius": r}


def _trapezoid_e(func, h: float = 0.02, half: float = 10.0) -> float:
    e = np.arange(-half, half + h / 2, h)
    return float(np.sum(func(e)) * h)


@lru_cache(maxsize=32)
def _fo_integrand(k: int, norm: str, smoothed: bool, adversary: str, termwise: bool):
    return first_order_condition(k, norm, smoothed, adversary, termwise)["integrand"]


def fo_numeric(k: int, norm: str, smoothed: bool, w1v: float, epsv: float, muv: float, sigmav: float,
               alphav: float = 0.0, adversary: str = "pairwise", termwise: bool = True) -> float:
    """E_E[g(E)] of :func:`first_order_condition` by a 1-d trapezoid over E ~ N(mu, sigma^2)."""
    g = _fo_integrand(k, norm, smoothed, adversary, termwise)
    f = sp.lambdify(E, g.subs({w1: w1v, eps: epsv, mu: muv, alpha: alphav}), "numpy")
    return _trapezoid_e(lambda e: f(muv + sigmav * e) * np.exp(-e * e / 2) / math.sqrt(2 * math.pi))


@lru_cache(maxsize=8)
def _claim2_functions(k: int, norm: str, adversary: str = "pairwise"):
    d = claim2_probability(k, norm, adversary)
    args = (d["e"], w1, w2, eps, mu, sigma)
    return (sp.lambdify(args, d["integrand"], ["scipy", "numpy"]),
            sp.lambdify(args, d["d_dw2"], ["scipy", "numpy"]))


def claim2_numeric(k: int, norm: str, w1v: float, w2v: float, epsv: float, muv: float, sigmav: float,
                   adversary: str = "pairwise") -> tuple[float, float]:
    """(P, dP/dw2) of :func:`claim2_probability` at a point, by a 1-d trapezoid in e (w2 > 0).

    The CDF's argument has slope w1 / w2 in e, so the integrand is a step of width ~ w2 / w1: the step is
    h = min(0.01, 0.05 w2 / |w1|), 20 points per width (w2/w1 = 1e-3: h = 5e-5, 4e5 points).
    The sympy expressions are lambdified once per (K, norm), with the parameters as arguments.
    """
    p, dp = _claim2_functions(k, norm, adversary)
    values = (w1v, w2v, epsv, muv, sigmav)
    h = min(0.01, 0.05 * abs(w2v) / max(abs(w1v), 1e-300))
    return _trapezoid_e(lambda e: p(e, *values), h=h), _trapezoid_e(lambda e: dp(e, *values), h=h)
