"""Population engine, distillation objective (loss='kd'): Monte Carlo agreement, limits, contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmodel import attacks as atk
from synthmodel import make_preset, sample
from synthmodel.models import TiedLinear
from synthmodel.population import (
    THEORY_DEFAULTS,
    Formalisation,
    loss_derivatives,
    optimal_weights,
    robust_loss,
    theory_point,
    world_from,
)
from synthmodel.population.point import theory_table
from synthmodel.train import logitwise_objective, robust_objective

PAPER3 = world_from("paper3")


def _kd(norm="linf", a1=1.5, a2=0.9, temp=2.0, **kw) -> Formalisation:
    return Formalisation(norm=norm, loss="kd", teacher_w1=a1, teacher_w2=a2, temperature=temp, **kw)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_kd_loss_matches_monte_carlo_of_train_objective(norm):
    # 2e5 samples in 20 batches: the standard error of the overall mean is measured from the spread of the
    # batch means (each batch is 1e4 i.i.d. samples, so its mean is ~normal); 5 standard errors cover it
    world = make_preset("paper3")
    x, y = sample(world, 200_000, 11, dtype="float64")
    student = TiedLinear(world, 2.0, 0.7, dtype=torch.float64)
    teacher = TiedLinear(world, 1.5, 0.9, dtype=torch.float64)
    with torch.no_grad():
        means = np.array([float(logitwise_objective(student, xb, yb, 0.15, norm, teacher_logits=teacher(xb),
                                                    temperature=2.0))
                          for xb, yb in zip(x.chunk(20), y.chunk(20), strict=True)])
    se = means.std(ddof=1) / math.sqrt(means.size)
    pop = robust_loss(PAPER3, _kd(norm), 2.0, 0.7, 0.15)
    assert pop.error[0] < 1e-8
    assert abs(means.mean() - pop.value[0]) < 5 * se


@pytest.mark.parametrize("w1, w2", [(2.0, 0.7), (2.0, -0.3), (-0.5, 0.4)])
def test_pgd_kd_loss_matches_monte_carlo_of_pgd_distillation_training(w1, w2):
    # what AT + distillation training computes (synthmodel.train): PGD-10 on the hard labels, then the soft CE
    # of the student against the teacher, both on x_adv. 1e5 samples in 20 batches; 5 standard errors of the
    # mean (from the spread of the batch means). Student signs (+,+), (+,-), (-,+): the teacher's shift
    # 2 eps (a1 s1 + a2 s2) follows the student's signs
    world = make_preset("paper3")
    x, y = sample(world, 100_000, 12, dtype="float64")
    student = TiedLinear(world, w1, w2, dtype=torch.float64)
    teacher = TiedLinear(world, 1.5, 0.9, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    means = []
    for xb, yb in zip(x.chunk(20), y.chunk(20), strict=True):
        x_adv = atk.pgd(student, xb, yb, eps=0.15, steps=10, generator=gen, mode=None)
        with torch.no_grad():
            means.append(float(robust_objective(student(x_adv), yb, teacher_logits=teacher(x_adv), temperature=2.0)))
    means = np.array(means)
    se = means.std(ddof=1) / math.sqrt(means.size)
    pop = robust_loss(PAPER3, _kd("linf", attack="pgd"), w1, w2, 0.15)
    assert pop.error[0] < 1e-8
    assert abs(means.mean() - pop.value[0]) < 5 * se


def test_pgd_kd_zero_temperature_limit_is_hard_label_loss():
    # teacher (1, 0.5) at x + delta*: its margin is E + 0.5 C_k - 2 eps (1 + 0.5) = 0.9 + O(sigma) at eps 0.2,
    # so the mass off the label is ~ 2 exp(-0.9 / T) ~ 2e-13 at T = 0.03: the pgd distillation loss must equal
    # the hard-label loss to the tolerance there, approaching it monotonically as T falls
    hard = robust_loss(SHARP, Formalisation(attack="pgd"), 2.0, 0.7, 0.2).value[0]
    gaps = [abs(robust_loss(SHARP, _kd("linf", 1.0, 0.5, t, attack="pgd"), 2.0, 0.7, 0.2).value[0] - hard)
            for t in (0.5, 0.2, 0.1, 0.03)]
    assert gaps[-1] < 1e-8
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


def test_uniform_teacher_is_label_smoothing_extrapolated_to_alpha_one():
    # teacher weights 0: targets 1/K for every sample. The logitwise soft loss is linear in the targets, and the
    # label-smoothed target is linear in alpha, so L(uniform) = 2 L_LS(1/2) - L_LS(0): an identity between the
    # distillation engine (3-d rule over e, v, eta) and the label-smoothing one (xi, eta); both errors < 1e-8
    for norm in ("linf", "l2"):
        kd = robust_loss(PAPER3, _kd(norm, 0.0, 0.0, 1.0), 1.7, 0.6, 0.2).value[0]
        half = robust_loss(PAPER3, Formalisation(norm=norm, alpha=0.5), 1.7, 0.6, 0.2).value[0]
        hard = robust_loss(PAPER3, Formalisation(norm=norm), 1.7, 0.6, 0.2).value[0]
        assert kd == pytest.approx(2 * half - hard, abs=1e-8)


# mu / sigma = 10: the clean feature E is negative with probability Phi(-10) ~ 1e-23, so a teacher that
# weighs E positively is right on essentially every sample
SHARP = world_from("paper3", mu=1.0, sigma=0.1)


def test_zero_temperature_limit_is_hard_label_loss():
    # teacher (1, 0.5): its margin over class k is E + 0.5 C_k = 1.5 + 0.1 e + 0.05 c_k, so the mass it puts off
    # the label is ~ 2 E exp(-margin / T) = 2 exp(-1.5 / T + 0.0125 / (2 T^2)) ~ 1e-12 at T = 0.05: the loss there
    # must equal the hard-label loss (another engine) to the quadrature tolerance, and approach it monotonically
    hard = robust_loss(SHARP, Formalisation(), 2.0, 0.7, 0.2).value[0]
    gaps = [abs(robust_loss(SHARP, _kd("linf", 1.0, 0.5, t), 2.0, 0.7, 0.2).value[0] - hard)
            for t in (0.5, 0.2, 0.1, 0.05)]
    assert gaps[-1] < 1e-8
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


def test_one_hot_teacher_approaches_cross_entropy():
    # teacher (a1, 0), T = 1: off-label mass ~ 2 E exp(-a1 E) = 2 exp(-a1 + a1^2 sigma^2 / 2), e^-32 at a1 = 40
    hard = robust_loss(SHARP, Formalisation(norm="l2"), 2.0, 0.7, 0.2).value[0]
    gaps = [abs(robust_loss(SHARP, _kd("l2", a1, 0.0, 1.0), 2.0, 0.7, 0.2).value[0] - hard) for a1 in (5, 10, 20, 40)]
    assert gaps[-1] < 1e-8
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


@pytest.mark.parametrize("attack", ["logitwise", "pgd"])
def test_kd_gradient_and_hessian_match_finite_differences(attack):
    form = _kd("linf", 1.2, 0.4, 1.5, attack=attack)
    _, grad, hess = loss_derivatives(PAPER3, form, 2.0, 0.8, 0.2)
    h = 1e-4
    lv = (4, 4)  # one fixed rule (h = 0.25, finer than the default) for every evaluation: FD of one smooth function
    f = lambda a, b: loss_derivatives(PAPER3, form, a, b, 0.2, level=lv)  # noqa: E731
    for j, (da, db) in enumerate(((h, 0.0), (0.0, h))):
        plus, minus = f(2.0 + da, 0.8 + db), f(2.0 - da, 0.8 - db)
        # central differences: error O(h^2 f''') ~ 1e-8, plus rounding 1e-16 / h
        assert (plus[0][0] - minus[0][0]) / (2 * h) == pytest.approx(grad[0, j], abs=1e-7)
        np.testing.assert_allclose((plus[1][0] - minus[1][0]) / (2 * h), hess[0, j], atol=1e-6)


def test_kd_two_rules_agree_within_error_estimate():
    form = _kd("linf", 3.0, 1.0, 1.0)
    res = robust_loss(PAPER3, form, 2.5, 1.0, 0.15)
    finer = loss_derivatives(PAPER3, form, 2.5, 1.0, 0.15, level=(6, 6))[0][0]  # h = 0.18: ~3.8e5 nodes
    assert res.error[0] < 1e-8
    assert abs(res.value[0] - finer) < 1e-8 + res.error[0]


def test_kd_formalisation_and_theory_point_contract():
    with pytest.raises(ValueError, match="joint"):
        _kd(attack="joint")
    with pytest.raises(ValueError, match="l_inf"):
        _kd("l2", attack="pgd")
    assert not _kd(attack="pgd").convex and _kd(attack="pgd").quadrant_convex and _kd().convex
    with pytest.raises(ValueError, match="alpha"):
        _kd(alpha=0.1)
    with pytest.raises(ValueError, match="temperature"):
        _kd(temp=0.0)
    with pytest.raises(ValueError, match="loss"):
        Formalisation(loss="mse")
    assert {"loss", "teacher_w1", "teacher_w2", "temperature"} <= set(theory_table()) & set(THEORY_DEFAULTS)
    base = {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.1}
    # the new keys' defaults leave a cross-entropy point unchanged
    assert theory_point(base) == theory_point({**base, "loss": "ce", "teacher_w1": 5.0, "temperature": 3.0})
    out = theory_point({**base, "loss": "kd", "teacher_w1": 2.0, "teacher_w2": 0.5, "temperature": 2.0})
    assert out["quad_error"] < 1e-8 and out["w1"] > 0
    for bad, key in (({"temperature": -1.0}, "temperature"), ({"loss": "kd", "attack": "joint", "norm": "l2"}, "joint"),
                     ({"teacher_w1": math.inf}, "teacher_w1")):
        with pytest.raises(ValueError, match=key):
            theory_point({**base, **bad})


def test_joint_label_smoothing_split_rule_is_smooth_in_weights_and_converged_in_xi():
    # joint + LS with xi lines split at the tie points: every piece's integrand is smooth and the breakpoints
    # move smoothly with w, so at a FIXED rule the quadrature value is a C^1 function of w whose derivative
    # is the analytic gradient: central differences (error O(h^2) ~ 1e-8 plus rounding 1e-16 / h) agree.
    # The xi pieces use Gauss-Legendre (8 nodes), so the xi level (panel width) changes the value only at rounding
    # level once the panels are at most 1 wide (level 4), and by ~3e-12 at level 0 (width 2: 8-node GL of phi).
    from synthmodel.population import quadrature as quad
    args = (3, 1.0, 0.5, "linf", 0.1)
    w1, w2, eps = np.array([1.8]), np.array([1.53]), np.array([0.22])
    _, grad, _ = quad.joint_split_eval(*args, w1, w2, eps, (6, 8), 1)
    h = 1e-4
    for j, d in enumerate((np.array([h, 0.0]), np.array([0.0, h]))):
        plus = quad.joint_split_eval(*args, w1 + d[0], w2 + d[1], eps, (6, 8), 0)[0][0]
        minus = quad.joint_split_eval(*args, w1 - d[0], w2 - d[1], eps, (6, 8), 0)[0][0]
        assert (plus - minus) / (2 * h) == pytest.approx(grad[0, j], abs=1e-7)
    fine = quad.joint_split_eval(*args, w1, w2, eps, (12, 8), 1)
    for level, tol in ((0, 1e-11), (4, 1e-13)):
        coarse = quad.joint_split_eval(*args, w1, w2, eps, (level, 8), 1)
        assert abs(coarse[0][0] - fine[0][0]) < tol
        np.testing.assert_allclose(coarse[1], fine[1], atol=tol)
    # and it is the same objective as the trapezoid engine: at a fine rule they agree to the latter's
    # (algebraic) accuracy, measured by its own change between levels 12 and 14
    t12 = quad.soft_eval(3, 1.0, 0.5, "linf", "joint", 0.1, w1, w2, eps, (12, 12), 0)[0][0]
    t14 = quad.soft_eval(3, 1.0, 0.5, "linf", "joint", 0.1, w1, w2, eps, (14, 14), 0)[0][0]
    split = quad.joint_split_eval(*args, w1, w2, eps, (6, 16), 0)[0][0]
    assert abs(split - t14) < 3 * abs(t14 - t12) + 1e-9


def test_monte_carlo_distillation_optimum_converges_to_population():
    # minimise the sampled logitwise distillation objective of synthmodel.train exactly (LBFGS) on n samples;
    # the sample minimiser deviates from the population one by ~ sqrt(diag(H^-1 J H^-1) / n) (M-estimation,
    # J the per-sample gradient covariance, estimated from 100 batch means of 400); allow 5 of those
    from synthmodel.population import optimal_weights
    world = make_preset("paper3")
    n = 40_000
    x, y = sample(world, n, 8, dtype="float64")
    with torch.no_grad():
        teacher_logits = TiedLinear(world, 1.5, 0.9, dtype=torch.float64)(x)
    model = TiedLinear(world, 1.0, 0.5, dtype=torch.float64)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = logitwise_objective(model, x, y, 0.15, "linf", teacher_logits=teacher_logits, temperature=2.0)
        loss.backward()
        return loss
    opt.step(closure)
    form = _kd("linf", 1.5, 0.9, 2.0)
    pop = optimal_weights(PAPER3, form, [0.15])
    w_pop = np.array([pop["w1"][0], pop["w2"][0]])
    _, _, hess = loss_derivatives(PAPER3, form, *w_pop, 0.15)
    m = TiedLinear(world, *w_pop, dtype=torch.float64)
    per_grads = []
    for i in range(0, n, 400):
        sl = slice(i, i + 400)
        loss = logitwise_objective(m, x[sl], y[sl], 0.15, "linf", teacher_logits=teacher_logits[sl], temperature=2.0)
        per_grads.append([float(v) for v in torch.autograd.grad(loss, [m.head.w1, m.head.w2])])
    cov = np.cov(np.array(per_grads).T) * 400
    hinv = np.linalg.inv(hess[0])
    se = np.sqrt(np.diag(hinv @ cov @ hinv) / n)
    assert abs(float(model.w1) - w_pop[0]) < 5 * se[0] and abs(float(model.w2) - w_pop[1]) < 5 * se[1]


@pytest.mark.parametrize("teacher", [(1.5, 0.9, 2.0), (2.0, 0.3, 0.8), (0.7, 1.1, 1.0)])
def test_pgd_kd_optimum_is_the_teacher_over_temperature(teacher):
    # the student's logits at x + delta* are z(x) + R [k != y], the teacher's (z_T(x) + R_T [k != y]) / T with
    # R = 2 eps (w1 + w2), R_T = 2 eps (a1 + a2) in the first quadrant: w = a / T makes them equal at every
    # sample, where the soft CE attains its pointwise minimum (the entropy of the targets), for every eps
    a1, a2, temp = teacher
    form = _kd("linf", a1, a2, temp, attack="pgd")
    opt = optimal_weights(PAPER3, form, [0.05, 0.2, 0.4])
    np.testing.assert_allclose(opt["w1"], a1 / temp, atol=1e-6)
    np.testing.assert_allclose(opt["w2"], a2 / temp, atol=1e-6)
