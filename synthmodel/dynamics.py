"""Training dynamics in the synthetic world: does AT "learn cross-class features, then forget them"?

The paper (PAPER.md) reports three things about CIFAR-10 adversarial training (AT):

* **epochs**: CAS rises until the best robust checkpoint, then falls while robust overfitting sets in;
* **eps**: the drop ``CAS(best) - CAS(last)`` grows with the training eps, but very large eps learns few
  cross-class features at all;
* **soft**: soft labels (label smoothing, distillation from an AT teacher's best checkpoint) keep CAS high
  and shrink the overfitting gap.

This module names one finite-sample set-up per experiment (:data:`SETUP`, :func:`experiment_points`),
runs one point of any of them (:func:`run_point`: ``params dict -> flat results dict``, JSON scalars
only, the per-epoch history as JSON text) and turns a pandas DataFrame of results into the tables of
docs/EXPERIMENTS.md (:func:`epochs_table`, :func:`eps_table`, :func:`soft_table`: mean and spread over
seeds).

A point's params are the keys of :class:`synthmodel.train.TrainConfig` except ``teacher`` (a file path has
no place in a reproducible point), plus ``teacher_from``:

* ``"none"``: train as the config says (AT, or AT + label smoothing when ``label_smoothing > 0``);
* ``"at_best"``: distillation. The teacher is first trained *inside the same point* from the same params
  with hard labels (``label_smoothing = 0``, same seed, hence the same training set, initialisation and
  attack randomness as the plain AT point), its best checkpoint (by test robust accuracy) is restored,
  and the student is trained on ``softmax(teacher(x_adv) / temperature)``. Nothing depends on another
  point having run, so every point is deterministic from its params alone.

Library use::

    from synthmodel.dynamics import experiment_points, run_point, eps_table
    rows = [run_point(p) for p in experiment_points("eps")]
    print(eps_table(pandas.DataFrame(rows)))

CLI (a local driver; the sweep runner is the other way to run the same points)::

    python -m synthmodel.dynamics --experiment all --workers 2 --out results/dynamics
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import attacks as atk
from .attribution import attribution
from .cli import ArgumentParser
from .models import build_model
from .sample import derive_seed, sample
from .train import DTYPES, TrainConfig, TrainResult, build_world, finite_or_none, train

__all__ = ["SETUP", "EXPERIMENTS", "TEACHER_SOURCES", "EXPERIMENT_SEEDS", "EPS_GRID", "SOFT_VARIANTS", "STUDIES",
           "experiment_points", "all_points", "point_config", "run_point", "run_point_with_history", "run_dynamics",
           "results_row",
           "adversarial_test_inputs", "recompute_cas", "variant_of", "epochs_table", "eps_table", "soft_table",
           "summarize", "main"]

TEACHER_SOURCES = ("none", "at_best")
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


# -- set-ups -------------------------------------------------------------------------------------
def _point(**changes: Any) -> dict[str, Any]:
    return {**SETUP, **POINT_DEFAULTS, **changes}


def experiment_points(experiment: str, seeds: Sequence[int] | None = None, *, label: bool = False
                      ) -> list[dict[str, Any]]:
    """The params dicts of one experiment (several seeds each).

    Args:
        experiment: ``"epochs"`` (AT at eps in :data:`EPOCHS_EPS`, CAS and robust accuracy per epoch),
            ``"eps"`` (AT over :data:`EPS_GRID`, CAS(best) - CAS(last)) or ``"soft"`` (AT vs AT + label
            smoothing vs AT + distillation at eps :data:`SOFT_EPS`).
        seeds: overrides :data:`EXPERIMENT_SEEDS` (e.g. a single seed for a smoke run).
        label: add ``"experiment": <name>`` to every point (a tag for selecting results, e.g. by
            ``figures.dynamics``; it does not change what runs, but tagged points of different experiments
            are different points to a store, so the shared ones run once per experiment).

    Returns:
        A list of complete params dicts for :func:`run_point` (identical set-ups of different
        experiments give identical dicts, so a store keyed by params runs them once).
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


