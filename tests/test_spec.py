"""The world: presets, validation, sampling."""

import numpy as np
import pytest
import torch

from synthmodel.sample import class_counts, derive_seed, sample
from synthmodel.spec import FeatureModel, make_preset


def test_paper3_is_the_papers_model():
    world = make_preset("paper3")
    # features [x_E1, x_E2, x_E3, x_C1, x_C2, x_C3]; x_Cj present in every class but j
    expected = np.array([[1, 0, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 1, 0]], dtype=bool)
    assert np.array_equal(world.incidence, expected)
    assert world.exclusive.tolist() == [True] * 3 + [False] * 3
    assert world.shared.tolist() == [False] * 3 + [True] * 3
    assert np.array_equal(make_preset("all-but-one-3").incidence, expected)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_family_presets(k):
    pairs = make_preset(f"pairs-{k}")
    assert pairs.n_signal == k + k * (k - 1) // 2
    assert np.all(pairs.incidence[:, k:].sum(axis=0) == 2)
    if k >= 3:
        ring = make_preset("ring-K", k=k)
        assert np.all(ring.incidence[:, k:].sum(axis=0) == 2)
        assert np.all(ring.incidence[:, k:].sum(axis=1) == 2)  # each class is in two ring features
        abo = make_preset(f"all-but-one-{k}")
        assert np.all(abo.incidence[:, k:].sum(axis=0) == k - 1)


@pytest.mark.parametrize("bad", [
    dict(incidence=np.ones((1, 2), bool)),                                   # K < 2
    dict(incidence=np.eye(3, dtype=bool), sigma=0.0),                        # sigma <= 0
    dict(incidence=np.eye(3, dtype=bool), sigma=-1.0),
    dict(incidence=np.eye(3, dtype=bool), mu=float("nan")),                  # non-finite
    dict(incidence=np.eye(3, dtype=bool), mu=[1.0, float("inf"), 1.0]),
    dict(incidence=np.array([[1, 0], [0, 0]])),                              # empty class
    dict(incidence=np.array([[1, 0, 0], [0, 1, 0]])),                        # feature of no class
    dict(incidence=np.array([[1, 1], [1, 1]])),                              # indistinguishable classes
    dict(incidence=np.eye(3, dtype=bool), priors=[0.5, 0.5, 0.0]),
    dict(incidence=np.eye(3, dtype=bool), noise_dims=-1),
    dict(incidence=np.eye(3, dtype=bool), sigma=[1.0, 1.0]),                 # wrong length
])
def test_impossible_worlds_raise(bad):
    with pytest.raises(ValueError):
        FeatureModel(**bad)


@pytest.mark.parametrize("name", ["paper4", "all-but-one-2", "pairs-1", "ring", "all-but-one-K"])
def test_bad_preset_names(name):
    with pytest.raises(ValueError):
        make_preset(name)


def test_sampling_is_seeded_and_matches_the_model():
    world = make_preset("paper3", mu=1.5, sigma=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0], noise_dims=4, noise_sigma=2.0)
    x, y = sample(world, 30000, seed=3, dtype="float64")
    x2, y2 = sample(world, 30000, seed=3, dtype="float64")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, sample(world, 30000, seed=4, dtype="float64")[0])
    assert x.dtype == torch.float64 and x.shape == (30000, 10)
    assert np.array_equal(np.bincount(y.numpy()), [10000] * 3)  # stratified: exact counts
    means, stds = world.class_means(), world.class_stds()
    for k in range(3):
        xk = x[y == k].numpy()
        absent = ~world.incidence[k]
        assert np.all(xk[:, :6][:, absent] == 0)  # absent features are exactly zero
        # sample mean within 5 standard errors of the true mean (std / sqrt(10000))
        assert np.all(np.abs(xk.mean(0) - means[k]) < 5 * stds[k] / 100 + 1e-12)
        present = np.concatenate([world.incidence[k], np.ones(4, bool)])
        rel = xk.std(0)[present] / stds[k][present]
        assert np.all(np.abs(rel - 1) < 0.05)  # std estimate: relative se ~ 1/sqrt(2n) = 0.007


def test_class_counts_and_priors():
    assert class_counts(np.array([0.5, 0.3, 0.2]), 7).sum() == 7
    world = make_preset("ring-4", priors=[0.1, 0.2, 0.3, 0.4])
    _, y = sample(world, 1000, seed=0)
    assert np.array_equal(np.bincount(y.numpy()), [100, 200, 300, 400])
    _, y = sample(world, 20000, seed=0, stratified=False)
    assert np.all(np.abs(np.bincount(y.numpy()) / 20000 - world.class_priors) < 0.015)


def test_derive_seed_depends_on_every_part():
    seeds = {derive_seed(0, "a"), derive_seed(0, "b"), derive_seed(1, "a"), derive_seed(0, "a", 1)}
    assert len(seeds) == 4
    assert derive_seed(5, "x", 2) == derive_seed(5, "x", 2)
