"""Figures of finite-sample training dynamics: CAS and robust accuracy against epoch, the CAS drop
from the best to the last epoch against eps, and AT against its soft-label variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import style
from .data import MissingData, Sources, point_histories

SEED_KEYS = ("seed", "hash", "store", "status", "seconds", "batch_size", "attempts", "finished_at", "error")


def _variant(point: pd.Series) -> str:
    """AT / AT + LS / AT + KD / standard / TRADES, from the point's parameters."""
    explicit = point.get("variant")
    if isinstance(explicit, str) and explicit:
        return explicit
    mode = str(point.get("mode", "at"))
    name = {"at": "AT", "trades": "TRADES", "standard": "standard"}.get(mode, mode)
    teacher = point.get("teacher")
    if isinstance(teacher, str) and teacher:
        return f"{name} + KD"
    alpha = point.get("label_smoothing")
    if alpha is not None and not pd.isna(alpha) and float(alpha) > 0:
        return f"{name} + LS {float(alpha):g}"
    return name


def run_table(sources: Sources) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per training point with a history: params, variant, best/last CAS and robust accuracy."""
    points = sources.points
    if points.empty or "hash" not in points:
        raise MissingData("no training points in the stores "
                          "(run e.g. python -m synthmodel.sweep --preset paper-dynamics)")
    histories = point_histories(sources, points)
    rows = []
    for _, point in points.iterrows():
        history = histories.get(point["hash"])
        if history is None or not {"cas", "test_robust_acc", "epoch"} <= set(history):
            continue
        robust = history["test_robust_acc"].astype(float).to_numpy()
        best = int(np.argmax(robust))
        cas = history["cas"].astype(float).to_numpy()
        rows.append({**point.to_dict(), "variant": _variant(point), "best_epoch": int(history["epoch"].iloc[best]),
                     "cas_best": cas[best], "cas_last": cas[-1],
                     "robust_best": robust[best], "robust_last": robust[-1]})
    if not rows:
        raise MissingData("no per-epoch histories with CAS and test robust accuracy in the stores")
    return pd.DataFrame(rows), histories


def _setting_columns(table: pd.DataFrame) -> list[str]:
    """Parameters (keys of the points' kinds, not results) that vary between points, other than the seed."""
    from synthmodel.sweep.kinds import get_kind

    params: set[str] = set()
    for kind in table["kind"].dropna().unique():
        params |= set(get_kind(kind).table())
    columns = []
    for column in table.columns:
        if column not in params or column in SEED_KEYS or column == "experiment":
            continue
        values = table[column].map(lambda v: v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
        if values.nunique(dropna=False) > 1:
            columns.append(column)
    return columns


def _label(row: pd.Series, columns: list[str]) -> str:
    return ", ".join(f"{c}={row[c]:g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in columns) or "all"


def curves(sources: Sources, out: Path) -> list[Path]:
    """Mean (over seeds) CAS and test robust accuracy against epoch per setting; the best epoch marked."""
    table, histories = run_table(sources)
    if "experiment" in table:
        chosen = table[table["experiment"].astype(str).str.contains("epoch")]
        table = chosen if not chosen.empty else table
    columns = _setting_columns(table)
    groups = list(table.groupby(columns, dropna=False, sort=True)) if columns else [((), table)]
    groups = groups[: len(style.PALETTE)]
    fig, axes = style.figure(ncols=2, width=3.4, height=2.6)
    for i, (_, group) in enumerate(groups):
        frames = [histories[h].set_index("epoch")[["cas", "test_robust_acc"]].astype(float) for h in group["hash"]]
        mean = pd.concat(frames).groupby(level=0).mean()
        spread = pd.concat(frames).groupby(level=0).std() if len(frames) > 1 else None
        label = _label(group.iloc[0], columns) + (f" (n={len(frames)})" if len(frames) > 1 else "")
        colour = style.PALETTE[i]
        best = mean["test_robust_acc"].idxmax()
        for ax, key in ((axes[0, 0], "cas"), (axes[0, 1], "test_robust_acc")):
            ax.plot(mean.index, mean[key], color=colour, label=label)
            if spread is not None:
                ax.fill_between(mean.index, mean[key] - spread[key], mean[key] + spread[key], color=colour, alpha=0.15)
            ax.plot([best], [mean.loc[best, key]], marker="*", ms=9, color=colour, mec="black", mew=0.5)
    axes[0, 0].set_ylabel("CAS (adversarial test inputs)")
    axes[0, 1].set_ylabel("test robust accuracy")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               title="$\\star$ = best epoch (highest mean test robust accuracy)", title_fontsize=7)
    fig.suptitle("Training dynamics (mean over seeds, band = 1 s.d.)", fontsize=9)
    return style.save(fig, out, "dynamics_curves")


def cas_drop(sources: Sources, out: Path) -> list[Path]:
    """CAS(best) - CAS(last) and robust accuracy (best, last) against the training eps, per variant."""
    table, _ = run_table(sources)
    if "experiment" in table:
        chosen = table[table["experiment"].astype(str).str.contains("eps")]
        table = chosen if not chosen.empty else table
    if "eps" not in table or table["eps"].nunique() < 2:
        raise MissingData("training points at fewer than two eps values")
    table = table.assign(cas_drop=table["cas_best"] - table["cas_last"])
    fig, axes = style.figure(ncols=2, width=3.4, height=2.6)
    for i, (variant, group) in enumerate(table.groupby("variant", sort=True)):
        stats = group.groupby("eps").agg(drop=("cas_drop", "mean"), drop_sd=("cas_drop", "std"),
                                         best=("robust_best", "mean"), last=("robust_last", "mean"))
        colour = style.PALETTE[i % len(style.PALETTE)]
        axes[0, 0].errorbar(stats.index, stats["drop"], yerr=stats["drop_sd"].fillna(0), color=colour,
                            marker=style.MARKERS[i % len(style.MARKERS)], ms=4, capsize=2, label=variant)
        axes[0, 1].plot(stats.index, stats["best"], color=colour, marker="o", ms=3, label=f"{variant}, best")
        axes[0, 1].plot(stats.index, stats["last"], color=colour, marker="s", ms=3, ls="--", label=f"{variant}, last")
    axes[0, 0].axhline(0, color="0.5", lw=0.6)
    axes[0, 0].set_ylabel("CAS(best) $-$ CAS(last)")
    axes[0, 1].set_ylabel("test robust accuracy")
    for ax in axes[0]:
        ax.set_xlabel("training $\\epsilon$ (input units)")
        ax.legend(loc="best")
    fig.suptitle("CAS drop and robust overfitting against eps (mean $\\pm$ 1 s.d. over seeds)", fontsize=9)
    return style.save(fig, out, "dynamics_cas_drop")


def soft_labels(sources: Sources, out: Path) -> list[Path]:
    """CAS gap and overfitting gap of AT against its soft-label variants (bars: mean, whiskers: s.d.)."""
    table, _ = run_table(sources)
    if "experiment" in table:
        chosen = table[table["experiment"].astype(str).str.contains("soft")]
        table = chosen if not chosen.empty else table
    if table["variant"].nunique() < 2:
        raise MissingData("training points of only one variant (need AT and a soft-label variant)")
    table = table.assign(cas_gap=table["cas_best"] - table["cas_last"],
                         overfit_gap=table["robust_best"] - table["robust_last"])
    stats = table.groupby("variant").agg(cas_gap=("cas_gap", "mean"), cas_sd=("cas_gap", "std"),
                                         overfit_gap=("overfit_gap", "mean"), overfit_sd=("overfit_gap", "std"),
                                         cas_last=("cas_last", "mean"), n=("cas_gap", "size"))
    fig, axes = style.figure(ncols=3, width=2.5, height=2.6)
    x = np.arange(len(stats))
    colours = [style.PALETTE[i % len(style.PALETTE)] for i in range(len(stats))]
    for ax, (key, sd, ylabel) in zip(axes[0], (("cas_gap", "cas_sd", "CAS(best) $-$ CAS(last)"),
                                               ("overfit_gap", "overfit_sd", "robust acc. best $-$ last"),
                                               ("cas_last", None, "CAS at the last epoch"))):
        ax.bar(x, stats[key], yerr=None if sd is None else stats[sd].fillna(0), color=colours, capsize=3)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v}\n(n={n})" for v, n in zip(stats.index, stats["n"])], fontsize=7)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="0.5", lw=0.6)
    fig.suptitle("AT and soft labels (mean, whiskers 1 s.d. over seeds)", fontsize=9)
    return style.save(fig, out, "dynamics_soft_labels")
