"""Are a code change's results bit-identical? Record small runs of every trainer, then compare two records.

    python experiments/bitwise_check.py record DIR       # with the code before the change
    python experiments/bitwise_check.py record DIR2      # with the code after it
    python experiments/bitwise_check.py compare DIR DIR2 # one line per run: identical, or what differs

What is recorded (small sizes: about 3-5 min on 2 shared cores):

* sweep stores (``synthmodel.sweep``, one worker): ``train`` points of the tied and full linear models
  (batched, and again with ``max_batch = 1``: one at a time), MLP points of every mode, optimiser,
  schedule, attack and dtype, ``dynamics`` points (AT, label smoothing, ``teacher_from = "at_best"``,
  fewer epochs than the presets), a few ``theory`` points;
* ``python -m synthmodel.train --json --out`` and its ``--save`` checkpoints (a teacher, then a student
  distilled from it);
* ``python -m real_data.train`` on a tiny ``.npz`` set (small CNN, CPU): at, trades, standard, kd, label
  smoothing, l2, the step and cosine schedules, and a run stopped after one epoch and resumed.

The comparison keys a store's points by kind and complete params, and compares results and per-epoch history
as JSON text (equal text means equal floats) and the points' hashes (equal unless the code version changed:
a store written before the change is then refused, and its points are computed again in a new folder).
Checkpoints are compared tensor by tensor with ``torch.equal``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch

SMALL = {"epochs": 4, "n_train": 96, "n_test": 64, "batch_size": 32, "noise_dims": 3, "attack_steps": 3,
         "eval_steps": 4}
TINY_DYNAMICS = {"preset": "paper3", "mu": 1.0, "sigma": 1.0, "noise_dims": 10, "n_train": 90, "n_test": 120,
                 "mode": "at", "norm": "linf", "attack_steps": 3, "eval_steps": 4, "optimizer": "sgd", "lr": 0.1,
                 "momentum": 0.9, "weight_decay": 0.0, "schedule": "step", "epochs": 8, "batch_size": 30,
                 "dtype": "float32"}

GRIDS: dict[str, dict] = {
    "train-linear": {"kind": "train", "fixed": SMALL, "block": [
        {"grid": {"model": ["tied", "linear"], "eps": [0.0, 0.1, 0.3], "seed": [0, 1]}},
        {"fixed": {"label_smoothing": 0.2, "lr": 0.05, "weight_decay": 0.01},
         "grid": {"model": ["tied", "linear"], "eps": [0.1, 0.25]}},
        {"fixed": {"attack": "fgsm", "norm": "l2"}, "grid": {"model": ["linear"], "eps": [0.2, 0.5]}},
        {"fixed": {"attack": "logitwise", "schedule": "constant"},
         "grid": {"model": ["tied", "linear"], "eps": [0.0, 0.2], "label_smoothing": [0.0, 0.1]}},
        {"fixed": {"mode": "standard", "bias": False, "momentum": 0.0}, "grid": {"model": ["linear"], "seed": [0, 1]}},
        {"fixed": {"dtype": "float64", "mu": 1.2, "sigma": 0.4, "attack_step_size": 0.05},
         "grid": {"model": ["tied"], "eps": [0.1, 0.3]}},
    ]},
    "train-mlp": {"kind": "train", "fixed": {**SMALL, "model": "mlp", "hidden": [8]}, "block": [
        {"grid": {"mode": ["standard", "at", "trades"], "eps": [0.0, 0.2]}},
        {"fixed": {"label_smoothing": 0.2}, "grid": {"mode": ["at", "trades"]}},
        {"fixed": {"optimizer": "adam", "lr": 0.01}, "grid": {"schedule": ["cosine", "step", "constant"]}},
        {"fixed": {"schedule": "cosine", "epochs": 7}, "grid": {"lr": [0.1, 0.03]}},
        {"fixed": {"attack": "fgsm", "norm": "l2", "eps": 0.5, "dtype": "float64", "hidden": [6, 5]}},
        {"fixed": {"preset": "ring-5", "weight_decay": 5e-4, "momentum": 0.5, "trades_beta": 3.0, "mode": "trades"}},
    ]},
    "dynamics": {"kind": "dynamics", "fixed": TINY_DYNAMICS, "block": [
        {"grid": {"model": ["mlp"], "hidden": [[16]], "eps": [0.1, 0.2], "seed": [0, 1]}},
        {"fixed": {"model": "mlp", "hidden": [16], "eps": 0.1},
         "points": [{"label_smoothing": 0.2}, {"teacher_from": "at_best", "temperature": 2.0},
                    {"teacher_from": "at_best", "temperature": 2.0, "experiment": "soft"}]},
        {"fixed": {"model": "linear", "eps": 0.1},
         "points": [{}, {"teacher_from": "at_best", "temperature": 2.0}, {"label_smoothing": 0.2, "seed": 3}]},
    ]},
    "theory": {"kind": "theory", "fixed": {"preset": "paper3", "mu": 1.0, "sigma": 0.5},
               "grid": {"eps": [0.1, 0.3], "alpha": [0.0, 0.2], "attack": ["logitwise"]}},
}

TRAIN_FAST = ["--epochs", "3", "--n-train", "200", "--n-test", "200", "--attack-steps", "2", "--eval-steps", "2",
              "--quiet", "--json"]
TRAIN_RUNS: dict[str, list[str]] = {
    "tied": [],
    "linear-l2": ["--model", "linear", "--norm", "l2", "--eps", "0.5"],
    "mlp-trades": ["--model", "mlp", "--hidden", "8", "--mode", "trades"],
    "mlp-adam-cosine": ["--model", "mlp", "--hidden", "8", "--optimizer", "adam", "--lr", "0.01", "--schedule",
                        "cosine", "--label-smoothing", "0.1"],
    "logitwise": ["--model", "linear", "--attack", "logitwise", "--label-smoothing", "0.2", "--dtype", "float64"],
}
REAL_FAST = ["--arch", "small-cnn", "--width", "4", "--batch-size", "12", "--steps", "2", "--eval-steps", "2",
             "--device", "cpu", "--quiet", "--save-every", "1"]
REAL_RUNS: dict[str, list[str]] = {
    "at-step": ["--epochs", "3"],
    "trades": ["--mode", "trades", "--epochs", "3"],
    "standard": ["--mode", "standard", "--epochs", "2", "--schedule", "constant"],
    "ls-l2-cosine": ["--label-smoothing", "0.2", "--norm", "l2", "--epochs", "3", "--schedule", "cosine",
                     "--attack-bn", "eval", "--no-augment"],
    "milestones": ["--epochs", "4", "--milestones", "1", "3", "--gamma", "0.5", "--lr", "0.03", "--no-random-start"],
    "short-step": ["--epochs", "2"],  # the step schedule's default milestones of a 2-epoch run
}


def _python(cwd: Path, *args: str) -> None:
    # relative paths inside DIR: configs that record a file name then read the same in every record
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr}")


def record(out: Path) -> None:
    from synthmodel.sweep import expand_grid, run_sweep

    try:  # kinds and presets registered by a module of their own in some versions
        import synthmodel.dynamics  # noqa: F401
    except ImportError:
        pass
    out.mkdir(parents=True, exist_ok=False)
    for name, spec in GRIDS.items():
        grid = expand_grid({**spec, "name": name})
        run_sweep(grid, out / "sweeps" / name, workers=1, progress=False, export_format=None)
        if name == "train-linear":
            run_sweep(grid, out / "sweeps" / "train-linear-unbatched", workers=1, progress=False,
                      export_format=None, max_batch=1)
        print(f"sweep {name}: {len(grid.points)} points", flush=True)
    synth = out / "synthmodel-train"
    synth.mkdir()
    for name, args in TRAIN_RUNS.items():
        _python(synth, "-m", "synthmodel.train", *TRAIN_FAST, *args, "--out", f"{name}.json")
    _python(synth, "-m", "synthmodel.train", *TRAIN_FAST, "--model", "mlp", "--hidden", "8", "--save", "teacher",
            "--out", "teacher.json")
    _python(synth, "-m", "synthmodel.train", *TRAIN_FAST, "--model", "mlp", "--hidden", "8", "--teacher",
            "teacher/best.pt", "--temperature", "2", "--out", "student.json")
    print(f"synthmodel.train: {len(TRAIN_RUNS) + 2} runs", flush=True)
    from real_data.fixtures import write_npz

    real = out / "real_data-train"
    real.mkdir()
    write_npz(real / "set.npz", n_train=36, n_test=12, n_classes=3, shape=(8, 8, 3))
    common = ["-m", "real_data.train", "--dataset", "npz:set.npz", *REAL_FAST]
    for name, args in REAL_RUNS.items():
        _python(real, *common, *args, "--out", name)
    _python(real, *common, "--mode", "kd", "--teacher", "at-step/best.pt", "--temperature", "2", "--epochs", "3",
            "--out", "kd")
    _python(real, *common, "--epochs", "3", "--stop-after", "1", "--out", "resumed")
    _python(real, *common, "--epochs", "3", "--resume", "--out", "resumed")
    print(f"real_data.train: {len(REAL_RUNS) + 2} runs", flush=True)


def _store(folder: Path) -> tuple[str, dict[str, tuple[str, str, str, str]]]:
    """(code version, {(kind, params JSON): (hash, status, results JSON, history JSON)})."""
    con = sqlite3.connect(f"file:{folder / 'sweep.sqlite'}?mode=ro", uri=True)
    try:
        version = con.execute("SELECT value FROM meta WHERE key = 'code_version'").fetchone()[0]
        points = con.execute("SELECT hash, kind, params, status, results FROM points").fetchall()
        history: dict[str, list] = {}
        for h, step, rec in con.execute("SELECT hash, step, record FROM history ORDER BY hash, step"):
            history.setdefault(h, []).append((step, rec))
    finally:
        con.close()
    out = {}
    for h, kind, params, status, results in points:
        key = json.dumps([kind, json.loads(params)], sort_keys=True)
        out[key] = (h, status, results, json.dumps(history.get(h, [])))
    return version, out


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def compare(base: Path, new: Path) -> int:
    differences = 0
    for folder in sorted((base / "sweeps").iterdir()):
        (old_version, old), (new_version, now) = _store(folder), _store(new / "sweeps" / folder.name)
        missing = sorted(set(old) ^ set(now))
        changed = [k for k in set(old) & set(now) if old[k][1:] != now[k][1:]]
        status = "identical" if not missing and not changed else (
            f"{len(changed)} points differ, {len(missing)} points only in one store")
        # a point's hash covers the code version: equal hashes need equal versions and equal complete params
        rehashed = sum(old[k][0] != now[k][0] for k in set(old) & set(now))
        hashes = ("same hashes" if not rehashed else
                  f"{rehashed} hashes differ (code version {old_version} -> {new_version})")
        print(f"sweep {folder.name}: {len(old)} points, {status}; {hashes}")
        for key in (changed + missing)[:5]:
            print(f"    {key[:200]}")
        differences += len(missing) + len(changed)
        if rehashed and old_version == new_version:
            differences += rehashed
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if path.is_dir() or rel.parts[0] == "sweeps" or path.suffix == ".npz":
            continue
        other = new / rel
        if not other.exists():
            print(f"{rel}: missing in {new}")
            differences += 1
            continue
        if path.suffix == ".pt":
            same = _same_tensors(torch.load(path, weights_only=True), torch.load(other, weights_only=True))
        else:
            same = path.read_bytes() == other.read_bytes()
        print(f"{rel}: {'identical' if same else 'DIFFERS'}")
        differences += not same
    print(f"{differences} differences")
    return 1 if differences else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("base", type=Path)
    cmp.add_argument("new", type=Path)
    args = p.parse_args()
    if args.command == "record":
        if args.out.exists():  # checked here, not with synthmodel.atomic: older versions record with this file too
            print(f"error: {args.out} exists: record into a new folder", file=sys.stderr)
            return 2
        record(args.out)
        return 0
    return compare(args.base, args.new)


if __name__ == "__main__":
    sys.exit(main())
