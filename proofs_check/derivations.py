"""Symbolic pieces (sympy) of the tied model on all-but-one-K, and their numeric evaluation.

Each function derives one step of proofs_check/README.md from the data model itself (the weight matrix
and the feature distribution), not from a formula typed in by hand.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sympy as sp

__all__ = ["weight_rows", "worst_case", "first_order_condition", "claim2_probability", "fo_numeric",
           "claim2_numeric"]

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
    return {"diffs": diffs, "shared": shared, "specific": specific, "separable": not other and radii_equal,
            "linf_radius": l1.subs(back), "l2_radius": l2.subs(back)}


def first_order_condition(k: int, norm: str = "linf", smoothed: bool = False) -> dict:
    """dL/dw2 at w2 = +0 for the logitwise (== joint for hard labels, l_inf) loss, integrated over the C_k.

    Per sample of class 0 (E = x_E0, C_j = x_Cj) the loss is sum_c t_c CE(z + eps r [j != c], c) with
    z_0 - z_j = w1 E + w2 C_j. Differentiate in w2, set w2 = 0: every wrong logit is then equal, so the
    derivative is *linear* in the C_j with coefficients depending on E only; E and the C_j are independent,
    so E[. | E] replaces each C_j by mu. Returns the integrand ``g(E)`` (a sympy expression in E, w1, eps,
    mu, alpha) with E_E[g(E)] = dL/dw2(w1, +0), and the per-sample derivative before averaging.
    """
    C = sp.symbols(f"C1:{k}", real=True)
    r = 2 * (w1 + w2) if norm == "linf" else sp.sqrt(2 * (w1 ** 2 + w2 ** 2))
    z = [sp.Integer(0)] + [-(w1 * E + w2 * c) for c in C]
    a = alpha if smoothed else sp.Integer(0)
    t = [1 - a + a / k] + [a / k] * (k - 1)
    loss = 0
    for c in range(k):
        lifted = [z[j] + (eps * r if j != c else 0) for j in range(k)]
        loss += t[c] * (sp.log(sum(sp.exp(v) for v in lifted)) - z[c])
    per_sample = sp.diff(loss, w2).subs(w2, 0)
    linear = sp.expand(per_sample)
    for c in C:
        assert sp.simplify(sp.diff(linear, c, 2)) == 0  # linear in every C_j
    g = sp.simplify(linear.subs({c: mu for c in C}))
    return {"per_sample": per_sample, "integrand": g}


def claim2_probability(k: int, norm: str = "linf") -> dict:
    """P(correct under attack) for w1 > 0, w2 > 0 as a Gaussian-CDF integral over e = (E - mu)/sigma.

    Correct iff w1 E + w2 C_j > eps r for every j; given E the C_j are independent N(mu, sigma^2), so
    P = E_e[ Phi((w1 (mu + sigma e) + w2 mu - eps r) / (w2 sigma))^(K-1) ]. Returns the integrand, its
    derivative in w2, and r.
    """
    e = sp.Symbol("e", real=True)
    r = 2 * (w1 + w2) if norm == "linf" else sp.sqrt(2 * (w1 ** 2 + w2 ** 2))
    Phi = lambda x: (1 + sp.erf(x / sp.sqrt(2))) / 2  # noqa: E731
    density = sp.exp(-e ** 2 / 2) / sp.sqrt(2 * sp.pi)
    integrand = density * Phi((w1 * (mu + sigma * e) + w2 * mu - eps * r) / (w2 * sigma)) ** (k - 1)
    return {"e": e, "integrand": integrand, "d_dw2": sp.diff(integrand, w2), "radius": r}


def _trapezoid_e(func, h: float = 0.02, half: float = 10.0) -> float:
    e = np.arange(-half, half + h / 2, h)
    return float(np.sum(func(e)) * h)


def fo_numeric(k: int, norm: str, smoothed: bool, w1v: float, epsv: float, muv: float, sigmav: float,
               alphav: float = 0.0) -> float:
    """E_E[g(E)] of :func:`first_order_condition` by a 1-d trapezoid over E ~ N(mu, sigma^2)."""
    g = first_order_condition(k, norm, smoothed)["integrand"]
    f = sp.lambdify(E, g.subs({w1: w1v, eps: epsv, mu: muv, alpha: alphav}), "numpy")
    return _trapezoid_e(lambda e: f(muv + sigmav * e) * np.exp(-e * e / 2) / math.sqrt(2 * math.pi))


@lru_cache(maxsize=8)
def _claim2_functions(k: int, norm: str):
    d = claim2_probability(k, norm)
    args = (d["e"], w1, w2, eps, mu, sigma)
    return (sp.lambdify(args, d["integrand"], ["scipy", "numpy"]),
            sp.lambdify(args, d["d_dw2"], ["scipy", "numpy"]))


def claim2_numeric(k: int, norm: str, w1v: float, w2v: float, epsv: float, muv: float, sigmav: float
                   ) -> tuple[float, float]:
    """(P, dP/dw2) of :func:`claim2_probability` at a point, by a 1-d trapezoid in e (w2 > 0).

    The CDF's argument has slope w1 / w2 in e, so the integrand is a step of width ~ w2 / w1: the step is
    h = min(0.01, 0.05 w2 / |w1|), 20 points per width (w2/w1 = 1e-3: h = 5e-5, 4e5 points).
    The sympy expressions are lambdified once per (K, norm), with the parameters as arguments.
    """
    p, dp = _claim2_functions(k, norm)
    values = (w1v, w2v, epsv, muv, sigmav)
    h = min(0.01, 0.05 * abs(w2v) / max(abs(w1v), 1e-300))
    return _trapezoid_e(lambda e: p(e, *values), h=h), _trapezoid_e(lambda e: dp(e, *values), h=h)
