"""One look for every figure: colour-blind-safe palette, print-sized fonts, PNG + PDF written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402

from synthmodel.atomic import atomic_path  # noqa: E402

# Okabe & Ito (2008), safe for the common colour-vision deficiencies
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
HEATMAP = "cividis"  # perceptually uniform and colour-blind-safe

RC = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
    "savefig.bbox": "tight",
}


def figure(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 2.6, **kwargs):
    """A figure of ncols x nrows panels, each ``width`` x ``height`` inches (3.4 in = one paper column)."""
    kwargs.setdefault("layout", "constrained")  # room for suptitles and outside legends
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    return fig, axes


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` into out_dir (atomically) and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with plt.rc_context(RC):
            for ext in ("png", "pdf"):
                target = out_dir / f"{name}.{ext}"
                with atomic_path(target) as tmp:
                    fig.savefig(tmp, format=ext)
                written.append(target)
    finally:  # also when a write fails: no figure stays open
        plt.close(fig)
    return written
