"""Batched training of linear models (synthmodel.batched) agrees with the one-at-a-time loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmodel.batched import batch_key, train_batched
from synthmodel.sweep import expand_grid, read_history, read_points, run_sweep
from synthmodel.train import TrainConfig, train

SMALL = dict(epochs=4, n_train=96, n_test=64, batch_size=32, noise_dims=3, attack_steps=3, eval_steps=4,
             dtype="float64")
# members differ in every setting a batch may vary; eps = 0 exercises the clean branch inside an AT batch
MEMBERS = [dict(eps=0.1, seed=0), dict(eps=0.3, seed=1, label_smoothing=0.2, lr=0.05, weight_decay=0.01),
           dict(eps=0.0, seed=2, momentum=0.0), dict(eps=0.45, seed=3, label_smoothing=0.1, mu=1.2, sigma=0.4,
                                                     attack_step_size=0.05)]

# Tolerance: both paths run the same operations on the same float64 numbers except that batched matrix
# products / reductions may sum in another order (relative error ~1e-16 per operation). Over ~12 SGD steps of
# a smooth objective such differences stay many orders of magnitude below 1e-9; accuracies are sample counts and
# only change if some margin lies within ~1e-12 of 0 (probability ~0 for Gaussian data).
ATOL = 1e-9


def _assert_same_run(batched, looped):
    assert batched.best_epoch == looped.best_epoch
    assert len(batched.history) == len(looped.history)
    for rec_b, rec_l in zip(batched.history, looped.history, strict=True):
        assert rec_b.keys() == rec_l.keys()
        for key, value in rec_l.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(rec_b[key]), key
            elif key == "class_matrix":
                np.testing.assert_allclose(rec_b[key], value, atol=ATOL, rtol=0)
            else:
                assert rec_b[key] == pytest.approx(value, abs=ATOL), (key, rec_l["epoch"])
    for name, tensor in looped.best_state.items():
        torch.testing.assert_close(batched.best_state[name], tensor, atol=ATOL, rtol=0)


@pytest.mark.parametrize("extra", [
    dict(model="tied"),
    dict(model="linear"),
    dict(model="linear", norm="l2", attack="fgsm"),
    dict(model="tied", attack="logitwise", schedule="constant"),
    dict(model="linear", mode="standard", bias=False),
])
def test_batched_training_equals_the_loop_per_member(extra):
    configs = [TrainConfig(**SMALL, **extra, **member) for member in MEMBERS]
    for batched, config in zip(train_batched(configs), configs, strict=True):
        _assert_same_run(batched, train(config))


def test_float32_batched_agrees_to_single_precision():
    configs = [TrainConfig(**{**SMALL, "dtype": "float32"}, model="linear", **member) for member in MEMBERS[:2]]
    for batched, config in zip(train_batched(configs), configs, strict=True):
        looped = train(config)
        # float32 rounding (~6e-8 relative) through a few dozen steps: 1e-4 leaves ample room
        for rec_b, rec_l in zip(batched.history, looped.history, strict=True):
            for key in ("train_loss", "test_robust_loss", "cas"):
                assert rec_b[key] == pytest.approx(rec_l[key], abs=1e-4)


def test_batch_key_groups_only_what_can_train_together():
    base = TrainConfig(**SMALL, model="linear")
    assert batch_key(base) == batch_key(TrainConfig(**SMALL, model="linear", eps=0.4, seed=9, lr=0.01))
    assert batch_key(base) != batch_key(TrainConfig(**{**SMALL, "epochs": 5}, model="linear"))
    for unbatchable in (dict(model="mlp"), dict(optimizer="adam"), dict(schedule="cosine"), dict(mode="trades")):
        assert batch_key(TrainConfig(**{**SMALL, "model": "linear", **unbatchable})) is None
    with pytest.raises(ValueError, match="cannot batch"):
        train_batched([base, TrainConfig(**{**SMALL, "epochs": 5}, model="linear")])


def test_sweep_train_points_store_the_loop_results_and_history(tmp_path):
    grid = expand_grid({"kind": "train", "fixed": {**SMALL, "model": "tied"}, "grid": {"eps": [0.1, 0.3]}})
    run_sweep(grid, tmp_path, workers=1, progress=False, export_format=None)
    table = read_points(tmp_path).sort_values("eps")
    history = read_history(tmp_path)
    assert list(table["group_size"]) == [2, 2]
    for row in table.itertuples():
        looped = train(TrainConfig(**{**SMALL, "model": "tied", "eps": row.eps}))
        assert row.best_epoch == looped.best_epoch
        assert row.robust_acc == pytest.approx(looped.final["robust_acc"], abs=ATOL)
        assert row.w2 == pytest.approx(looped.final["w2"], abs=ATOL)
        assert row.cas_drop == pytest.approx(looped.history[looped.best_epoch - 1]["cas"] - looped.final["cas"],
                                             abs=ATOL)
        epochs = history[history["hash"] == row.hash].sort_values("epoch")
        assert list(epochs["epoch"]) == [1, 2, 3, 4]
        assert list(epochs["test_robust_acc"]) == pytest.approx([h["test_robust_acc"] for h in looped.history],
                                                                abs=ATOL)
