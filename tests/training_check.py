"""Finite-sample training against the population optimum (M-estimation standard errors), for slow tests."""

from __future__ import annotations

import numpy as np
import torch

from synthmodel import make_preset, sample
from synthmodel.models import TiedLinear
from synthmodel.population import loss_derivatives, optimal_weights, world_from
from synthmodel.train import TrainConfig, train


def assert_training_reaches_the_population_optimum(config: TrainConfig, form, batch_objective, *, batches: int = 50
                                                   ) -> None:
    """``synthmodel.train(config)`` (full batch, n = config.n_train) ends within 5 standard errors of the optimum.

    The sample minimiser deviates from the population one by ~ sqrt(diag(H^-1 J H^-1) / n) (M-estimation): H the
    engine's Hessian at the optimum, J the per-sample gradient covariance of ``batch_objective(model, x, y)``
    estimated from ``batches`` batch means on fresh samples.
    """
    n, eps = config.n_train, config.eps
    result = train(config)
    w_train = np.array([float(result.model.head.w1.detach()), float(result.model.head.w2.detach())])
    world = world_from("paper3")
    pop = optimal_weights(world, form, [eps])
    w_pop = np.array([pop["w1"][0], pop["w2"][0]])
    _, _, hess = loss_derivatives(world, form, *w_pop, eps)
    x, y = sample(make_preset("paper3"), n, 99, dtype="float64")  # fresh samples for the covariance
    model = TiedLinear(make_preset("paper3"), *w_pop, dtype=torch.float64)
    size = n // batches
    grads = []
    for i in range(0, n, size):
        loss = batch_objective(model, x[i:i + size], y[i:i + size])
        grads.append([float(g) for g in torch.autograd.grad(loss, [model.head.w1, model.head.w2])])
    hinv = np.linalg.inv(hess[0])
    se = np.sqrt(np.diag(hinv @ (np.cov(np.array(grads).T) * size) @ hinv) / n)
    assert np.all(np.abs(w_train - w_pop) < 5 * se), (w_train, w_pop, se)
