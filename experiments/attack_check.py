"""Is the history's PGD-20 robust accuracy faithful for the dynamics MLPs? (a research log; docs/EXPERIMENTS.md,
"Checks")

Trains a few dynamics points (seed 0) and evaluates their best and last checkpoints with PGD-20 as in
training (from the history) and with a stronger attack: PGD-100 (step eps/20) with cross-entropy and
with the margin (CW) loss, 5 random restarts each, a sample counting as robust only if it survives all.

Measured (2-core shared VM, torch 2.13 CPU, OMP_NUM_THREADS=1, ~3 min; pgd20 -> strong):
paper3 MLP eps 0.2 best/last 0.422/0.257 -> 0.405/0.249; eps 0.3 0.276/0.169 -> 0.266/0.154;
eps 0.5 0.388/0.388 -> 0.363/0.363; ring-10 MLP eps 0.5 0.618/0.613 -> 0.566/0.567;
ring-10 AT + label smoothing 0.2 eps 0.1 0.540/0.412 -> 0.492/0.371.

Command: ``OMP_NUM_THREADS=1 python -m experiments.attack_check``
"""

from __future__ import annotations

import torch

from experiments.dynamics import SETUP
from synthmodel import attacks as atk
from synthmodel.cli import ArgumentParser
from synthmodel.dynamics import run_dynamics
from synthmodel.sample import derive_seed, sample
from synthmodel.train import DTYPES, build_world

CHECKS = [
    {"eps": 0.2}, {"eps": 0.3}, {"eps": 0.5},
    {"preset": "ring-10", "n_train": 1000, "eps": 0.5},
    {"preset": "ring-10", "n_train": 1000, "eps": 0.1, "label_smoothing": 0.2},
]


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed (best wrong logit - true logit): the CW margin, maximised by the attack."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return (others.max(1).values - true).sum()


def strong_robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    survived = torch.ones_like(y, dtype=torch.bool)
    gen = torch.Generator().manual_seed(derive_seed(0, "strong-attack"))
    for loss in (None, margin_loss):
        for _ in range(5):
            x_adv = atk.pgd(model, x, y, eps=eps, steps=100, step_size=eps / 20, generator=gen, loss_fn=loss)
            with torch.no_grad():
                survived &= model(x_adv).argmax(1) == y
    return survived.double().mean().item()


def main(argv: list[str] | None = None) -> None:
    ArgumentParser(prog="python -m experiments.attack_check",
                   description=__doc__.strip().splitlines()[0].rstrip(",")).parse_args(argv)  # --help, and no options
    torch.set_num_threads(1)
    for extra in CHECKS:
        params = {**SETUP, "model": "mlp", "hidden": [128], "seed": 0, "teacher_from": "none", **extra}
        result, _ = run_dynamics(params)
        config = result.config
        x, y = sample(build_world(config), config.n_test, derive_seed(config.seed, "test"),
                      dtype=DTYPES[config.dtype])
        for name, epoch in (("best", result.best_epoch), ("last", config.epochs)):
            result.model.load_state_dict(result.epoch_states[epoch - 1])
            result.model.eval()
            pgd20 = result.history[epoch - 1]["test_robust_acc"]
            strong = strong_robust_accuracy(result.model, x, y, config.eps)
            print(f"{extra} {name} epoch {epoch}: pgd20 {pgd20:.3f} strong {strong:.3f}", flush=True)


if __name__ == "__main__":
    main()
