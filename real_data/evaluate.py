"""Clean accuracy, PGD robust accuracy and the class attribution (C, CAS) of a model on a test split.

One pass over the data serves all three: per batch, clean logits, a PGD attack (synthmodel's
:func:`~synthmodel.attacks.pgd`, model in eval mode, pixels clamped to [0, 1]), then the features
``g(x_adv)`` streamed into synthmodel's :class:`~synthmodel.attribution.AttributionAccumulator`
with the head weight. The attack may run under bf16 autocast; the final features (and the robust
logits computed from them) are taken in float32, so C and CAS do not carry bf16 rounding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmodel.attacks import pgd, preserve_mode
from synthmodel.attribution import Attribution, AttributionAccumulator, head_weight

from .data import to_float
from .device import autocast
from .forwards import Forwards, model_forwards
from .models import ImageClassifier

__all__ = ["ThreatModel", "Evaluation", "evaluate"]


@dataclass(frozen=True)
class ThreatModel:
    """An evaluation attack: PGD in ``norm`` with radius ``eps`` (pixel units in [0, 1], not /255)."""

    eps: float
    norm: str = "linf"
    steps: int = 20
    step_size: float | None = None  # None: eps / 4 (the official test attack)
    random_start: bool = True

    def attack(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator | None, pgd_fn: Callable = pgd) -> torch.Tensor:
        """x_adv for a batch x (N, C, H, W) in [0, 1], labels y (N,); ``pgd_fn`` runs the attack
        (:func:`synthmodel.attacks.pgd` or a :class:`~real_data.graphs.GraphedPGD`)."""
        return pgd_fn(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                   random_start=self.random_start, clamp=(0.0, 1.0), generator=generator, mode="eval")


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate` (accuracies in [0, 1]; ``attribution`` None unless asked for)."""

    clean_acc: float
    robust_acc: float
    robust_loss: float
    n: int
    attribution: Attribution | None


def evaluate(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, *,
             generator: torch.Generator | None, batch_size: int = 512, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, with_attribution: bool = False, progress: bool = False,
             forwards: Forwards | None = None, desc: str = "eval", pgd_fn: Callable = pgd) -> Evaluation:
    """Evaluate ``model`` on uint8 images (N, H, W, C) with labels (N,), both on the model's device.

    Args:
        model: the classifier (its ``features``/``head`` give the attribution).
        images, labels: the split.
        threat: the attack.
        generator: RNG of the attack's random start, consumed batch by batch in order.
        batch_size: images per batch.
        amp_dtype: autocast dtype of the clean pass and the attack (None = float32).
        channels_last: feed channels_last tensors (as the model's weights are laid out).
        with_attribution: also accumulate C and CAS on the adversarial inputs.
        progress: tqdm bar on stderr.
        forwards: how ``model`` is called for clean logits and inside the attack (e.g. compiled; see
            :func:`~real_data.forwards.model_forwards`); default ``model`` itself for both.
        pgd_fn: the attack's implementation (a :class:`~real_data.graphs.GraphedPGD` replays CUDA graphs).
    """
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need as many labels as images (> 0), got {images.shape[0]} and {labels.shape[0]}")
    forwards = model_forwards(model) if forwards is None else forwards
    device = labels.device
    accumulator = AttributionAccumulator(head_weight(model)) if with_attribution else None
    clean = torch.zeros((), dtype=torch.int64, device=device)
    robust = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    starts = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, leave=False)
    with preserve_mode(model, "eval"):
        for start in starts:
            x = to_float(images[start:start + batch_size])
            x = x if channels_last else x.contiguous()
            y = labels[start:start + batch_size]
            with autocast(device, amp_dtype):
                with torch.no_grad():
                    clean += (forwards.clean(x).argmax(1) == y).sum()
                x_adv = threat.attack(forwards.attack, x, y, generator, pgd_fn)
            with torch.no_grad():
                features = model.features(x_adv).float()
                logits = model.head(features)
            robust += (logits.argmax(1) == y).sum()
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            if accumulator is not None:
                accumulator.update(features, y)
    n = images.shape[0]
    return Evaluation(clean_acc=clean.item() / n, robust_acc=robust.item() / n, robust_loss=loss.item() / n, n=n,
                      attribution=accumulator.result() if accumulator is not None else None)
