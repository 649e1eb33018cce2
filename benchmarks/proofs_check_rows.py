"""proofs_check per row: the base code (commit d014bdb) against the working tree, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/proofs_check_rows.py [--base d014bdb] [--rows all|joint|...]
                                                             [--weights NAME ...] [--preset paper3] [--out FILE]

The base commit is checked out into a temporary folder (``git archive``) inside this run; each code version runs
in its own worker process (both packages are called ``synthmodel`` and ``proofs_check``, so they cannot share
one interpreter), on the same rows of the default table (paper3 or ``--preset``, mu = 1, sigma = 0.5,
alpha = 0.1, weight decay 0.01), alternating row by row, so that both see the same machine load. Per row it
reports both times (wall and CPU of the worker, imports excluded) and their ratio; a CSV goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from proofs_check.claims import check_formalisation
from synthmodel.population import world_from
world = world_from(sys.argv[2], mu=1.0, sigma=0.5)
print("ready", flush=True)
for line in sys.stdin:
    spec = json.loads(line)
    skip = "slow" if spec["attack"] == "joint" and spec["norm"] == "l2" else None
    t, c = time.perf_counter(), time.process_time()
    check_formalisation(world, spec, 0.1, skip_soft=skip)
    print(json.dumps({"wall": time.perf_counter() - t, "cpu": time.process_time() - c}), flush=True)
"""


WEIGHTS = ("unconstrained", "weight-decay", "l1-share", "l2-norm", "class-l2-norm")


def _rows(which: str, weights_chosen: tuple[str, ...]) -> list[dict]:
    # the base code's table: (joint, logitwise, pgd) x (linf, l2) x five weight constraints
    out = []
    for attack in ("joint", "logitwise", "pgd"):
        if which not in ("all", attack):
            continue
        for norm in ("linf", "l2"):
            for weights in weights_chosen:
                out.append({"attack": attack, "norm": norm, "weights": weights,
                            "weight_decay": 0.01 if weights == "weight-decay" else 0.0})
    return out


def _checkout(base: str, into: Path) -> Path:
    archive = into / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), base], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "base", filter="data")
    return into / "base"


class _Worker:
    def __init__(self, path: Path, preset: str):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(path), preset], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=str(path))
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, spec: dict) -> dict:
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", default="d014bdb", help="commit of the code to compare against")
    p.add_argument("--rows", default="all", choices=("all", "joint", "logitwise", "pgd"), help="which rows")
    p.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS, help="weight constraints")
    p.add_argument("--preset", default="paper3", help="world (paper3 | all-but-one-K)")
    p.add_argument("--out", default=None, help="CSV of the per-row times")
    args = p.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for timings", file=sys.stderr)
    rows = _rows(args.rows, tuple(args.weights))
    with tempfile.TemporaryDirectory() as tmp:
        base = _Worker(_checkout(args.base, Path(tmp)), args.preset)
        new = _Worker(ROOT, args.preset)
        records = []
        start = time.perf_counter()
        print(f"{'attack':10s} {'norm':5s} {'weights':14s} {'base s':>8s} {'new s':>8s} {'ratio':>6s}")
        for spec in rows:
            b, n = base.run(spec), new.run(spec)
            rec = {**spec, "base_wall": b["wall"], "base_cpu": b["cpu"], "new_wall": n["wall"], "new_cpu": n["cpu"],
                   "ratio": b["wall"] / max(n["wall"], 1e-9)}
            records.append(rec)
            print(f"{spec['attack']:10s} {spec['norm']:5s} {spec['weights']:14s} {b['wall']:8.2f} {n['wall']:8.2f} "
                  f"{rec['ratio']:6.1f}", flush=True)
        base.close()
        new.close()
    tb, tn = sum(r["base_wall"] for r in records), sum(r["new_wall"] for r in records)
    cb, cn = sum(r["base_cpu"] for r in records), sum(r["new_cpu"] for r in records)
    ratios = sorted(r["ratio"] for r in records)
    print(f"total: base {tb:.1f} s wall ({cb:.1f} s CPU), new {tn:.1f} s wall ({cn:.1f} s CPU): {tb / tn:.1f}x; "
          f"per-row ratio median {ratios[len(ratios) // 2]:.1f}x, min {ratios[0]:.1f}x ({len(records)} rows, "
          f"{time.perf_counter() - start:.0f} s)")
    if args.out:
        import pandas as pd

        pd.DataFrame(records).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
