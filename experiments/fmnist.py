"""The paper's real-data observations on Fashion-MNIST, sized for a 2-core CPU: the preset ``paper-fmnist``.

Three observations are tested (docs/EXPERIMENTS.md reports the results):

* **epochs**: under AT, CAS of the PGD test inputs rises until the best robust checkpoint, then falls while
  robust overfitting sets in (best vs last checkpoint);
* **eps**: ``CAS(best) - CAS(last)`` across the training eps, including eps far beyond the usual one;
* **soft**: AT vs AT + label smoothing vs AT + distillation from an AT model's best checkpoint (vs AT + AWP,
  the standard remedy for robust overfitting): the CAS gap and the robust-overfitting gap.

Points of the sweep kind ``real-train`` (:mod:`real_data.point`)::

    python -m synthmodel.sweep --preset paper-fmnist --workers 2    # -> results/paper-fmnist/
    python -m figures --store results/paper-fmnist

Fashion-MNIST itself: ``apt-get install dataset-fashion-mnist`` (Debian / Ubuntu), or the four upstream
IDX files in a folder named by ``$FASHION_MNIST_DIR`` (real_data/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from synthmodel.sweep import register_hook, register_preset

__all__ = ["SETUP", "EPS_GRID", "SOFT_EPS", "SOFT_VARIANTS", "SEEDS", "experiment_points", "all_points"]

EXPERIMENTS = ("epochs", "eps", "soft")

# The set-up, chosen before CAS was looked at, among 12 candidates (docs/EXPERIMENTS.md lists them) for
# two things only: a test robust accuracy that falls after its best epoch (robust overfitting can occur)
# and a run of a few CPU minutes. Few training images (500, 50 per class) for a model that can fit them,
# no augmentation and no weight decay (both delay overfitting), the step schedule (x0.1 at epochs 20, 30)
# after which robust overfitting appears in the official recipe too. Units of eps: 1/255 of the pixel range.
SETUP: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "train_n": 500,          # seeded, class-stratified subset of the 60000 training images
    "arch": "small-cnn",
    "width": 16,             # channels of the first stage (16-32-64)
    "mode": "at",
    "norm": "linf",
    "steps": 10,             # PGD-10 in training, random start, step eps / 4
    "eval_steps": 10,        # PGD-10 at test time (step eps / 4): robust accuracy and CAS per epoch
    "eval_n": 500,           # the first 500 test images, every epoch
    "epochs": 40,
    "batch_size": 32,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "step",
    "milestones": [20, 30],
    "augment": False,
    "save_every": 0,         # best.pt and last.pt only
    "device": "cpu",
}
SEEDS = (0, 1, 2)
EPS_GRID = (2.0, 4.0, 8.0, 16.0, 32.0)   # the paper's range on CIFAR (2-16) and 32, far beyond it
SOFT_EPS = 8.0
# name -> changes to the AT point: label smoothing alpha 0.2, distillation from the AT point's best
# checkpoint at temperature 2 (Chen et al. 2021 distil robust teachers at T = 2), AWP at gamma 5e-3 (the
# value Wu et al. 2020 use with PGD AT)
SOFT_VARIANTS: dict[str, dict[str, Any]] = {
    "at": {},
    "at+ls": {"label_smoothing": 0.2},
    "at+kd": {"mode": "kd", "teacher_from": "at_best", "temperature": 2.0},
    "at+awp": {"awp_gamma": 0.005},
}


def _point(eps: float, seed: int, overrides: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    return {**SETUP, "eps": eps, "step_size": eps / 4, "seed": seed, **changes, **overrides}


def experiment_points(experiment: str, seeds: Sequence[int] | None = None,
                      overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``real-train`` points of one observation.

    Args:
        experiment: ``"epochs"`` (AT at :data:`SOFT_EPS`: curves per epoch, best vs last), ``"eps"`` (AT over
            :data:`EPS_GRID`) or ``"soft"`` (:data:`SOFT_VARIANTS` at :data:`SOFT_EPS`).
        seeds: overrides :data:`SEEDS`.
        overrides: settings replacing :data:`SETUP`'s in every point (e.g. a smaller data set for a test).
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
    seeds = SEEDS if seeds is None else tuple(seeds)
    overrides = dict(overrides or {})
    if experiment == "epochs":
        return [_point(SOFT_EPS, s, overrides) for s in seeds]
    if experiment == "eps":
        return [_point(eps, s, overrides) for eps in EPS_GRID for s in seeds]
    return [_point(SOFT_EPS, s, overrides, **changes) for changes in SOFT_VARIANTS.values() for s in seeds]


def all_points(seeds: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None
               ) -> list[dict[str, Any]]:
    """The distinct points of the three observations, plain AT first (the teachers of the KD points)."""
    seen, out = set(), []
    for experiment in ("eps", "epochs", "soft"):
        for params in experiment_points(experiment, seeds, overrides):
            key = json.dumps(params, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(params)
    return out


def grid_spec(seeds: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "paper-fmnist", "kind": "real-train", "points": all_points(seeds, overrides)}


register_preset("paper-fmnist", "Fashion-MNIST, small CNN, 500 training images: CAS per epoch under AT, CAS drop "
                "across eps, AT vs label smoothing vs distillation vs AWP (3 seeds)", grid_spec)


# -- tables ----------------------------------------------------------------------------------------
SUMMARY = ("best_epoch", "best_robust_acc", "robust_acc", "robust_gap", "cas_best", "cas_last", "cas_drop",
           "clean_acc")


def summary_tables(points, history) -> dict[str, Any]:
    """Mean, sample std and count over seeds, as pandas DataFrames: ``eps`` (plain AT per training eps),
    ``soft`` (per variant at each eps where several variants ran) and ``epochs`` (plain AT at
    :data:`SOFT_EPS`, every 5th epoch: test robust and clean accuracy, CAS).

    Args:
        points: ``read_points(out, status="done")`` of a store holding ``real-train`` points.
        history: ``read_history(out)`` of the same store.
    """
    from figures.dynamics import training_variant
    from synthmodel.dynamics import mean_spread

    points = points[points["kind"] == "real-train"]
    points = points.assign(variant=points.apply(training_variant, axis=1))
    at = points[points["variant"] == "AT"]
    tables = {"eps": mean_spread(at, ["eps"], SUMMARY)}
    variety = points.groupby("eps")["variant"].nunique()
    soft = points[points["eps"].isin(variety[variety > 1].index)]
    if not soft.empty:
        tables["soft"] = mean_spread(soft, ["eps", "variant"], SUMMARY)
    main = at[at["eps"] == SOFT_EPS]
    if not main.empty and not history.empty:
        long = history[history["hash"].isin(main["hash"])]
        last = int(long["epoch"].max())
        long = long[long["epoch"].isin({1, *range(5, last + 1, 5), last})]
        tables["epochs"] = mean_spread(long, ["epoch"], ("test_robust_acc", "test_clean_acc", "cas"))
    return tables


def write_tables(out_dir) -> str | None:
    """The post-run hook ``real-tables``: :func:`summary_tables` of the store in ``out_dir`` as Markdown, in
    ``out_dir/real_tables.md``; None (nothing written) when the store holds no finished ``real-train`` point."""
    from pathlib import Path

    from synthmodel.atomic import write_text
    from synthmodel.dynamics import markdown_table
    from synthmodel.sweep import read_history, read_points

    out_dir = Path(out_dir)
    points = read_points(out_dir, status="done")
    if points.empty or "kind" not in points or not (points["kind"] == "real-train").any():
        return None
    titles = {"epochs": f"AT at eps {SOFT_EPS:g}/255, per epoch", "eps": "AT over the training eps (1/255)",
              "soft": "AT and its soft-label / weight-perturbation variants"}
    tables = summary_tables(points, read_history(out_dir))
    n = int((points["kind"] == "real-train").sum())
    parts = [f"# real-data tables: {n} points of {out_dir / 'sweep.sqlite'} (mean ± sample std over seeds)\n"]
    parts += [f"## {titles[name]}\n\n{markdown_table(tables[name])}\n" for name in ("epochs", "eps", "soft")
              if name in tables]
    target = out_dir / "real_tables.md"
    write_text(target, "\n".join(parts))
    return str(target)


register_hook("real-tables", write_tables)
