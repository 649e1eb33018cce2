"""The catalogue of figures: :data:`FIGURES` (name -> (description, function(sources, out_dir) -> written
files)), :func:`render` and :func:`render_store` (a sweep's own figures).

A figure whose data is absent raises :class:`~figures.data.MissingData` and is skipped with a one-line
notice. ``figures/README.md`` lists them all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from . import dynamics, gradcam, matrices, theory
from .data import MissingData, Sources, discover_stores

__all__ = ["FIGURES", "render", "render_store"]


FIGURES: dict[str, tuple[str, Callable]] = {
    "theory_weights": ("optimal w1, w2 and w2/w1 against eps, eps0/eps1 marked", theory.weights_vs_eps),
    "theory_cas": ("population CAS of the optimal tied model against eps", theory.cas_vs_eps),
    "claim2_accuracy": ("robust accuracy against w2/w1 at fixed eps (Claim 2)", theory.claim2_accuracy),
    "theory_thresholds": ("eps0 / eps1 and the claims' verdicts per formalisation (proofs_check)", theory.thresholds),
    "matrices_synthetic": ("C heatmaps, best vs last epoch, synthetic training runs", matrices.synthetic_matrices),
    "matrices_real": ("C heatmaps, best vs last checkpoint, real data", matrices.real_matrices),
    "dynamics_curves": ("CAS and test robust accuracy against epoch, best epoch marked", dynamics.curves),
    "dynamics_cas_drop": ("CAS(best) - CAS(last) against eps", dynamics.cas_drop),
    "dynamics_soft_labels": ("AT vs AT + label smoothing vs AT + distillation", dynamics.soft_labels),
    "real_curves": ("CAS and accuracy against the checkpoint's epoch, real data", dynamics.real_curves),
    "real_gradcam": ("Grad-CAM of a real-data sweep point's best and last checkpoints", gradcam.best_last),
}


def render(sources: Sources, out: Path, only: list[str] | None = None, log=print) -> dict[str, list[Path]]:
    """Render the chosen figures (all by default) into ``out``; returns {figure: files} of those made."""
    made: dict[str, list[Path]] = {}
    for name, (_, function) in FIGURES.items():
        if only and name not in only:
            continue
        try:
            made[name] = function(sources, out)
        except MissingData as exc:
            log(f"skipped {name}: {exc}" + (f"; its data: {exc.command}" if exc.command else ""))
    for notice in sources.notices:
        log(notice)
    return made


def render_store(out_dir: str | Path) -> Path:
    """The figures of the store in ``out_dir`` into ``<out_dir>/figures`` (only what the store holds)."""
    out_dir = Path(out_dir)
    target = out_dir / "figures"
    render(Sources(stores=discover_stores(out_dir), compute_missing=False), target,
           log=lambda line: print(line, file=sys.stderr))
    return target
