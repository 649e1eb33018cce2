"""What adversarial weight perturbation costs: one CPU training epoch with and without AWP, same run.

    OMP_NUM_THREADS=1 python benchmarks/real_data_awp_epoch.py            # the paper-fmnist set-up, 1 thread

``real_data.train.Trainer.fit_epoch`` of the CPU epoch benchmark's set-up (``real_data_cpu_epoch.SETUP``: the
small CNN on 500 Fashion-MNIST images, or random images of that shape, PGD-10, batch 32) in modes at and
trades, each without AWP and with ``--awp-gamma 0.01``, the runs alternated ``--repeats`` times; the best
of each is kept. Times are CPU seconds of this process (``time.process_time``), wall seconds beside them;
the ratios are of CPU seconds. AWP adds the ascent on the weights to every step: one more pass of the
training loss with a weight gradient (AT: one forward pass; TRADES: two, natural and adversarial), beside the
attack's ``steps`` passes with an input gradient only (weights frozen) and the training pass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_data_cpu_epoch import SETUP, fashion_mnist_or_random, trainer_epoch  # noqa: E402

from real_data.train import TrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-n", type=int, default=SETUP["train_n"], help="training images per epoch")
    p.add_argument("--batch-size", type=int, default=SETUP["batch_size"])
    p.add_argument("--steps", type=int, default=SETUP["steps"], help="PGD steps of the training attack")
    p.add_argument("--awp-gamma", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=2, help="alternated runs of each; the best is kept")
    p.add_argument("--modes", nargs="+", default=["at", "trades"], choices=["at", "trades"])
    args = p.parse_args(argv)
    data, source = fashion_mnist_or_random(args.train_n)
    print(f"{source}, {args.train_n} images, batch {args.batch_size}, PGD-{args.steps}, small CNN width "
          f"{SETUP['width']}, AWP gamma {args.awp_gamma}, best of {args.repeats}")
    for mode in args.modes:
        settings = {**SETUP, "train_n": args.train_n, "batch_size": args.batch_size, "steps": args.steps,
                    "dataset": "fashion-mnist", "mode": mode, "epochs": 2}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, gamma in (("plain", 0.0), ("awp", args.awp_gamma)):
                cpu, wall = trainer_epoch(TrainConfig(**settings, awp_gamma=gamma), data)
                if name not in best or cpu < best[name][0]:
                    best[name] = (cpu, wall)
        for name, (cpu, wall) in best.items():
            print(f"  {mode:6s} {name:5s}: {cpu:7.2f} CPU s ({wall:7.2f} wall s)")
        print(f"  {mode:6s} AWP / plain: {best['awp'][0] / best['plain'][0]:.2f}x CPU seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
