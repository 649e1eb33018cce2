"""Population engine beyond K = 4: hard labels through the one-dimensional (Frullani) representation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmodel import make_preset, sample
from synthmodel.models import TiedLinear
from synthmodel.population import (
    Formalisation,
    first_order_w2,
    robust_loss,
    theory_point,
    threshold,
    validate_theory_params,
    world_from,
)
from synthmodel.population import quadrature as quad
from synthmodel.train import logitwise_objective


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_frullani_representation_equals_the_xi_eta_engine(k, norm, alpha):
    # two independent computations of the same expectation: the (1 + (K-2))-dim (xi, eta) trapezoid rule and the
    # 1-d outer integral of products of 1-d Gaussian integrals; loss, gradient and Hessian agree to rounding
    # (hard labels, and logitwise label smoothing)
    w1 = np.array([2.0, 1.0, 4.0, 0.7, 7.0, -1.5])
    w2 = np.array([0.5, 1.0, -0.3, 0.0, 6.5, 0.8])
    eps = np.array([0.1, 0.2, 0.3, 0.25, 0.15, 0.05])
    if k == 4:  # the 3-d reference rule for |w| ~ 10 takes ~20 s: moderate weights only
        w1, w2, eps = w1[[0, 1, 2, 3, 5]], w2[[0, 1, 2, 3, 5]], eps[[0, 1, 2, 3, 5]]
    base = quad.levels_for(k, 0.5, w1, w2)
    level = (base[0] + 4, base[1] + (4 if k == 3 else 0))
    if alpha:
        ref = quad.soft_eval(k, 1.0, 0.5, norm, "logitwise", alpha, w1, w2, eps, level, 2)
    else:
        ref = quad.hard_eval(k, 1.0, 0.5, norm, w1, w2, eps, level, 2)
    ours = quad.frullani_eval(k, 1.0, 0.5, norm, w1, w2, eps, base, 2, alpha=alpha)
    for a, b in zip(ref, ours, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm, alpha", [("linf", 0.0), ("l2", 0.0), ("linf", 0.3)])
def test_k6_loss_matches_monte_carlo_of_train_objective(norm, alpha):
    # 2e5 samples of all-but-one-6 in 20 batches; 5 standard errors of the mean from the batch means' spread
    world = make_preset("all-but-one-6")
    x, y = sample(world, 200_000, 21, dtype="float64")
    model = TiedLinear(world, 2.5, 1.2, dtype=torch.float64)
    with torch.no_grad():
        means = np.array([float(logitwise_objective(model, xb, yb, 0.2, norm, alpha=alpha))
                          for xb, yb in zip(x.chunk(20), y.chunk(20), strict=True)])
    se = means.std(ddof=1) / math.sqrt(means.size)
    pop = robust_loss(world_from("all-but-one-6"), Formalisation(norm=norm, alpha=alpha), 2.5, 1.2, 0.2)
    assert pop.error[0] < 1e-8
    assert abs(means.mean() - pop.value[0]) < 5 * se


def test_loss_grows_with_the_number_of_classes():
    # same features, one more wrong class: S gains a positive term, so log(1 + B S) grows, at every sample
    values = [robust_loss(world_from(f"all-but-one-{k}"), Formalisation(), [2.0, 5.0], [0.7, 4.0], [0.1, 0.3]).value
              for k in range(3, 9)]
    assert all(np.all(b > a) for a, b in zip(values, values[1:]))


def test_many_classes_rules_agree_and_threshold_follows_the_closed_form():
    world = world_from("all-but-one-10")
    res = robust_loss(world, Formalisation(), [3.0, 9.0], [1.0, 6.0], [0.1, 0.4])
    finer = quad.frullani_eval(10, 1.0, 0.5, "linf", np.array([3.0, 9.0]), np.array([1.0, 6.0]),
                                   np.array([0.1, 0.4]), (16, 16), 0)[0]
    assert np.all(res.error < 1e-8)
    np.testing.assert_allclose(res.value, finer, rtol=0, atol=1e-8 + res.error.max())
    # hard labels, l_inf: dL/dw2 at w2 = 0 has the sign of 2 eps - mu for every K (proofs_check step 7)
    eps = np.array([0.1, 0.3, 0.45, 0.55])
    deriv, _ = first_order_w2(world, Formalisation(), eps)
    np.testing.assert_array_equal(np.sign(deriv), np.sign(2 * eps - 1.0))
    assert threshold(world, Formalisation()).eps is None


def test_many_classes_contract():
    out = theory_point({"preset": "all-but-one-10", "mu": 1.0, "sigma": 0.5, "eps": 0.2})
    assert out["quad_error"] < 1e-8 and out["w1"] > out["w2"] > 0
    base = {"preset": "all-but-one-6", "mu": 1.0, "sigma": 0.5, "eps": 0.1}
    validate_theory_params({**base, "alpha": 0.1})  # logitwise label smoothing: computed
    for bad in ({"attack": "joint", "alpha": 0.1}, {"loss": "kd"}, {"attack": "joint", "norm": "l2"}):
        with pytest.raises(ValueError, match="K"):
            validate_theory_params({**base, **bad})
    with pytest.raises(ValueError, match="K = 6"):
        robust_loss(world_from("all-but-one-6"), Formalisation(attack="joint", alpha=0.1), 1.0, 0.5, 0.1)
