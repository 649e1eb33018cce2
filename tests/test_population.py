"""Population engine: agreement with independent computations, symmetries, limits, contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthmodel import make_preset, sample
from synthmodel.attacks import linear_logitwise_logits, pgd
from synthmodel.attribution import attribution
from synthmodel.models import TiedLinear
from synthmodel.population import (
    Formalisation,
    first_order_w2,
    loss_derivatives,
    optimal_weights,
    population_cas,
    robust_accuracy,
    robust_loss,
    theory_point,
    threshold,
    world_from,
)
from synthmodel.population.point import theory_table
from synthmodel.population.reference import levels as _levels
from synthmodel.population.reference import loss_torch as _loss_torch
from synthmodel.train import logitwise_objective

PAPER3 = world_from("paper3")


def _gh_loss(y: int, w1: float, w2: float, eps: float, mu=1.0, sigma=0.5, n=40) -> float:
    """Hard-label logitwise l_inf loss of class y by 3-d Gauss-Hermite in the ORIGINAL coordinates
    (x_Ey and the C_k of the two wrong classes), from the full tied weight matrix: independent of the
    engine's reduction to (xi, eta)."""
    world = make_preset("paper3", mu=mu, sigma=sigma)
    ex, sh = world.tied_masks()
    weight = w1 * ex + w2 * sh
    t, wt = np.polynomial.hermite_e.hermegauss(n)
    wt = wt / wt.sum()
    grids = np.meshgrid(t, t, t, indexing="ij")
    weights = np.einsum("i,j,k->ijk", wt, wt, wt).ravel()
    present = np.flatnonzero(world.incidence[y])
    x = np.zeros((weights.size, 6))
    for col, g in zip(present, grids, strict=True):
        x[:, col] = mu + sigma * g.ravel()
    logits = x @ weight.T
    radius = eps * np.abs(weight[y] - weight).sum(axis=1)
    lifted = logits + radius
    ce = np.log(np.exp(lifted - lifted.max(1, keepdims=True)).sum(1)) + lifted.max(1) - logits[:, y]
    return float(ce @ weights)


def test_reduction_matches_full_coordinates_for_every_class():
    # symmetry under permuting classes: every true class gives the engine's (class-0) value;
    # GH with 40 nodes on an integrand of scale sigma*|w| <= 1 is accurate far below 1e-9
    value = robust_loss(PAPER3, Formalisation(), 1.0, 0.5, 0.1).value[0]
    for y in range(3):
        assert abs(_gh_loss(y, 1.0, 0.5, 0.1) - value) < 1e-9


def test_two_orders_agree_within_error_estimate():
    form = Formalisation(alpha=0.2)
    w1, w2, eps = (torch.tensor([v], dtype=torch.float64) for v in (3.0, 1.5, 0.2))
    level = _levels(PAPER3, w1, w2)
    values = [float(_loss_torch(PAPER3, form, w1, w2, eps, (level[0] + j, level[1] + j))[0]) for j in range(3)]
    estimate = abs(values[1] - values[0])
    assert abs(values[2] - values[1]) <= max(estimate, 1e-14)
    res = robust_loss(PAPER3, form, 3.0, 1.5, 0.2)
    assert res.error[0] < 1e-8


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_shifted_lattice_estimates_the_rule_error(k, alpha):
    # the engine's error estimate |Q - (Q + Q')/2| (Q' = Q shifted by h/2 in every dimension): both rules see
    # the leading aliasing error (the +-1/h Fourier modes of each dimension) with opposite signs, so half their
    # difference is Q's error up to the next modes (squares / products of the leading ones, relatively ~the
    # error itself, < 1e-7 here), and their mean has errors of that second order. Checked against the rule at
    # 1/4 (K=3; 1/2 for K=4, to keep the 3-d rule small) of the step, whose own error is far below 1e-13.
    from synthmodel.population import quadrature as quad
    w1, w2, eps = np.array([3.0, 6.0, 4.0]), np.array([2.0, 5.0, 1.0]), np.array([0.2, 0.05, 0.3])

    def q(levels, offset):
        if alpha == 0.0:
            return quad.hard_eval(k, 1.0, 0.5, "linf", w1, w2, eps, levels, 0, offset)[0]
        return quad.soft_eval(k, 1.0, 0.5, "linf", "logitwise", alpha, w1, w2, eps, levels, 0, offset)[0]

    coarse, shifted = q((0, 0), False), q((0, 0), True)
    ref = q((8, 8) if k == 3 else (4, 4), False)
    estimate, true = 0.5 * np.abs(coarse - shifted), np.abs(coarse - ref)
    big = true > 1e-11  # above rounding (values O(1), ~1e3 nodes: 1e-13)
    assert big.any()
    np.testing.assert_allclose(estimate[big], true[big], rtol=0.1)
    assert np.all(np.abs(0.5 * (coarse + shifted) - ref) <= 0.1 * estimate + 1e-13)