def point_config(params: dict[str, Any]) -> tuple[TrainConfig, str]:
    """Split a point's params into a validated :class:`TrainConfig` and its ``teacher_from``.

    An ``experiment`` key (a string) is a label and is ignored.

    Raises:
        ValueError: an unknown key, a ``teacher`` path, a bad ``teacher_from`` or any TrainConfig error.
    """
    params = dict(params)
    tag = params.pop("experiment", None)  # a label only (experiment_points(label=True))
    if tag is not None and not isinstance(tag, str):
        raise ValueError(f"experiment must be a string label, got {tag!r}")
    teacher_from = params.pop("teacher_from", "none")
    if teacher_from not in TEACHER_SOURCES:
        raise ValueError(f"teacher_from must be one of {', '.join(TEACHER_SOURCES)}, got {teacher_from!r}")
    if params.get("teacher") is not None:
        raise ValueError("a dynamics point trains its own teacher: use teacher_from='at_best', not a teacher file")
    params.pop("teacher", None)
    if "hidden" in params:
        params["hidden"] = tuple(params["hidden"])
    config = TrainConfig.from_dict(params).validate()
    if teacher_from == "at_best" and config.label_smoothing:
        raise ValueError("use either label smoothing or a teacher (teacher_from='at_best'), not both")
    return config, teacher_from


# -- one point -----------------------------------------------------------------------------------
def run_dynamics(params: dict[str, Any]) -> tuple[TrainResult, TrainResult | None]:
    """Train one point; returns (student result, teacher result or None). Epoch states are kept.

    The teacher of ``teacher_from='at_best'`` is :func:`synthmodel.train.train` of the same config with
    hard labels and no teacher; its best state (by test robust accuracy) is loaded into a fresh model.
    """
    config, teacher_from = point_config(params)
    teacher_result = None
    teacher = None
    if teacher_from == "at_best":
        teacher_config = dataclasses.replace(config, label_smoothing=0.0, teacher=None, temperature=1.0)
        teacher_result = train(teacher_config)
        teacher = build_model(config.model, build_world(config), seed=config.seed, dtype=DTYPES[config.dtype],
                              hidden=config.hidden, bias=config.bias)
        teacher.load_state_dict(teacher_result.best_state)
        teacher.eval()
    result = train(config, teacher=teacher, keep_epoch_states=True)
    return result, teacher_result


def results_row(result: TrainResult, teacher_result: TrainResult | None = None) -> dict[str, Any]:
    """The flat results dict of a run (JSON scalars; NaN kept as NaN, the history as JSON text).

    Keys: ``best_epoch``; ``cas_best`` / ``cas_last`` (CAS on PGD test inputs at the best / last epoch);
    ``cas_drop = cas_best - cas_last``; ``cas_max`` and ``cas_max_epoch`` (the peak over epochs);
    ``robust_acc_best`` / ``robust_acc_last`` (test); ``overfit_gap = robust_acc_best - robust_acc_last``;
    ``clean_acc_best`` / ``clean_acc_last``; ``train_robust_acc_last``, ``train_robust_loss_last``,
    ``train_robust_loss_best``; ``w1_best`` ... for the tied model; ``teacher_best_epoch`` and
    ``teacher_robust_acc_best`` for distillation (else NaN / -1); ``variant`` (:func:`variant_of`);
    ``class_matrix_best`` / ``class_matrix_last`` (C as JSON text, when the history has it); ``history``: the
    per-epoch records as JSON text (NaN as null; without the per-epoch class matrices, to keep rows small).
    """
    history = result.history
    best, last = history[result.best_epoch - 1], history[-1]
    cas = [record["cas"] for record in history]
    finite = [i for i, c in enumerate(cas) if math.isfinite(c)]
    cas_argmax = max(finite, key=lambda i: cas[i]) if finite else -1  # the first epoch of the peak
    cas_max = cas[cas_argmax] if finite else float("nan")
    row: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(history),
        "cas_best": best["cas"], "cas_last": last["cas"], "cas_drop": best["cas"] - last["cas"],
        "cas_max": cas_max, "cas_max_epoch": cas_argmax + 1 if cas_argmax >= 0 else -1,
        "robust_acc_best": best["test_robust_acc"], "robust_acc_last": last["test_robust_acc"],
        "overfit_gap": best["test_robust_acc"] - last["test_robust_acc"],
        "clean_acc_best": best["test_clean_acc"], "clean_acc_last": last["test_clean_acc"],
        "train_robust_acc_last": last["train_robust_acc"],
        "train_robust_loss_best": best["train_robust_loss"], "train_robust_loss_last": last["train_robust_loss"],
        "teacher_best_epoch": teacher_result.best_epoch if teacher_result is not None else -1,
        "teacher_robust_acc_best": (teacher_result.history[teacher_result.best_epoch - 1]["test_robust_acc"]
                                    if teacher_result is not None else float("nan")),
    }
    if "w1" in last:
        row.update(w1_best=best["w1"], w2_best=best["w2"], w1_last=last["w1"], w2_last=last["w2"])
    # NaN is not JSON: the history text writes it as null (CAS of an all-zero model is NaN)
    if "class_matrix" in last:
        row["class_matrix_best"] = json.dumps(finite_or_none(best["class_matrix"]))
        row["class_matrix_last"] = json.dumps(finite_or_none(last["class_matrix"]))
    row["variant"] = variant_of({"teacher_from": "none" if teacher_result is None else "at_best",
                                 "label_smoothing": result.config.label_smoothing})
    row["history"] = json.dumps([finite_or_none({k: v for k, v in record.items() if k != "class_matrix"})
                                 for record in history])
    return row


