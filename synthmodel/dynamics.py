"""Training dynamics in the synthetic world: the sweep point kind ``dynamics`` and its analysis tables.

A ``dynamics`` point is one training run analysed the way the paper reads CIFAR runs: CAS and robust
accuracy at the best checkpoint (highest test robust accuracy) against the last, the robust-overfitting
gap, the CAS peak. Its settings are :class:`DynamicsConfig`: every :class:`synthmodel.train.TrainConfig`
setting except a teacher file (a path has no place in a reproducible point), plus

* ``teacher_from``: ``"none"`` trains as the settings say (AT, or AT + label smoothing when
  ``label_smoothing > 0``); ``"at_best"`` is distillation: the teacher is first trained *inside the same
  point* from the same settings with hard labels (same seed, hence the same training set, initialisation
  and attack randomness as the plain point), its best checkpoint is restored, and the student is trained
  on ``softmax(teacher(x_adv) / temperature)``. Nothing depends on another point having run, so every
  point is deterministic from its settings alone;
* ``experiment``: a label (e.g. which experiment a point belongs to, for selecting results); it does not
  change what runs.

:func:`run_point` maps settings to a flat results dict (JSON scalars, the per-epoch history as JSON text);
:func:`eps_table`, :func:`soft_table`, :func:`epochs_table` and :func:`summarize` turn a pandas DataFrame of
results into mean and spread over seeds; the post-run hook ``tables`` writes them to ``<out>/tables.md``
after a sweep holding dynamics points. The experiments themselves (set-ups, seeds, presets
``paper-dynamics``, ``dynamics-*``) are :mod:`experiments.dynamics`.

Library use::

    from experiments.dynamics import experiment_points
    from synthmodel.dynamics import run_point, eps_table
    rows = [run_point(p) for p in experiment_points("eps")]
    print(eps_table(pandas.DataFrame(rows)))
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import attacks as atk
from .atomic import write_text
from .attribution import attribution
from .models import build_model
from .sample import derive_seed, sample
from .schema import from_mapping, option, param_table
from .sweep import PointKind, register_hook, register_kind
from .train import DTYPES, TrainConfig, TrainResult, build_world, finite_or_none, train

__all__ = ["TEACHER_SOURCES", "DynamicsConfig", "run_dynamics", "results_row", "run_point", "run_point_with_history",
           "adversarial_test_inputs", "recompute_cas", "variant_label", "model_label", "epochs_table", "eps_table",
           "soft_table", "summarize", "write_tables", "setting", "mean_spread", "markdown_table"]

TEACHER_SOURCES = ("none", "at_best")


@dataclass
class DynamicsConfig(TrainConfig):
    """The settings of a ``dynamics`` point: a :class:`~synthmodel.train.TrainConfig` without a teacher file,
    plus where a teacher comes from and a label."""

    teacher: str | None = option(None, "not a dynamics setting: the point trains its own teacher (teacher_from)",
                                 sweep=False, cli=False)
    teacher_from: str = option("none", "none: train as set; at_best: distil from the best checkpoint of the same "
                                       "settings trained with hard labels inside the point", choices=TEACHER_SOURCES)
    experiment: str | None = option(None, "a label for selecting results; does not change what runs",
                                    none="no label")

    def validate(self) -> DynamicsConfig:
        if self.teacher is not None:
            raise ValueError("a dynamics point trains its own teacher: use teacher_from='at_best', not a teacher "
                             "file")
        super().validate()
        if self.teacher_from == "at_best" and self.label_smoothing:
            raise ValueError("use either label smoothing or a teacher (teacher_from='at_best'), not both")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicsConfig:
        return from_mapping(cls, data, what="dynamics settings")

    def training(self) -> TrainConfig:
        """The training run's own settings (teacher_from and the label dropped)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


# -- one point -----------------------------------------------------------------------------------
def run_dynamics(params: dict[str, Any]) -> tuple[TrainResult, TrainResult | None]:
    """Train one point; returns (student result, teacher result or None). Epoch states are kept.

    The teacher of ``teacher_from='at_best'`` is :func:`synthmodel.train.train` of the same config with
    hard labels and no teacher; its best state (by test robust accuracy) is loaded into a fresh model.

    Raises:
        ValueError: an unknown key or an impossible setting (:meth:`DynamicsConfig.validate`).
    """
    point = DynamicsConfig.from_dict(params).validate()
    config = point.training()
    teacher_result = None
    teacher = None
    if point.teacher_from == "at_best":
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
    ``teacher_robust_acc_best`` for distillation (else NaN / -1); ``variant`` (:func:`variant_label`);
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
    row["variant"] = variant_label({"mode": result.config.mode, "label_smoothing": result.config.label_smoothing,
                                    "teacher_from": "none" if teacher_result is None else "at_best"})
    row["history"] = json.dumps([finite_or_none({k: v for k, v in record.items() if k != "class_matrix"})
                                 for record in history])
    return row


def _check_point(params: dict[str, Any]) -> None:
    DynamicsConfig.from_dict(params).validate()


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


