"""Figures of finite-sample training dynamics: CAS and robust accuracy against epoch, the CAS drop
from the best to the last epoch against eps, and AT against its soft-label variants."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from synthmodel.dynamics import model_label, setting, variant_label

from . import style
from .data import DYNAMICS_COMMAND, REAL_COMMAND, MissingData, Sources, point_histories


def study_label(row) -> str:
    """World and model of a training point: ``paper3 mlp(128)`` (synthetic), ``fashion-mnist small-cnn(16)``
    (real data: a ``real-train`` point names a dataset)."""
    dataset = setting(row, "dataset", None)
    if dataset is None:
        return model_label(row)
    arch = str(setting(row, "arch", None) or "?")
    width = setting(row, "width", None)
    return f"{str(dataset).split(':')[0]} {arch}" + (f"({int(width)})" if arch == "small-cnn" and width else "")


def training_variant(row) -> str:
    """``AT``, ``AT + LS 0.2``, ``AT + KD``, ``AT + AWP`` (weight perturbation, real data) ..."""
    awp = float(setting(row, "awp_gamma", 0.0)) > 0
    return variant_label(row) + (" + AWP" if awp else "")


def eps_units(table: pd.DataFrame) -> str:
    """The unit of the training eps: 1/255 of the pixel range for real data, input units otherwise."""
    return "1/255" if "dataset" in table and table["dataset"].notna().all() else "input units"


def run_table(sources: Sources) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per training point with a history: params, variant, best/last CAS and robust accuracy."""
    points = sources.points
    if points.empty or "hash" not in points:
        raise MissingData("no training points in the stores", DYNAMICS_COMMAND)
    histories = point_histories(sources, points)
    rows = []
    for _, point in points.iterrows():
        history = histories.get(point["hash"])
        if history is None or not {"cas", "test_robust_acc", "epoch"} <= set(history):
            continue
        robust = history["test_robust_acc"].astype(float).to_numpy()
        best = int(np.argmax(robust))
        cas = history["cas"].astype(float).to_numpy()
        rows.append({**point.to_dict(), "variant": training_variant(point),
                     "best_epoch": int(history["epoch"].iloc[best]),
                     "cas_best": cas[best], "cas_last": cas[-1],
                     "robust_best": robust[best], "robust_last": robust[-1]})
    if not rows:
        raise MissingData("no per-epoch histories with CAS and test robust accuracy in the stores", DYNAMICS_COMMAND)
    return pd.DataFrame(rows), histories


MAX_STUDIES = 4    # rows / columns of panels
MAX_LINES = 6      # eps curves per study


def _with_studies(table: pd.DataFrame) -> pd.DataFrame:
    """Adds ``study``: world and model of each point, the unit the experiments compare within."""
    return table.assign(study=table.apply(study_label, axis=1))


def _mean_history(histories: dict[str, pd.DataFrame], hashes) -> tuple[pd.DataFrame, pd.DataFrame | None, int]:
    frames = [histories[h].set_index("epoch")[["cas", "test_robust_acc"]].astype(float) for h in hashes]
    joined = pd.concat(frames).groupby(level=0)
    return joined.mean(), (joined.std() if len(frames) > 1 else None), len(frames)


