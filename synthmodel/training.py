"""The pieces every trainer shares: learning-rate schedule, epoch loop, best-epoch tracker, epoch record.

:mod:`synthmodel.train` (one model), :mod:`synthmodel.batched` (E linear models at once) and
:mod:`real_data.train` (networks on a GPU) differ in how they draw batches and evaluate, not in these:

* :class:`LRSchedule`: the learning rate of every epoch, a function of the settings alone (so a resumed
  run needs no scheduler state);
* :func:`fit_epoch`: one pass of :meth:`synthmodel.objectives.Objective.step` over the batches, the
  training loss summed on the device (no host sync per step);
* :class:`BestEpoch`: the best checkpoint, the first epoch of highest robust accuracy on the selection split (the
  paper's: the test set; or a held-out validation set);
* :class:`EpochRecord`: one history entry, the same keys in the same order for every trainer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .objectives import Learner, Objective

__all__ = ["SCHEDULES", "LRSchedule", "EpochTotals", "fit_epoch", "BestEpoch", "EpochRecord"]

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate per epoch.

    Args:
        name: 'constant'; 'step': times ``gamma`` at each milestone (the paper's recipe: x0.1 at 50% and 75%
            of the epochs); 'cosine': cosine annealing from ``lr`` towards 0 over ``epochs``.
        lr: the initial learning rate.
        epochs: length of the run.
        milestones: 'step' only: the epochs (0-based index of the first epoch at the lower rate) where the rate
            is multiplied by gamma, repeats multiplying again; None = ``max(1, epochs // 2)`` and
            ``max(1, 3 epochs // 4)`` (each once).
        gamma: 'step' only: the factor.

    The rates are those ``torch.optim.lr_scheduler`` (MultiStepLR, CosineAnnealingLR) sets when stepped once
    per epoch, to the last bit: computed once by stepping them on a stand-in optimiser.
    """

    name: str
    lr: float
    epochs: int
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if not (math.isfinite(self.lr) and self.lr > 0) or self.epochs < 1:
            raise ValueError(f"a schedule needs lr > 0 and epochs >= 1, got lr={self.lr}, epochs={self.epochs}")

    @property
    def step_milestones(self) -> tuple[int, ...]:
        """The milestones the 'step' schedule uses."""
        if self.milestones is not None:
            return tuple(self.milestones)
        return tuple(sorted({max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)}))

    @cached_property
    def rates(self) -> tuple[float, ...]:
        """The learning rate of each epoch, index 0 = the first."""
        param = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.SGD([param], lr=self.lr)
        if self.name == "step":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.step_milestones),
                                                             gamma=self.gamma)
        elif self.name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        else:
            scheduler = None
        rates = []
        for _ in range(self.epochs):
            rates.append(optimizer.param_groups[0]["lr"])
            if scheduler is not None:
                optimizer.step()  # no gradient, so no update; keeps the scheduler's call-order check quiet
                scheduler.step()
        return tuple(rates)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch`` (constant within the epoch)."""
        return self.rates[epoch]


@dataclass
class EpochTotals:
    """What :func:`fit_epoch` summed: per-sample loss (float64; shape () or (E,) for an ensemble), correct
    predictions on the training batches (None when the objective has no logits) and the samples seen."""

    loss: torch.Tensor
    correct: torch.Tensor | None
    seen: int

    def mean_loss(self) -> Any:
        """The epoch's mean training loss: a float, or one per ensemble member."""
        return self._per_sample(self.loss)

    def accuracy(self) -> Any:
        """Fraction of training samples classified correctly while training (NaN without logits)."""
        return math.nan if self.correct is None else self._per_sample(self.correct)

    def _per_sample(self, total: torch.Tensor) -> Any:
        if total.dim() == 0:
            return total.item() / self.seen
        return [value / self.seen for value in total.tolist()]


def fit_epoch(objective: Objective, learner: Learner, optimizer: torch.optim.Optimizer,
              batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EpochTotals:
    """One pass of ``objective.step`` over ``batches`` of (x, y); y is (B,) or (E, B) for an ensemble.

    The loss of each step, times its batch size, is summed in float64 where the loss lives (as a Python
    float sum of ``loss.item() * B`` would, bit for bit, without a host sync per step).
    """
    total: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen = 0
    for x, y in batches:
        loss, logits = objective.step(learner, x, y, optimizer)
        size = y.shape[-1]
        weighted = loss.detach().double() * size
        total = weighted if total is None else total + weighted
        if logits is not None:
            hits = (logits.detach().argmax(-1) == y).sum(-1)
            correct = hits if correct is None else correct + hits
        seen += size
    if total is None:
        raise ValueError("fit_epoch needs at least one batch")
    return EpochTotals(total, correct, seen)


@dataclass
class BestEpoch:
    """The first epoch with the highest value (robust accuracy on the test set, the paper's selection, or on a
    held-out validation set) seen so far, and what was kept of it."""

    epoch: int = 0
    value: float = -1.0
    state: Any = None

    def update(self, epoch: int, value: float, keep: Callable[[], Any] | None = None) -> bool:
        """Record ``epoch`` if ``value`` beats every earlier one (ties keep the earlier epoch); ``keep()``
        (e.g. a copy of the weights) is called only then. Returns whether it was recorded."""
        if not value > self.value:
            return False
        self.epoch, self.value = epoch, value
        self.state = keep() if keep is not None else None
        return True


@dataclass
class EpochRecord:
    """One history entry. Fields a trainer does not measure stay None and are left out of :meth:`as_dict`.

    Attributes:
        epoch: 1-based. lr: the learning rate used in it. train_loss: mean training objective over the epoch.
        train_acc: running accuracy on the training batches (real data, standard training).
        train_clean_acc, train_robust_acc, train_robust_loss: on the training set. synthmodel: evaluated after
            the epoch in eval mode; real data: ``train_robust_acc`` is the running accuracy on the attacked
            training batches.
        val_clean_acc, val_robust_acc: on training images held out from training (real data, ``--val``), with the
            test attack.
        test_clean_acc, test_robust_acc, test_robust_loss: on the test set after the epoch (robust: the
            evaluation attack, or the exact worst case for linear models).
        cas, class_matrix: CAS and the class matrix C (K x K) on the adversarial test inputs.
        w1, w2: the tied model's weights.
    """

    epoch: int
    lr: float
    train_loss: float
    train_acc: float | None = None
    train_clean_acc: float | None = None
    train_robust_acc: float | None = None
    train_robust_loss: float | None = None
    val_clean_acc: float | None = None
    val_robust_acc: float | None = None
    test_clean_acc: float | None = None
    test_robust_acc: float | None = None
    test_robust_loss: float | None = None
    cas: float | None = None
    class_matrix: list | None = None
    w1: float | None = None
    w2: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The measured fields, in declaration order (the history's and the CSV log's column order)."""
        return {f.name: value for f in dataclasses.fields(self) if (value := getattr(self, f.name)) is not None}