def test_joint_equals_logitwise_for_hard_labels_and_bounds_it_otherwise():
    w1, w2, eps = [2.0, 1.0, 4.0], [0.5, 1.0, -0.3], [0.1, 0.2, 0.3]
    joint = robust_loss(PAPER3, Formalisation(attack="joint"), w1, w2, eps).value
    logit = robust_loss(PAPER3, Formalisation(attack="logitwise"), w1, w2, eps).value
    np.testing.assert_allclose(joint, logit, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="l_inf"):
        Formalisation(attack="pgd", norm="l2", loss="kd")
    with pytest.raises(ValueError, match="K = 3"):
        robust_loss(world_from("all-but-one-4"), Formalisation(attack="joint", norm="l2"), 1.0, 0.5, 0.1)


def test_loss_matches_monte_carlo_of_train_objective():
    # 2e5 samples: the sample mean's standard error is measured; 5 standard errors cover it
    world = make_preset("paper3")
    x, y = sample(world, 200_000, 3, dtype="float64")
    model = TiedLinear(world, 2.0, 0.7, dtype=torch.float64)
    for norm in ("linf", "l2"):
        with torch.no_grad():
            per = torch.nn.functional.cross_entropy(linear_logitwise_logits(model, x, y, 0.15, norm), y,
                                                    reduction="none")
            smooth = float(logitwise_objective(model, x, y, 0.15, norm, alpha=0.3))
        se = float(per.std()) / math.sqrt(len(per))
        assert abs(float(per.mean()) - robust_loss(PAPER3, Formalisation(norm=norm), 2.0, 0.7, 0.15).value[0]) < 5 * se
        pop = robust_loss(PAPER3, Formalisation(norm=norm, alpha=0.3), 2.0, 0.7, 0.15).value[0]
        assert abs(smooth - pop) < 10 * se  # same noise scale, soft targets spread it over K terms


def test_robust_accuracy_matches_exact_count():
    world = make_preset("paper3")
    x, y = sample(world, 200_000, 4, dtype="float64")
    from synthmodel.attacks import linear_robust_correct
    for w1, w2 in ((1.0, 0.3), (0.4, 1.0), (1.0, -0.2)):
        model = TiedLinear(world, w1, w2, dtype=torch.float64)
        frac = float(linear_robust_correct(model, x, y, 0.2).double().mean())
        p = robust_accuracy(PAPER3, w1, w2, 0.2).value[0]
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / len(y)) + 1e-12


def test_gradient_matches_finite_differences():
    _, grad, _ = loss_derivatives(PAPER3, Formalisation(norm="l2", alpha=0.1), 2.0, 0.8, 0.2)
    h = 1e-5
    f = lambda a, b: robust_loss(PAPER3, Formalisation(norm="l2", alpha=0.1), a, b, 0.2).value[0]  # noqa: E731
    fd = [(f(2 + h, 0.8) - f(2 - h, 0.8)) / (2 * h), (f(2, 0.8 + h) - f(2, 0.8 - h)) / (2 * h)]
    np.testing.assert_allclose(grad[0], fd, atol=1e-7)  # central differences: O(h^2) + 1e-16/h


