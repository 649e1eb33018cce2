"""The set-ups scanned before the dynamics set-up was fixed (a research log; docs/EXPERIMENTS.md, "What was tried").

Each group is a base set-up plus a list of changes, run as ``train`` points through the sweep into
``OUT/<group>/`` (resumable; seed 0, one run each: a scan for where the phenomena could live, not a
measurement with spread, which is :mod:`experiments.dynamics`). Then one line per run: the changes, compute
seconds, best epoch (by test robust accuracy), test robust accuracy at best / last epoch, CAS at best / last /
max, CAS and robust accuracy at every 10% of training, last-epoch train robust accuracy and loss and clean
accuracy (and w1, w2 for the tied model).

    OMP_NUM_THREADS=1 python -m experiments.explore g1 g2 g3 g4 g5 [--out results/explore] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from synthmodel.atomic import check_output_dir
from synthmodel.cli import ArgumentParser
from synthmodel.sweep import StoreError, expand_grid, read_history, read_points, run_sweep

__all__ = ["GROUPS", "group_grid", "summary_lines", "main"]

BASE_EASY = {"preset": "paper3", "noise_dims": 100, "n_train": 300, "n_test": 1000, "epochs": 60}
BASE_HARD = {**BASE_EASY, "sigma": 1.0, "batch_size": 32}
MLP128 = {"model": "mlp", "hidden": [128]}

GROUPS: dict[str, tuple[dict, list[dict]]] = {
    # sigma = 0.5 (train's default world), batch 64: the first look at paper3 + 100 noise dims, and neighbours
    "g1": ({**BASE_EASY, "batch_size": 64}, [
        {**MLP128, "eps": 0.3, "batch_size": 32, "epochs": 100},
        {**MLP128, "norm": "l2", "eps": 1.0},
        {"model": "linear", "eps": 0.3},
        {"model": "linear", "eps": 0.1},
        {**MLP128, "eps": 0.1},
        {"model": "mlp", "hidden": [16], "eps": 0.3},
        {**MLP128, "eps": 0.3, "preset": "all-but-one-5"},
        {**MLP128, "eps": 0.3, "preset": "pairs-5"},
    ]),
    # sigma = 0.5, batch 32: small eps, where the theory keeps cross-class weight (Claim 1)
    "g2": ({**BASE_EASY, "batch_size": 32}, [
        {**model, "eps": eps}
        for model in ({"model": "tied"}, {"model": "linear"}, {"model": "mlp", "hidden": [16]}, MLP128)
        for eps in (0.02, 0.05, 0.1, 0.2)
    ]),
    # harder worlds (sigma = 1), weight decay, smaller lr, depth, more classes
    "g3": ({**BASE_EASY, "batch_size": 32}, [
        {"model": "linear", "sigma": 1.0, "noise_dims": 200, "eps": 0.05},
        {"model": "linear", "sigma": 1.0, "noise_dims": 200, "eps": 0.1},
        {"model": "linear", "sigma": 1.0, "noise_dims": 200, "eps": 0.2},
        {**MLP128, "sigma": 1.0, "eps": 0.1},
        {**MLP128, "sigma": 1.0, "eps": 0.2},
        {**MLP128, "preset": "all-but-one-5", "eps": 0.1, "weight_decay": 5e-4},
        {**MLP128, "preset": "all-but-one-5", "eps": 0.2, "weight_decay": 5e-4},
        {**MLP128, "preset": "ring-5", "eps": 0.2},
        {"model": "mlp", "hidden": [64, 64], "eps": 0.2},
        {**MLP128, "eps": 0.2, "lr": 0.01},
        {**MLP128, "preset": "all-but-one-5", "eps": 0.1, "lr": 0.01},
        {**MLP128, "preset": "pairs-5", "eps": 0.1, "sigma": 1.0},
    ]),
    # after fixing the set-up (sigma = 1, eps = 0.1): do its conclusions survive other worlds and knobs?
    "g4": (BASE_HARD, [
        {**MLP128, "eps": 0.1, "preset": "all-but-one-5"},
        {"model": "linear", "eps": 0.1, "preset": "all-but-one-5"},
        {**MLP128, "eps": 0.1, "preset": "ring-5"},
        {"model": "linear", "eps": 0.1, "preset": "ring-5"},
        {"model": "mlp", "hidden": [32], "eps": 0.1},
        {**MLP128, "eps": 0.1, "weight_decay": 5e-4},
        {**MLP128, "eps": 0.1, "lr": 0.01},
        {"model": "mlp", "hidden": [64, 64], "eps": 0.1, "lr": 0.01},
        {"model": "linear", "eps": 0.05, "noise_dims": 300},
        {**MLP128, "eps": 0.1, "epochs": 120},
        {"model": "tied", "eps": 0.1},
        {"model": "linear", "eps": 0.1, "n_train": 3000},
    ]),
    # K = 3 pins MLP CAS near 0 (class vectors nearly sum to zero, see docs): more classes
    "g5": (BASE_HARD, [
        {**MLP128, "eps": eps, "preset": preset, "n_train": n}
        for preset in ("ring-10", "pairs-10") for eps in (0.1, 0.2) for n in (300, 1000)
    ]),
}


def group_grid(name: str) -> dict[str, Any]:
    """The sweep grid of a group: its base as ``fixed``, one point per change."""
    base, changes = GROUPS[name]
    return {"name": f"explore-{name}", "kind": "train", "fixed": base, "points": changes}


def _every_tenth(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values[::max(1, len(values) // 10)]]


def summary_lines(name: str, out_dir: Path) -> list[str]:
    """One line per run of group ``name`` from its store in ``out_dir``: the changes and the run's summary."""
    base, changes = GROUPS[name]
    points = read_points(out_dir).set_index("hash")
    history = read_history(out_dir)
    lines = []
    for change in changes:
        (point,) = expand_grid({"kind": "train", "points": [{**base, **change}]}).points
        row = points.loc[point.hash]
        if row["status"] != "done":
            lines.append(f"{name} {json.dumps(change)} {row['status']}: {row['error']}")
            continue
        epochs = history[history["hash"] == point.hash].sort_values("step")
        cas = [float("nan") if c is None else float(c) for c in epochs["cas"]]
        out = {"t": round(float(row["seconds"]), 1), "best_ep": int(row["best_epoch"]),
               "rob_best": round(row["best_robust_acc"], 3), "rob_last": round(row["robust_acc"], 3),
               "cas_best": round(row["best_cas"], 3), "cas_last": round(row["cas"], 3),
               "cas_max": round(max(cas), 3), "cas_ep": _every_tenth(cas),
               "rob_ep": _every_tenth(list(epochs["test_robust_acc"])),
               "tr_rob_last": round(row["train_robust_acc"], 3), "tr_loss_last": round(row["train_robust_loss"], 3),
               "clean_last": round(row["clean_acc"], 3)}
        if "w1" in row and row["w1"] == row["w1"]:  # tied model (NaN for the others)
            out.update(w1=round(row["w1"], 3), w2=round(row["w2"], 3))
        lines.append(f"{name} {json.dumps(change)} {json.dumps(out)}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.explore",
                       description="Rerun the set-ups scanned before the dynamics set-up was fixed (through the "
                                   "sweep, resumable) and print one summary line per run.")
    p.add_argument("groups", nargs="+", choices=list(GROUPS), metavar="GROUP", help=f"of {', '.join(GROUPS)}")
    p.add_argument("--out", default="results/explore", metavar="DIR", help="stores go to DIR/<group> (default "
                                                                           "%(default)s)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_output_dir(args.out, "--out")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in args.groups:
        try:
            summary = run_sweep(expand_grid(group_grid(name)), Path(args.out) / name, workers=args.workers,
                                progress=not args.quiet)
        except (ValueError, StoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(summary_lines(name, summary.out_dir)), flush=True)
        print(f"# {name}: {summary.total} runs, {summary.computed} computed now, {summary.seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
