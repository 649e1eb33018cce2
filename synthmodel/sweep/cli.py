"""``python -m synthmodel.sweep``: run a preset or a grid file into a resumable store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import ArgumentParser
from .grid import GRID_PRESETS, Grid, load_grid, preset_grid
from .kinds import KINDS
from .plugins import HOOKS, load_plugins, run_hooks
from .runner import EXECUTORS, run_sweep
from .store import STORE_FILE, StoreError, export

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

    status: dict[str, str] = {}
    store = out_dir / STORE_FILE
    if store.is_file():
        from .store import read_points

        frame = read_points(out_dir)
        status = dict(zip(frame["hash"], frame["status"], strict=True)) if not frame.empty else {}
    rows = [{"hash": p.hash[:12], "kind": p.kind, "status": status.get(p.hash, "new"),
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_plugins(args.plugin)
        if args.list:
            print(_listing())
            return 0
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.preset is None and args.grid is None:
            if args.out and args.export != "none":
                for path in export(Path(args.out), args.export):
                    print(path)
                return 0
            raise ValueError("name a grid: --preset NAME or --grid FILE (see --list)")
        grid = preset_grid(args.preset) if args.preset else load_grid(args.grid)
        out_dir = Path(args.out) if args.out else Path("results") / grid.name
        if args.dry_run:
            print(_dry_run(grid, out_dir))
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
    return 0
