"""Training objectives: cross-entropy, label smoothing, distillation, TRADES.

Label smoothing and distillation are both cross-entropy against *soft targets*; they differ only
in where the targets come from, so both go through :func:`soft_targets` and one cross-entropy.

Conventions (written down because papers differ):

* label smoothing ``alpha``: target ``(1 - alpha) * onehot(y) + alpha / K`` (PyTorch's convention:
  the true class keeps ``1 - alpha + alpha/K``);
* distillation: target ``softmax(teacher_logits / T)``, loss = cross-entropy of the student's
  logits (at temperature 1) against it. As T -> 0 with a teacher whose top logit is the label, the
  target becomes one-hot and the loss becomes plain cross-entropy;
* TRADES ``beta`` (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))``,
  KL averaged over the batch; its attack maximises the same KL (:func:`trades_attack_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["soft_targets", "cross_entropy", "label_smoothing_targets", "distillation_targets",
           "robust_objective", "trades_loss", "trades_kl", "trades_attack_loss", "check_alpha"]


def check_alpha(alpha: float) -> float:
    """Validate a label-smoothing alpha in [0, 1)."""
    alpha = float(alpha)
    if not math.isfinite(alpha) or not 0.0 <= alpha < 1.0:
        raise ValueError(f"label smoothing alpha must be in [0, 1), got {alpha}")
    return alpha


def label_smoothing_targets(y: torch.Tensor, n_classes: int, alpha: float | torch.Tensor,
                            dtype: torch.dtype) -> torch.Tensor:
    """``(1 - alpha) * onehot(y) + alpha / K``: labels y (N,) -> (N, K); or, for an ensemble, labels (E, N) with
    one alpha per member as a tensor (E, 1, 1) -> (E, N, K)."""
    if not isinstance(alpha, torch.Tensor):
        alpha = check_alpha(alpha)
    onehot = F.one_hot(y, n_classes).to(dtype)
    return onehot * (1.0 - alpha) + alpha / n_classes


def distillation_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(teacher_logits / T)``, shape (N, K)."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return torch.softmax(teacher_logits.detach() / temperature, dim=1)


def soft_targets(y: torch.Tensor, n_classes: int, *, alpha: float = 0.0, teacher_logits: torch.Tensor | None = None,
                 temperature: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The target distribution of a sample: teacher's if given, else label-smoothed one-hot."""
    if teacher_logits is not None:
        if alpha:
            raise ValueError("use either label smoothing or a teacher, not both")
        return distillation_targets(teacher_logits, temperature).to(dtype)
    return label_smoothing_targets(y, n_classes, alpha, dtype)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against hard labels (N,) or soft targets (N, K)."""
    return F.cross_entropy(logits, targets, reduction=reduction)


def robust_objective(logits: torch.Tensor, y: torch.Tensor, *, alpha: float = 0.0,
                     teacher_logits: torch.Tensor | None = None, temperature: float = 1.0,
                     reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` (N, K) against the targets of labels y (N,) chosen by alpha / teacher.

    ``alpha = 0`` and no teacher is exactly ``F.cross_entropy(logits, y)``.
    """
    if teacher_logits is None and not alpha:
        return F.cross_entropy(logits, y, reduction=reduction)
    targets = soft_targets(y, logits.shape[1], alpha=alpha, teacher_logits=teacher_logits,
                           temperature=temperature, dtype=logits.dtype)
    return F.cross_entropy(logits, targets, reduction=reduction)


def trades_loss(logits_natural: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
                *, alpha: float = 0.0, teacher_logits: torch.Tensor | None = None,
                temperature: float = 1.0) -> torch.Tensor:
    """TRADES: natural (possibly soft-target) cross-entropy + beta * KL(p_natural || p_adv), batch mean."""
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"TRADES beta must be finite and >= 0, got {beta}")
    natural = robust_objective(logits_natural, y, alpha=alpha, teacher_logits=teacher_logits,
                               temperature=temperature)
    return natural + beta * trades_kl(logits_natural, logits_adv)


def trades_kl(logits_natural: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """TRADES' robustness term ``KL(softmax(logits_natural) || softmax(logits_adv))``, batch mean; logits (N, K)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_natural, dim=1), reduction="batchmean",
                    log_target=True)


def trades_attack_loss(logits_adv: torch.Tensor, probs_natural: torch.Tensor) -> torch.Tensor:
    """Summed KL(p_natural || p_adv), the quantity TRADES' inner attack maximises (pass p_natural as y)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), probs_natural, reduction="sum")
