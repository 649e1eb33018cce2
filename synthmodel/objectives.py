"""Training objectives: what one optimiser step minimises, for every trainer of the project.

An objective composes an input perturbation with a loss against targets. Registered in :data:`OBJECTIVES`
(name -> class; :func:`make_objective` builds one):

* ``standard``: the loss at the clean input;
* ``at``: adversarial training (Madry et al. 2018): the attack maximises hard-label cross-entropy (also when
  the loss uses soft targets, as in the literature) and the loss is taken at the adversarial input;
* ``trades``: TRADES (Zhang et al. 2019): ``loss(f(x)) + beta KL(p(x) || p(x_adv))``, the attack maximising
  that KL from the natural probabilities;
* ``logitwise``: AT of a linear model against the closed-form per-logit worst case
  (:func:`logitwise_objective`): no attack is run;
* ``scorewise``: AT of a linear model against every class score attacked on its own (the true score lowered
  by eps ||W_y||_*, each wrong one raised by eps ||W_k||_*: :func:`synthmodel.attacks.linear_scorewise_logits`),
  the loss (soft targets included, a teacher on the clean input) taken at those logits: no attack is run.

The *targets* are not an objective of their own: hard labels, label smoothing ``alpha`` or a teacher's
``softmax(teacher(x) / T)`` (distillation, the teacher seeing the input the loss is taken at) compose with
every objective (:func:`target_loss`; e.g. the real-data mode ``kd`` is ``at`` with a teacher's targets).

A trainer describes its model to the objectives by a :class:`Learner`: how to compute logits, how to
attack (settings and random stream bound), the loss against the targets, and the autocast context. The
same objectives thus drive :mod:`synthmodel.train` (one model), :mod:`synthmodel.batched` (E linear models
with an ensemble dimension: losses of shape (E,)) and :mod:`real_data.train` (a network on a GPU).

:meth:`Objective.step` is one optimiser step: the loss (under the learner's autocast), its backward pass and
the update; the loss is :meth:`Objective.craft` (the attack) then :meth:`Objective.loss_at` (the loss at what
was crafted). :class:`WeightPerturbed` (AWP, Wu, Xia and Wang 2020) wraps an objective and overrides the step:
craft at the weights, ascend on the weights, take the gradient there, restore them, then update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import linear_logitwise_logits, preserve_mode
from .losses import robust_objective, soft_targets, trades_attack_loss, trades_kl

__all__ = ["Learner", "Objective", "Standard", "Adversarial", "Trades", "Logitwise", "Scorewise", "WeightPerturbed",
           "OBJECTIVES", "make_objective", "perturbed_weights", "preserved_buffers", "target_loss", "teacher_logits",
           "logitwise_objective"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (logits from under bf16 autocast); any other tensor as it is."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def teacher_logits(teacher: nn.Module | None, x: torch.Tensor) -> torch.Tensor | None:
    """A frozen teacher's logits on ``x`` (no gradient), in full precision; None without a teacher."""
    if teacher is None:
        return None
    with torch.no_grad():
        return _full_precision(teacher(x))