# -- labels (also the figures') ------------------------------------------------------------------
# kd: real_data.train's AT on a teacher's soft labels (its variant then reads "AT + KD")
MODE_LABELS = {"at": "AT", "trades": "TRADES", "standard": "standard", "kd": "AT"}


def setting(row: Any, key: str, default: Any) -> Any:
    """``row[key]`` of a dict or a pandas row; ``default`` when absent or NaN (a column other kinds lack)."""
    value = row.get(key, default)
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def variant_label(row: Any) -> str:
    """``AT`` / ``AT + LS <alpha>`` / ``AT + KD`` (``TRADES ...``, ``standard ...`` for those modes) of a training
    or dynamics point's settings (a dict or a pandas row). KD: ``teacher_from = 'at_best'`` or a teacher file."""
    name = MODE_LABELS.get(str(setting(row, "mode", "at")), str(setting(row, "mode", "at")))
    teacher = setting(row, "teacher", None)
    if setting(row, "teacher_from", "none") == "at_best" or (isinstance(teacher, str) and teacher):
        return f"{name} + KD"
    alpha = float(setting(row, "label_smoothing", 0.0))
    return f"{name} + LS {alpha:g}" if alpha > 0 else name


def model_label(row: Any) -> str:
    """``world model`` of a training point's settings, e.g. ``paper3 mlp(128)``, ``ring-10 linear``."""
    model = str(setting(row, "model", "?"))
    if model == "mlp":
        hidden = setting(row, "hidden", [])
        widths = json.loads(hidden) if isinstance(hidden, str) else list(hidden)
        model = "mlp(" + ",".join(str(w) for w in widths) + ")"
    return f"{setting(row, 'preset', 'paper3')} {model}"


# -- analysis ------------------------------------------------------------------------------------
def _prepare(df):
    import pandas as pd

    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError("expected a non-empty pandas DataFrame of dynamics results")
    missing = {"model", "eps", "seed", "cas_best", "cas_last", "robust_acc_best", "robust_acc_last"} - set(df.columns)
    if missing:
        raise ValueError(f"results lack columns: {', '.join(sorted(missing))}")
    df = df.copy()
    df["model_label"] = [model_label(r) for _, r in df.iterrows()]
    df["variant"] = [variant_label(r) for _, r in df.iterrows()]
    return df


def mean_spread(df, by: list[str], columns: Sequence[str]):
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
    return mean_spread(df, ["model_label", "eps"], SUMMARY_COLUMNS)


def soft_table(df, eps: float | None = None):
    """Experiment (c): per model, eps and variant (AT / AT + LS / AT + KD), mean and std over seeds, at the given
    ``eps`` or (None) at every eps where more than one variant ran."""
    df = _prepare(df)
    if eps is not None:
        df = df[(df["eps"] - eps).abs() < 1e-12]
    else:
        variety = df.groupby("eps")["variant"].nunique()
        df = df[df["eps"].isin(variety[variety > 1].index)]
    if df.empty:
        raise ValueError(f"no results at eps={eps}" if eps is not None else "no eps with several variants")
    return mean_spread(df, ["model_label", "eps", "variant"], SUMMARY_COLUMNS)


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
    return mean_spread(long, ["model_label", "eps", "epoch"], ("test_robust_acc", "cas", "train_robust_loss"))


def summarize(df) -> str:
    """The three tables as Markdown text (mean ± std over seeds)."""
    parts = []
    for title, table in (("(a) AT, per epoch", epochs_table(df) if "history" in df.columns else None),
                         ("(b) AT over eps", eps_table(df)), ("(c) soft labels", _soft_or_none(df))):
        if table is None or table.empty:
            continue
        parts.append(f"### {title}\n\n{markdown_table(table)}\n")
    return "\n".join(parts)


def _soft_or_none(df):
    try:
        return soft_table(df)
    except ValueError:
        return None


def markdown_table(table) -> str:
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


def write_tables(out_dir: str | Path) -> str | None:
    """The post-run hook ``tables``: :func:`summarize` of the finished dynamics points of the store in
    ``out_dir``, written to ``out_dir/tables.md``; None (nothing written) when the store holds none."""
    from .sweep import read_points

    out_dir = Path(out_dir)
    points = read_points(out_dir, status="done")
    if points.empty or "kind" not in points:
        return None
    points = points[points["kind"] == "dynamics"]
    if points.empty:
        return None
    target = out_dir / "tables.md"
    header = f"# dynamics tables: {len(points)} points of {out_dir / 'sweep.sqlite'}"
    write_text(target, f"{header}\n\n{summarize(points)}")
    return str(target)


register_kind(PointKind(
    name="dynamics", run=run_point_with_history, params=param_table(DynamicsConfig), check=_check_point,
    description="training-dynamics point: best/last CAS and robust acc, overfitting gap; teacher_from='at_best' "
                "distils from an AT teacher trained inside the point"))
register_hook("tables", write_tables)