def curves(sources: Sources, out: Path) -> list[Path]:
    """Per study: mean (over seeds) CAS and test robust accuracy against epoch, one line per eps (plain AT
    or the only variant present), band = 1 s.d., best epoch starred."""
    table, histories = run_table(sources)
    table = _with_studies(table)
    plain = table[table["variant"] == "AT"]
    table = plain if not plain.empty else table
    studies = sorted(table["study"].unique())[:MAX_STUDIES]
    fig, axes = style.figure(ncols=2, nrows=len(studies), width=3.3, height=2.3)
    for row, study in enumerate(studies):
        group = table[table["study"] == study]
        eps_values = sorted(group["eps"].unique())[:MAX_LINES] if "eps" in group else [None]
        for i, eps in enumerate(eps_values):
            members = group if eps is None else group[group["eps"] == eps]
            mean, spread, n = _mean_history(histories, members["hash"])
            colour = style.PALETTE[i % len(style.PALETTE)]
            best = mean["test_robust_acc"].idxmax()
            label = ("all" if eps is None else f"$\\epsilon$={eps:g}") + f" (n={n})"
            for ax, key in ((axes[row, 0], "cas"), (axes[row, 1], "test_robust_acc")):
                ax.plot(mean.index, mean[key], color=colour, lw=1.2, label=label)
                if spread is not None:
                    ax.fill_between(mean.index, mean[key] - spread[key], mean[key] + spread[key], color=colour,
                                    alpha=0.12, lw=0)
                ax.plot([best], [mean.loc[best, key]], marker="*", ms=8, color=colour, mec="black", mew=0.5)
        axes[row, 0].set_ylabel(f"{study}\nCAS (adv. test inputs)")
        axes[row, 1].set_ylabel("test robust accuracy")
        axes[row, 1].legend(loc="best", fontsize=6.5)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.suptitle("AT dynamics per study (mean over seeds, band 1 s.d., $\\star$ best epoch)", fontsize=9)
    return style.save(fig, out, "dynamics_curves")


def cas_drop(sources: Sources, out: Path) -> list[Path]:
    """Per study: CAS(best) - CAS(last) (top) and test robust accuracy at best and last (bottom) against the
    training eps, one line per variant."""
    table, _ = run_table(sources)
    table = _with_studies(table)
    if "eps" not in table or table["eps"].nunique() < 2:
        raise MissingData("training points at fewer than two eps values", DYNAMICS_COMMAND)
    table = table.assign(cas_drop=table["cas_best"] - table["cas_last"])
    counts = table.groupby("study")["eps"].nunique()
    studies = sorted(counts[counts >= 2].index)[:MAX_STUDIES]
    fig, axes = style.figure(ncols=len(studies), nrows=2, width=2.9, height=2.3, sharex="col")
    variants = sorted(table["variant"].unique())
    for col, study in enumerate(studies):
        group = table[table["study"] == study]
        for i, variant in enumerate(variants):
            rows = group[group["variant"] == variant]
            if rows.empty:
                continue
            stats = rows.groupby("eps").agg(drop=("cas_drop", "mean"), drop_sd=("cas_drop", "std"),
                                            best=("robust_best", "mean"), last=("robust_last", "mean"))
            colour, marker = style.PALETTE[i % len(style.PALETTE)], style.MARKERS[i % len(style.MARKERS)]
            axes[0, col].errorbar(stats.index, stats["drop"], yerr=stats["drop_sd"].fillna(0), color=colour,
                                  marker=marker, ms=4, capsize=2, label=variant)
            axes[1, col].plot(stats.index, stats["best"], color=colour, marker=marker, ms=3, label=f"{variant}, best")
            axes[1, col].plot(stats.index, stats["last"], color=colour, marker=marker, ms=3, ls="--",
                              mfc="white", label=f"{variant}, last")
        axes[0, col].axhline(0, color="0.5", lw=0.6)
        axes[0, col].set_title(study)
        axes[1, col].set_xlabel(f"training $\\epsilon$ ({eps_units(group)})")
    axes[0, 0].set_ylabel("CAS(best) $-$ CAS(last)")
    axes[1, 0].set_ylabel("test robust accuracy")
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)))
    fig.suptitle("CAS drop and robust overfitting against eps (mean $\\pm$ 1 s.d. over seeds; solid best, "
                 "dashed last epoch)", fontsize=9)
    return style.save(fig, out, "dynamics_cas_drop")


