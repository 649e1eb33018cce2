"""How a model is called in training: clean passes and attacks, optionally through torch.compile."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Forwards", "model_forwards"]


class _AttackView(torch.nn.Module):
    """``model`` as PGD calls it; a class of its own so that torch.compile keeps the attack's graphs apart.

    Dynamo keeps one cache of compiled graphs per code object and stops compiling a function after
    ``torch._dynamo.config.recompile_limit`` (8) variants, running it eagerly from then on. Attacks
    (input requires grad, weights frozen; train or eval mode) and clean passes / training steps
    (weights require grad, or no grad at all) are different graphs, and the last batch of an epoch
    adds a dynamic-batch variant of each: in one cache, an AT run with its test evaluation fills all
    8 entries. With the attack behind this view each cache holds about half of them.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@dataclass(frozen=True)
class Forwards:
    """How a model is called: ``clean`` for clean logits and training steps, ``attack`` inside PGD.

    Both compute ``model(x)``; they differ only in whether (and with which cache) they are compiled.
    """

    clean: torch.nn.Module
    attack: torch.nn.Module


def model_forwards(model: torch.nn.Module, compile: bool = False, mode: str | None = None) -> Forwards:
    """The model itself twice, or two torch.compile'd entry points with separate graph caches.

    Args:
        model: the classifier (its parameters are updated in place; compiled graphs read them live).
        compile: wrap in ``torch.compile``.
        mode: torch.compile's mode (None = its default); implies ``compile``.
    """
    if not (compile or mode):
        return Forwards(clean=model, attack=model)
    return Forwards(clean=torch.compile(model, mode=mode), attack=torch.compile(_AttackView(model), mode=mode))
