"""Class attribution matrices C as heatmaps, best vs last checkpoint side by side."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from . import style
from .data import DYNAMICS_COMMAND, REAL_COMMAND, MissingData, Sources, point_histories

MAX_PANELS = 4  # rows of best/last pairs per figure


def _heatmap(ax, matrix: np.ndarray, title: str, labels=None):
    image = ax.imshow(matrix, cmap=style.HEATMAP, vmin=-1, vmax=1)
    k = matrix.shape[0]
    if k <= 12:
        for i in range(k):
            for j in range(k):
                value = matrix[i, j]
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if value > 0.2 else "white")
    ticks = range(k) if labels is None else range(len(labels))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    if labels is not None:
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticklabels(labels, fontsize=6)
    ax.grid(False)
    ax.set_xlabel("class j")
    ax.set_ylabel("class i")
    ax.set_title(title, fontsize=7)
    return image


def _pairs_figure(pairs, out: Path, name: str, suptitle: str) -> list[Path]:
    fig, axes = style.figure(ncols=2, nrows=len(pairs), width=2.7, height=2.5, layout="constrained")
    image = None
    for row, (label, best, last) in enumerate(pairs):
        for col, (which, (matrix, cas, extra)) in enumerate((("best", best), ("last", last))):
            labels = list(matrix.index) if isinstance(matrix, pd.DataFrame) else None
            values = matrix.to_numpy(dtype=float) if isinstance(matrix, pd.DataFrame) else np.asarray(matrix, float)
            image = _heatmap(axes[row, col], values, f"{which}{extra}: CAS {cas:.2f}", labels)
        axes[row, 0].set_ylabel(f"{textwrap.fill(label, 28)}\n\nclass i", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="C[i, j] (cosine)")
    fig.suptitle(suptitle, fontsize=9)
    return style.save(fig, out, name)


def synthetic_matrices(sources: Sources, out: Path) -> list[Path]:
    """C at the best and the last epoch of finite-sample training runs (one seed per setting)."""
    points = sources.points
    if points.empty or "hash" not in points:
        raise MissingData("no training points in the stores", DYNAMICS_COMMAND)
    histories = point_histories(sources, points)
    pairs = []
    seen = set()
    for _, point in points.iterrows():
        history = histories.get(point["hash"])
        if history is None or "class_matrix" not in history or "test_robust_acc" not in history:
            continue
        label = _setting_label(point)
        if label in seen:  # one seed per setting
            continue
        seen.add(label)
        best = history.loc[history["test_robust_acc"].astype(float).idxmax()]
        last = history.iloc[-1]
        names = class_names(point)
        pairs.append((label, *(_epoch_panel(record, names) for record in (best, last))))
        if len(pairs) == MAX_PANELS:
            break
    if not pairs:
        raise MissingData("no per-epoch class matrices in the stores", DYNAMICS_COMMAND)
    return _pairs_figure(pairs, out, "matrices_synthetic", "Class attribution matrix C, best vs last epoch")


def _epoch_panel(record: pd.Series, names: list[str] | None = None) -> tuple[np.ndarray | pd.DataFrame, float, str]:
    matrix = np.array(record["class_matrix"], float)
    if names is not None and len(names) == matrix.shape[0]:
        matrix = pd.DataFrame(matrix, index=names, columns=names)
    return matrix, float(record["cas"]), f" (epoch {int(record['epoch'])})"


def class_names(point: pd.Series) -> list[str] | None:
    """Class names of a real-data point's data set (Fashion-MNIST's, MNIST's digits); None otherwise."""
    dataset = point.get("dataset")
    if not isinstance(dataset, str):
        return None
    from real_data.data import FASHION_MNIST_CLASSES

    kind = dataset.split(":")[0]
    return list(FASHION_MNIST_CLASSES) if kind == "fashion-mnist" else [str(d) for d in range(10)] \
        if kind == "mnist" else None


def _setting_label(point: pd.Series) -> str:
    parts = []
    for key in ("experiment", "preset", "dataset", "model", "arch", "mode", "eps", "label_smoothing", "awp_gamma",
                "variant"):
        if key in point and isinstance(point[key], (str, int, float)) and not pd.isna(point[key]):
            value = point[key]
            if key in ("label_smoothing", "awp_gamma") and not value:
                continue
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts) or str(point["hash"])[:8]


def real_matrices(sources: Sources, out: Path) -> list[Path]:
    """C of real checkpoints (``python -m real_data.cas --out DIR``), best vs last when both are there."""
    written = []
    for folder, table, matrices in sources.real_tables:
        names = list(matrices)
        best = next((n for n in names if "best" in n), names[0] if names else None)
        last = next((n for n in names if "last" in n), names[-1] if names else None)
        if best is None:
            continue
        cas = dict(zip(table["checkpoint"].map(lambda p: Path(str(p)).stem), table["cas"]))
        pair = (folder.name, (matrices[best], float(cas.get(best, np.nan)), f" ({best})"),
                (matrices[last], float(cas.get(last, np.nan)), f" ({last})"))
        written += _pairs_figure([pair], out, f"matrices_real_{folder.name}", "Class attribution matrix C (real data)")
    if not written:
        raise MissingData("no real-data CAS folders", REAL_COMMAND)
    return written