def target_loss(alpha: float = 0.0, teacher: nn.Module | None = None, temperature: float = 1.0) -> LossFn:
    """``loss(logits, y, x)``: cross-entropy of logits (N, K) against the targets of labels y (N,).

    Targets: one-hot (``alpha = 0``, no teacher: exactly ``F.cross_entropy``), label-smoothed
    ``(1 - alpha) onehot(y) + alpha / K``, or ``softmax(teacher(x) / temperature)`` with x the input the
    logits were computed from (:func:`synthmodel.losses.robust_objective`).
    """
    def loss(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return robust_objective(logits, y, alpha=alpha, teacher_logits=teacher_logits(teacher, x),
                                temperature=temperature)

    return loss


def logitwise_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, *,
                        alpha: float = 0.0, teacher_logits: torch.Tensor | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``sum_c t_c * CE(logitwise_logits(x, c), c)`` (t: the target distribution).

    Every term of the soft cross-entropy gets its own worst case (an upper bound on the joint robust loss).
    With hard labels this is the cross-entropy of :func:`synthmodel.attacks.linear_logitwise_logits`.
    """
    if teacher_logits is None and not alpha:
        return F.cross_entropy(linear_logitwise_logits(model, x, y, eps, norm), y)
    n_classes = model.head.weight.shape[0]
    targets = soft_targets(y, n_classes, alpha=alpha, teacher_logits=teacher_logits, temperature=temperature,
                           dtype=x.dtype)
    total = x.new_zeros(())
    for c in range(n_classes):
        yc = torch.full_like(y, c)
        per_sample = F.cross_entropy(linear_logitwise_logits(model, x, yc, eps, norm), yc, reduction="none")
        total = total + (targets[:, c] * per_sample).mean()
    return total


@dataclass
class Learner:
    """A trainer's model as the objectives see it.

    Attributes:
        forward: ``x -> logits``: (N, ...) -> (N, K), or (E, N, d) -> (E, N, K) for an ensemble.
        attack: ``attack(x, y, loss_fn=None) -> x_adv`` with eps, norm, steps, step size, box, model mode and
            the random stream bound; ``loss_fn`` replaces hard-label cross-entropy (TRADES passes its KL).
        loss: ``loss(logits, y, x) -> loss`` against the targets (x: the input the logits come from, for a
            teacher); a scalar, or (E,) per member of an ensemble.
        attacking: False when the threat model is empty (eps = 0): the attack is the identity, so ``at`` and
            ``trades`` take the clean branch (one forward pass, as standard training).
        model: the module whose mode TRADES' natural pass sets (None: nothing to set).
        natural_mode: that mode ('train', 'eval' or None = as it is).
        autocast: context manager factory the forward passes run in (e.g. bf16 autocast on a GPU).
        logitwise: ``(x, y) -> loss`` of the closed-form logitwise objective (linear models; else None).
        scorewise: ``(x, y) -> logits`` under the closed-form scorewise attack (linear models; else None).
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    attack: Callable[..., torch.Tensor]
    loss: LossFn
    attacking: bool = True
    model: nn.Module | None = None
    natural_mode: str | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    logitwise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    scorewise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @contextlib.contextmanager
    def natural(self) -> Iterator[None]:
        """The model in ``natural_mode`` (restored on exit)."""
        if self.model is None:
            yield
        else:
            with preserve_mode(self.model, self.natural_mode):
                yield


class Objective:
    """What a step minimises, in two parts: :meth:`craft` (the attack, at the current weights) and
    :meth:`loss_at` (the loss at what was crafted); :meth:`loss` is the two in turn, :meth:`step` the optimiser
    step. Splitting them lets a weight-perturbing objective (:class:`WeightPerturbed`) keep the inputs crafted
    at the unperturbed weights while it moves the weights."""

    name = ""

    def craft(self, learner: Learner, x: torch.Tensor, y: torch.Tensor) -> Any:
        """What the loss is taken at, made from a batch x, labels y at the current weights (default: x itself)."""
        return x

    def loss_at(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
                crafted: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, logits the training accuracy is counted on, or None) at ``crafted`` (from :meth:`craft`)."""
        raise NotImplementedError

    def loss(self, learner: Learner, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, logits the training accuracy is counted on, or None) of a batch x, labels y."""
        return self.loss_at(learner, x, y, self.craft(learner, x, y))

    def step(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One update: loss (under the learner's autocast), backward (an ensemble's (E,) losses each get
        gradient 1, i.e. their sum is differentiated), optimiser step. Returns what :meth:`loss` returned."""
        with learner.autocast():
            loss, logits = self.loss(learner, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(torch.ones_like(loss))
        optimizer.step()
        return loss, logits


class Standard(Objective):
    """The loss at the clean input."""

    name = "standard"

    def loss_at(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
                crafted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = learner.forward(crafted)
        return learner.loss(logits, y, crafted), logits


class Adversarial(Standard):
    """AT: the loss at ``x_adv = attack(x, y)`` (hard-label attack); the clean loss when eps = 0."""

    name = "at"

    def craft(self, learner: Learner, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return learner.attack(x, y) if learner.attacking else x


@dataclass
class Trades(Objective):
    """TRADES: ``loss(f(x), y, x) + beta KL(softmax f(x) || softmax f(x_adv))``; x_adv maximises the KL from
    the natural probabilities (computed without gradient, the model in the learner's natural mode)."""

    beta: float = 6.0
    name = "trades"

    def craft(self, learner: Learner, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """x_adv; None when eps = 0 (x_adv = x)."""
        if not learner.attacking:
            return None
        with torch.no_grad(), learner.natural():
            probs_natural = torch.softmax(_full_precision(learner.forward(x)), dim=1)
        return learner.attack(x, probs_natural, loss_fn=trades_attack_loss)

    def loss_at(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
                crafted: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if crafted is None:  # x_adv = x: the KL term is 0, one forward pass
            logits = learner.forward(x)
            return learner.loss(logits, y, x) + self.beta * trades_kl(logits, logits), logits
        # adversarial logits first, then natural ones: with batch norm in train mode the running statistics
        # see the two batches in this order
        logits_adv = learner.forward(crafted)
        logits = learner.forward(x)
        return learner.loss(logits, y, x) + self.beta * trades_kl(logits, logits_adv), logits_adv


class Logitwise(Objective):
    """AT of a linear model against each wrong logit's own closed-form worst case (no attack is run)."""

    name = "logitwise"

    def loss_at(self, learner: Learner, x: torch.Tensor, y: torch.Tensor, crafted: Any) -> tuple[torch.Tensor, None]:
        if learner.logitwise is None:
            raise ValueError("objective 'logitwise' is closed-form for linear models only")
        return learner.logitwise(x, y), None


class Scorewise(Objective):
    """AT of a linear model against every score attacked on its own (closed form; no attack is run)."""

    name = "scorewise"

    def loss_at(self, learner: Learner, x: torch.Tensor, y: torch.Tensor, crafted: Any) -> tuple[torch.Tensor, None]:
        if learner.scorewise is None:
            raise ValueError("objective 'scorewise' is closed-form for linear models only")
        return learner.loss(learner.scorewise(x, y), y, x), None


def perturbed_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights :class:`WeightPerturbed` moves: every convolution's and linear layer's ``weight`` that is
    trained (no biases, no batch-norm parameters, as in the published AWP code), in module order."""
    layers = (nn.Linear, nn.modules.conv._ConvNd)
    return [m.weight for m in model.modules()
            if isinstance(m, layers) and m.weight is not None and m.weight.requires_grad]


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Every buffer of ``model`` (batch norm's running statistics and batch counter) put back as it was on exit:
    a forward pass in train mode inside leaves no trace."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@dataclass
class WeightPerturbed(Objective):
    """Adversarial weight perturbation (AWP; Wu, Xia and Wang 2020) around another objective's step.

    Per batch: the inner objective crafts its inputs (x_adv) at the weights w; one ascent step on the weights,
    layer by layer: ``d_l = dL/dw_l``, the gradient of the inner objective's own loss L at those inputs (at, kd:
    the cross-entropy at x_adv; trades: natural loss + beta KL), taken with every buffer restored afterwards so
    batch norm's running statistics see only the training pass; ``v_l = gamma ||w_l|| d_l / ||d_l||`` (relative
    size gamma in every layer, 0 where d_l = 0) for the weights :func:`perturbed_weights` selects; then the loss
    and its gradient at ``w + v`` (the pass whose batch statistics batch norm keeps, as in the published code);
    w restored exactly (from a copy, not by subtracting v); then the optimiser step from w with the gradient
    taken at ``w + v`` (weight decay on w). ``gamma = 0`` is the inner objective's step, bit for bit.

    Attributes:
        inner: the objective perturbed (at, trades, or at with a teacher's targets).
        gamma: the relative size of each layer's perturbation (the published defaults: 0.01 AT, 0.005 TRADES).

    The learner must name its ``model`` (the module whose weights move).
    """

    inner: Objective
    gamma: float
    name = "awp"

    def craft(self, learner: Learner, x: torch.Tensor, y: torch.Tensor) -> Any:
        return self.inner.craft(learner, x, y)

    def loss_at(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
                crafted: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.inner.loss_at(learner, x, y, crafted)

    def perturbation(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
                     crafted: Any) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(w_l, v_l) for each perturbed weight: one layer-wise normalised ascent step on the inner loss at
        ``crafted``, the model's buffers unchanged."""
        if learner.model is None:
            raise ValueError("weight perturbation needs the learner's model")
        weights = perturbed_weights(learner.model)
        with preserved_buffers(learner.model):
            # an autocast region of its own: autocast caches casts of the weights until its outermost region
            # ends, and the weights are about to change
            with learner.autocast():
                loss, _ = self.inner.loss_at(learner, x, y, crafted)
            grads = torch.autograd.grad(loss, weights, grad_outputs=torch.ones_like(loss), allow_unused=True)
        pairs = []
        with torch.no_grad():
            for weight, grad in zip(weights, grads, strict=True):
                if grad is None:  # a layer the loss does not reach: not moved
                    grad = torch.zeros_like(weight)
                grad_norm = torch.linalg.vector_norm(grad)
                scale = torch.where(grad_norm > 0, self.gamma * torch.linalg.vector_norm(weight) / grad_norm, 0.0)
                pairs.append((weight, grad * scale))
        return pairs

    def step(self, learner: Learner, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One AWP update; returns the loss and logits at the perturbed weights (what the step descended)."""
        with learner.autocast():
            crafted = self.inner.craft(learner, x, y)
        pairs = self.perturbation(learner, x, y, crafted)
        saved = [weight.detach().clone() for weight, _ in pairs]
        with torch.no_grad():
            for weight, delta in pairs:
                weight.add_(delta)
        try:
            with learner.autocast():
                loss, logits = self.inner.loss_at(learner, x, y, crafted)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(torch.ones_like(loss))
        finally:
            with torch.no_grad():
                for (weight, _), value in zip(pairs, saved, strict=True):
                    weight.copy_(value)
        optimizer.step()
        return loss, logits


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (Standard, Adversarial, Trades, Logitwise,
                                                                     Scorewise)}


def make_objective(name: str, **options: Any) -> Objective:
    """The registered objective ``name`` with its options (``trades``: ``beta``)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**options)