def run_point(params: dict[str, Any]) -> dict[str, Any]:
    """The point kind ``dynamics``: ``params -> results`` (see :func:`results_row` for the keys).

    Deterministic per params on CPU (every random draw comes from a generator seeded by ``seed``).
    """
    return results_row(*run_dynamics(params))


def run_point_with_history(params: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_point` plus ``"_history"``: the full per-epoch records (class matrices included, NaN as None),
    the one non-scalar entry the sweep runner's store accepts (its ``HISTORY_KEY``)."""
    result, teacher_result = run_dynamics(params)
    row = results_row(result, teacher_result)
    row["_history"] = finite_or_none(result.history)
    return row


def adversarial_test_inputs(model: torch.nn.Module, config: TrainConfig, epoch: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """The PGD test inputs on which the training history computed CAS at ``epoch`` (1-based).

    Rebuilds the test set from the config's seed and runs the evaluation attack with the same generator,
    steps and step size as :mod:`synthmodel.train`'s per-epoch evaluation, so a model with the same weights
    gets the same ``x_adv`` bit for bit. Returns (x_adv (n_test, d), y (n_test,)).
    """
    world = build_world(config)
    x, y = sample(world, config.n_test, derive_seed(config.seed, "test"), dtype=DTYPES[config.dtype])
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "eval", epoch, x.shape[0]))
    with atk.preserve_mode(model, "eval"):
        x_adv = atk.pgd(model, x, y, eps=config.eps, norm=config.norm, steps=config.eval_steps, random_start=True,
                        generator=gen, mode=None)
    return x_adv, y


def recompute_cas(model: torch.nn.Module, config: TrainConfig, epoch: int) -> float:
    """CAS of ``model`` on :func:`adversarial_test_inputs` (the history's CAS, computed independently)."""
    x_adv, y = adversarial_test_inputs(model, config, epoch)
    return attribution(model, x_adv, y).cas


# -- analysis ------------------------------------------------------------------------------------
def variant_of(row: Any) -> str:
    """``AT`` / ``AT + LS <alpha>`` / ``AT + KD`` of a params row (a dict or a pandas row); the spelling of
    ``figures.dynamics``."""
    if row.get("teacher_from", "none") == "at_best":
        return "AT + KD"
    alpha = row.get("label_smoothing", 0.0)
    alpha = 0.0 if alpha is None or (isinstance(alpha, float) and math.isnan(alpha)) else float(alpha)
    return f"AT + LS {alpha:g}" if alpha > 0 else "AT"


def _model_label(row: Any) -> str:
    """``world model`` e.g. ``paper3 mlp(128)``, ``ring-10 linear``."""
    hidden = row.get("hidden")
    model = str(row["model"])
    if model == "mlp":
        widths = json.loads(hidden) if isinstance(hidden, str) else list(hidden)
        model = "mlp(" + ",".join(str(w) for w in widths) + ")"
    return f"{row.get('preset', 'paper3')} {model}"


def _prepare(df):
    import pandas as pd

    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError("expected a non-empty pandas DataFrame of dynamics results")
    missing = {"model", "eps", "seed", "cas_best", "cas_last", "robust_acc_best", "robust_acc_last"} - set(df.columns)
    if missing:
        raise ValueError(f"results lack columns: {', '.join(sorted(missing))}")
    df = df.copy()
    df["model_label"] = [_model_label(r) for _, r in df.iterrows()]
    df["variant"] = [variant_of(r) for _, r in df.iterrows()]
    return df


def _mean_spread(df, by: list[str], columns: Sequence[str]):
    """Mean, sample std and count over seeds of ``columns``, grouped by ``by`` (one row per group)."""
    grouped = df.groupby(by, sort=True)[list(columns)]
    mean, std = grouped.mean(), grouped.std(ddof=1)
    out = mean.copy()
    for column in columns:
        out[column + "_std"] = std[column]
    out["n_seeds"] = grouped.size()
    ordered = [c for column in columns for c in (column, column + "_std")] + ["n_seeds"]
    return out[ordered].reset_index()


SUMMARY_COLUMNS = ("best_epoch", "robust_acc_best", "robust_acc_last", "overfit_gap", "cas_best", "cas_last",
                   "cas_drop", "cas_max", "cas_max_epoch", "train_robust_acc_last")


def eps_table(df):
    """Experiment (b): per model and eps, mean and std over seeds of best/last CAS, CAS drop, robust acc,
    overfitting gap (AT points only)."""
    df = _prepare(df)
    df = df[df["variant"] == "AT"]
    return _mean_spread(df, ["model_label", "eps"], SUMMARY_COLUMNS)


def soft_table(df, eps: float | None = None):
    """Experiment (c): per model and variant (AT / AT + LS 0.2 / AT + KD), mean and std over seeds (eps given or
    :data:`SOFT_EPS`)."""
    df = _prepare(df)
    eps = SOFT_EPS if eps is None else eps
    df = df[(df["eps"] - eps).abs() < 1e-12]
    if df.empty:
        raise ValueError(f"no results at eps={eps}")
    return _mean_spread(df, ["model_label", "variant"], SUMMARY_COLUMNS)


def epochs_table(df, epochs: Iterable[int] | None = None):
    """Experiment (a): per model, eps and epoch, mean and std over seeds of test robust accuracy, CAS,
    train robust loss (AT points only; from ``history``). ``epochs`` defaults to every 5th and the last."""
    import pandas as pd

    df = _prepare(df)
    df = df[df["variant"] == "AT"]
    if "history" not in df.columns:
        raise ValueError("results lack the history column")
    rows = []
    for _, row in df.iterrows():
        for record in json.loads(row["history"]):
            rows.append({"model_label": row["model_label"], "eps": row["eps"], "seed": row["seed"],
                         "epoch": record["epoch"], "test_robust_acc": record["test_robust_acc"],
                         "cas": float("nan") if record["cas"] is None else record["cas"],
                         "train_robust_loss": record["train_robust_loss"], "test_clean_acc": record["test_clean_acc"]})
    long = pd.DataFrame(rows)
    if epochs is None:
        last = int(long["epoch"].max())
        epochs = sorted({1, *range(5, last + 1, 5), last})
    long = long[long["epoch"].isin(list(epochs))]
    return _mean_spread(long, ["model_label", "eps", "epoch"], ("test_robust_acc", "cas", "train_robust_loss"))


def summarize(df) -> str:
    """The three tables as Markdown text (mean ± std over seeds)."""
    parts = []
    for title, table in (("(a) AT, per epoch", epochs_table(df) if "history" in df.columns else None),
                         ("(b) AT over eps", eps_table(df)), ("(c) soft labels", _soft_or_none(df))):
        if table is None or table.empty:
            continue
        parts.append(f"### {title}\n\n{_markdown(table)}\n")
    return "\n".join(parts)


def _soft_or_none(df):
    try:
        return soft_table(df)
    except ValueError:
        return None


def _markdown(table) -> str:
    """mean ± std cells, no extra dependency (pandas' to_markdown needs tabulate)."""
    keys = [c for c in table.columns if not c.endswith("_std") and c != "n_seeds"]
    header = "| " + " | ".join(keys + ["n"]) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 1)]
    for _, row in table.iterrows():
        cells = []
        for key in keys:
            value = row[key]
            if key + "_std" in table.columns:
                std = row[key + "_std"]
                cells.append(f"{value:.3f} ± {std:.3f}" if math.isfinite(std) else f"{value:.3f}")
            else:
                cells.append(f"{value:g}" if isinstance(value, float) else str(value))
        cells.append(str(int(row["n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- local driver --------------------------------------------------------------------------------
def _run_with_params(params: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    start = time.perf_counter()
    row = run_point(params)
    return {**{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in params.items()}, **row,
            "seconds": time.perf_counter() - start}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m synthmodel.dynamics",
                       description="Run the training-dynamics experiments (AT per epoch, CAS drop over "
                                   "eps, soft labels) with a local process pool and write results.csv "
                                   "and tables.md.")
    p.add_argument("--experiment", choices=[*EXPERIMENTS, "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the experiment's seeds")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.csv, tables.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        points = all_points(args.seeds) if args.experiment == "all" else experiment_points(args.experiment,
                                                                                           args.seeds)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd
    from tqdm.auto import tqdm

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(_run_with_params, p) for p in points]
        for future in tqdm(futures, desc="dynamics", unit="point", file=sys.stderr, disable=args.quiet):
            rows.append(future.result())
            # rewrite after every point (temp file, then rename): an interrupted run keeps what it computed
            frame = pd.DataFrame(rows)
            tmp = out / "results.csv.tmp"
            frame.to_csv(tmp, index=False)
            tmp.replace(out / "results.csv")
    elapsed = time.perf_counter() - start
    frame = pd.DataFrame(rows)
    text = (f"# dynamics: {args.experiment}, {len(points)} points, {elapsed:.0f} s wall, {args.workers} workers\n\n"
            + summarize(frame))
    tmp = out / "tables.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "tables.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
