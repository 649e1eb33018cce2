"""Resumable parameter sweeps: ``python -m synthmodel.sweep --preset paper-theory``.

A *grid* (a preset or a TOML file) names points; each point is one call of a *point kind*. Results go to
one SQLite store per output folder, keyed by a hash of each point's full configuration and the code
version, so a rerun computes only what is missing. Executors: a local process pool (default) or Dask (a
LocalCluster, or an existing cluster via ``--scheduler``). Points a kind can batch (linear-model training)
run as one tensor computation.

The sweep core names no domain: point kinds (``train``, ``dynamics``, ``theory``), presets and post-run
hooks (figures, tables) are registered by the modules that define them, loaded as plugins
(:mod:`synthmodel.sweep.plugins`: the ``crossclass.sweep`` entry points, and ``--plugin MODULE``).

Public API::

    from synthmodel.sweep import preset_grid, load_grid, expand_grid, run_sweep, read_points, read_history
    summary = run_sweep(preset_grid("paper-dynamics"), "results/paper-dynamics", workers=2)
    table = read_points("results/paper-dynamics")          # pandas, one row per point
    epochs = read_history("results/paper-dynamics")        # pandas, one row per (point, epoch)

Format of grid files and of the store: docs/SWEEP.md.
"""

from .grid import GRID_PRESETS, Grid, GridError, Point, Preset, expand_grid, load_grid, preset_grid, register_preset
from .kinds import (
    HISTORY_KEY,
    KINDS,
    STORE_SCHEMA,
    Param,
    PointKind,
    get_kind,
    normalize_params,
    point_hash,
    point_workdir,
    register_kind,
)
from .plugins import HOOKS, load_entry_points, load_plugins, register_hook, run_hooks
from .runner import EXECUTORS, SweepSummary, plan_tasks, run_sweep, run_task
from .store import STORE_FILE, Store, StoreError, export, read_history, read_points

__all__ = [
    "GRID_PRESETS", "Grid", "GridError", "Point", "Preset", "expand_grid", "load_grid", "preset_grid",
    "register_preset", "HISTORY_KEY", "KINDS", "STORE_SCHEMA", "Param", "PointKind", "get_kind",
    "point_hash", "normalize_params", "point_workdir", "register_kind", "HOOKS", "load_entry_points",
    "load_plugins", "register_hook", "run_hooks",
    "EXECUTORS", "SweepSummary", "plan_tasks", "run_sweep", "run_task",
    "STORE_FILE", "Store", "StoreError", "export", "read_history", "read_points", "main",
]


def main(argv: list[str] | None = None) -> int:
    """The CLI (see ``python -m synthmodel.sweep --help``)."""
    from .cli import main as cli_main

    return cli_main(argv)
