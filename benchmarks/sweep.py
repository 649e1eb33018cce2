"""Sweep speed: batched vs one-at-a-time AT runs, and the per-point overhead of store + executor.

Measured (2-core shared AMD EPYC dev machine, torch 2.13 CPU, OMP_NUM_THREADS=1, other jobs running: load 2-3.5;
command below):
    256 AT runs, 5 epochs, n_train = n_test = 256, batch 128, PGD-10 train / PGD-20 eval, 10 noise dims:
      linear model: loop 17.8 s, batched 1.1 s -> 16.6x  (default ``--model linear``; 3 runs: 11.9x-16.6x)
      tied model:   loop 32.4 s, batched 2.5 s -> 13.0x  (``--model tied``; 2 runs: 13.0x, 16.1x)
    The batched results equal the loop's (largest robust-accuracy difference 0 in float32). The
    machine is shared, so absolute times vary run to run (the loop took 16-26 s); the ratio is measured in one
    process. What is left of the batched time is mostly the PGD arithmetic itself (two small-K bmm's per step,
    20 eval steps on train and test sets each epoch), the per-member random starts (each member has its own
    generator, as in the loop) and building the member modules; the loop's extra is Python/autograd overhead.
    2000 trivial points through the store: 0.06 ms/point inline (--workers 1); 1.85-2.0 ms/point with a
    2-process spawn pool, start-up included (target < 5 ms).

Command: ``OMP_NUM_THREADS=1 python benchmarks/sweep.py`` (``--help`` for sizes).

1. ``--runs`` finite-sample AT runs (PGD-10 training, PGD eval, tied or full linear model, same shapes,
   different eps and seeds): :func:`synthmodel.batched.train_batched` on all of them at once vs
   :func:`synthmodel.train.train` in a Python loop, in the same process. Target: >= 10x.
2. ``--trivial`` points of a kind that does nothing but arithmetic, through :func:`run_sweep` into a fresh
   store (inline with 1 worker, and a 2-process pool including its start-up): wall time per point.
   Target: < 5 ms a point.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from synthmodel.batched import train_batched
from synthmodel.sweep import Param, PointKind, expand_grid, register_kind, run_sweep
from synthmodel.train import TrainConfig, train


def trivial(params: dict) -> dict:
    return {"double": 2 * params["i"]}


def bench_batched(runs: int, model: str, epochs: int, n: int) -> tuple[float, float]:
    configs = [TrainConfig(model=model, mode="at", eps=0.05 + 0.4 * (i % 16) / 15, seed=i // 16, epochs=epochs,
                           n_train=n, n_test=n, noise_dims=10) for i in range(runs)]
    start = time.perf_counter()
    batched = train_batched(configs)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = [train(c) for c in configs]
    t_loop = time.perf_counter() - start
    worst = max(abs(b.final["robust_acc"] - u.final["robust_acc"]) for b, u in zip(batched, looped, strict=True))
    print(f"  batched vs loop: largest |robust_acc difference| = {worst:.2e} (float32)")
    return t_loop, t_batched


def bench_overhead(points: int, workers: int) -> float:
    grid = expand_grid({"kind": "bench-trivial", "grid": {"i": {"range": [0, points]}}})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_sweep(grid, out, workers=workers, progress=False, export_format=None)
        elapsed = time.perf_counter() - start
    assert summary.computed == points
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=256)
    p.add_argument("--model", choices=("tied", "linear"), default="linear")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n", type=int, default=256, help="training and test samples per run")
    p.add_argument("--trivial", type=int, default=2000)
    args = p.parse_args()
    register_kind(PointKind("bench-trivial", trivial, {"i": Param("int", 0)}), replace=True)
    print(f"torch threads {torch.get_num_threads()}")
    t_loop, t_batched = bench_batched(args.runs, args.model, args.epochs, args.n)
    print(f"{args.runs} AT runs ({args.model}, {args.epochs} epochs, n={args.n}): loop {t_loop:.1f} s, batched "
          f"{t_batched:.1f} s, speed-up {t_loop / t_batched:.1f}x (target >= 10x)")
    for workers in (1, 2):
        elapsed = bench_overhead(args.trivial, workers)
        print(f"{args.trivial} trivial points, workers={workers}: {elapsed:.2f} s, "
              f"{1000 * elapsed / args.trivial:.2f} ms/point (target < 5)")


if __name__ == "__main__":
    main()
