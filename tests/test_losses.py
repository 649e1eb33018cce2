"""Loss identities and limits."""

import pytest
import torch
import torch.nn.functional as F

from synthmodel import attacks as atk
from synthmodel.losses import label_smoothing_targets, robust_objective, trades_loss
from synthmodel.models import TiedLinear
from synthmodel.objectives import logitwise_objective
from synthmodel.spec import make_preset


def _batch(seed=0, n=50, k=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 3, torch.randint(0, k, (n,), generator=g)


def test_label_smoothing_zero_is_cross_entropy():
    logits, y = _batch()
    assert torch.equal(robust_objective(logits, y, alpha=0.0), F.cross_entropy(logits, y))
    soft = F.cross_entropy(logits, label_smoothing_targets(y, 4, 0.0, logits.dtype))
    assert torch.allclose(soft, F.cross_entropy(logits, y), atol=1e-14)


def test_label_smoothing_matches_torch_convention():
    logits, y = _batch(1)
    ours = robust_objective(logits, y, alpha=0.2)
    assert torch.allclose(ours, F.cross_entropy(logits, y, label_smoothing=0.2), atol=1e-12)
    with pytest.raises(ValueError):
        robust_objective(logits, y, alpha=1.0)
    with pytest.raises(ValueError):
        robust_objective(logits, y, alpha=-0.1)


def test_distillation_from_one_hot_teacher_approaches_cross_entropy():
    logits, y = _batch(2)
    teacher = F.one_hot(y, 4).double() * 5.0  # top logit = the label
    ce = F.cross_entropy(logits, y)
    gaps = []
    for temperature in (2.0, 1.0, 0.5, 0.1, 0.02):
        distilled = robust_objective(logits, y, teacher_logits=teacher, temperature=temperature)
        gaps.append(float((distilled - ce).abs()))
    assert all(a >= b for a, b in zip(gaps, gaps[1:]))  # monotone approach as T -> 0
    assert gaps[-1] < 1e-12  # softmax with a logit gap of 5 / 0.02 = 250 is one-hot to float64 precision


def test_trades_beta_zero_and_identical_inputs():
    logits, y = _batch(3)
    other, _ = _batch(4)
    assert torch.allclose(trades_loss(logits, other, y, beta=0.0), F.cross_entropy(logits, y))
    assert torch.allclose(trades_loss(logits, logits, y, beta=6.0), F.cross_entropy(logits, y), atol=1e-14)
    assert trades_loss(logits, other, y, beta=1.0) > F.cross_entropy(logits, y)  # KL > 0 for different logits


def test_logitwise_objective_soft_targets_decompose():
    # with soft targets t the logitwise loss is sum_c t_c CE_c(worst for c); alpha = 0 gives plain logitwise CE
    world = make_preset("paper3")
    model = TiedLinear(world, w1=1.0, w2=0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    hard = logitwise_objective(model, x, y, 0.2, "linf")
    assert torch.allclose(hard, F.cross_entropy(atk.linear_logitwise_logits(model, x, y, 0.2, "linf"), y))
    alpha = 0.3
    smooth = logitwise_objective(model, x, y, 0.2, "linf", alpha=alpha)
    per_class = torch.stack([F.cross_entropy(atk.linear_logitwise_logits(model, x, torch.full_like(y, c), 0.2, "linf"),
                                             torch.full_like(y, c), reduction="none") for c in range(3)], 1)
    targets = (1 - alpha) * F.one_hot(y, 3) + alpha / 3
    assert torch.allclose(smooth, (targets * per_class).sum(1).mean(), atol=1e-12)
    # eps = 0: logitwise is the ordinary (smoothed) cross-entropy
    assert torch.allclose(logitwise_objective(model, x, y, 0.0, "linf", alpha=alpha),
                          F.cross_entropy(model(x), y, label_smoothing=alpha), atol=1e-12)
