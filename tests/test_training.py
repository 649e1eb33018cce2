"""The training core (synthmodel.objectives, synthmodel.training): schedule, epoch loop, tracker, record, objectives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthmodel.objectives import OBJECTIVES, Learner, Objective, make_objective, target_loss, teacher_logits
from synthmodel.training import BestEpoch, EpochRecord, LRSchedule, fit_epoch


# -- learning-rate schedule ----------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0.1, 0.3, 0.02, 0.0123])
def test_step_schedule_is_lr_times_gamma_per_milestone_passed(lr):
    schedule = LRSchedule("step", lr, 60)
    assert schedule.step_milestones == (30, 45)
    for epoch in range(60):
        passed = sum(epoch >= m for m in (30, 45))
        # the rate is multiplied once per milestone (as torch's MultiStepLR does): within a few ulps of lr gamma^k
        assert schedule.lr_at(epoch) == pytest.approx(lr * 0.1**passed, rel=1e-15)
    repeated = LRSchedule("step", lr, 4, milestones=(1, 1, 3), gamma=0.5)  # a repeated milestone counts twice
    assert [r / lr for r in repeated.rates] == [1.0, 0.25, 0.25, 0.125]  # powers of 2: exact


def test_step_schedule_default_milestones_of_short_runs_never_decay_before_training():
    assert LRSchedule("step", 0.1, 1).rates == (0.1,)
    assert LRSchedule("step", 0.1, 2).rates == (0.1, 0.1 * 0.1)
    assert LRSchedule("step", 0.1, 3).step_milestones == (1, 2)


def test_cosine_and_constant_schedules():
    cosine = LRSchedule("cosine", 0.1, 30)
    for epoch in range(30):
        assert cosine.lr_at(epoch) == pytest.approx(0.05 * (1 + math.cos(math.pi * epoch / 30)), rel=1e-12)
    assert LRSchedule("constant", 0.05, 5).rates == (0.05,) * 5
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRSchedule("linear", 0.1, 5)
    with pytest.raises(ValueError, match="lr > 0"):
        LRSchedule("step", 0.0, 5)


def test_schedule_equals_stepping_torch_schedulers_on_a_real_optimiser():
    # what synthmodel.train did before the schedule was shared: torch's scheduler on the training optimiser
    for name in ("step", "cosine"):
        model = nn.Linear(3, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.037)
        scheduler = (torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[5, 7], gamma=0.1) if name == "step"
                     else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10))
        seen = []
        for _ in range(10):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert LRSchedule(name, 0.037, 10).rates == tuple(seen)  # bit for bit


# -- tracker and record --------------------------------------------------------------------------
def test_best_epoch_keeps_the_first_of_equal_maxima_and_copies_only_then():
    best, kept = BestEpoch(), []
    for epoch, value in enumerate([0.2, 0.5, 0.5, float("nan"), 0.4, 0.6, 0.6], start=1):
        best.update(epoch, value, lambda epoch=epoch: kept.append(epoch) or epoch)
    assert (best.epoch, best.value, best.state) == (6, 0.6, 6)
    assert kept == [1, 2, 6]


def test_epoch_record_orders_its_fields_and_leaves_out_what_was_not_measured():
    record = EpochRecord(epoch=3, lr=0.1, train_loss=0.5, test_robust_loss=1.0, test_clean_acc=0.9, cas=float("nan"),
                         train_robust_acc=0.4).as_dict()
    assert list(record) == ["epoch", "lr", "train_loss", "train_robust_acc", "test_clean_acc", "test_robust_loss",
                            "cas"]
    assert math.isnan(record["cas"])  # NaN is a measurement (CAS of a zero model), kept


# -- epoch loop ----------------------------------------------------------------------------------
def _learner(model: nn.Module, **kwargs) -> Learner:
    return Learner(forward=model, attack=lambda x, y, loss_fn=None: x + 0.1, loss=target_loss(), model=model, **kwargs)


def test_fit_epoch_sums_the_loss_as_a_python_float_sum_would_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(70, 5), torch.randint(0, 3, (70,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 70, 16)]  # the last batch is short
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: the losses can be recomputed
    totals = fit_epoch(make_objective("standard"), _learner(model), optimizer, batches)
    expected = 0.0
    for xb, yb in batches:
        expected += F.cross_entropy(model(xb), yb).item() * yb.shape[0]
    assert totals.seen == 70 and totals.mean_loss() == expected / 70
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches)
    assert totals.accuracy() == correct / 70


def test_fit_epoch_gives_one_loss_per_member_of_an_ensemble():
    weight = torch.randn(4, 3, 5, requires_grad=True)  # E = 4 linear models

    def forward(x):
        return torch.bmm(x, weight.transpose(1, 2))

    def loss(logits, y, x):
        return F.cross_entropy(logits.reshape(-1, 3), y.reshape(-1), reduction="none").view(y.shape).mean(1)

    learner = Learner(forward=forward, attack=lambda x, y, loss_fn=None: x, loss=loss)
    x, y = torch.randn(4, 20, 5), torch.randint(0, 3, (4, 20))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    totals = fit_epoch(make_objective("standard"), learner, optimizer, [(x[:, :12], y[:, :12]), (x[:, 12:], y[:, 12:])])
    assert len(totals.mean_loss()) == 4 and len(totals.accuracy()) == 4
    members = [F.cross_entropy(x[m, :12] @ weight[m].T, y[m, :12]).item() * 12
               + F.cross_entropy(x[m, 12:] @ weight[m].T, y[m, 12:]).item() * 8 for m in range(4)]
    assert totals.mean_loss() == pytest.approx([v / 20 for v in members], rel=1e-6)
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # the sum of the members' losses was differentiated


# -- objectives ----------------------------------------------------------------------------------
def test_registry_and_unknown_names():
    assert set(OBJECTIVES) == {"standard", "at", "trades", "logitwise", "scorewise"}
    assert make_objective("trades", beta=2.0).beta == 2.0
    with pytest.raises(ValueError, match="unknown objective 'awp'"):
        make_objective("awp")
    for closed_form in ("logitwise", "scorewise"):
        with pytest.raises(ValueError, match="linear models only"):
            make_objective(closed_form).loss(_learner(nn.Linear(2, 2)), torch.zeros(1, 2),
                                             torch.zeros(1, dtype=torch.long))


def test_adversarial_and_trades_without_a_threat_model_are_standard_training():
    torch.manual_seed(1)
    model = nn.Linear(4, 3)
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    learner = _learner(model, attacking=False)
    standard, logits = make_objective("standard").loss(learner, x, y)
    at, at_logits = make_objective("at").loss(learner, x, y)
    trades, trades_logits = make_objective("trades", beta=6.0).loss(learner, x, y)
    assert torch.equal(standard, at) and torch.equal(logits, at_logits)
    assert torch.equal(trades, standard) and torch.equal(trades_logits, logits)  # KL(p || p) = 0 exactly
    attacked, _ = make_objective("at").loss(_learner(model), x, y)
    assert torch.equal(attacked, F.cross_entropy(model(x + 0.1), y))


def test_trades_natural_pass_runs_in_the_natural_mode_and_restores_the_mode():
    modes = []

    class Recorder(nn.Linear):
        def forward(self, x):
            modes.append(self.training)
            return super().forward(x)

    model = Recorder(4, 3).train()
    learner = Learner(forward=model, attack=lambda x, y, loss_fn=None: x + 0.05, loss=target_loss(), model=model,
                      natural_mode="eval")
    make_objective("trades").loss(learner, torch.randn(5, 4), torch.randint(0, 3, (5,)))
    assert modes == [False, True, True]  # natural probabilities in eval mode, then the two training passes
    assert model.training


def test_teacher_targets_come_in_full_precision():
    teacher = nn.Linear(4, 3).to(torch.bfloat16)
    x = torch.randn(6, 4, dtype=torch.bfloat16)
    assert teacher_logits(teacher, x).dtype == torch.float32
    assert teacher_logits(None, x) is None
    logits, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    distilled = target_loss(teacher=teacher, temperature=2.0)(logits, y, x)
    expected = F.cross_entropy(logits, torch.softmax(teacher(x).float() / 2.0, dim=1))
    assert torch.allclose(distilled, expected)


def test_an_objective_can_perturb_the_weights_around_its_step():
    # the extension point for weight-perturbing objectives (AWP): the gradient is taken at w + v, the update
    # applied to w
    class PerturbedStep(Objective):
        def __init__(self, v: torch.Tensor):
            self.v = v

        def loss(self, learner, x, y):
            logits = learner.forward(x)
            return learner.loss(logits, y, x), logits

        def step(self, learner, x, y, optimizer):
            weight = learner.model.weight
            with torch.no_grad():
                weight.add_(self.v)
            loss, logits = self.loss(learner, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                weight.sub_(self.v)
            optimizer.step()
            return loss, logits

    torch.manual_seed(2)
    model = nn.Linear(4, 3, bias=False, dtype=torch.float64)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    v = 0.1 * torch.randn(3, 4, dtype=torch.float64)
    w = model.weight.detach().clone()
    at_perturbed = (w + v).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(x @ at_perturbed.T, y), at_perturbed)
    fit_epoch(PerturbedStep(v), _learner(model), torch.optim.SGD(model.parameters(), lr=0.5), [(x, y)])
    assert torch.allclose(model.weight, w - 0.5 * grad, atol=1e-15)