def test_eps_zero_is_standard_training_optimum():
    from scipy.optimize import minimize
    opt = optimal_weights(PAPER3, Formalisation(attack="joint"), [0.0])
    # independent: minimise the clean cross-entropy computed in full coordinates (Gauss-Hermite)
    res = minimize(lambda w: _gh_loss(0, w[0], w[1], 0.0, n=60), x0=[1.0, 1.0], method="Nelder-Mead",
                   options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 2000})
    assert abs(opt["w1"][0] - res.x[0]) < 1e-3 and abs(opt["w2"][0] - res.x[1]) < 1e-3  # Nelder-Mead's tolerance


def test_robust_loss_non_decreasing_in_eps():
    eps = np.linspace(0.0, 0.5, 11)
    fixed = robust_loss(PAPER3, Formalisation(alpha=0.1), 2.0, 1.0, eps).value
    assert np.all(np.diff(fixed) >= -1e-12)
    best = optimal_weights(PAPER3, Formalisation(), eps)["objective"]
    assert np.all(np.diff(best) >= -1e-10)


def test_threshold_sign_change_and_range():
    form = Formalisation(alpha=0.1)
    th = threshold(PAPER3, form)
    if th.eps is None:  # then the evidence must show one sign throughout
        assert np.all(th.derivative < 0) or np.all(th.derivative >= 0)
        return
    assert 0 < th.eps < PAPER3.mu / 2
    below, above = first_order_w2(PAPER3, form, [th.eps - 1e-3, min(th.eps + 1e-3, 0.4999)])[0]
    assert below < 0 <= above


@settings(max_examples=2, deadline=None)
@given(c=st.floats(0.5, 2.0))
def test_scaling_mu_sigma_eps_scales_threshold(c):
    form = Formalisation(alpha=0.1)
    base = threshold(PAPER3, form).eps
    scaled = threshold(world_from("paper3", mu=c, sigma=0.5 * c), form).eps
    assert (base is None) == (scaled is None)
    if base is not None:
        assert abs(scaled - c * base) < 1e-5 * c  # both found to xtol 1e-7 (relative to the bracket)


@settings(max_examples=3, deadline=None)
@given(w1=st.floats(0.2, 3.0), w2=st.floats(0.0, 3.0), eps=st.floats(0.0, 0.4))
def test_clean_cas_formula_and_scale_invariance(w1, w2, eps):
    cas = population_cas(PAPER3, w1, w2)
    expected = 6 * (w2 * w2) / (w1 * w1 + 2 * w2 * w2)
    assert cas == pytest.approx(expected, abs=1e-12)
    assert population_cas(PAPER3, 3 * w1, 3 * w2) == pytest.approx(cas, abs=1e-12)
    # robust accuracy is scale-free too (margins and radius are both linear in w)
    a = robust_accuracy(PAPER3, w1, w2, eps).value[0]
    assert robust_accuracy(PAPER3, 2 * w1, 2 * w2, eps).value[0] == pytest.approx(a, abs=1e-10)


def test_cas_matches_attribution_on_samples():
    world = make_preset("paper3")
    x, y = sample(world, 60_000, 5, dtype="float64")
    model = TiedLinear(world, 1.5, 0.8, dtype=torch.float64)
    # class means from 2e4 samples each: each coordinate to ~ sigma/sqrt(2e4) = 0.0035; CAS to ~0.05
    assert attribution(model, x, y).cas == pytest.approx(population_cas(PAPER3, 1.5, 0.8), abs=0.05)
    gen = torch.Generator().manual_seed(0)
    adv = attribution(model, x, y, attack=lambda m, xb, yb: pgd(m, xb, yb, eps=0.3, steps=10, generator=gen))
    assert adv.cas == pytest.approx(population_cas(PAPER3, 1.5, 0.8, 0.3, "linf"), abs=0.05)


