"""Scorewise attacks and the robust 0-1 objective: closed forms, Monte Carlo, training, certified search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs_check.derivations import hard_label_threshold, smoothed_scores_factorisation, zero_one_slope
from proofs_check.derivations import mu as MU
from proofs_check.derivations import sigma as SIGMA
from synthmodel import make_preset, sample
from synthmodel.attacks import linear_robust_correct, linear_scorewise_logits
from synthmodel.batched import train_batched
from synthmodel.losses import robust_objective
from synthmodel.models import TiedLinear
from synthmodel.population import (
    Formalisation,
    expected_max_normal,
    first_order_w2,
    loss_derivatives,
    optimal_ratio,
    optimal_weights,
    robust_accuracy,
    robust_loss,
    supports,
    threshold,
    world_from,
    zero_one_slope_at_zero,
    zero_one_threshold,
)
from synthmodel.population.accuracy import _accuracy_at, _cell_upper
from synthmodel.train import TrainConfig, train
from tests.training_check import assert_training_reaches_the_population_optimum

PAPER3 = world_from("paper3")


@pytest.mark.parametrize("mu, sigma, k", [(1.0, 0.5, 3), (2.0, 0.3, 3), (1.0, 0.5, 4), (0.8, 0.6, 4),
                                          (1.0, 0.5, 6)])
def test_scorewise_eps0_equals_the_derived_threshold(mu, sigma, k):
    # hard labels, l_inf: dL/dw2(w1, +0) = (eps dr/dw2 - mu) E[P_wrong] with dr/dw2 = 2 (K-1) (README step 7), so
    # eps0 = mu / (2 (K-1)); the engine brackets its numeric first-order condition (brentq, xtol 1e-7)
    world = world_from(f"all-but-one-{k}", mu=mu, sigma=sigma)
    th = threshold(world, Formalisation(attack="scorewise"))
    assert th.eps == pytest.approx(mu / (2 * (k - 1)), abs=1e-6)
    derived = hard_label_threshold(k, "linf", "scorewise")
    assert derived["h_positive"] and float(derived["eps0"].subs(MU, mu)) == pytest.approx(mu / (2 * (k - 1)))
    assert threshold(world, Formalisation(attack="scorewise", norm="l2")).eps is None  # dr/dw2 = 0 at w2 = 0


def test_scorewise_label_smoothing_keeps_the_threshold_by_the_covariance_argument():
    # at the hard-label scores dL/dw2(w1*, +0) = (eps dr/dw2 - mu) (E[P_wrong] - alpha (K-1)/K) (sympy), and at the
    # best w1 > 0, E[P_wrong] > alpha (K-1)/K (README step 8): so the quotient below is positive everywhere, and
    # the threshold is the hard labels' one (scorewise) or none (pgd l_inf)
    for k in (3, 4):
        for adversary in ("scorewise", "pairwise"):
            assert smoothed_scores_factorisation(k, "linf", adversary)["difference"] == 0
    eps = np.linspace(0.02, 0.48, 12)
    for attack, dr in (("scorewise", 4.0), ("pgd", 2.0)):
        for alpha in (0.1, 0.3):
            form = Formalisation(attack=attack, alpha=alpha)
            deriv, w1 = first_order_w2(PAPER3, form, eps)
            assert np.all(w1 > 0)
            factor = eps * dr - 1.0
            keep = np.abs(factor) > 1e-3
            assert np.all(deriv[keep] / factor[keep] > 0)
    assert threshold(PAPER3, Formalisation(attack="scorewise", alpha=0.2)).eps == pytest.approx(0.25, abs=1e-6)
    assert threshold(PAPER3, Formalisation(attack="pgd", alpha=0.2)).eps is None


def test_scorewise_is_the_logitwise_loss_with_the_larger_radius():
    # scorewise r = 2 (|w1| + (K-1) |w2|) >= logitwise 2 (|w1| + |w2|): equal at w2 = 0, larger otherwise
    for norm in ("linf", "l2"):
        w1, w2, eps = np.array([2.0, 1.0, 3.0]), np.array([0.0, 0.8, -0.4]), np.array([0.1, 0.2, 0.3])
        sw = robust_loss(PAPER3, Formalisation(attack="scorewise", norm=norm), w1, w2, eps).value
        lw = robust_loss(PAPER3, Formalisation(norm=norm), w1, w2, eps).value
        if norm == "linf":
            assert sw[0] == pytest.approx(lw[0], abs=1e-12)
        assert np.all(sw[1:] > lw[1:])


def _mc_scorewise(model, x, y, eps, norm, alpha, termwise):
    with torch.no_grad():
        if not termwise:
            per = torch.nn.functional.cross_entropy(linear_scorewise_logits(model, x, y, eps, norm), y,
                                                    reduction="none")
            if alpha:
                k = 3
                logits = linear_scorewise_logits(model, x, y, eps, norm)
                t = torch.nn.functional.one_hot(y, k).double() * (1 - alpha) + alpha / k
                per = -(t * torch.log_softmax(logits, 1)).sum(1)
            return per
        t_all = torch.nn.functional.one_hot(y, 3).double() * (1 - alpha) + alpha / 3
        per = torch.zeros(len(y), dtype=torch.float64)
        for c in range(3):
            yc = torch.full_like(y, c)
            per += t_all[:, c] * torch.nn.functional.cross_entropy(linear_scorewise_logits(model, x, yc, eps, norm),
                                                                   yc, reduction="none")
        return per


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_scorewise_loss_and_accuracy_match_monte_carlo(norm):
    # 2e5 samples of the training objective (synthmodel.attacks.linear_scorewise_logits); the sample mean's
    # standard error is measured, 5 of them cover it
    world = make_preset("paper3")
    x, y = sample(world, 200_000, 5, dtype="float64")
    model = TiedLinear(world, 2.0, 0.7, dtype=torch.float64)
    for attack, alpha in (("scorewise", 0.0), ("scorewise", 0.3), ("scorewise-termwise", 0.3)):
        per = _mc_scorewise(model, x, y, 0.15, norm, alpha, attack == "scorewise-termwise")
        se = float(per.std()) / math.sqrt(len(per))
        pop = robust_loss(PAPER3, Formalisation(attack=attack, norm=norm, alpha=alpha), 2.0, 0.7, 0.15).value[0]
        assert abs(float(per.mean()) - pop) < 5 * se
    with torch.no_grad():
        correct = (linear_scorewise_logits(model, x, y, 0.15, norm).argmax(1) == y).double()
    p = robust_accuracy(PAPER3, 2.0, 0.7, 0.15, norm, adversary="scorewise").value[0]
    assert abs(float(correct.mean()) - p) < 5 * math.sqrt(p * (1 - p) / len(y))
    assert p < robust_accuracy(PAPER3, 2.0, 0.7, 0.15, norm).value[0]  # the stronger adversary


def test_scorewise_everywhere_the_engine_computes():
    # every weight constraint, label smoothing and distillation, any K (K > 4 through the 1-d representation)
    for k in (3, 4, 7):
        for form in (Formalisation(attack="scorewise", alpha=0.1),
                     Formalisation(attack="scorewise-termwise", alpha=0.1),
                     Formalisation(attack="scorewise", norm="l2")):
            assert supports(form, k)
    for form in (Formalisation(attack="scorewise", loss="kd", teacher_w1=2.0, teacher_w2=0.5),
                 Formalisation(attack="scorewise-termwise", norm="l2", loss="kd", teacher_w1=2.0, teacher_w2=0.5)):
        assert supports(form, 3) and not supports(form, 5)
        loss, grad, _ = loss_derivatives(PAPER3, form, 1.5, 0.4, 0.1)
        h = 1e-5
        f = lambda a, b, form=form: robust_loss(PAPER3, form, a, b, 0.1).value[0]  # noqa: E731
        fd = [(f(1.5 + h, 0.4) - f(1.5 - h, 0.4)) / (2 * h), (f(1.5, 0.4 + h) - f(1.5, 0.4 - h)) / (2 * h)]
        np.testing.assert_allclose(grad[0], fd, atol=1e-7)
    for weights in ("weight-decay", "l1-share", "l2-norm", "class-l2-norm"):
        opt = optimal_weights(PAPER3, Formalisation(attack="scorewise", alpha=0.1, weights=weights,
                                                    weight_decay=0.01 if weights == "weight-decay" else 0.0),
                              [0.1, 0.3])
        assert np.all(opt["quad_error"] < 1e-8)


def test_batched_scorewise_training_equals_the_loop():
    small = dict(model="tied", mode="at", attack="scorewise", eps=0.2, n_train=256, n_test=128, epochs=3,
                 batch_size=64, dtype="float64", schedule="constant")
    configs = [TrainConfig(**small, seed=s, label_smoothing=a) for s, a in ((0, 0.0), (1, 0.2))]
    for batched, config in zip(train_batched(configs), configs, strict=True):
        ref = train(config)
        np.testing.assert_allclose([batched.final["w1"], batched.final["w2"]], [ref.final["w1"], ref.final["w2"]],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_training_with_the_scorewise_attack_converges_to_the_population_optimum(alpha):
    # synthmodel.train --attack scorewise (closed form), full-batch SGD with momentum on n = 2e4 samples, within 5
    # M-estimation standard errors of the population optimum
    eps = 0.15
    config = TrainConfig(model="tied", mode="at", attack="scorewise", eps=eps, label_smoothing=alpha, n_train=20_000,
                         batch_size=20_000, optimizer="sgd", lr=2.0, momentum=0.9, schedule="constant", epochs=400,
                         dtype="float64", n_test=100, eval_steps=1, seed=3)
    assert_training_reaches_the_population_optimum(
        config, Formalisation(attack="scorewise", alpha=alpha),
        lambda model, x, y: robust_objective(linear_scorewise_logits(model, x, y, eps, "linf"), y, alpha=alpha))


# -- the robust 0-1 objective ----------------------------------------------------------------------------
@pytest.mark.parametrize("attack, norm", [("joint", "linf"), ("scorewise", "linf"), ("joint", "l2"),
                                          ("scorewise", "l2")])
def test_zero_one_optimum_equals_brute_force(attack, norm):
    form = Formalisation(attack=attack, norm=norm, objective="zero-one")
    eps = np.array([0.05, 0.2, 0.4])
    opt = optimal_ratio(PAPER3, form, eps)
    theta = np.linspace(0.0, math.pi / 2, 20001)
    for i, e in enumerate(eps):
        p = _accuracy_at(PAPER3, form, float(e), theta)
        best = int(p.argmax())
        assert opt.accuracy[i] >= p[best] - 1e-12                     # no grid point beats the optimum
        assert abs(opt.theta[i] - theta[best]) <= 2 * (theta[1] - theta[0]) + 1e-9 or p[best] - opt.accuracy[i] < 1e-9
        lo, hi = np.arctan(opt.enclosure[i])
        assert lo - 1e-12 <= theta[best] <= hi + (theta[1] - theta[0])  # the brute-force argmax is inside it


def test_zero_one_cell_bounds_dominate_the_accuracy_inside_the_cell():
    rng = np.random.default_rng(0)
    for attack, norm in (("joint", "linf"), ("scorewise", "l2")):
        form = Formalisation(attack=attack, norm=norm, objective="zero-one")
        lo = rng.uniform(0, math.pi / 2 - 0.05, 20)
        hi = lo + rng.uniform(1e-4, 0.05, 20)
        upper = _cell_upper(PAPER3, form, 0.2, lo, hi, 0.02)
        for a, b, u in zip(lo, hi, upper, strict=True):
            inside = _accuracy_at(PAPER3, form, 0.2, np.linspace(a, b, 41))
            assert inside.max() <= u + 1e-6  # the bound's own quadrature error (step 0.02 with kinks) < 1e-6


@settings(max_examples=4, deadline=None)
@given(c=st.floats(0.3, 4.0), eps=st.floats(0.02, 0.45), attack=st.sampled_from(["joint", "scorewise"]),
       norm=st.sampled_from(["linf", "l2"]))
def test_zero_one_optimum_is_scale_free(c, eps, attack, norm):
    # (mu, sigma, eps) -> c (mu, sigma, eps) scales every margin and radius by c: the optimal direction is the same
    form = Formalisation(attack=attack, norm=norm, objective="zero-one")
    base = optimal_ratio(PAPER3, form, [eps])
    scaled = optimal_ratio(world_from("paper3", mu=c, sigma=0.5 * c), form, [c * eps])
    assert scaled.accuracy[0] == pytest.approx(base.accuracy[0], abs=1e-9)
    assert scaled.theta[0] == pytest.approx(base.theta[0], abs=1e-5)


@pytest.mark.parametrize("attack, b", [("joint", 2.0), ("scorewise", 4.0)])
def test_zero_one_threshold_equals_the_first_order_closed_form_and_scales(attack, b):
    # dP/dtheta at w2 = 0 is phi(t0) ((mu - eps b) / sigma - e_{K-1}) (README "Zero-one"), e_2 = 1/sqrt(pi): the
    # certified search's threshold (bisection to 1e-5) is where that vanishes
    form = Formalisation(attack=attack, objective="zero-one")
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-12)
    derived = zero_one_slope(3, "linf", "pairwise" if attack == "joint" else "scorewise")["eps0"]
    for mu, sigma in ((1.0, 0.5), (2.0, 1.0)):
        closed = (mu - sigma / math.sqrt(math.pi)) / b
        assert float(derived.subs({MU: mu, SIGMA: sigma})) == pytest.approx(closed, abs=1e-12)
        eps0 = zero_one_threshold(world_from("paper3", mu=mu, sigma=sigma), form)[0]
        assert eps0 == pytest.approx(closed, abs=2e-5 * mu)
        slope = zero_one_slope_at_zero(world_from("paper3", mu=mu, sigma=sigma), form, [closed - 0.01, closed + 0.01])
        assert slope[0] > 0 > slope[1]
    assert zero_one_threshold(PAPER3, Formalisation(attack=attack, norm="l2", objective="zero-one"))[0] is None


def test_zero_one_formalisation_contract():
    for bad in (dict(attack="logitwise"), dict(alpha=0.1), dict(weights="weight-decay", weight_decay=0.1),
                dict(loss="kd", attack="scorewise")):
        with pytest.raises(ValueError, match="zero-one"):
            Formalisation(objective="zero-one", **{"attack": "joint", **bad})
    form = Formalisation(attack="joint", objective="zero-one")
    assert not form.convex and supports(form, 10)
    # robust 0-1 error of the engine's routine is 1 - robust accuracy, which is exact (counting, 5 s.e.)
    world = make_preset("paper3")
    x, y = sample(world, 100_000, 8, dtype="float64")
    model = TiedLinear(world, 1.0, 0.6, dtype=torch.float64)
    frac = float(linear_robust_correct(model, x, y, 0.2).double().mean())
    err = robust_loss(PAPER3, form, 1.0, 0.6, 0.2).value[0]
    assert abs((1 - frac) - err) < 5 * math.sqrt(frac * (1 - frac) / len(y))
