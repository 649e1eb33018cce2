"""The three training-dynamics experiments: does AT "learn cross-class features, then forget them"?

The paper reports three things about CIFAR-10 adversarial training (AT), see docs/PAPER.md:

* **epochs**: CAS rises until the best robust checkpoint, then falls while robust overfitting sets in;
* **eps**: the drop ``CAS(best) - CAS(last)`` grows with the training eps, but very large eps learns few
  cross-class features at all;
* **soft**: soft labels (label smoothing, distillation from an AT teacher's best checkpoint) keep CAS high
  and shrink the overfitting gap.

This module names one finite-sample set-up per experiment (:data:`SETUP`, :data:`STUDIES`,
:func:`experiment_points`: points of the sweep kind ``dynamics``, :mod:`synthmodel.dynamics`) and registers
the presets ``dynamics-epochs``, ``dynamics-eps``, ``dynamics-soft`` and ``paper-dynamics`` (all three,
shared points once)::

    python -m synthmodel.sweep --preset paper-dynamics --workers 2    # -> results/paper-dynamics/

A smoke run with one seed from Python::

    from synthmodel.sweep import expand_grid, run_sweep
    run_sweep(expand_grid({"kind": "dynamics", "points": experiment_points("epochs", seeds=[0])}), "out")

docs/EXPERIMENTS.md reports the results and what was tried before the set-up was fixed
(:mod:`experiments.explore`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from synthmodel.sweep import register_preset

__all__ = ["EXPERIMENTS", "SETUP", "STUDIES", "EXPERIMENT_SEEDS", "EPOCHS_EPS", "EPS_GRID", "SOFT_EPS",
           "SOFT_VARIANTS", "experiment_points", "all_points"]

EXPERIMENTS = ("epochs", "eps", "soft")

# The finite-sample set-up shared by the three experiments (units in comments). Chosen so that robust
# overfitting *can* occur: 300 training samples in 106 input dimensions (100 pure-noise ones), sigma = mu
# (overlapping classes), 60 epochs of SGD with the paper's step schedule (x0.1 at 50% and 75%), clean and
# adversarial test sets drawn with their own seeds, never seen in training. docs/EXPERIMENTS.md lists the
# other set-ups tried before this one was fixed, with what they showed.
SETUP: dict[str, Any] = {
    "preset": "paper3",     # the paper's 3-class world: 3 exclusive + 3 cross-class features
    "mu": 1.0,              # mean of a present feature (input units)
    "sigma": 1.0,           # its std
    "noise_dims": 100,      # pure-noise dimensions: few samples relative to the dimension
    "n_train": 300,         # training samples (100 per class)
    "n_test": 1000,         # clean / adversarial test samples (CAS and robust accuracy)
    "mode": "at",
    "norm": "linf",
    "attack_steps": 10,     # PGD-10 in training, step eps/4, random start (as the official recipe)
    "eval_steps": 20,       # PGD-20 for test robust accuracy and CAS (as the official code)
    "optimizer": "sgd",
    "lr": 0.1,              # initial learning rate
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "step",     # x0.1 after 50% and 75% of the epochs
    "epochs": 60,
    "batch_size": 32,       # 10 steps per epoch
    "dtype": "float32",
}
# The model x world combinations studied; each experiment runs all of them. ``seeds``: how many of the
# experiment's seeds it uses; ``eps_grid``: its eps values in experiment (b) (None = EPS_GRID).
STUDIES: dict[str, dict[str, Any]] = {
    # a feature layer: CAS on its 128 ReLU features
    "paper3-mlp": {"params": {"model": "mlp", "hidden": [128]}, "seeds": 5, "eps_grid": None},
    # features = the input itself (106 dims)
    "paper3-linear": {"params": {"model": "linear", "bias": True}, "seeds": 5, "eps_grid": None},
    # K = 10, each cross-class feature shared by two neighbouring classes; 100 samples per class as above.
    # Added after the paper3 MLP showed CAS pinned at 0 (docs/EXPERIMENTS.md explains why K = 3 does that).
    "ring10-mlp": {"params": {"model": "mlp", "hidden": [128], "preset": "ring-10", "n_train": 1000},
                   "seeds": 3, "eps_grid": (0.05, 0.1, 0.2, 0.3, 0.5)},
}
EXPERIMENT_SEEDS = {"epochs": (0, 1, 2, 3, 4), "eps": (0, 1, 2), "soft": (0, 1, 2, 3, 4)}
EPOCHS_EPS = (0.1, 0.2)                                  # input units; mu = 1
EPS_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)         # up to mu / 2 = 0.5 and beyond
SOFT_EPS = 0.1
# name -> changes to the AT point. Label smoothing alpha 0.2; distillation at temperature 2 (Chen et al.
# 2021 distil a robust teacher's best checkpoint at T = 2); the teacher is trained inside the point.
SOFT_VARIANTS: dict[str, dict[str, Any]] = {
    "at": {},
    "at+ls": {"label_smoothing": 0.2},
    "at+kd": {"teacher_from": "at_best", "temperature": 2.0},
}
POINT_DEFAULTS: dict[str, Any] = {"teacher_from": "none"}


def _point(**changes: Any) -> dict[str, Any]:
    return {**SETUP, **POINT_DEFAULTS, **changes}


def experiment_points(experiment: str, seeds: Sequence[int] | None = None, *, label: bool = False
                      ) -> list[dict[str, Any]]:
    """The settings of one experiment's ``dynamics`` points (several seeds each).

    Args:
        experiment: ``"epochs"`` (AT at eps in :data:`EPOCHS_EPS`, CAS and robust accuracy per epoch),
            ``"eps"`` (AT over :data:`EPS_GRID`, CAS(best) - CAS(last)) or ``"soft"`` (AT vs AT + label
            smoothing vs AT + distillation at eps :data:`SOFT_EPS`).
        seeds: overrides :data:`EXPERIMENT_SEEDS` (e.g. a single seed for a smoke run).
        label: add ``"experiment": <name>`` to every point (a tag for selecting results; it does not change
            what runs, but tagged points of different experiments are different points to a store, so the
            shared ones run once per experiment).

    Returns:
        A list of settings dicts (identical set-ups of different experiments give identical dicts, so a
        store keyed by settings runs them once).
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
    seeds = EXPERIMENT_SEEDS[experiment] if seeds is None else tuple(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {list(seeds)}")
    points = []
    for study in STUDIES.values():
        model, study_seeds = study["params"], seeds[:study["seeds"]]
        if experiment == "epochs":
            points += [_point(**model, eps=eps, seed=s) for eps in EPOCHS_EPS for s in study_seeds]
        elif experiment == "eps":
            points += [_point(**model, eps=eps, seed=s) for eps in study["eps_grid"] or EPS_GRID for s in study_seeds]
        else:
            points += [_point(**model, eps=SOFT_EPS, seed=s, **changes) for changes in SOFT_VARIANTS.values()
                       for s in study_seeds]
    if label:
        points = [{**p, "experiment": experiment} for p in points]
    return points


def all_points(seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The distinct points of all three experiments, in order (the combined ``paper-dynamics`` preset)."""
    seen, out = set(), []
    for experiment in EXPERIMENTS:
        for params in experiment_points(experiment, seeds):
            key = json.dumps(params, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(params)
    return out


def _grid(experiment: str | None) -> Callable[[], Mapping[str, Any]]:
    def spec() -> Mapping[str, Any]:
        return {"kind": "dynamics", "points": all_points() if experiment is None else experiment_points(experiment)}

    return spec


for _experiment in EXPERIMENTS:
    register_preset(f"dynamics-{_experiment}", f"dynamics experiment '{_experiment}' (docs/EXPERIMENTS.md)",
                    _grid(_experiment))
register_preset("paper-dynamics", "all three training-dynamics experiments (docs/EXPERIMENTS.md)", _grid(None))
