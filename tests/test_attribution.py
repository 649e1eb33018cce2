"""C and CAS: closed forms for the tied model, symmetries, invariances."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthmodel.attacks import pgd
from synthmodel.attribution import AttributionAccumulator, attribution, attribution_ensemble, cas_from_matrix
from synthmodel.models import FullLinear, TiedLinear, build_model
from synthmodel.sample import sample
from synthmodel.spec import make_preset


def closed_form_paper3(w1, w2, x, y):
    """C for the tied model on paper3 from the class means of x (docs/ATTRIBUTION.md, eq. (2)).

    a_i = w1 e_i u_{E_i} + w2 sum_{j != i} c_ij u_{C_j}  with e_i, c_ij the class-i means of x_{E_i}, x_{C_j};
    for i != k only C_l (l the third class) is shared by both, so
    C[i, k] = w2^2 c_il c_kl / (|a_i| |a_k|),  |a_i|^2 = w1^2 e_i^2 + w2^2 sum_{j != i} c_ij^2.
    """
    means = np.stack([x[y == i].double().mean(0).numpy() for i in range(3)])
    e = means[:, :3]
    c = means[:, 3:6]
    norms = np.array([np.sqrt(w1**2 * e[i, i] ** 2 + w2**2 * sum(c[i, j] ** 2 for j in range(3) if j != i))
                      for i in range(3)])
    matrix = np.eye(3)
    for i in range(3):
        for k in range(3):
            if i != k:
                lone = 3 - i - k
                matrix[i, k] = w2**2 * c[i, lone] * c[k, lone] / (norms[i] * norms[k])
    return matrix


@pytest.mark.parametrize("w1,w2", [(1.0, 0.5), (2.0, -0.7), (0.3, 1.2)])
def test_tied_cas_matches_closed_form(w1, w2):
    world = make_preset("paper3", mu=1.0, sigma=0.5, noise_dims=2)
    model = TiedLinear(world, w1=w1, w2=w2, dtype=torch.float64)
    x, y = sample(world, 3000, seed=1, dtype="float64")
    got = attribution(model, x, y)
    expected = closed_form_paper3(w1, w2, x, y)
    assert np.allclose(got.matrix, expected, atol=1e-12)  # both exact up to float64 rounding
    assert got.cas == pytest.approx(np.clip(expected[~np.eye(3, dtype=bool)], 0, 1).sum(), abs=1e-12)
    # on adversarial inputs the same formula holds with the attacked inputs' class means
    x_adv = pgd(model, x, y, eps=0.2, steps=5, generator=torch.Generator().manual_seed(0))
    assert np.allclose(attribution(model, x_adv, y).matrix, closed_form_paper3(w1, w2, x_adv, y), atol=1e-12)
    # population limit: class means -> mu, so C[i, k] -> w2^2 / (w1^2 + 2 w2^2); the sample means
    # are within ~sigma/sqrt(1000) = 0.016 of mu, which moves C by less than 0.05 here
    population = w2**2 / (w1**2 + 2 * w2**2)
    assert np.allclose(got.matrix[~np.eye(3, dtype=bool)], population, atol=0.05)


@given(w1=st.floats(0.1, 3), w2=st.floats(-3, 3), k=st.integers(3, 6))
@settings(max_examples=25, deadline=None)
def test_population_cas_all_but_one(w1, w2, k):
    # with every sample at its class mean the attribution is the population one:
    # C[i, j] = (K - 2) w2^2 / (w1^2 + (K - 1) w2^2), CAS = K (K - 1) times that
    world = make_preset(f"all-but-one-{k}", mu=1.7)
    model = TiedLinear(world, w1=w1, w2=w2, dtype=torch.float64)
    x = torch.tensor(world.class_means())
    got = attribution(model, x, torch.arange(k))
    value = (k - 2) * w2**2 / (w1**2 + (k - 1) * w2**2)
    assert got.cas == pytest.approx(k * (k - 1) * value, rel=1e-12, abs=1e-12)


def _random_setup(seed=0, k=4):
    world = make_preset(f"pairs-{k}")
    model = build_model("mlp", world, seed=seed, hidden=(12,), dtype=torch.float64)
    x, y = sample(world, 400, seed=seed, dtype="float64")
    return model, x, y


def test_matrix_symmetric_unit_diagonal_and_batch_independent():
    model, x, y = _random_setup()
    full = attribution(model, x, y)
    assert np.allclose(full.matrix, full.matrix.T, atol=0)
    assert np.array_equal(np.diag(full.matrix), np.ones(4))
    assert np.all(full.matrix <= 1 + 1e-12) and np.all(full.matrix >= -1 - 1e-12)
    batched = attribution(model, x, y, batch_size=37)
    assert np.allclose(batched.matrix, full.matrix, atol=1e-12)
    assert full.counts.sum() == 400  # every sample counted, no dropped remainder


@given(perm_seed=st.integers(0, 1000))
@settings(max_examples=10, deadline=None)
def test_cas_invariant_to_class_permutation(perm_seed):
    model, x, y = _random_setup()
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(perm_seed))
    base = attribution(model, x, y)
    permuted = build_model("mlp", make_preset("pairs-4"), seed=0, hidden=(12,), dtype=torch.float64)
    permuted.load_state_dict(model.state_dict())
    with torch.no_grad():  # class c of the permuted model is class perm[c] of the original
        permuted.head.weight.copy_(model.head.weight[perm])
        permuted.head.bias.copy_(model.head.bias[perm])
    inverse = torch.argsort(perm)
    result = attribution(permuted, x, inverse[y])
    assert result.cas == pytest.approx(base.cas, abs=1e-12)
    assert np.allclose(result.matrix, base.matrix[np.ix_(perm.numpy(), perm.numpy())], atol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0])
def test_cas_invariant_to_head_scale(scale):
    model, x, y = _random_setup()
    base = attribution(model, x, y)
    with torch.no_grad():
        model.head.weight.mul_(scale)
    assert np.allclose(attribution(model, x, y).matrix, base.matrix, atol=1e-12)


def test_cas_formula_and_degenerate_cases():
    matrix = np.array([[1.0, 0.5, -0.2], [0.5, 1.0, 1.5], [-0.2, 1.5, 1.0]])
    assert cas_from_matrix(matrix) == pytest.approx(0.5 * 2 + 1.0 * 2)  # negatives -> 0, >1 -> 1
    world = make_preset("paper3")
    zero = TiedLinear(world)  # w1 = w2 = 0: no direction
    x, y = sample(world, 30, seed=0)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(attribution(zero, x, y).cas)
    acc = AttributionAccumulator(torch.ones(3, 6))
    acc.update(x[y != 2], y[y != 2])
    with pytest.raises(ValueError, match="no samples"):
        acc.result()
    with pytest.raises(ValueError):
        acc.update(x[:, :4], y)
    with pytest.raises(ValueError):
        attribution(torch.nn.Linear(6, 3), x, y)


def test_full_linear_and_tied_agree_when_weights_agree():
    world = make_preset("ring-5")
    tied = TiedLinear(world, w1=1.1, w2=0.6, dtype=torch.float64)
    full = FullLinear(world.dim, 5, bias=False, dtype=torch.float64)
    with torch.no_grad():
        full.head.weight.copy_(tied.head.weight)
    x, y = sample(world, 500, seed=2, dtype="float64")
    assert np.allclose(attribution(tied, x, y).matrix, attribution(full, x, y).matrix, atol=1e-14)


def test_ensemble_equals_each_model_alone():
    """E models at once (the batched trainer's path) give each model's own attribution; a zero model is NaN
    without spoiling the others; streaming in two batches changes nothing beyond float64 rounding."""
    world = make_preset("ring-5")
    models = [FullLinear(world.dim, world.n_classes, dtype=torch.float64) for _ in range(3)]
    models.append(TiedLinear(world, dtype=torch.float64))  # w1 = w2 = 0: no direction, CAS NaN
    data = [sample(world, 120, seed=seed, dtype="float64") for seed in range(len(models))]
    weight = torch.stack([m.head.weight.detach() for m in models])
    x, y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    with pytest.warns(RuntimeWarning, match="model 3"):
        together = attribution_ensemble(weight, x, y)
    acc = AttributionAccumulator(weight)
    acc.update(x[:, :50], y[:, :50])
    acc.update(x[:, 50:], y[:, 50:])
    with pytest.warns(RuntimeWarning):
        streamed = acc.results()
    for model, (xm, ym), joint, stream in zip(models, data, together, streamed, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            alone = attribution(model, xm, ym)
        # same float64 operations per model, batched sums may add in another order: rounding only
        for other in (joint, stream):
            np.testing.assert_allclose(other.matrix, alone.matrix, atol=1e-12, rtol=0)
            np.testing.assert_array_equal(other.counts, alone.counts)
            assert (np.isnan(other.cas) and np.isnan(alone.cas)) or other.cas == pytest.approx(alone.cas, abs=1e-12)
    assert np.isnan(together[3].cas) and all(np.isfinite(r.cas) for r in together[:3])
    with pytest.raises(ValueError, match="use results"):
        acc.result()
    with pytest.raises(ValueError, match="shape"):
        acc.update(x[0], y[0])
