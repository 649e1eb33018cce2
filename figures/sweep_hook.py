"""The sweep's post-run hook ``figures``: after ``python -m synthmodel.sweep``, the figures of its store are
rendered into ``<out>/figures/`` (a figure whose data the store lacks is skipped with a notice on stderr)."""

from __future__ import annotations

from pathlib import Path

from synthmodel.sweep import register_hook

__all__ = ["render_sweep_figures"]


def render_sweep_figures(out_dir: Path) -> str:
    """Render the store's figures; returns the folder written."""
    from .catalog import render_store

    return str(render_store(out_dir))


register_hook("figures", render_sweep_figures)