def soft_labels(sources: Sources, out: Path) -> list[Path]:
    """Per study and eps where several variants ran: CAS gap, robust-overfitting gap and last-epoch CAS of
    AT and its soft-label variants (bars: mean, whiskers: 1 s.d. over seeds)."""
    table, _ = run_table(sources)
    table = _with_studies(table)
    table = table.assign(setting=table["study"] + (", $\\epsilon$=" + table["eps"].map("{:g}".format)
                                                   if "eps" in table else ""))
    variety = table.groupby("setting")["variant"].nunique()
    settings = sorted(variety[variety >= 2].index)[:MAX_STUDIES]
    if not settings:
        raise MissingData("no setting trained with two or more variants (need AT and a soft-label variant)",
                          DYNAMICS_COMMAND)
    table = table[table["setting"].isin(settings)]
    table = table.assign(cas_gap=table["cas_best"] - table["cas_last"],
                         overfit_gap=table["robust_best"] - table["robust_last"])
    variants = sorted(table["variant"].unique())
    fig, axes = style.figure(ncols=3, width=2.8, height=2.6)
    width = 0.8 / len(variants)
    x = np.arange(len(settings))
    panels = (("cas_gap", "CAS(best) $-$ CAS(last)"), ("overfit_gap", "robust acc. best $-$ last"),
              ("cas_last", "CAS at the last epoch"))
    for ax, (key, ylabel) in zip(axes[0], panels):
        for i, variant in enumerate(variants):
            stats = table[table["variant"] == variant].groupby("setting")[key].agg(["mean", "std", "size"])
            stats = stats.reindex(settings)
            ax.bar(x + (i - (len(variants) - 1) / 2) * width, stats["mean"], width, yerr=stats["std"].fillna(0),
                   color=style.PALETTE[i % len(style.PALETTE)], capsize=2, label=variant)
        ax.set_xticks(x)
        ax.set_xticklabels([textwrap.fill(setting, 14) for setting in settings], fontsize=6.5)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="0.5", lw=0.6)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels))
    fig.suptitle("AT and soft labels (mean, whiskers 1 s.d. over seeds)", fontsize=9)
    return style.save(fig, out, "dynamics_soft_labels")


def real_curves(sources: Sources, out: Path) -> list[Path]:
    """Per real-data CAS folder holding checkpoints of two or more epochs (``python -m real_data.cas
    --checkpoint run/epoch_*.pt run/last.pt --out DIR``): CAS, and clean and PGD robust test accuracy,
    against the epoch the checkpoint was saved at; the epoch of highest robust accuracy starred."""
    runs = []
    for folder, table, _ in sources.real_tables:
        if "epoch" not in table:
            continue
        rows = table.dropna(subset=["epoch"]).drop_duplicates(subset="epoch").sort_values("epoch")
        if len(rows) >= 2:
            runs.append((folder.name, rows))
    if not runs:
        raise MissingData("no real-data CAS folder with checkpoints of two or more epochs", REAL_COMMAND)
    runs = runs[:MAX_LINES]
    fig, axes = style.figure(ncols=2, width=3.3, height=2.4)
    for i, (name, rows) in enumerate(runs):
        colour = style.PALETTE[i % len(style.PALETTE)]
        epochs = rows["epoch"].astype(int)
        best = int(np.argmax(rows["robust_acc"].to_numpy()))
        axes[0, 0].plot(epochs, rows["cas"], color=colour, marker="o", ms=3, label=name)
        axes[0, 0].plot(epochs.iloc[best], rows["cas"].iloc[best], marker="*", ms=9, color=colour, mec="black",
                        mew=0.5)
        axes[0, 1].plot(epochs, rows["robust_acc"], color=colour, marker="o", ms=3, label=f"{name}, PGD")
        axes[0, 1].plot(epochs, rows["clean_acc"], color=colour, ls="--", lw=0.9, label=f"{name}, clean")
        axes[0, 1].plot(epochs.iloc[best], rows["robust_acc"].iloc[best], marker="*", ms=9, color=colour,
                        mec="black", mew=0.5)
    axes[0, 0].set_ylabel("CAS (adv. test inputs)")
    axes[0, 1].set_ylabel("test accuracy")
    axes[0, 1].legend(loc="best", fontsize=6.5)
    for ax in axes[0]:
        ax.set_xlabel("epoch of the checkpoint")
    fig.suptitle("Real data: CAS and accuracy over training ($\\star$ highest robust accuracy)", fontsize=9)
    return style.save(fig, out, "real_curves")
