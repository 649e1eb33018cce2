"""Quadrature rules and *analytic* loss / gradient / Hessian of the tied model's robust loss (numpy).

The routines behind :mod:`synthmodel.population.registry` (the package docstring gives the reduction to the
Gaussian coordinates (xi, eta)). :mod:`synthmodel.population.reference` (autograd) is an independent reference;
tests check that the two agree. Every routine takes the attack's margin loss from :func:`attack_radius`
(pairwise or scorewise).

**Rule.** A tensor trapezoid rule: xi on ``h_xi Z``, eta on ``h_eta Z^(K-2)``, both cut at |t| <= 8 (the
Gaussian mass beyond is ~1e-15), with Gaussian weights. Step sizes come in quarter octaves
``h = 0.5 * 2^(-level/4)`` so that rules are cached and shared between calls. For K = 3 every loss here is
symmetric under swapping the two wrong classes, i.e. under eta -> -eta, so only eta >= 0 is kept (weights
doubled for eta > 0). The integrand is analytic in a strip of half-width ~ pi / scale (its logits are
affine in the Gaussians; log-sum-exp has its nearest complex singularity where two logits differ by pi i,
see :func:`_scales`), and the Gaussian weight grows like exp(y^2 / 2) off the axis, so the rule's error is
about ``exp(-E(h))`` with E from :func:`_h_required`; each element of a batch gets the coarsest
quarter-octave step with ``E >= LOG_TARGET = 21`` (bound ~8e-10; measured errors ~1e-10). Callers verify
every value with the rule shifted by h/2 in all dimensions (:func:`rule`, ``offset``) and report half the
difference as the error estimate.

**Derivatives.** With ``sd = sqrt(w1^2 + w2^2 / (K-1))`` the margin over wrong class k is
``M_k = (w1 + w2) mu + sigma (sd xi + w2 d_k)`` (d = Q eta), so
dM_k/dw1 = mu + sigma xi w1 / sd, dM_k/dw2 = mu + sigma (xi w2 / ((K-1) sd) + d_k) and
d2M_k/dw2 = sigma xi d2(sd) (the same for every k). Each loss term is ``LSE(y) - tau . y`` with logits
``y = z + R s`` (z_0 = 0, z_k = -M_k; R = eps r(w) the attack radius, s the shift pattern, tau the target);
its gradient is ``(p - tau) . dy`` and its Hessian ``dy^T (diag p - p p^T) dy + (p - tau) . d2y`` with
p = softmax(y): softmax-weighted moments of the node values.

Hard labels (alpha = 0) use a cheaper exact form: the loss is ``softplus(x)`` with
``x = R - (w1 + w2) mu - sigma sd xi + U(eta)``, ``U = log sum_k exp(-sigma w2 d_k)``, which separates xi
from eta, so every moment is two small matrix products.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import product

import numpy as np
from scipy.special import expit

_RANGE = 8.0       # nodes on |t| <= 8 per dimension: P(|Z| > 8) = 1.2e-15
_MASS = math.erf(_RANGE / math.sqrt(2.0))  # P(|Z| <= 8)
LOG_TARGET = 21.0  # step chosen so that the trapezoid error bound is exp(-21) ~ 8e-10 (see _h_required)
MAX_LEVEL = 40     # h = 0.5 * 2^-10
_TINY = 1e-300


def h_of(level: int) -> float:
    return 0.5 * 2.0 ** (-level / 4.0)


def _h_required(scale: np.ndarray) -> np.ndarray:
    """Largest step whose trapezoid error bound ``exp(-E)`` has E >= LOG_TARGET, per dimension.

    For ``f(t) phi(t)`` with f analytic in the strip |Im t| < a = pi / scale, the trapezoid error is about
    ``exp(-2 pi a' / h + a'^2 / 2)`` for any a' <= a (phi grows like exp(y^2 / 2) off the real axis), so
    E(h) = max over a' <= pi / scale of that exponent: ``2 pi^2 / h^2`` when the best a' = 2 pi / h lies in
    the strip (h >= 2 scale), else ``2 pi^2 / (h scale) - pi^2 / (2 scale^2)``.
    """
    scale = np.maximum(np.asarray(scale, dtype=np.float64), 1e-300)
    h_wide = math.pi * math.sqrt(2.0 / LOG_TARGET)
    h_strip = 2.0 * math.pi ** 2 * scale / (LOG_TARGET * scale * scale + 0.5 * math.pi ** 2)
    return np.where(h_wide >= 2.0 * scale, h_wide, h_strip)


def _level_of_scale(scale: np.ndarray) -> np.ndarray:
    h = _h_required(scale)
    lv = np.ceil(4.0 * np.log2(0.5 / np.minimum(h, 0.5)) - 1e-12)
    return np.maximum(lv, 0).astype(np.int64)


def level_for(scale: float) -> int:
    """Smallest quarter-octave level whose step meets :func:`_h_required` (h <= 0.5)."""
    return int(_level_of_scale(np.array([scale]))[0])


def _scales(k: int, sigma: float, w1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Analyticity scales of the integrand in xi and in eta (its singularities lie ~pi / scale off the axis).

    xi: the logits are affine in xi with slope sigma sd(w), and log-sum-exp has its nearest complex
    singularity where two logits differ by pi i: scale sigma sd(w). eta: the wrong logits differ among
    themselves by sigma w2 (d_i - d_j), slope up to sigma |w2| ||q_i - q_j|| = sigma |w2| sqrt(2) (rows of Q
    span the complement of ones); for K = 3 the integrand contains log(2 cosh(sigma w2 eta / sqrt 2)), whose
    zeros sit at pi / (sigma |w2| sqrt 2).
    """
    w1, w2 = np.abs(np.asarray(w1, dtype=np.float64)), np.abs(np.asarray(w2, dtype=np.float64))
    return sigma * np.sqrt(w1 * w1 + w2 * w2 / (k - 1)), sigma * w2 * math.sqrt(2.0)


def levels_for(k: int, sigma: float, w1: np.ndarray, w2: np.ndarray) -> tuple[int, int]:
    """Rule levels (xi, eta) for the largest |w| of a batch (the required step falls with the slope)."""
    if not np.size(w1):
        return 0, 0
    s_xi, s_eta = _scales(k, sigma, w1, w2)
    return level_for(float(s_xi.max())), level_for(float(s_eta.max()))


