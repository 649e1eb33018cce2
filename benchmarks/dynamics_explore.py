"""The set-ups tried before the dynamics experiments were fixed (docs/EXPERIMENTS.md, "What was tried").

Each group is a base set-up plus a list of changes; every run prints one line: the changes, wall
seconds, best epoch (by test robust accuracy), test robust accuracy at best / last epoch, CAS at best /
last / max, CAS and robust accuracy at every 10% of training, last-epoch train robust accuracy and loss,
last-epoch clean accuracy (and w1, w2 for the tied model). Seed 0, one run per line: this is a scan
for where the phenomena could live, not a measurement with spread (that is synthmodel.dynamics).

Measured (2-core shared VM, torch 2.13 CPU, 2 worker processes, OMP_NUM_THREADS=1):
group g1 8 runs 16 s, g2 16 runs 35 s, g3 12 runs 36 s (these three with an earlier copy of this script
holding the same set-ups), g4 12 runs 90 s, g5 8 runs 85 s (other jobs sharing the cores).

Command: ``OMP_NUM_THREADS=1 python benchmarks/dynamics_explore.py g1 g2 g3 g4``
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from synthmodel.train import TrainConfig, train

BASE_EASY = {"preset": "paper3", "noise_dims": 100, "n_train": 300, "n_test": 1000, "epochs": 60}
BASE_HARD = {**BASE_EASY, "sigma": 1.0, "batch_size": 32}
MLP128 = {"model": "mlp", "hidden": [128]}

GROUPS: dict[str, tuple[dict, list[dict]]] = {
    # sigma = 0.5 (the foundation's default world), batch 64: the integrator's first look and neighbours
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


def summary(params: dict) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = train(TrainConfig(**params))
    history, best, last = result.history, result.history[result.best_epoch - 1], result.history[-1]
    cas = [r["cas"] for r in history]
    every = max(1, len(history) // 10)
    out = {"t": round(time.perf_counter() - start, 1), "best_ep": result.best_epoch,
           "rob_best": round(best["test_robust_acc"], 3), "rob_last": round(last["test_robust_acc"], 3),
           "cas_best": round(best["cas"], 3), "cas_last": round(last["cas"], 3), "cas_max": round(max(cas), 3),
           "cas_ep": [round(c, 2) for c in cas[::every]],
           "rob_ep": [round(r["test_robust_acc"], 2) for r in history[::every]],
           "tr_rob_last": round(last["train_robust_acc"], 3), "tr_loss_last": round(last["train_robust_loss"], 3),
           "clean_last": round(last["test_clean_acc"], 3)}
    if "w1" in last:
        out.update(w1=round(last["w1"], 3), w2=round(last["w2"], 3))
    return out


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        print(f"error: choose groups from {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    for name in names:
        base, changes = GROUPS[name]
        start = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            for change, out in zip(changes, pool.map(summary, [{**base, **c} for c in changes])):
                print(name, json.dumps(change), json.dumps(out), flush=True)
        print(f"# {name}: {len(changes)} runs, {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