def test_monte_carlo_optimum_converges_to_population():
    # minimise the sampled logitwise AT objective of synthmodel.train exactly (LBFGS) on n samples; the
    # sample minimiser deviates by ~ sqrt(diag(H^-1 J H^-1) / n) (M-estimation); allow 5 of those
    world = make_preset("paper3")
    x, y = sample(world, 40_000, 6, dtype="float64")
    model = TiedLinear(world, 1.0, 0.5, dtype=torch.float64)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = logitwise_objective(model, x, y, 0.2, "linf")
        loss.backward()
        return loss
    opt.step(closure)
    pop = optimal_weights(PAPER3, Formalisation(), [0.2])
    w_pop = np.array([pop["w1"][0], pop["w2"][0]])
    _, _, hess = loss_derivatives(PAPER3, Formalisation(), *w_pop, 0.2)
    per_grads = []
    for i in range(0, 40_000, 4000):
        m = TiedLinear(world, *w_pop, dtype=torch.float64)
        loss = torch.nn.functional.cross_entropy(linear_logitwise_logits(m, x[i:i + 4000], y[i:i + 4000], 0.2, "linf"),
                                                 y[i:i + 4000], reduction="none")
        for j in range(0, 4000, 400):
            g = torch.autograd.grad(loss[j:j + 400].mean(), [m.head.w1, m.head.w2], retain_graph=True)
            per_grads.append([float(v) for v in g])
    cov = np.cov(np.array(per_grads).T) * 400  # per-sample gradient covariance from batch means of 400
    hinv = np.linalg.inv(hess[0])
    se = np.sqrt(np.diag(hinv @ cov @ hinv) / 40_000)
    assert abs(model.w1 - w_pop[0]) < 5 * se[0] and abs(model.w2 - w_pop[1]) < 5 * se[1]


def test_theory_point_contract():
    out = theory_point({"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.2, "alpha": 0.0, "attack": "joint",
                        "norm": "linf", "weights": "l2-norm", "weight_decay": 0.0})
    for key in ("w1", "w2", "ratio", "robust_loss", "robust_acc", "cas", "eps0", "eps1", "quad_error"):
        assert key in out and (out[key] is None or isinstance(out[key], float))
    assert out["w1"] ** 2 + out["w2"] ** 2 == pytest.approx(1.0, abs=1e-12)
    assert out["quad_error"] < 1e-8
    assert set(theory_table()) >= {"preset", "mu", "sigma", "eps", "alpha", "attack", "norm", "weights"}
    for bad, key in (({"colour": 1}, "colour"), ({"sigma": -1.0}, "sigma"), ({"attack": "fgsm"}, "attack"),
                     ({"alpha": 1.0}, "alpha"), ({"preset": "ring-3"}, "preset"),
                     ({"norm": "l2", "attack": "pgd", "loss": "kd"}, "l_inf")):
        params = {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.1, **bad}
        with pytest.raises(ValueError, match=key):
            theory_point(params)


@pytest.mark.parametrize("preset", ["paper3", "all-but-one-4"])
@pytest.mark.parametrize("form", [Formalisation(), Formalisation(norm="l2"), Formalisation(alpha=0.2),
                                  Formalisation(attack="joint", alpha=0.2), Formalisation(norm="l2", alpha=0.1),
                                  Formalisation(weights="weight-decay", weight_decay=0.05),
                                  Formalisation(attack="scorewise"), Formalisation(attack="scorewise", norm="l2"),
                                  Formalisation(attack="scorewise", alpha=0.2),
                                  Formalisation(attack="scorewise", norm="l2", alpha=0.1),
                                  Formalisation(attack="scorewise-termwise", alpha=0.2),
                                  Formalisation(attack="scorewise-termwise", norm="l2", alpha=0.1)])
