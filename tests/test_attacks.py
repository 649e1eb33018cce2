"""PGD against the closed-form worst cases of linear models; attack hygiene."""

import pytest
import torch
import torch.nn.functional as F

from synthmodel import attacks as atk
from synthmodel.models import FullLinear, TiedLinear, build_model
from synthmodel.spec import make_preset


def _linear(k, d, seed):
    model = FullLinear(d, k, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        model.head.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    x = torch.randn(64, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (64,), generator=g)
    return model, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_reaches_closed_form_binary(norm, seed):
    # K = 2: cross-entropy is a decreasing function of the one margin, so its worst case is the
    # closed-form margin minimiser; PGD must find the same loss.
    model, x, y = _linear(2, 7, seed)
    eps = 0.3
    x_adv = atk.pgd(model, x, y, eps=eps, norm=norm, steps=100, step_size=eps / 10)
    pgd_loss = F.cross_entropy(model(x_adv), y, reduction="none")
    worst_margin = atk.linear_worst_margins(model, x, y, eps, norm).min(1).values
    exact_loss = F.softplus(-worst_margin)  # CE of a 2-class margin m is log(1 + e^-m)
    # l_inf: sign steps land on the vertex exactly; l2: steps of eps/10 converge to the sphere point
    # at rate O(step^2) in the loss; 1e-6 is loose for both
    assert torch.allclose(pgd_loss, exact_loss, atol=1e-6)
    # the logitwise cross-entropy equals the joint one for K = 2
    logitwise = F.cross_entropy(atk.linear_logitwise_logits(model, x, y, eps, norm), y, reduction="none")
    assert torch.allclose(logitwise, exact_loss, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_each_pairwise_worst_margin(norm):
    # K = 4: targeted PGD on the margin z_k - z_y reaches min over the ball of z_y - z_k for every k
    model, x, y = _linear(4, 5, 2)
    eps = 0.25
    exact = atk.linear_worst_margins(model, x, y, eps, norm)
    for k in range(4):
        mask = y != k
        target = torch.full_like(y, k)

        def margin_loss(logits, labels, k=k):
            return (logits[:, k] - logits.gather(1, labels[:, None])[:, 0]).sum()

        x_adv = atk.pgd(model, x[mask], y[mask], eps=eps, norm=norm, steps=60, step_size=eps / 6,
                        loss_fn=margin_loss)
        logits = model(x_adv)
        found = (logits.gather(1, y[mask][:, None]) - logits[:, k:k + 1])[:, 0]
        assert torch.allclose(found, exact[mask, k], atol=1e-6)
        # the closed-form minimiser attains it too
        delta = atk.linear_pairwise_delta(model, y[mask], target[mask], eps, norm)
        logits = model(x[mask] + delta)
        attained = (logits.gather(1, y[mask][:, None]) - logits[:, k:k + 1])[:, 0]
        assert torch.allclose(attained, exact[mask, k], atol=1e-12)


def test_exact_robust_accuracy_bounds_pgd():
    # the closed form is the true worst case: no attack can do better, PGD cannot do worse than clean
    model, x, y = _linear(3, 6, 5)
    eps = 0.2
    exact = atk.linear_robust_correct(model, x, y, eps).double().mean()
    x_adv = atk.pgd(model, x, y, eps=eps, steps=50)
    pgd_acc = (model(x_adv).argmax(1) == y).double().mean()
    clean = (model(x).argmax(1) == y).double().mean()
    assert exact <= pgd_acc <= clean


def test_tied_model_l1_distance_formula():
    # for the tied model on paper3, ||W_y - W_k||_1 = 2 w1 + 2 w2 (one exclusive and one shared feature each way)
    world = make_preset("paper3")
    model = TiedLinear(world, w1=1.3, w2=0.4, dtype=torch.float64)
    x = torch.zeros(3, 6, dtype=torch.float64)
    y = torch.arange(3)
    worst = atk.linear_worst_margins(model, x, y, 0.1)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.allclose(worst[off], torch.full((6,), -0.1 * 2 * (1.3 + 0.4), dtype=torch.float64))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box(norm):
    model = build_model("mlp", make_preset("paper3"), seed=0, hidden=(16,))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 6, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    x_adv = atk.pgd(model, x, y, eps=0.3, norm=norm, steps=5, clamp=(0.0, 1.0), generator=g)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= 0.3 + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_eps_zero_returns_inputs():
    model, x, y = _linear(3, 4, 0)
    assert torch.equal(atk.pgd(model, x, y, eps=0.0), x)


def test_attacks_restore_modes_and_leave_no_grads():
    model = build_model("mlp", make_preset("paper3"), seed=0, hidden=(8, 8))
    model.train()
    model.body[0].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    atk.pgd(model, x, y, eps=0.1, steps=2)
    atk.fgsm(model, x, y, eps=0.1, mode="train")
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())

    def boom(logits, labels):
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError):
        atk.pgd(model, x, y, eps=0.1, loss_fn=boom)
    assert [m.training for m in model.modules()] == before
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_parameters_keep_the_input_gradient_and_restore_requires_grad():
    """Freezing the weights during the attack changes no input gradient: PGD equals a loop that keeps them live."""
    model = build_model("mlp", make_preset("paper3"), seed=1, hidden=(16, 16))
    model.body[0].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    model.double()
    eps, step = 0.3, 0.075
    delta = torch.zeros_like(x)
    for _ in range(5):  # the same steps with the parameters requiring grad throughout
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    x_adv = atk.pgd(model, x, y, eps=eps, steps=5, step_size=step, random_start=False, mode=None)
    assert torch.equal(x_adv, x + delta)
    assert [p.requires_grad for p in model.parameters()].count(False) == 1
    assert not model.body[0].bias.requires_grad


def test_attack_input_validation():
    model, x, y = _linear(3, 4, 0)
    with pytest.raises(ValueError):
        atk.pgd(model, x, y, eps=-0.1)
    with pytest.raises(ValueError):
        atk.pgd(model, x, y, eps=float("nan"))
    with pytest.raises(ValueError):
        atk.pgd(model, x, y, eps=0.1, norm="l3")
    with pytest.raises(ValueError):
        atk.pgd(model, x, y, eps=0.1, steps=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_from_a_drawn_start_equals_pgd_with_random_start(norm):
    """A start drawn with random_start_delta from the same generator reproduces random_start=True bit for bit."""
    model, x, y = _linear(4, 5, 3)
    eps = 0.3
    kwargs = {"eps": eps, "norm": norm, "steps": 4, "clamp": (-1.0, 1.0)}
    reference = atk.pgd(model, x, y, random_start=True, generator=torch.Generator().manual_seed(7), **kwargs)
    start = atk.random_start_delta(x, eps, norm, torch.Generator().manual_seed(7))
    assert torch.equal(atk.pgd(model, x, y, start=start, **kwargs), reference)
    with pytest.raises(ValueError, match="shape of x"):
        atk.pgd(model, x, y, start=start[:1], **kwargs)
