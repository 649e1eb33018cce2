"""Population engine, attack 'pgd': the objective AT actually trains on (hard-label attack, soft targets there)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmodel import attacks as atk
from synthmodel import make_preset, sample
from synthmodel.losses import robust_objective
from synthmodel.models import TiedLinear
from synthmodel.population import Formalisation, robust_loss, world_from
from synthmodel.train import TrainConfig
from tests.fd_check import assert_derivatives_match_fd
from tests.training_check import assert_training_reaches_the_population_optimum

PAPER3 = world_from("paper3")


def _sampled_objective(model, x, y, eps, alpha, gen):
    """synthmodel.train's AT batch loss: PGD-10 on the hard labels, then label-smoothed CE at x_adv."""
    x_adv = atk.pgd(model, x, y, eps=eps, steps=10, generator=gen, mode=None)
    return robust_objective(model(x_adv), y, alpha=alpha)


@pytest.mark.parametrize("w1, w2", [(2.0, 0.7), (1.5, -0.4)])
def test_pgd_label_smoothing_matches_monte_carlo_of_the_training_objective(w1, w2):
    # 1e5 samples in 20 batches; 5 standard errors of the mean from the batch means' spread
    world = make_preset("paper3")
    x, y = sample(world, 100_000, 17, dtype="float64")
    model = TiedLinear(world, w1, w2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        means = np.array([float(_sampled_objective(model, xb, yb, 0.2, 0.1, gen))
                          for xb, yb in zip(x.chunk(20), y.chunk(20), strict=True)])
    se = means.std(ddof=1) / math.sqrt(means.size)
    pop = robust_loss(PAPER3, Formalisation(attack="pgd", alpha=0.1), w1, w2, 0.2)
    assert pop.error[0] < 1e-8
    assert abs(means.mean() - pop.value[0]) < 5 * se


def test_pgd_equals_joint_for_hard_labels_and_differs_from_both_with_label_smoothing():
    w1, w2, eps = [2.0, 1.0, 4.0], [0.5, 1.0, -0.3], [0.1, 0.2, 0.3]
    for norm in ("linf", "l2"):
        pgd = robust_loss(PAPER3, Formalisation(attack="pgd", norm=norm), w1, w2, eps).value
        joint = robust_loss(PAPER3, Formalisation(attack="joint", norm=norm), w1, w2, eps).value
        np.testing.assert_array_equal(pgd, joint)
    # with soft targets the joint adversary maximises the training objective itself, pgd's does not: joint >= pgd
    # (pgd's delta* is one feasible point of joint's maximisation), strictly here
    pgd = robust_loss(PAPER3, Formalisation(attack="pgd", alpha=0.2), w1, w2, eps).value
    joint = robust_loss(PAPER3, Formalisation(attack="joint", alpha=0.2), w1, w2, eps).value
    assert np.all(joint > pgd + 1e-6)


def test_pgd_label_smoothing_gradient_matches_finite_differences():
    for w1, w2 in ((2.0, 0.8), (1.2, -0.5)):
        assert_derivatives_match_fd(PAPER3, Formalisation(attack="pgd", alpha=0.15), w1, w2, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_training_loop_converges_to_the_population_optimum(alpha):
    # synthmodel.train itself (PGD-10 attack, full-batch SGD with momentum, 300 epochs: the gradient of the
    # sampled objective is < 1e-6 at the end) on n = 2e4 samples, within 5 M-estimation standard errors
    eps = 0.15
    config = TrainConfig(model="tied", mode="at", attack="pgd", eps=eps, label_smoothing=alpha, n_train=20_000,
                         batch_size=20_000, optimizer="sgd", lr=2.0, momentum=0.9, schedule="constant", epochs=300,
                         dtype="float64", n_test=100, eval_steps=1, seed=3)
    gen = torch.Generator().manual_seed(0)
    assert_training_reaches_the_population_optimum(
        config, Formalisation(attack="pgd", alpha=alpha),
        lambda model, x, y: _sampled_objective(model, x, y, eps, alpha, gen))


def test_pgd_l2_label_smoothing_derivatives_and_joint_bound():
    # l2: delta* is the hard-label joint l2 maximiser (the fixed point of joint_l2_eval), the smoothed CE taken
    # there (Monte Carlo of the training objective: tests/test_population_joint_l2.py). Analytic gradient and
    # Hessian (q* differentiated through two traced Newton steps) against finite differences at a fixed rule,
    # one root (rho 0.8) and three roots (rho 3.2); and below the joint loss (pgd's delta* is one feasible point
    # of the joint adversary's maximisation)
    form = Formalisation(attack="pgd", norm="l2", alpha=0.2)
    for w1, w2, eps in ((2.0, 1.2, 0.35), (5.0, 4.0, 0.5)):
        assert_derivatives_match_fd(PAPER3, form, w1, w2, eps)
        joint = robust_loss(PAPER3, Formalisation(attack="joint", norm="l2", alpha=0.2), w1, w2, eps).value[0]
        assert robust_loss(PAPER3, form, w1, w2, eps).value[0] < joint