def test_analytic_derivatives_equal_autograd_reference(preset, form):
    # two independent codes on the same rule: the analytic numpy engine and autograd through the torch one.
    # Same nodes (quarter-octave level 4 = torch level 1, h = 0.25; K = 4: level 0 = torch 0, h = 0.5, to keep
    # the 3-d rule small), so they agree to rounding (1e-10 covers summation order over ~1e4 O(10) values).
    # Joint + label smoothing: the trapezoid engine (the split one uses other nodes: tested separately)
    from synthmodel.population import quadrature as quad

    world = world_from(preset)
    w1, w2, eps = np.array([2.0, 1.0, 4.0, 0.7]), np.array([0.5, 1.0, -0.3, 0.0]), np.array([0.1, 0.2, 0.3, 0.25])
    ours_level, torch_level = ((4, 4), (1, 1)) if world.k == 3 else ((0, 0), (0, 0))
    if form.attack == "joint" and form.alpha:
        ours = quad.soft_eval(world.k, world.mu, world.sigma, form.norm, "joint", form.alpha, w1, w2, eps,
                                  ours_level, 2)
    else:
        ours = loss_derivatives(world, form, w1, w2, eps, level=ours_level)
    assert quad.h_of(ours_level[0]) == 0.5 / 2 ** torch_level[0]
    t = [torch.tensor(v, dtype=torch.float64) for v in (w1, w2, eps)]
    u = torch.stack(t[:2], 1).requires_grad_(True)
    loss = _loss_torch(world, form, u[:, 0], u[:, 1], t[2], torch_level)
    # (for K = 3 ours keeps only eta >= 0, using the eta -> -eta symmetry; the torch rule keeps the full line)
    (grad,) = torch.autograd.grad(loss.sum(), u, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[:, i].sum(), u, retain_graph=True)[0] for i in range(2)], 1)
    np.testing.assert_allclose(ours[0], loss.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours[1], grad.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours[2], hess.detach().numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_closed_form_sign_matches_numeric_first_order_condition(norm):
    # the derived sign (hard labels, pairwise: sign(2 eps - mu) or -1) and the numeric first-order condition on the
    # grid agree, and so do the derived threshold (none inside (0, mu/2)) and the bracketed one
    for weights in ("unconstrained", "l2-norm", "class-l2-norm"):
        form = Formalisation(norm=norm, weights=weights)
        th = threshold(PAPER3, form)
        assert th.derived and th.closed_form is None and th.eps is None
        expected = np.sign(2 * th.grid - PAPER3.mu) if norm == "linf" else -np.ones_like(th.grid)
        assert np.all(np.sign(th.derivative) == expected)


def test_joint_label_smoothing_at_half_mu_is_degenerate_not_an_error():
    # at eps = mu/2 the singular Hessian of a degenerate optimum must not raise (it did: LinAlgError); w = 0
    # is feasible with objective exactly log K (uniform logits), so the reported minimum is at most that
    point = theory_point({"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.5, "alpha": 0.1, "attack": "joint"})
    assert point["robust_loss"] <= math.log(3) + 1e-12
    assert math.isfinite(point["w1"]) and math.isfinite(point["w2"])


def test_curve_optimum_reports_verified_errors():
    eps = np.linspace(0.0, 0.49, 64)  # > 32: exercises the continuation (subset solve + interpolated starts)
    opt = optimal_weights(PAPER3, Formalisation(), eps)
    assert opt["quad_error"].max() < 1e-8 and opt["w_error"].max() < 1e-5
    cold = optimal_weights(PAPER3, Formalisation(), eps[::9], start=np.tile([2.8, 0.5], (eps[::9].size, 1)))
    # a different start converges to the same optimum (convex): agreement to the reported w_error scale
    np.testing.assert_allclose(cold["w1"], opt["w1"][::9], atol=1e-7)
    np.testing.assert_allclose(cold["w2"], opt["w2"][::9], atol=1e-7)


@pytest.mark.parametrize("alpha, mu, sigma, preset", [(0.1, 1.0, 0.5, "paper3"), (0.25, 2.0, 0.7, "paper3"),
                                                      (0.2, 1.0, 0.4, "all-but-one-4")])
def test_logitwise_label_smoothing_threshold_is_one_minus_alpha_times_half_mu(alpha, mu, sigma, preset):
    # derived by hand (proofs_check/README.md, "eps1 in closed form"): at w = t d, t -> 0+, every logit is 0 and
    # the directional derivative of the logitwise smoothed loss is (K-1)/K [eps r(d) - (d1 + d2) mu (1 - alpha)],
    # so the model collapses to w = 0, and dL/dw2 at w2 = 0 turns non-negative, exactly at (1 - alpha) mu / 2,
    # whatever sigma and K; the engine finds its threshold by bracketing (brentq, xtol 1e-7)
    world = world_from(preset, mu=mu, sigma=sigma)
    th = threshold(world, Formalisation(alpha=alpha))
    assert th.eps == pytest.approx((1 - alpha) * mu / 2, abs=1e-6)


def test_theory_kind_keeps_the_point_hashes_and_checks_new_keys():
    # the point kind is the TheoryPoint dataclass now; its table has no defaults, so a grid's hash covers exactly
    # the keys it gives: the paper-theory preset hashes as before (first point pinned from the tuple-table code)
    from synthmodel.sweep import kinds
    from synthmodel.sweep.grid import expand_grid, preset_grid
    from synthmodel.sweep.kinds import get_kind, normalize_params

    preset_grid("paper-theory")  # loads the sweep plugins (the preset lives in experiments.theory)
    from synthmodel.sweep.grid import GRID_PRESETS

    grid = expand_grid(GRID_PRESETS["paper-theory"].grid_spec(), source="test", code_version="fixed")
    first = grid.points[0]
    assert len(grid.points) == 312
    assert first.params == {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.0, "alpha": 0.0, "attack": "joint",
                            "norm": "linf"}
    # the same params hashed as the store schema 1 did: pinned from the tuple-table code (schema 2 only adds columns,
    # so a schema-1 store migrates by recomputing exactly these hashes)
    schema, kinds.STORE_SCHEMA = kinds.STORE_SCHEMA, 1
    try:
        assert kinds.point_hash(first.kind, first.params, "fixed") == "63c585ee884faf316997d67710482b45"
    finally:
        kinds.STORE_SCHEMA = schema
    kind = get_kind("theory")
    base = {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.1}
    assert normalize_params(kind, base) == base
    for good in ({"attack": "scorewise-termwise", "alpha": 0.1}, {"attack": "scorewise", "objective": "zero-one"},
                 {"preset": "all-but-one-7", "attack": "scorewise", "alpha": 0.2}):
        normalize_params(kind, {**base, **good})
    for bad, key in (({"objective": "zero-one"}, "zero-one"), ({"objective": "mse"}, "objective"),
                     ({"mu": 0.0}, "mu"), ({"preset": "all-but-one-6", "attack": "joint", "alpha": 0.1}, "K = 6")):
        with pytest.raises(ValueError, match=key):
            normalize_params(kind, {**base, **bad})


def test_registry_answers_what_the_engine_computes():
    # supports(form, K) is the one answer: where it names a routine the engine evaluates (finite values), where it
    # does not the engine raises ValueError with the same reason
    import re

    from synthmodel.population import FORMALISATION_ATTACKS, NORMS, ROUTINES, supports
    from synthmodel.population.engine import _evaluate
    from synthmodel.population.registry import HESSIANS, TARGETS

    for routine in ROUTINES:
        assert set(routine.targets) <= set(TARGETS) and routine.hessian in HESSIANS
    one = np.ones(1)
    for k in (3, 4, 6):
        world = world_from(f"all-but-one-{k}")
        for attack in FORMALISATION_ATTACKS:
            for norm in NORMS:
                for extra in ({}, {"alpha": 0.1}, {"loss": "kd", "teacher_w1": 1.0, "teacher_w2": 0.3},
                              {"objective": "zero-one"}):
                    try:
                        form = Formalisation(attack=attack, norm=norm, **extra)
                    except ValueError:
                        continue  # a contradiction, refused when the formalisation is made
                    answer = supports(form, k)
                    if answer:
                        loss = _evaluate(world, form, 1.2 * one, 0.4 * one, 0.1 * one, (0, 0), 0)[0]
                        assert np.all(np.isfinite(loss)), (k, form)
                    else:
                        with pytest.raises(ValueError, match=re.escape(answer.reason)):
                            _evaluate(world, form, 1.2 * one, 0.4 * one, 0.1 * one, (0, 0), 0)
