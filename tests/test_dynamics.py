"""Training dynamics: determinism, best checkpoint, CAS from history vs from a saved checkpoint, set-ups, tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.dynamics import EPS_GRID, EXPERIMENTS, SETUP, all_points, experiment_points
from synthmodel.attribution import attribution
from synthmodel.dynamics import (
    DynamicsConfig,
    adversarial_test_inputs,
    eps_table,
    model_label,
    recompute_cas,
    run_dynamics,
    run_point,
    soft_table,
    summarize,
    variant_label,
)
from synthmodel.sweep import expand_grid, run_hooks, run_sweep
from synthmodel.train import load_checkpoint, save_checkpoint

# a few seconds per run: small world, few epochs, short attacks
TINY = dict(preset="paper3", mu=1.0, sigma=1.0, noise_dims=5, n_train=60, n_test=90, epochs=6, batch_size=16,
            attack_steps=2, eval_steps=3, eps=0.2, lr=0.1, schedule="step", teacher_from="none")
MLP = dict(model="mlp", hidden=[8])


def test_point_is_deterministic_per_seed_and_seed_matters():
    first, second = run_point({**TINY, **MLP, "seed": 3}), run_point({**TINY, **MLP, "seed": 3})
    # same params -> bit-identical results (floats compared exactly, NaN-aware through the JSON text)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    other = run_point({**TINY, **MLP, "seed": 4})
    assert other["history"] != first["history"]
    assert all(isinstance(v, (int, float, str)) for v in first.values())  # flat JSON scalars


@pytest.mark.parametrize("model", [MLP, dict(model="linear")])
def test_best_checkpoint_is_the_epoch_of_highest_test_robust_accuracy(model):
    result, teacher = run_dynamics({**TINY, **model, "seed": 1})
    assert teacher is None
    robust = [record["test_robust_acc"] for record in result.history]
    assert result.best_epoch == int(np.argmax(robust)) + 1  # argmax: the first of equal maxima, as train does
    assert len(result.epoch_states) == TINY["epochs"]
    best_state = result.epoch_states[result.best_epoch - 1]
    assert all(torch.equal(result.best_state[k], best_state[k]) for k in best_state)
    row = run_point({**TINY, **model, "seed": 1})
    assert row["best_epoch"] == result.best_epoch
    assert row["robust_acc_best"] == max(robust)
    assert row["overfit_gap"] == max(robust) - robust[-1] >= 0
    assert row["cas_drop"] == result.history[result.best_epoch - 1]["cas"] - result.history[-1]["cas"]


@pytest.mark.parametrize("model", [MLP, dict(model="linear")])
def test_history_cas_equals_cas_recomputed_from_saved_checkpoint(tmp_path, model):
    result, _ = run_dynamics({**TINY, **model, "seed": 2})
    config = result.config
    for epoch in sorted({1, result.best_epoch, config.epochs}):
        path = tmp_path / f"epoch{epoch}.pt"
        save_checkpoint(path, result.model, config, state=result.epoch_states[epoch - 1], epoch=epoch)
        loaded, loaded_config = load_checkpoint(path)
        assert loaded_config == config
        history_cas = result.history[epoch - 1]["cas"]
        # The history's CAS was taken on PGD inputs from a generator seeded by (seed, "eval", epoch, n_test);
        # the loaded weights are bit-identical, so the same attack gives the same x_adv and the same float
        # operations in the same order give exactly the same CAS: no tolerance.
        assert recompute_cas(loaded, loaded_config, epoch) == history_cas
        # A differently batched accumulation sums the float64 class means in another order: rounding of
        # ~n * 2^-53 relative (n = 90 samples) on the means, hence on the cosines; 1e-10 is far above that
        # and far below any real difference between epochs.
        x_adv, y = adversarial_test_inputs(loaded, loaded_config, epoch)
        rebatched = attribution(loaded, x_adv, y, batch_size=7).cas
        assert math.isclose(rebatched, history_cas, rel_tol=0, abs_tol=1e-10)
    # and the check is not vacuous: another epoch's inputs or weights give a different CAS somewhere
    cas = [r["cas"] for r in result.history]
    assert len(set(cas)) > 1


def test_distillation_teacher_is_the_at_points_best_checkpoint():
    at = run_point({**TINY, **MLP, "seed": 5})
    kd = run_point({**TINY, **MLP, "seed": 5, "teacher_from": "at_best", "temperature": 2.0})
    # the teacher is trained inside the point from the same config with hard labels: the plain AT run
    assert kd["teacher_best_epoch"] == at["best_epoch"]
    assert kd["teacher_robust_acc_best"] == at["robust_acc_best"]
    assert kd["history"] != at["history"]
    assert math.isnan(at["teacher_robust_acc_best"]) and at["teacher_best_epoch"] == -1


@pytest.mark.parametrize("bad", [dict(teacher_from="teacher.pt"), dict(teacher="/tmp/x.pt"),
                                 dict(teacher_from="at_best", label_smoothing=0.1), dict(eps=-1.0),
                                 dict(unknown_key=1)])
def test_bad_point_raises(bad):
    with pytest.raises(ValueError):
        DynamicsConfig.from_dict({**TINY, **MLP, **bad}).validate()


def test_experiment_points_are_valid_and_cover_the_three_experiments():
    for experiment in EXPERIMENTS:
        points = experiment_points(experiment)
        assert points
        for params in points:
            config = DynamicsConfig.from_dict(params).validate()
            assert config.schedule == "step" and config.mode == "at"
        seeds = {p["seed"] for p in points}
        assert len(seeds) >= 3
    eps_values = {p["eps"] for p in experiment_points("eps")}
    assert max(eps_values) > SETUP["mu"] / 2 and set(EPS_GRID) <= eps_values  # very large eps included
    variants = {variant_label(p) for p in experiment_points("soft")}
    assert variants == {"AT", "AT + LS 0.2", "AT + KD"}
    # shared points of different experiments are identical dicts, so the combined list runs them once
    combined = all_points()
    assert len(combined) == len({json.dumps(p, sort_keys=True) for p in combined})
    assert len(combined) < sum(len(experiment_points(e)) for e in EXPERIMENTS)
    with pytest.raises(ValueError):
        experiment_points("nope")


def _fake_results():
    rng = np.random.default_rng(0)
    rows = []
    for model in ("mlp", "linear"):
        for eps in (0.1, 0.2):
            for variant in ({}, {"label_smoothing": 0.2}, {"teacher_from": "at_best"}):
                for seed in range(3):
                    best, last = rng.random(2)
                    rows.append({"model": model, "hidden": "[8]", "eps": eps, "seed": seed, "label_smoothing": 0.0,
                                 "teacher_from": "none", **variant, "best_epoch": int(rng.integers(1, 9)),
                                 "cas_best": best, "cas_last": last, "cas_drop": best - last, "cas_max": 1.0,
                                 "cas_max_epoch": 1, "robust_acc_best": 0.5 + best / 4, "robust_acc_last": 0.5,
                                 "overfit_gap": best / 4, "train_robust_acc_last": 0.9,
                                 "history": json.dumps([{"epoch": 1, "test_robust_acc": 0.3, "cas": None,
                                                              "train_robust_loss": 1.0, "test_clean_acc": 0.5}])})
    return pd.DataFrame(rows)


def test_tables_agree_with_direct_numpy_statistics():
    df = _fake_results()
    table = eps_table(df)
    assert len(table) == 4 and (table["n_seeds"] == 3).all()  # AT rows only, one per (model, eps)
    sel = df[(df["model"] == "linear") & (df["eps"] == 0.2) & (df["teacher_from"] == "none")
             & (df["label_smoothing"] == 0.0)]["cas_drop"].to_numpy()
    row = table[(table["model_label"] == "paper3 linear") & (table["eps"] == 0.2)].iloc[0]
    assert row["cas_drop"] == pytest.approx(sel.mean(), rel=1e-12)
    assert row["cas_drop_std"] == pytest.approx(sel.std(ddof=1), rel=1e-12)  # sample std over seeds
    soft = soft_table(df, eps=0.1)
    assert set(soft["variant"]) == {"AT", "AT + LS 0.2", "AT + KD"} and len(soft) == 6
    text = summarize(df)
    assert "(a)" in text and "(b)" in text and "(c)" in text and "±" in text


def test_tables_reject_bad_input():
    with pytest.raises(ValueError):
        eps_table(pd.DataFrame())
    with pytest.raises(ValueError):
        eps_table(pd.DataFrame({"model": ["mlp"]}))


def test_labels_name_mode_targets_and_model():
    assert variant_label({"mode": "trades", "label_smoothing": 0.1}) == "TRADES + LS 0.1"
    assert variant_label({"mode": "standard", "teacher": "t.pt"}) == "standard + KD"
    assert variant_label({"teacher_from": "at_best", "label_smoothing": float("nan")}) == "AT + KD"
    assert variant_label(pd.Series({"mode": float("nan"), "label_smoothing": 0.0})) == "AT"  # a column others lack
    assert model_label({"preset": "ring-10", "model": "mlp", "hidden": "[128, 64]"}) == "ring-10 mlp(128,64)"
    assert model_label({"model": "linear"}) == "paper3 linear"


@pytest.mark.parametrize("variant", [{}, {"label_smoothing": 0.2}, {"teacher_from": "at_best", "temperature": 2.0}])
def test_head_column_sums_are_conserved_by_training(variant):
    # docs/EXPERIMENTS.md explains CAS = 0 for the 3-class MLP by this identity: the gradient of softmax
    # cross-entropy against any target distribution w.r.t. the logits is p - t, which sums to 0 over classes,
    # so SGD (with momentum, without weight decay) never changes sum_k W[k, h].
    from synthmodel.models import build_model
    from synthmodel.train import build_world

    result, _ = run_dynamics({**TINY, **MLP, "seed": 6, **variant})
    config = result.config
    init = build_model("mlp", build_world(config), seed=config.seed, hidden=config.hidden).head.weight.detach()
    last = result.last_state["head.weight"]
    moved = (last - init).abs().max().item()
    drift = (last.sum(0) - init.sum(0)).abs().max().item()
    # float32 steps: each update's column sum is 0 up to ~K * 2^-24 of the update size; 6 epochs x 4 steps
    # accumulate far less than 1e-4, while the weights themselves move by O(0.1 .. 1)
    assert moved > 1e-2
    assert drift < 1e-4


@pytest.mark.slow
def test_one_seed_of_an_experiment_through_the_sweep_with_its_tables(tmp_path):
    # the real set-up, experiment (a), one seed: 6 points (~1-2 min on 2 cores)
    points = experiment_points("epochs", seeds=[0])
    summary = run_sweep(expand_grid({"kind": "dynamics", "points": points}), tmp_path, workers=2, progress=False)
    assert (summary.computed, summary.failed) == (6, 0)
    frame = pd.read_csv(tmp_path / "points.csv")
    assert len(frame) == 6 and (frame["best_epoch"] >= 1).all() and (frame["overfit_gap"] >= 0).all()
    lines = run_hooks(tmp_path)
    assert lines["tables"] == str(tmp_path / "tables.md")
    assert "(a) AT, per epoch" in (tmp_path / "tables.md").read_text()


def test_tables_hook_writes_nothing_without_dynamics_points(tmp_path):
    from synthmodel.dynamics import write_tables

    run_sweep(expand_grid({"kind": "theory", "points": [{"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.1}]}),
              tmp_path, workers=1, progress=False, export_format=None)
    assert write_tables(tmp_path) is None and not (tmp_path / "tables.md").exists()


def test_results_carry_variant_and_history_and_ignore_the_experiment_label():
    plain = run_point({**TINY, **MLP, "seed": 7, "label_smoothing": 0.2})
    labelled = run_point({**TINY, **MLP, "seed": 7, "label_smoothing": 0.2, "experiment": "soft"})
    assert json.dumps(plain, sort_keys=True) == json.dumps(labelled, sort_keys=True)  # NaN-aware equality
    assert plain["variant"] == "AT + LS 0.2"
    history = json.loads(plain["history"])
    assert [r["epoch"] for r in history] == list(range(1, TINY["epochs"] + 1))
    assert history[plain["best_epoch"] - 1]["cas"] == plain["cas_best"]
    tagged = experiment_points("soft", seeds=[0], label=True)
    assert {p["experiment"] for p in tagged} == {"soft"}
    assert [{k: v for k, v in p.items() if k != "experiment"} for p in tagged] == experiment_points("soft", [0])


def test_point_with_history_adds_the_full_records():
    from synthmodel.dynamics import run_point_with_history

    row = run_point_with_history({**TINY, **MLP, "seed": 8})
    plain = run_point({**TINY, **MLP, "seed": 8})
    records = row.pop("_history")
    assert json.dumps(row, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert [r["epoch"] for r in records] == list(range(1, TINY["epochs"] + 1))
    json.dumps(records, allow_nan=False)  # standard JSON: NaN already replaced by None