def level_array(k: int, sigma: float, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """Per-element rule levels (B, 2): each element gets the rule its own weights need."""
    s_xi, s_eta = _scales(k, sigma, w1, w2)
    return np.stack([_level_of_scale(s_xi), _level_of_scale(s_eta)], axis=1)


def _deviation_basis(k: int) -> np.ndarray:
    """Q (K-1, K-2): orthonormal columns orthogonal to ones; the wrong logits' deviations are d = Q eta."""
    q, _ = np.linalg.qr(np.concatenate([np.ones((k - 1, 1)), np.eye(k - 1)], axis=1))
    return q[:, 1:k - 1]


def _eta_half_line(level: int, offset: bool, width: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """K = 3: deviations d (J, 2) and weights (J,) on the eta half-line by Gauss-Legendre (:func:`_half_line_gl`)."""
    eta, weta = _half_line_gl(level, offset, width)
    return eta[:, None] * _deviation_basis(3)[:, 0][None], weta


@lru_cache(maxsize=64)
def _line(level: int, half: bool, offset: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid nodes ``h Z`` (or the shifted ones ``h (Z + 1/2)``) on |t| <= ~8 with weights h phi(t)."""
    h = h_of(level)
    n = int(math.ceil(_RANGE / h))
    t = h * (np.arange(-n, n + 1) + (0.5 if offset else 0.0))
    if offset:
        t = t[:-1]  # symmetric: -(n - 1/2) h .. (n - 1/2) h
    w = h * np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    if half:  # eta -> -eta symmetry: keep t >= 0, double t > 0
        w = np.where(t > 0, 2.0 * w, w)[t >= 0]
        t = t[t >= 0]
    return t, w


@lru_cache(maxsize=64)
def rule(k: int, level_xi: int, level_eta: int, offset: bool = False
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tensor rule: xi (I,), xi weights (I,), deviations d = Q eta (J, K-1), eta weights (J,).

    ``offset``: the same lattice shifted by h/2 in every dimension. Averaging it with the unshifted rule gives
    the body-centred lattice rule, whose leading aliasing errors (the +-1/h Fourier modes of each dimension,
    which the two lattices see with opposite signs) cancel; half their difference estimates the unshifted
    rule's error in all dimensions at once, for the cost of one extra rule instead of the 2^d of halving h.
    """
    if max(level_xi, level_eta) > MAX_LEVEL:
        raise ValueError(f"quadrature level {max(level_xi, level_eta)} beyond {MAX_LEVEL}: weights too large")
    xi, wxi = _line(level_xi, False, offset)
    dims = k - 2
    basis = _deviation_basis(k)
    if dims == 1:
        eta, weta = _line(level_eta, True, offset)
        nodes = eta[:, None]
    else:
        eta, w1d = _line(level_eta, False, offset)
        grids = np.meshgrid(*([eta] * dims), indexing="ij")
        wgrid = np.meshgrid(*([w1d] * dims), indexing="ij")
        nodes = np.stack([g.ravel() for g in grids], axis=1)
        weta = np.prod(np.stack([g.ravel() for g in wgrid], axis=1), axis=1)
        keep = weta > 1e-17 * weta.max()
        nodes, weta = nodes[keep], weta[keep]
        if nodes.shape[0] * xi.size > 2_000_000:
            raise ValueError(f"quadrature for K={k} needs {nodes.shape[0] * xi.size} nodes: too slow; use a smaller K")
    dev = nodes @ basis.T
    return xi, wxi, np.ascontiguousarray(dev), weta


def attack_radius(k: int, norm: str, adversary: str, w1, w2):
    """r(w) with the attack's margin loss R = eps r(w), and its first and second derivatives (numpy, (B,)).

    ``pairwise`` (joint, logitwise, pgd): r = ||W_y - W_k||_* = 2 (|w1| + |w2|) (l_inf, dual l1) or
    sqrt(2 (w1^2 + w2^2)) (l2). ``scorewise``: r = ||W_y||_* + ||W_k||_* = 2 ||W_k||_*, the class row having w1 once
    and w2 K-1 times: 2 (|w1| + (K-1) |w2|) or 2 sqrt(w1^2 + (K-1) w2^2). At a signed zero the l_inf derivative is
    the one of the side the zero's sign selects. Returns r (B,), dr (B, 2), d2r (B, 2, 2).
    """
    b = w1.size
    c2 = 1.0 if adversary == "pairwise" else float(k - 1)   # weight of w2 in the norm
    scale = 2.0 if norm == "linf" or adversary == "scorewise" else math.sqrt(2.0)
    if norm == "linf":
        s1, s2 = np.copysign(1.0, w1), np.copysign(1.0, w2)
        r = scale * (s1 * w1 + c2 * s2 * w2)
        dr = scale * np.stack([s1, c2 * s2], axis=1)
        d2r = np.zeros((b, 2, 2))
    else:
        n = np.maximum(np.sqrt(w1 * w1 + c2 * w2 * w2), _TINY)
        u = np.stack([w1, c2 * w2], axis=1) / n[:, None]
        r = scale * n
        dr = scale * u
        d2r = scale * (np.diag([1.0, c2])[None] - u[:, :, None] * u[:, None, :]) / n[:, None, None]
    return r, dr, d2r


def _geometry(k: int, norm: str, w1, w2, eps, adversary: str = "pairwise"):
    """sd and its derivatives; attack radius R = eps r(w) and its derivatives (right ones at signed zeros)."""
    b = w1.size
    sd = np.sqrt(w1 * w1 + w2 * w2 / (k - 1))
    sd = np.maximum(sd, _TINY)
    dsd = np.stack([w1 / sd, w2 / ((k - 1) * sd)], axis=1)
    sd3 = np.maximum(sd ** 3, _TINY)  # at w = 0 the sd terms vanish (E[xi] = 0): numerators are 0 there
    d2sd = np.empty((b, 2, 2))
    d2sd[:, 0, 0] = (w2 * w2 / (k - 1)) / sd3
    d2sd[:, 0, 1] = d2sd[:, 1, 0] = -w1 * w2 / ((k - 1) * sd3)
    d2sd[:, 1, 1] = w1 * w1 / ((k - 1) * sd3)
    r, dr, d2r = attack_radius(k, norm, adversary, w1, w2)
    e = eps[:, None]
    return sd, dsd, d2sd, eps * r, dr * e, d2r * e[:, None]


def hard_eval(k: int, mu: float, sigma: float, norm: str, w1, w2, eps, levels: tuple[int, int], order: int = 2,
              offset: bool = False, adversary: str = "pairwise"):
    """Hard-label robust CE (logitwise; == joint for l_inf; scorewise with ``adversary='scorewise'``): loss (B,),
    grad (B, 2), Hessian (B, 2, 2).

    ``order`` 0 / 1 / 2: what to compute (the others are returned as None). ``offset``: the shifted rule.
    """
    xi, wxi, dev, weta = rule(k, *levels, offset)
    sd, dsd, d2sd, radius, d_radius, d2_radius = _geometry(k, norm, w1, w2, eps, adversary)
    a = (-sigma * w2)[:, None, None] * dev[None]                          # (B, J, K-1)
    amax = a.max(axis=-1, keepdims=True)
    ea = np.exp(a - amax)
    tot = ea.sum(axis=-1)
    u_eta = np.log(tot) + amax[..., 0]                                    # (B, J)
    x = ((radius - (w1 + w2) * mu)[:, None, None] - (sigma * sd)[:, None, None] * xi[None, :, None]
         + u_eta[:, None, :])                                             # (B, I, J)
    loss = np.logaddexp(0.0, x) @ weta @ wxi
    if order == 0:
        return loss, None, None
    q = ea / tot[..., None]
    v = (q * dev).sum(-1)                                                 # E_q d      (B, J)
    p = expit(x)
    cols = [np.broadcast_to(weta, v.shape), weta * v]
    if order == 2:
        w_var = sigma * sigma * ((q * dev * dev).sum(-1) - v * v)         # d2U/dw2^2 (B, J)
        cols.append(weta * w_var)
    pj = np.matmul(p, np.stack(cols, axis=-1))                           # (B, I, n)
    xi_w = np.stack([wxi, wxi * xi], axis=0)                               # (2, I)
    pm = np.einsum("bin,mi->bmn", pj, xi_w)                                # P[m, n] = sum w p xi^m f_n
    alpha_ = d_radius - mu                                                 # dx = alpha + beta xi + gamma v
    beta = -sigma * dsd
    gamma = np.array([0.0, -sigma])
    grad = alpha_ * pm[:, 0, 0, None] + beta * pm[:, 1, 0, None] + gamma * pm[:, 0, 1, None]
    if order == 1:
        return loss, grad, None
    pp = p - p * p
    qj = np.matmul(pp, np.stack([np.broadcast_to(weta, v.shape), weta * v, weta * v * v], axis=-1))
    xi_w2 = np.stack([wxi, wxi * xi, wxi * xi * xi], axis=0)
    qm = np.einsum("bin,mi->bmn", qj, xi_w2)                               # Q[m, n] = sum w p(1-p) xi^m v^n
    outer = lambda u, t: u[:, :, None] * t[:, None, :]  # noqa: E731
    g_b = np.broadcast_to(gamma, alpha_.shape)
    hess = (outer(alpha_, alpha_) * qm[:, 0, 0, None, None]
            + (outer(alpha_, beta) + outer(beta, alpha_)) * qm[:, 1, 0, None, None]
            + outer(beta, beta) * qm[:, 2, 0, None, None]
            + (outer(alpha_, g_b) + outer(g_b, alpha_)) * qm[:, 0, 1, None, None]
            + (outer(beta, g_b) + outer(g_b, beta)) * qm[:, 1, 1, None, None]
            + outer(g_b, g_b) * qm[:, 0, 2, None, None]
            + d2_radius * pm[:, 0, 0, None, None] - sigma * d2sd * pm[:, 1, 0, None, None])
    hess[:, 1, 1] += pm[:, 0, 2]
    return loss, grad, hess


@lru_cache(maxsize=16)
def joint_patterns(k: int) -> np.ndarray:
    """Distinct shifts (P, K) of ``z_j - z_y`` in units of c = eps(|w1|+|w2|): s_0 + s_j, s in {-1,1}^K."""
    rows = {(0,) + tuple(s0 + s for s in rest) for s0, *rest in product((-1, 1), repeat=k)}
    return np.array(sorted(rows), dtype=np.float64)


def _add_soft_ce_derivatives(grad_n, hess_n, mask, p, target, s, jz, d_radius, d2_radius, sigma_xi=None, d2sd=None):
    """Add ``mask`` times the per-node gradient and Hessian in w of ``LSE(y) - target . y``, y = z + R s.

    p = softmax(y), jz (B, N, K, 2) the Jacobian of z, R's derivatives d_radius (B, 2), d2_radius (B, 2, 2).
    ``sigma_xi`` (broadcastable to (B, N)) and ``d2sd`` (B, 2, 2): where z depends on w through sd(w) (the
    (xi, eta) engines), its curvature term; None where z is linear in w. ``hess_n`` None: gradient only.
    """
    jy = jz + s[None, None, :, None] * d_radius[:, None, None, :]
    g = p - target
    grad_n += mask[..., None] * np.einsum("bnk,bnka->bna", g, jy)
    if hess_n is None:
        return
    pj = np.einsum("bnk,bnka->bna", p, jy)
    h = np.einsum("bnk,bnka,bnkc->bnac", p, jy, jy) - pj[..., :, None] * pj[..., None, :]
    if sigma_xi is not None:
        h += (-(g[..., 1:].sum(-1)) * sigma_xi)[..., None, None] * d2sd[:, None]
    h += (g @ s)[..., None, None] * d2_radius[:, None]
    hess_n += mask[..., None, None] * h


def soft_eval(k: int, mu: float, sigma: float, norm: str, attack: str, alpha: float, w1, w2, eps,
              levels: tuple[int, int], order: int = 2, offset: bool = False, adversary: str = "pairwise"):
    """Robust CE with label-smoothed targets, logitwise (sum over targets, each with its own worst case; with
    ``adversary='scorewise'`` the scorewise-termwise attack) or joint (max over sign patterns on the plain
    trapezoid rule: the reference for :func:`joint_split_eval`, which splits the lines at the ties).

    Returns loss (B,), grad (B, 2), Hessian (B, 2, 2) (None beyond ``order``).
    """
    xi_1, wxi, dev_1, weta = rule(k, *levels, offset)
    xi = np.repeat(xi_1, dev_1.shape[0])                                   # flattened nodes (N,)
    dev = np.tile(dev_1, (xi_1.size, 1))                                   # (N, K-1)
    wn = np.outer(wxi, weta).ravel()
    b = w1.size
    sd, dsd, d2sd, radius, d_radius, d2_radius = _geometry(k, norm, w1, w2, eps, adversary)
    margins = ((w1 + w2) * mu)[:, None, None] + sigma * (sd[:, None, None] * xi[None, :, None]
                                                        + w2[:, None, None] * dev[None])   # (B, N, K-1)
    z = np.concatenate([np.zeros(margins.shape[:2] + (1,)), -margins], axis=-1)          # (B, N, K)
    tau = np.full(k, alpha / k)
    tau[0] += 1.0 - alpha
    if attack == "logitwise":
        eye = np.eye(k)
        terms = [(1.0 - eye[c], eye[c], tau[c]) for c in range(k)]       # (shift s, target, weight)
    else:
        terms = [(0.5 * pat, tau, 1.0) for pat in joint_patterns(k)]     # R s = c * pattern, c = R / 2
    values, cache = [], []
    for s, target, _ in terms:
        y = z + radius[:, None, None] * s
        ymax = y.max(axis=-1, keepdims=True)
        ey = np.exp(y - ymax)
        tot = ey.sum(-1, keepdims=True)
        values.append(np.log(tot[..., 0]) + ymax[..., 0] - y @ target)
        cache.append(ey / tot)
    values = np.stack(values, axis=-1)                                      # (B, N, T)
    if attack == "logitwise":
        weights = np.array([t[2] for t in terms])
        node_loss = values @ weights
        pick = None
    else:
        pick = values.argmax(axis=-1)                                       # the adversary's pattern per node
        node_loss = np.take_along_axis(values, pick[..., None], axis=-1)[..., 0]
    loss = node_loss @ wn
    if order == 0:
        return loss, None, None
    # Jacobian of z: (B, N, K, 2)
    jz = np.zeros((b, xi.size, k, 2))
    jz[:, :, 1:, 0] = -(mu + sigma * dsd[:, 0, None] * xi[None])[..., None]
    jz[:, :, 1:, 1] = -(mu + sigma * (dsd[:, 1, None, None] * xi[None, :, None] + dev[None]))
    grad_n = np.zeros((b, xi.size, 2))
    hess_n = np.zeros((b, xi.size, 2, 2)) if order == 2 else None
    for t_idx, (s, target, weight) in enumerate(terms):
        if pick is None:
            mask = np.full((b, xi.size), weight)
        else:
            mask = (pick == t_idx).astype(np.float64)
            if not mask.any():
                continue
        _add_soft_ce_derivatives(grad_n, hess_n, mask, cache[t_idx], target, s, jz, d_radius, d2_radius,
                                 sigma * xi[None], d2sd)
    grad = np.einsum("bna,n->ba", grad_n, wn)
    hess = np.einsum("bnac,n->bac", hess_n, wn) if order == 2 else None
    return loss, grad, hess


def kd_rule(k: int, level_xi: int, level_eta: int, offset: bool = False):
    """Nodes of the distillation integral: e (standardised E), c = v / sqrt(K-1) + d (standardised C_k), weights.

    The teacher's margins involve ``a1 e + a2 mean(c)``, a direction in (e, v) other than the student's xi, so
    the distillation integral keeps both: e and v = sqrt(K-1) mean(c) on the xi level's line, the deviations
    d = Q eta as in :func:`rule`. Returns e (N,), c (N, K-1), weights (N,), N = I * I * J.
    """
    _, _, dev, weta = rule(k, level_xi, level_eta, offset)
    t, wt = _line(level_xi, False, offset)
    if t.size * t.size * dev.shape[0] > 1_000_000:
        raise ValueError(f"distillation quadrature at levels ({level_xi}, {level_eta}) needs "
                         f"{t.size * t.size * dev.shape[0]} nodes: too many (a sharper teacher, larger |w| or T)")
    e = np.repeat(t, t.size * dev.shape[0])
    v = np.tile(np.repeat(t, dev.shape[0]), t.size)
    c = v[:, None] / math.sqrt(k - 1) + np.tile(dev, (t.size * t.size, 1))
    wn = np.outer(np.outer(wt, wt).ravel(), weta).ravel()
    return e, c, wn


def kd_targets(mu: float, sigma: float, teacher: tuple[float, float, float], e: np.ndarray, c: np.ndarray,
               shift: np.ndarray | None = None) -> np.ndarray:
    """Teacher soft labels ``softmax(teacher_logits / T)`` at the nodes (N, K), index 0 = the true class.

    The teacher is the tied model (a1, a2); on the clean input its logit minus the true one is
    ``-(a1 E + a2 C_k)`` for wrong class k, with E = mu + sigma e, C_k = mu + sigma c_k. ``shift`` (B,): the
    teacher sees x + delta for a delta that raises every wrong logit over the true one by ``shift`` (the joint
    l_inf vertex); the targets are then (B, N, K).
    """
    a1, a2, temp = teacher
    logits = np.concatenate([np.zeros((e.size, 1)), -(a1 * (mu + sigma * e)[:, None] + a2 * (mu + sigma * c))],
                            axis=1)
    if shift is not None:
        logits = logits[None] + shift[:, None, None] * (np.arange(logits.shape[1]) > 0)
    logits = logits / temp
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def kd_eval(k: int, mu: float, sigma: float, norm: str, teacher: tuple[float, float, float], w1, w2, eps,
            levels: tuple[int, int], order: int = 2, offset: bool = False, attack: str = "logitwise",
            adversary: str = "pairwise"):
    """Robust distillation loss: loss, grad, Hessian.

    ``adversary``: the margin loss R = eps r(w) (:func:`attack_radius`): 'scorewise' for the scorewise attacks.
    ``attack='scores'`` (the attack 'scorewise'): the scores set by the hard label (every wrong logit up by R over
    the true one), the teacher on the clean input (no single adversarial input exists), one soft CE there.

    ``logitwise``: ``E sum_c t_c(x) CE(z + R [j != c], c)``, t = :func:`kd_targets` of the teacher on the
    clean input (independent of the student's weights, so the gradient and Hessian are those of the
    label-smoothing case with per-node target weights).

    ``vertex`` (l_inf; the population engine's attack 'pgd'): the student and the teacher both see x + delta*,
    delta* the student's hard-label worst
    case (what PGD on the labels realises; the vertex with signs (-s1, +s2) on the true class's (E, C) and
    (+s1, -s2) on every other class's, s = sign(w)). It raises every wrong student logit over the true one by
    R = 2 eps (|w1| + |w2|) and every wrong teacher logit by ``R_T = 2 eps (a1 s1 + a2 s2)``, so the loss is
    ``E sum_c t_c(x + delta*) CE(z + R [j != 0], c)``. R_T depends on w only through its signs: within a sign
    quadrant the targets are constant in w (at w = +-0 the signs follow copysign, the right/left limits).

    The student's margins are ``M_k = (w1 + w2) mu + sigma (w1 e + w2 c_k)``: linear in w, so d2M/dw2 = 0 and
    the only second-order term besides the softmax covariance is the radius's.
    """
    e, c, wn = kd_rule(k, *levels, offset)
    b, n = w1.size, e.size
    _, _, _, radius, d_radius, d2_radius = _geometry(k, norm, w1, w2, eps, adversary)
    margins = ((w1 + w2) * mu)[:, None, None] + sigma * (w1[:, None, None] * e[None, :, None]
                                                        + w2[:, None, None] * c[None])        # (B, N, K-1)
    z = np.concatenate([np.zeros((b, n, 1)), -margins], axis=-1)                             # (B, N, K)
    eye = np.eye(k)
    if attack == "vertex":
        if norm != "linf":
            raise ValueError("distillation at the hard-label vertex is exact for l_inf only")
        a1, a2, _ = teacher
        shift_t = 2.0 * eps * (a1 * np.copysign(1.0, w1) + a2 * np.copysign(1.0, w2))
        tgt = kd_targets(mu, sigma, teacher, e, c, shift_t)                                   # (B, N, K)
        classes = [(1.0 - eye[0], tgt)]  # one CE term: its targets already sum the classes
    elif attack == "scores":
        classes = [(1.0 - eye[0], kd_targets(mu, sigma, teacher, e, c)[None])]
    else:
        tgt = kd_targets(mu, sigma, teacher, e, c)                                            # (N, K)
        classes = [(1.0 - eye[cls], tgt[None, :, cls]) for cls in range(k)]
    node_loss = np.zeros((b, n))
    grad_n = np.zeros((b, n, 2)) if order >= 1 else None
    hess_n = np.zeros((b, n, 2, 2)) if order == 2 else None
    if order >= 1:
        jz = np.zeros((b, n, k, 2))
        jz[:, :, 1:, 0] = -(mu + sigma * e)[None, :, None]
        jz[:, :, 1:, 1] = -(mu + sigma * c)[None]
    for cls, (s, weight) in enumerate(classes):
        y = z + radius[:, None, None] * s
        ymax = y.max(axis=-1, keepdims=True)
        ey = np.exp(y - ymax)
        tot = ey.sum(-1, keepdims=True)
        if attack in ("vertex", "scores"):  # soft CE sum_c t_c (LSE(y) - y_c), the t_c summing to 1
            node_loss += np.log(tot[..., 0]) + ymax[..., 0] - (weight * y).sum(-1)
            mask, target = np.ones((1, 1)), weight
        else:
            node_loss += weight * (np.log(tot[..., 0]) + ymax[..., 0] - y[..., cls])
            mask, target = weight, eye[cls]
        if order:  # z is linear in w here: no sd curvature term
            _add_soft_ce_derivatives(grad_n, hess_n, mask, ey / tot, target, s, jz, d_radius, d2_radius)
    loss = node_loss @ wn
    grad = np.einsum("bna,n->ba", grad_n, wn) if order >= 1 else None
    hess = np.einsum("bnac,n->bac", hess_n, wn) if order == 2 else None
    return loss, grad, hess


_GL_NODES = 8  # Gauss-Legendre nodes per piece of a line
_GL_NODES_SHIFTED = 12  # ... and of the verifying rule (a different rule, so that their difference estimates the error)


def _joint_xi_nodes(k: int, mu: float, sigma: float, alpha: float, w1, w2, sd, radius, dev: np.ndarray,
                    level_xi: int, offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """xi nodes (B, J, M) and Gauss-Legendre weights times phi (B, J, M), the lines split at the tie points.

    Along a line (fixed eta) every wrong logit moves by u = -sigma sd xi, so pattern P's value is
    ``log(1 + B_P e^u) - (1 - tau_0) u - C_P`` and two patterns cross at most once, where
    ``e^u = expm1(D) / (B_P - e^D B_Q)``, D = C_P - C_Q. Crossings in |xi| < 8 where the pair is on top of the
    envelope are the breakpoints; [-8, 8] is cut into panels of width <= 4 h (h the trapezoid step of this
    level) and at the breakpoints, and each piece gets Gauss-Legendre nodes.
    """
    pats = joint_patterns(k)[:, 1:]                                           # (P, K-1)
    tau = np.full(k, alpha / k)
    tau[0] += 1.0 - alpha
    c = 0.5 * radius                                                          # (B,)
    a = -(((w1 + w2) * mu)[:, None, None] + sigma * w2[:, None, None] * dev[None])   # (B, J, K-1)
    y = a[:, :, None, :] + c[:, None, None, None] * pats[None, None]          # (B, J, P, K-1)
    ymax = y.max(-1)
    log_b = np.log(np.exp(y - ymax[..., None]).sum(-1)) + ymax                # (B, J, P)
    cc = y @ tau[1:]                                                          # (B, J, P)
    p_idx, q_idx = np.triu_indices(pats.shape[0], 1)
    d = cc[..., p_idx] - cc[..., q_idx]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ratio = np.expm1(d) / (np.exp(log_b[..., p_idx]) - np.exp(d + log_b[..., q_idx]))
        u = np.log(ratio)                                                     # nan / -inf where no crossing
        xi_cross = -u / np.maximum(sigma * sd, _TINY)[:, None, None]
        ok = np.isfinite(xi_cross) & (np.abs(xi_cross) < _RANGE)
        uu = np.where(ok, u, 0.0)
        vals = (np.logaddexp(0.0, log_b[..., None, :] + uu[..., None]) - (1.0 - tau[0]) * uu[..., None]
                - cc[..., None, :])                                           # (B, J, pairs, P)
    top = vals.max(-1)
    at_pair = np.take_along_axis(vals, p_idx[None, None, :, None].repeat(vals.shape[0], 0).repeat(
        vals.shape[1], 1), axis=-1)[..., 0]
    ok &= at_pair >= top - 1e-12 * (1.0 + np.abs(top))
    bps = np.where(ok, xi_cross, _RANGE)
    m = int(ok.sum(-1).max()) if ok.size else 0
    bps = np.sort(bps, axis=-1)[..., :m]                                      # (B, J, m), padding at +8
    return _split_line_nodes(bps, level_xi, offset)


def _split_line_nodes(bps: np.ndarray, level_xi: int, offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """xi nodes (B, J, M) and Gauss-Legendre weights times phi of lines cut into panels of width <= 4 h (h the
    trapezoid step of this level) and at the breakpoints ``bps`` (B, J, m; padding at +8 adds empty panels).
    _GL_NODES per piece (_GL_NODES_SHIFTED for the shifted, verifying rule)."""
    width = min(2.0, 4.0 * h_of(level_xi))
    n_panel = int(math.ceil(2 * _RANGE / width))
    fixed = np.linspace(-_RANGE, _RANGE, n_panel + 1)
    edges = np.sort(np.concatenate([np.broadcast_to(fixed, bps.shape[:2] + fixed.shape), bps], -1), -1)
    lo, hi = edges[..., :-1], edges[..., 1:]
    t, wt = np.polynomial.legendre.leggauss(_GL_NODES_SHIFTED if offset else _GL_NODES)
    half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
    xi = (mid[..., None] + half[..., None] * t).reshape(*edges.shape[:2], -1)
    wgt = (half[..., None] * wt).reshape(xi.shape) * np.exp(-0.5 * xi * xi) / math.sqrt(2 * math.pi)
    # each line's weights sum to the exact Gaussian mass of [-8, 8]: constants (the zero model) integrate exactly
    wgt *= _MASS / wgt.sum(-1, keepdims=True)
    return xi, wgt


def joint_split_eval(k: int, mu: float, sigma: float, norm: str, alpha: float, w1, w2, eps,
                     levels: tuple[int, int], order: int = 2, offset: bool = False):
    """Joint attack with label smoothing, xi lines split at the adversary's tie points (see _joint_xi_nodes).

    Value and gradient integrands are smooth on every piece, so they converge geometrically; the Hessian is the
    integral of the active pattern's Hessian (the breakpoints' boundary terms are left out, about two thirds
    of the curvature at a tested optimum; population._with_tie_hessian replaces it by differences of the
    exact gradient).
    """
    _, _, dev_1, weta = rule(k, *levels, offset)
    if k == 3:  # even in eta with a kink at eta = 0 (the wrong classes swap): Gauss-Legendre on the half-line
        # (panels of 4 h: on a 12-eps optimal-weight curve w_error 1.7e-4 instead of 8.4e-4 with the trapezoid,
        # 1.6x the time; panels of 2 h gave 2.7e-5 at 3x)
        dev_1, weta = _eta_half_line(levels[1], offset, 4.0)
    b = w1.size
    sd, dsd, d2sd, radius, d_radius, d2_radius = _geometry(k, norm, w1, w2, eps)
    xi3, w3 = _joint_xi_nodes(k, mu, sigma, alpha, w1, w2, sd, radius, dev_1, levels[0], offset)
    m = xi3.shape[-1]
    xi = xi3.reshape(b, -1)                                                   # (B, N), N = J * M
    wn = (w3 * weta[None, :, None]).reshape(b, -1)
    dev = np.repeat(dev_1, m, axis=0)                                         # (N, K-1)
    n = xi.shape[1]
    margins = ((w1 + w2) * mu)[:, None, None] + sigma * (sd[:, None, None] * xi[..., None]
                                                        + w2[:, None, None] * dev[None])
    z = np.concatenate([np.zeros((b, n, 1)), -margins], axis=-1)
    tau = np.full(k, alpha / k)
    tau[0] += 1.0 - alpha
    pats = joint_patterns(k)
    c = 0.5 * radius[:, None]                                                # (B, 1): R s = c * pattern
    z_tau = z @ tau                                                          # (B, N)
    # LSE of pattern P = top + log(e^-top + sum_j e^(z_j - top) f_j), f_j = e^(c P_j) with P_j in {-2, 0, 2}:
    # the exponentials are taken once per node and class, not once per pattern (top >= every logit's 0 and z_j)
    top = z[..., 1]
    for j in range(2, k):
        top = np.maximum(top, z[..., j])
    top = np.maximum(top, 0.0) + 2.0 * c
    ez = [np.exp(z[..., j] - top) for j in range(1, k)]
    factor = {v: np.exp(c * v) for v in (-2.0, 0.0, 2.0)}
    base = np.exp(-top)
    best = pick = None
    for idx, pat in enumerate(pats):  # the adversary's pattern per node: the largest soft CE
        total = base.copy()
        for j in range(1, k):
            total += ez[j - 1] * factor[float(pat[j])]
        value = top + np.log(total) - z_tau - c * float(pat @ tau)
        if best is None:
            best, pick = value, np.zeros(value.shape, dtype=np.intp)
        else:
            better = value > best
            best = np.where(better, value, best)
            pick = np.where(better, idx, pick)
    loss = (best * wn).sum(1)
    if order == 0:
        return loss, None, None
    # derivatives of the active pattern only (its softmax and shift per node)
    shift = 0.5 * pats[pick]                                                 # (B, N, K)
    y = z + radius[:, None, None] * shift
    p = np.exp(y - _lse_last(y)[..., None])
    jz = np.zeros((b, n, k, 2))
    jz[:, :, 1:, 0] = -(mu + sigma * dsd[:, 0, None] * xi)[..., None]
    jz[:, :, 1:, 1] = -(mu + sigma * (dsd[:, 1, None, None] * xi[..., None] + dev[None]))
    jy = jz + shift[..., None] * d_radius[:, None, None, :]
    g = p - tau
    grad = np.einsum("bnk,bnka,bn->ba", g, jy, wn)
    if order == 1:
        return loss, grad, None
    pj = np.einsum("bnk,bnka->bna", p, jy)
    h = np.einsum("bnk,bnka,bnkc->bnac", p, jy, jy) - pj[..., :, None] * pj[..., None, :]
    h += (-(g[..., 1:].sum(-1)) * sigma * xi)[..., None, None] * d2sd[:, None]
    h += (g * shift).sum(-1)[..., None, None] * d2_radius[:, None]
    return loss, grad, np.einsum("bnac,bn->bac", h, wn)


def _lse_last(y: np.ndarray) -> np.ndarray:
    """log-sum-exp over a short last axis by pairwise logaddexp (faster than a reduction over K <= 4 entries)."""
    out = y[..., 0]
    for j in range(1, y.shape[-1]):
        out = np.logaddexp(out, y[..., j])
    return out


# -- joint l2, hard labels (K = 3) ---------------------------------------------------------------------------
_RHO_UNIQUE = 1.5 ** 1.5 * 4.0 / 3.0  # rho below this: g' >= 1 - rho * 3 q(1-q) / n^3 > 0, one root (docstring)


def _joint_l2_roots(d: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Every root t of ``g(t) = t - d - rho h(sigmoid(t))``, h(q) = (2q - 1) / sqrt(2 - 2q + 2q^2); (..., R).

    d (..., ) and rho broadcastable. Roots lie in d +- rho / sqrt(2) (|h| <= 1/sqrt(2)). Where rho is below
    ``_RHO_UNIQUE`` g is increasing (one root); elsewhere the interval is cut into 64 cells and every cell
    with a sign change is solved. Each bracket is refined by Newton steps kept inside it (bisection when a
    step leaves it) to machine precision. Missing roots are NaN.
    """
    d, rho = np.broadcast_arrays(d, rho)
    cells = 64 if np.any(rho >= _RHO_UNIQUE) else 1
    half = rho / math.sqrt(2.0) + 1e-12 * (1.0 + np.abs(d))
    edges = d[..., None] + half[..., None] * np.linspace(-1.0, 1.0, cells + 1)      # (..., C+1)

    def g_and_dg(t, r, dd):
        q = expit(t)
        n2 = 2.0 - 2.0 * q + 2.0 * q * q
        n = np.sqrt(n2)
        g = t - dd - r * (2.0 * q - 1.0) / n
        dg = 1.0 - r * 3.0 / (n2 * n) * q * (1.0 - q)
        return g, dg

    g_edges, _ = g_and_dg(edges, rho[..., None], d[..., None])
    change = (g_edges[..., :-1] <= 0) & (g_edges[..., 1:] > 0) | (g_edges[..., :-1] >= 0) & (g_edges[..., 1:] < 0)
    lo, hi = edges[..., :-1].copy(), edges[..., 1:].copy()
    r, dd = rho[..., None] + 0.0 * lo, d[..., None] + 0.0 * lo
    g_lo, _ = g_and_dg(lo, r, dd)
    t = 0.5 * (lo + hi)
    for _ in range(80):
        g, dg = g_and_dg(t, r, dd)
        same = np.sign(g) == np.sign(g_lo)
        lo, g_lo = np.where(same, t, lo), np.where(same, g, g_lo)
        hi = np.where(same, hi, t)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = t - g / dg
        inside = (newton > np.minimum(lo, hi)) & (newton < np.maximum(lo, hi)) & np.isfinite(newton)
        new = np.where(inside, newton, 0.5 * (lo + hi))
        if np.all((np.abs(new - t) <= 4e-16 * np.maximum(1.0, np.abs(t))) | ~change):
            t = new
            break
        t = new
    roots = np.sort(np.where(change, t, np.nan), axis=-1)  # NaN last
    return roots[..., :3] if cells > 1 else roots  # g - t is increasing then decreasing: at most 3 roots


@lru_cache(maxsize=32)
def _half_line_gl(level: int, offset: bool, width: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre on [0, 8] (panels of width <= ``width`` h(level)), weights 2 phi(t): the eta
    half-line for an integrand that is smooth on t >= 0 but not at 0 as an even function (a kink at eta = 0).
    ``offset`` (the error-estimate partner) uses _GL_NODES_SHIFTED nodes per panel instead of _GL_NODES."""
    panels = max(1, int(math.ceil(_RANGE / (width * h_of(level)))))
    x, w = np.polynomial.legendre.leggauss(_GL_NODES_SHIFTED if offset else _GL_NODES)
    edges = np.linspace(0.0, _RANGE, panels + 1)
    half = 0.5 * np.diff(edges)
    t = (edges[:-1, None] + half[:, None] * (x[None] + 1.0)).ravel()
    wt = (half[:, None] * w[None]).ravel() * 2.0 * np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    return t, wt * (_MASS / wt.sum())  # the exact mass of |t| <= 8, as the xi lines


def joint_l2_eval(k: int, mu: float, sigma: float, w1, w2, eps, levels: tuple[int, int], order: int = 2,
                  offset: bool = False, alpha: float = 0.0):
    """Hard-label robust CE under one l2 perturbation for all logits (joint l2), K = 3: loss, grad, Hessian.

    ``alpha`` > 0: the label-smoothed CE at the same hard-label maximiser delta* (the attack 'pgd': what AT
    with label smoothing trains on), i.e. the value below plus ``(alpha/K) E sum_k (M_k - shift_k)`` with
    shift_k = rho f_k(q*), f_1 + f_2 = 3 / n(q*): ``(alpha/K) (2 (w1 + w2) mu - 3 rho E_eta[1 / n(q*)])``.
    q* is not optimal for that term, so its derivatives go through q*(w) itself: two Newton steps of the
    fixed-point equation from the root, traced by autograd, give its first and second derivatives exactly.

    For class y the change of ``z_k - z_y`` is ``(u + v_k) . delta`` with u = -w1 e_Ey + w2 e_Cy (moves every
    wrong logit) and v_k = w1 e_Ek - w2 e_Ck (moves logit k only); u and the v_k are orthogonal with the same
    length s = |w|. Writing delta = a u/s + sum_k b_k v_k/s + (a part that changes nothing), the inner problem
    is ``max log(1 + sum_k exp(-M_k + s (a + b_k)))`` over a^2 + |b|^2 <= eps^2. The maximum lies on the sphere
    with (a, b) parallel to the gradient, i.e. to (P, p_1, p_2) (the wrong classes' softmax probabilities):
    with q = p_1 / P, a = eps / n, b = eps (q, 1 - q) / n, n = sqrt(1 + q^2 + (1-q)^2), and t = logit q solves
    the 1-d fixed point ``t = D + rho (2q - 1) / n``, D = M_2 - M_1, rho = s eps. Every root is found
    (:func:`_joint_l2_roots`; one root when rho < 2.45) and the best kept: the inner maximum is exact. Wrong
    class k then rises by rho (1 + q_k) / n: between rho sqrt(3/2) (q = 1/2, reached at w2 = 0) and the
    logitwise shift rho sqrt(2) (all on one class).

    In the (xi, eta) reduction D = sigma w2 (d_2 - d_1) depends on eta only, so the roots are solved once per
    eta node, and the best root maximises S = sum_k exp(-sigma w2 d_k + rho f_k(q)) whatever xi is (the loss
    is softplus(log S - mean margin)). For rho >= 2.45 two asymmetric maxima tie at D = 0: the loss is even in
    eta with a kink at eta = 0, so eta is integrated on the half-line by composite Gauss-Legendre
    (:func:`_half_line_gl`, smooth there) and xi by the trapezoid rule.

    Derivatives: per eta node the loss is ``max_t G(w, t)`` over the curve t = logit q of candidate maximisers
    (which lies on the sphere, so G is stationary in t at the maximiser): gradient G_w (envelope theorem),
    Hessian ``G_ww - G_wt G_tw / G_tt``, both at the root, by autograd.
    """
    import torch

    if k != 3:
        raise ValueError(f"joint l2 is computed for K = 3 only (one fixed point in one variable); got K = {k}")
    xi, wxi = _line(levels[0], False, offset)
    dev, weta = _eta_half_line(levels[1], offset)                                          # (J, 2), (J,)
    b = w1.size
    rho = np.sqrt(w1 * w1 + w2 * w2) * eps
    d_gap = sigma * w2[:, None] * (dev[None, :, 1] - dev[None, :, 0])                      # (B, J): M_2 - M_1
    roots = _joint_l2_roots(d_gap, rho[:, None])                                           # (B, J, R)

    xi_t = torch.from_numpy(xi)
    wxi_t = torch.from_numpy(wxi)
    dev_t = torch.from_numpy(dev)
    eps_t = torch.from_numpy(np.asarray(eps, dtype=np.float64))[:, None]

    def log_s(w1_t, w2_t, t):  # (B, J): log sum_k exp(-sigma w2 d_k + rho f_k(q))
        q = torch.sigmoid(t)
        n = torch.sqrt(2.0 - 2.0 * q + 2.0 * q * q)
        f = torch.stack([1.0 + q, 2.0 - q], dim=-1) / n[..., None]
        rho_t = torch.sqrt(w1_t * w1_t + w2_t * w2_t + _TINY) * eps_t
        return torch.logsumexp(-sigma * w2_t[..., None] * dev_t + rho_t[..., None] * f, dim=-1)

    def node_value(w1_t, w2_t, t):  # (B, J): the xi-integrated loss at each eta node
        sd_t = torch.sqrt(w1_t * w1_t + w2_t * w2_t / (k - 1) + _TINY)
        mean_margin = (w1_t + w2_t)[..., None] * mu + sigma * sd_t[..., None] * xi_t             # (B, J, I)
        return torch.nn.functional.softplus(log_s(w1_t, w2_t, t)[..., None] - mean_margin) @ wxi_t

    w1_b = torch.from_numpy(np.asarray(w1, dtype=np.float64))[:, None].expand(b, weta.size)
    w2_b = torch.from_numpy(np.asarray(w2, dtype=np.float64))[:, None].expand(b, weta.size)
    with torch.no_grad():  # the best root of each eta node (the same for every xi)
        cand = torch.from_numpy(np.nan_to_num(roots, nan=0.0))
        scores = torch.stack([log_s(w1_b, w2_b, cand[..., r]) for r in range(cand.shape[-1])], dim=-1)
        scores = torch.where(torch.from_numpy(np.isnan(roots)), -torch.inf, scores)
        t_star = torch.gather(cand, -1, scores.argmax(-1, keepdim=True))[..., 0]
    out = _envelope_eval(node_value, w1_b, w2_b, t_star, torch.from_numpy(weta), order)
    if not alpha:
        return out
    extra = _pgd_l2_smoothing_term(k, mu, sigma, alpha, w1, w2, eps, dev, weta, t_star, order)
    return tuple(None if a is None else a + e for a, e in zip(out, extra, strict=True))


def _pgd_l2_smoothing_term(k, mu, sigma, alpha, w1, w2, eps, dev, weta, t_star, order):
    """``(alpha/K) (2 (w1 + w2) mu - 3 rho E_eta[1 / n(q*)])`` and its derivatives (see :func:`joint_l2_eval`)."""
    import torch

    w = torch.tensor(np.stack([w1, w2], axis=1), dtype=torch.float64, requires_grad=order >= 1)
    eps_t = torch.from_numpy(np.asarray(eps, dtype=np.float64))
    gap = torch.from_numpy(sigma * (dev[:, 1] - dev[:, 0]))                                   # (J,)
    with torch.enable_grad() if order >= 1 else torch.no_grad():
        rho = (torch.sqrt((w * w).sum(-1) + _TINY) * eps_t)[:, None]                           # (B, 1)
        d = w[:, 1, None] * gap                                                               # (B, J)

        def newton(t):
            q = torch.sigmoid(t)
            n2 = 2.0 - 2.0 * q + 2.0 * q * q
            n = torch.sqrt(n2)
            g = t - d - rho * (2.0 * q - 1.0) / n
            dg = 1.0 - rho * 3.0 / (n2 * n) * q * (1.0 - q)
            return t - g / dg

        q = torch.sigmoid(newton(newton(t_star)))
        inv_n = 1.0 / torch.sqrt(2.0 - 2.0 * q + 2.0 * q * q)
        term = (alpha / k) * (2.0 * w.sum(-1) * mu - 3.0 * rho[:, 0] * (inv_n @ torch.from_numpy(weta)))
        loss = term.detach().numpy()
        if order == 0:
            return loss, None, None
        (grad,) = torch.autograd.grad(term.sum(), w, create_graph=order == 2)
        if order == 1:
            return loss, grad.detach().numpy(), None
        rows = [torch.autograd.grad(grad[:, i].sum(), w, retain_graph=True)[0] for i in range(2)]
        return loss, grad.detach().numpy(), torch.stack(rows, dim=1).detach().numpy()


def _envelope_eval(value, w1_b, w2_b, t_star, weights, order: int):
    """Loss, gradient, Hessian of ``sum_n weights_n max_t value(w, t)_n`` from the maximisers t_star (B, N);
    weights (N,) or per element (B, N).

    ``value(w1, w2, t)`` maps per-node tensors (B, N) to (B, N). At the maximiser the value is stationary in t,
    so the gradient is the partial one (envelope theorem) and the Hessian gets the implicit-function term
    ``-G_wt G_tw / G_tt``; all by autograd per node (each node depends only on its own leaves).
    """
    import torch

    if order == 0:
        with torch.no_grad():
            return (value(w1_b, w2_b, t_star) * weights).sum(-1).numpy(), None, None
    w1_l, w2_l, t_l = (t.clone().requires_grad_(True) for t in (w1_b, w2_b, t_star))
    g_val = value(w1_l, w2_l, t_l)
    loss = (g_val.detach() * weights).sum(-1).numpy()
    first = torch.autograd.grad(g_val.sum(), (w1_l, w2_l, t_l), create_graph=order == 2)
    grad = torch.stack([(first[0] * weights).sum(-1), (first[1] * weights).sum(-1)], dim=-1).detach().numpy()
    if order == 1:
        return loss, grad, None
    rows = [torch.autograd.grad(g.sum(), (w1_l, w2_l, t_l), retain_graph=True) for g in first]
    h = torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)                         # (B, N, 3, 3)
    g_tt = h[..., 2, 2]
    g_tt = torch.where(g_tt < 0, g_tt, torch.full_like(g_tt, -_TINY))
    node_h = h[..., :2, :2] - h[..., :2, 2, None] * h[..., 2, None, :2] / g_tt[..., None, None]
    return loss, grad, torch.einsum("bnac,bn->bac", node_h, weights.expand(node_h.shape[:2])).detach().numpy()


# -- hard labels for any K: a one-dimensional representation (Frullani) ---------------------------------------
def _normal_line(level: int, offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid nodes on |t| <= 8 with weights h phi(t), rescaled to sum to 1 exactly (so 1 - E[f] can be
    formed as E[1 - f] without the truncation's 1e-15 floor)."""
    t, w = _line(level, False, offset)
    return t, w / w.sum()


def frullani_eval(k: int, mu: float, sigma: float, norm: str, w1, w2, eps, levels: tuple[int, int], order: int = 2,
                  offset: bool = False, alpha: float = 0.0, adversary: str = "pairwise"):
    """Logitwise robust CE (hard labels == joint for l_inf) for any K by a 1-d outer integral: loss, grad, Hessian.

    For class y the loss is log(1 + B S) with B = exp(R - w1 E), S = sum_k exp(-w2 C_k) over the K - 1 wrong
    classes, E and the C_k independent N(mu, sigma^2), R = eps r(w). Frullani's integral
    ``log(1 + y) = int_0^inf (e^-t - e^-t(1+y)) dt / t`` and the independence of the C_k give, after t = e^(v-log B),

        E log(1 + B S) = int psi(v - R) (1 - phi(v)^(K-1)) dv,
        phi(v) = E_C exp(-exp(v - w2 C)),   psi(s) = E_E exp(-exp(s + w1 E)),

    three one-dimensional Gaussian integrals (K enters only as an exponent). Label smoothing alpha (logitwise):
    the target-c term (c wrong) is CE of the logits with every class but c raised by R, i.e.
    ``R + M_c + log(1 + e^(-M_c - R) + sum_(k != c) e^(-M_k))``, whose expectation is by the same steps
    ``R + (w1 + w2) mu + int psi(v) (1 - phi(v - R) phi(v)^(K-2)) dv``; the loss is
    ``(1 - alpha + alpha/K) L_y + (K - 1) (alpha/K) L_c``. The double exponentials are
    bounded in the strip |Im| < pi/2 of their argument, so every rule is a trapezoid: E and C on |t| <= 8 with
    half the step the (xi, eta) engine takes for the same weights (the strip is half as wide), v with the
    finer of the two steps (at most 0.35), on the v range outside which the integrand is below 1e-18.
    Derivatives by autograd in float64 (the rules do not depend on w within a call).
    """
    import torch

    e_nodes, e_w = _normal_line(levels[0] + 4, offset)
    c_nodes, c_w = _normal_line(levels[1] + 4, offset)
    h_v = min(0.35, h_of(levels[0] + 4), h_of(levels[1] + 4))
    w1n, w2n, epsn = (np.asarray(a, dtype=np.float64) for a in (w1, w2, eps))
    radius = attack_radius(k, norm, adversary, w1n, w2n)[0] * epsn
    # v range: 1 - phi^(K-1) ~ (K-1) e^(v - w2 mu + w2^2 sigma^2 / 2) below; psi(v - R) < e^-42 above
    lo = w2n * mu - 0.5 * (w2n * sigma) ** 2 - math.log(k - 1) - 42.0 - 8.0 * np.abs(w2n) * sigma
    hi = radius - w1n * mu + 8.0 * np.abs(w1n) * sigma + math.log(42.0) + 1.0
    n_v = int(np.ceil((hi - lo).max() / h_v)) + 2
    j = np.arange(n_v) + (0.5 if offset else 0.0)
    v = lo[:, None] + h_v * j[None]                                                     # (B, V)
    v_w = np.where(v <= hi[:, None] + h_v, h_v, 0.0)

    w1_t = torch.tensor(w1n, dtype=torch.float64, requires_grad=order >= 1)
    w2_t = torch.tensor(w2n, dtype=torch.float64, requires_grad=order >= 1)
    eps_t = torch.from_numpy(epsn)
    e_t, ew_t = torch.from_numpy(mu + sigma * e_nodes), torch.from_numpy(e_w)
    c_t, cw_t = torch.from_numpy(mu + sigma * c_nodes), torch.from_numpy(c_w)
    v_t, vw_t = torch.from_numpy(v), torch.from_numpy(v_w)
    with torch.enable_grad() if order >= 1 else torch.no_grad():
        c2 = 1.0 if adversary == "pairwise" else float(k - 1)
        if norm == "linf":  # |w| as w * sign(w), the sign held fixed: right/left derivatives at +-0
            r = 2.0 * (w1_t * torch.copysign(torch.ones_like(w1_t), w1_t.detach())
                       + c2 * w2_t * torch.copysign(torch.ones_like(w2_t), w2_t.detach()))
        else:
            r = (2.0 if adversary == "scorewise" else math.sqrt(2.0)) * torch.sqrt(w1_t * w1_t + c2 * w2_t * w2_t
                                                                                   + 1e-300)
        big_r = (eps_t * r)[:, None]                                                    # (B, 1)
        def log_phi(shift):  # log E_C exp(-exp(v - shift - w2 C)), (B, V)
            omp = (-torch.expm1(-torch.exp((v_t - shift)[..., None] - w2_t[:, None, None] * c_t))) @ cw_t
            # log1p where phi is near 1 (no cancellation), log elsewhere (floored: phi may underflow); each
            # branch gets inputs safe for it, so the unused one's gradient is finite (0, not NaN, after where)
            small = omp < 0.5
            near = torch.log1p(-torch.where(small, omp, torch.zeros_like(omp)))
            far = torch.log(torch.where(small, torch.full_like(omp, 0.5), 1.0 - omp).clamp_min(1e-300))
            return torch.where(small, near, far)

        def psi(shift):  # E_E exp(-exp(v - shift + w1 E)), (B, V)
            return torch.exp(-torch.exp((v_t - shift)[..., None] + w1_t[:, None, None] * e_t)) @ ew_t

        log_phi_0 = log_phi(torch.zeros_like(big_r))
        tail = -torch.expm1((k - 1) * log_phi_0)                                        # 1 - phi^(K-1)
        loss_t = (psi(big_r) * tail * vw_t).sum(-1)
        if alpha:
            tail_c = -torch.expm1(log_phi(big_r) + (k - 2) * log_phi_0)
            loss_c = big_r[:, 0] + (w1_t + w2_t) * mu + (psi(torch.zeros_like(big_r)) * tail_c * vw_t).sum(-1)
            loss_t = (1.0 - alpha + alpha / k) * loss_t + (k - 1) * (alpha / k) * loss_c
        loss = loss_t.detach().numpy()
        if order == 0:
            return loss, None, None
        g1, g2 = torch.autograd.grad(loss_t.sum(), (w1_t, w2_t), create_graph=order == 2)
        grad = torch.stack([g1, g2], dim=-1).detach().numpy()
        if order == 1:
            return loss, grad, None
        h1 = torch.autograd.grad(g1.sum(), (w1_t, w2_t), retain_graph=True)
        h2 = torch.autograd.grad(g2.sum(), (w1_t, w2_t))
        hess = torch.stack([torch.stack(h1, -1), torch.stack(h2, -1)], dim=-2).detach().numpy()
    return loss, grad, hess


# -- joint l2 with label smoothing (K = 3): the adversary on an ellipse --------------------------------------
_THETA_GRID = 96  # samples of the ellipse per node before Newton refinement of the best local maxima


def _ellipse(theta):
    """Unit-radius shifts (x1, x2) of the two wrong logits on the boundary of the reachable set and their first
    two theta-derivatives. With delta = (a, b1, b2) in the orthonormal frame of :func:`joint_l2_eval`, wrong
    logit k moves by s (a + b_k); the pairs (x1, x2) = (a + b1, a + b2) reachable with |delta| <= 1 fill the
    ellipse (x1 + x2)^2 / 6 + (x1 - x2)^2 / 2 <= 1 (minimise |delta| over a for given x): x1 = (sqrt3 cos + sin)
    / sqrt2, x2 = (sqrt3 cos - sin) / sqrt2."""
    c, s = np.cos(theta), np.sin(theta)
    r3, r2 = math.sqrt(3.0), math.sqrt(2.0)
    x = np.stack([(r3 * c + s) / r2, (r3 * c - s) / r2], axis=-1)
    dx = np.stack([(-r3 * s + c) / r2, (-r3 * s - c) / r2], axis=-1)
    return x, dx, -x


def _ellipse_value(a: np.ndarray, rho: np.ndarray, tau: float, theta: np.ndarray) -> np.ndarray:
    """g(theta) = LSE(0, a1 + rho x1, a2 + rho x2) - tau (x1 + x2) rho; a (..., 2), rho and theta (...)."""
    x, _, _ = _ellipse(theta)
    z = a + rho[..., None] * x
    return np.logaddexp(0.0, np.logaddexp(z[..., 0], z[..., 1])) - tau * z.sum(-1)


def _ellipse_refine(a: np.ndarray, rho: np.ndarray, tau: float, theta: np.ndarray, lo: np.ndarray,
                    hi: np.ndarray) -> np.ndarray:
    """Newton steps towards the local maximum of g in [lo, hi] from theta (a bisection-like move otherwise).

    a (..., 2); rho, theta, lo, hi (...)."""
    step = hi - lo
    for _ in range(30):
        xt, dxt, d2xt = _ellipse(theta)
        zt = a + rho[..., None] * xt
        m = np.maximum(0.0, zt.max(-1, keepdims=True))
        ez = np.exp(zt - m)
        p = ez / (np.exp(-m) + ez.sum(-1, keepdims=True))
        u = (p * dxt).sum(-1)
        g1 = rho * ((p - tau) * dxt).sum(-1)
        g2 = rho * ((p - tau) * d2xt).sum(-1) + rho ** 2 * ((p * dxt * dxt).sum(-1) - u * u)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = theta - g1 / g2
        inside = (g2 < 0) & (newton > lo) & (newton < hi) & np.isfinite(newton)
        new = np.where(inside, newton, np.clip(theta + np.sign(g1) * 0.125 * step, lo, hi))
        if np.all(np.abs(new - theta) <= 1e-15 * (1.0 + np.abs(theta))):
            return new
        theta = new
    return theta


def _ellipse_argmax(a: np.ndarray, rho: np.ndarray, tau: float) -> np.ndarray:
    """theta maximising g = LSE(0, a1 + rho x1, a2 + rho x2) - tau (x1 + x2) rho over the ellipse, per node.

    a (..., 2), rho broadcastable to a[..., 0]. g is sampled at ``_THETA_GRID`` angles; its three best local
    maxima are refined by Newton steps kept inside their cells (a bisection-like fallback otherwise), the best
    refined one returned. The maximum of a convex function over the ellipse lies on its boundary.
    """
    grid = np.linspace(0.0, 2 * math.pi, _THETA_GRID, endpoint=False)
    rho = np.broadcast_to(rho, a.shape[:-1])
    g = _ellipse_value(a[..., None, :], rho[..., None], tau, grid)
    left, right = np.roll(g, 1, axis=-1), np.roll(g, -1, axis=-1)
    peak = (g >= left) & (g >= right)
    score = np.where(peak, g, -np.inf)
    top = np.argsort(-score, axis=-1)[..., :3]                                          # (..., 3)
    theta = grid[top]
    ok = np.take_along_axis(peak, top, axis=-1)
    step = 2 * math.pi / _THETA_GRID
    a3, r3 = a[..., None, :], rho[..., None] + np.zeros(theta.shape)
    theta = _ellipse_refine(a3, r3, tau, theta, theta - step, theta + step)
    val = np.where(ok, _ellipse_value(a3, r3, tau, theta), -np.inf)
    return np.take_along_axis(theta, val.argmax(-1)[..., None], axis=-1)[..., 0]


def _l2_neg_margins(mu: float, sigma: float, w1, w2, xi, dev) -> np.ndarray:
    """Minus the two wrong margins ``(w1 + w2) mu + sigma (sd xi + w2 d_k)`` (K = 3), shape (..., 2): w1, w2, xi
    broadcast to (...), dev (..., 2) the deviations d."""
    sd = np.sqrt(w1 * w1 + w2 * w2 / 2)
    return -(((w1 + w2) * mu)[..., None] + sigma * ((sd * xi)[..., None] + np.asarray(w2)[..., None] * dev))


def _l2_soft_xi_nodes(mu: float, sigma: float, tau: float, w1, w2, eps, dev: np.ndarray, level_xi: int,
                      offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """xi nodes (B, J, M) and Gauss-Legendre weights times phi (B, J, M) of joint l2 + label smoothing, every
    line (fixed eta) split where the adversary's best angle jumps from one local maximum to another.

    Along a line both wrong margins move with xi alike. The best angle is found on a detection grid of step
    h (the level's trapezoid step); between two neighbours whose angles differ by more than 0.3 rad, the tie
    ``g(theta_A(xi)) = g(theta_B(xi))`` of the two local maxima (each followed by Newton from its side) is
    bisected to 1e-13 (regula falsi was tried: no faster, the slowest lines set the pace), and the lines are
    cut there (:func:`_split_line_nodes`). Ties closer together than h may be missed.
    """
    b, j = w1.size, dev.shape[0]
    rho = np.sqrt(w1 * w1 + w2 * w2) * eps
    h = h_of(level_xi)
    grid = np.arange(-_RANGE, _RANGE + 0.5 * h, h)
    xi_g = np.broadcast_to(grid, (b, j, grid.size))
    rho_g = np.broadcast_to(rho[:, None, None], xi_g.shape)
    a_g = _l2_neg_margins(mu, sigma, w1[:, None, None], w2[:, None, None], xi_g, dev[None, :, None])
    theta = _ellipse_argmax(a_g, rho_g, tau)                                           # (B, J, T)
    jump = np.abs(np.angle(np.exp(1j * (theta[..., 1:] - theta[..., :-1])))) > 0.3
    bi, ji, ti = np.nonzero(jump)
    bps = np.full((b, j, 0), _RANGE)
    if bi.size:
        lo, hi = grid[ti], grid[ti + 1]
        th_a, th_b = theta[bi, ji, ti], theta[bi, ji, ti + 1]
        cell = 2 * math.pi / _THETA_GRID
        w1_s, w2_s, rho_s, dev_s = w1[bi], w2[bi], rho[bi], dev[ji]
        for _ in range(45):  # bisection on which branch wins (A at lo, B at hi)
            mid = 0.5 * (lo + hi)
            a = _l2_neg_margins(mu, sigma, w1_s, w2_s, mid, dev_s)
            th_a = _ellipse_refine(a, rho_s, tau, th_a, th_a - cell, th_a + cell)
            th_b = _ellipse_refine(a, rho_s, tau, th_b, th_b - cell, th_b + cell)
            a_wins = _ellipse_value(a, rho_s, tau, th_a) >= _ellipse_value(a, rho_s, tau, th_b)
            lo, hi = np.where(a_wins, mid, lo), np.where(a_wins, hi, mid)
            if np.all(hi - lo <= 1e-13):
                break
        counts = np.zeros((b, j), dtype=int)
        np.add.at(counts, (bi, ji), 1)
        bps = np.full((b, j, counts.max()), _RANGE)
        order = np.lexsort((ti, ji, bi))
        bi, ji, mid = bi[order], ji[order], (0.5 * (lo + hi))[order]
        first = np.concatenate([[0], np.cumsum(counts.ravel())[:-1]]).reshape(b, j)
        slot = np.arange(bi.size) - first[bi, ji]
        bps[bi, ji, slot] = mid
    return _split_line_nodes(bps, level_xi, offset)


def joint_l2_soft_eval(k: int, mu: float, sigma: float, alpha: float, w1, w2, eps, levels: tuple[int, int],
                       order: int = 2, offset: bool = False):
    """Label-smoothed robust CE under one l2 perturbation maximising that loss (joint l2), K = 3.

    The loss at a perturbation depends on delta only through the shifts s (x1, x2) of the wrong logits (see
    :func:`_ellipse`), and it is convex there, so the adversary's maximum lies on the ellipse's boundary: a
    periodic function of one angle, maximised per node (:func:`_ellipse_argmax`: sampling then Newton). The
    maximiser depends on xi and eta (the true logit's fixed 0 and the smoothing term break the hard-label
    reduction), and where two local maxima tie the integrand has a kink. Every xi line is split at those ties
    (:func:`_l2_soft_xi_nodes`), Gauss-Legendre per piece; eta keeps the trapezoid. Before
    the split (2026-11-27) the kinks left the optimal weights with w_error up to 3e-2 (6.8e-3 at eps 0.3);
    now ~1e-5. Derivatives as in :func:`joint_l2_eval`
    (envelope theorem; Hessian ``G_ww - G_wt G_tw / G_tt`` through the angle), by autograd per node.
    """
    import torch

    if k != 3:
        raise ValueError(f"joint l2 is computed for K = 3 only; got K = {k}")
    tau = alpha / k
    b = w1.size
    _, _, dev_1, weta = rule(k, *levels, offset)
    xi3, w3 = _l2_soft_xi_nodes(mu, sigma, tau, w1, w2, eps, dev_1, levels[0], offset)
    xi_n = xi3.reshape(b, -1)                                                          # (B, N)
    wn = (w3 * weta[None, :, None]).reshape(b, -1)
    dev_n = np.repeat(dev_1, xi3.shape[-1], axis=0)                                    # (N, 2)
    neg_margins = _l2_neg_margins(mu, sigma, w1[:, None], w2[:, None], xi_n, dev_n[None])   # (B, N, 2)
    rho = np.sqrt(w1 * w1 + w2 * w2) * eps
    theta = _ellipse_argmax(neg_margins, np.broadcast_to(rho[:, None], neg_margins.shape[:2]), tau)   # (B, N)

    xi_t, dev_t, wn_t = torch.from_numpy(xi_n), torch.from_numpy(dev_n), torch.from_numpy(wn)
    eps_t = torch.from_numpy(np.asarray(eps, dtype=np.float64))[:, None]
    r2, r3 = math.sqrt(2.0), math.sqrt(3.0)

    def value(w1_t, w2_t, th):  # (B, N)
        sd_t = torch.sqrt(w1_t * w1_t + w2_t * w2_t / (k - 1) + _TINY)
        m = ((w1_t + w2_t) * mu)[..., None] + sigma * (sd_t[..., None] * xi_t[..., None] + w2_t[..., None] * dev_t)
        x = torch.stack([(r3 * torch.cos(th) + torch.sin(th)) / r2, (r3 * torch.cos(th) - torch.sin(th)) / r2], -1)
        z = -m + (torch.sqrt(w1_t * w1_t + w2_t * w2_t + _TINY) * eps_t)[..., None] * x
        zero = torch.zeros_like(z[..., :1])
        return torch.logsumexp(torch.cat([zero, z], -1), -1) - tau * z.sum(-1)

    w1_b = torch.from_numpy(np.asarray(w1, dtype=np.float64))[:, None].expand(b, xi_n.shape[1])
    w2_b = torch.from_numpy(np.asarray(w2, dtype=np.float64))[:, None].expand(b, xi_n.shape[1])
    return _envelope_eval(value, w1_b, w2_b, torch.from_numpy(theta), wn_t, order)
