"""``python -m synthmodel.sweep``: run a preset or a grid file into a resumable store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..cli import ArgumentParser
from .grid import DEFAULT_MAX_POINTS, GRID_PRESETS, Grid, load_grid, preset_grid
from .kinds import KINDS
from .plugins import HOOKS, load_plugins, run_hooks
from .runner import EXECUTORS, run_sweep
from .store import STORE_FILE, StoreError, export, grid_statuses

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m synthmodel.sweep",
        description="Run a parameter sweep (a preset or a TOML grid) into a resumable SQLite store: finished "
                    "points are never recomputed, a killed sweep resumes where it stopped. Grid format and store "
                    "schema: docs/SWEEP.md.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--preset", metavar="NAME", help="a registered grid (see --list)")
    what.add_argument("--grid", metavar="FILE", help="a TOML grid file")
    what.add_argument("--list", action="store_true", help="list presets and point kinds, then exit")
    p.add_argument("--out", metavar="DIR", help="output folder (default results/<grid name>/)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: process pool (inline with --workers 1); dask: a LocalCluster or --scheduler")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--scheduler", metavar="ADDR", help="join an existing dask cluster, e.g. tcp://10.0.0.5:8786 "
                                                       "(implies --executor dask)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per task (default 1)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="largest batched group of linear training runs (keep it fixed for one sweep)")
    p.add_argument("--retry-failed", action="store_true", help="recompute points recorded as failed")
    p.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS, metavar="N",
                   help="refuse a grid of more points than this, counted before anything is expanded "
                        f"(default {DEFAULT_MAX_POINTS})")
    p.add_argument("--dry-run", action="store_true", help="list the points and their status; compute nothing")
    p.add_argument("--export", choices=("csv", "parquet", "none"), default="csv",
                   help="table written next to the store at the end (default csv); with neither --preset nor "
                        "--grid, only export the store in --out")
    p.add_argument("--no-hooks", "--no-figures", dest="no_hooks", action="store_true",
                   help="skip the post-run hooks (figures, tables) at the end")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register point kinds, presets and post-run hooks); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _listing() -> str:
    lines = ["presets:"]
    lines += [f"  {name:<20} {GRID_PRESETS[name].description}" for name in sorted(GRID_PRESETS)]
    lines.append("point kinds:")
    lines += [f"  {name:<20} {KINDS[name].description}" for name in sorted(KINDS)]
    lines.append("post-run hooks: " + (", ".join(HOOKS) or "none"))
    return "\n".join(lines)


def _dry_run(grid: Grid, out_dir: Path) -> str:
    import pandas as pd

    store = out_dir / STORE_FILE
    status = grid_statuses(out_dir, grid)  # checks the store as a run would, writing nothing
    rows = [{"hash": p.hash[:12], "kind": p.kind, "status": status[p.hash],
             **{k: json.dumps(v) if isinstance(v, list) else v for k, v in p.params.items()}} for p in grid.points]
    frame = pd.DataFrame(rows)
    varying = [c for c in frame.columns if c in ("hash", "kind", "status") or frame[c].astype(str).nunique() > 1]
    counts = frame["status"].value_counts().to_dict()
    head = (f"{grid.name}: {len(grid.points)} points ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
            f"store {store}")
    first = grid.points[0].params
    fixed = ", ".join(f"{c}={json.dumps(first[c])}" for c in frame.columns if c not in varying and c in first)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        return "\n".join([head, f"fixed: {fixed}", frame[varying].to_string(index=False)])


def _emit(text: str) -> None:
    """Print to stdout; a reader that stops early (``--dry-run | head -1``) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_plugins(args.plugin)
        if args.list:
            print(_listing())
            return 0
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.max_points < 1:
            raise ValueError(f"--max-points must be >= 1, got {args.max_points}")
        if args.preset is None and args.grid is None:
            if args.out and args.export != "none":
                for path in export(Path(args.out), args.export):
                    print(path)
                return 0
            raise ValueError("name a grid: --preset NAME or --grid FILE (see --list)")
        grid = (preset_grid(args.preset, max_points=args.max_points) if args.preset
                else load_grid(args.grid, max_points=args.max_points))
        out_dir = Path(args.out) if args.out else Path("results") / grid.name
        if args.dry_run:
            _emit(_dry_run(grid, out_dir))
            return 0
        summary = run_sweep(grid, out_dir, executor=args.executor, workers=args.workers, scheduler=args.scheduler,
                            retry_failed=args.retry_failed, max_batch=args.max_batch, threads=args.threads,
                            progress=not args.quiet, export_format=None if args.export == "none" else args.export)
    except (ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished points are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
    if not args.no_hooks:
        summary.hooks = run_hooks(out_dir)
    print("\n".join(summary.lines()))
    if summary.errors:  # the grid is not complete: scripts and CI must see it
        print(summary.failure_line(), file=sys.stderr)
        return 1
    return 0
