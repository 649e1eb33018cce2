"""Adversarial attacks: generic PGD / FGSM for any torch model, exact worst cases for linear models.

All input-space attacks share one signature::

    attack(model, x, y, *, eps, norm, ...) -> x_adv        # x, x_adv: (N, ...) ; y: (N,) or (N, K)

``y`` is whatever ``loss_fn(logits, y)`` takes (hard labels by default; soft targets or natural
logits for TRADES). The attack maximises ``loss_fn`` (summed over the batch) inside the ball
``||x_adv - x|| <= eps``. Gradients are taken with respect to the perturbation only, so parameter
``.grad`` fields are never touched, and the model's train/eval mode (of every submodule) is
restored on exit, also when the attack raises.

Closed forms for linear models ``f(x) = W x + b`` (no box constraint):
the margin of class y over class k, ``m_k(x) = (W_y - W_k) . x + b_y - b_k``, is affine in x, so
its minimum over the ball is ``m_k(x) - eps * ||W_y - W_k||_*`` where ``||.||_*`` is the dual norm
(l1 for an l_inf ball, l2 for an l2 ball), reached at ``delta = -eps * sign(W_y - W_k)`` (l_inf) or
``-eps * (W_y - W_k) / ||W_y - W_k||_2`` (l2). Hence:

* robust 0-1 correctness is exact: correct under every attack iff ``min_k m_k - eps ||W_y-W_k||_* > 0``
  (:func:`linear_robust_correct`);
* for K = 2 the worst case of cross-entropy (a decreasing function of the single margin) is that
  same delta (:func:`linear_pairwise_delta`);
* for K > 2 the joint worst case of cross-entropy (a log-sum-exp of affine functions, convex in
  delta) has no closed form in general; giving each wrong logit its own worst-case delta yields
  the *logitwise* logits ``z_k + eps ||W_y - W_k||_*`` (:func:`linear_logitwise_logits`), whose
  cross-entropy is an upper bound on the joint robust loss and equals it for K = 2;
* attacking every score on its own (the true score lowered by ``eps ||W_y||_*``, each wrong one raised by
  ``eps ||W_k||_*``, with no single input realising all of them) gives the *scorewise* logits
  (:func:`linear_scorewise_logits`): a margin then loses ``eps (||W_y||_* + ||W_k||_*) >= eps ||W_y - W_k||_*``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from .models import linear_parameters

__all__ = [
    "Norm", "ATTACK_FUNCTIONS", "pgd", "fgsm", "random_start_delta", "preserve_mode", "frozen_parameters",
    "linear_margins", "linear_worst_margins", "linear_robust_correct", "linear_logitwise_logits",
    "linear_scorewise_logits", "linear_pairwise_delta", "dual_norm",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Norm(str, Enum):
    """Threat model of the perturbation ball."""

    LINF = "linf"
    L2 = "l2"


def _norm(norm: Norm | str) -> Norm:
    try:
        return Norm(norm)
    except ValueError:
        raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(n.value for n in Norm)}") from None


@contextlib.contextmanager
def preserve_mode(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Put ``model`` in ``mode`` ('eval', 'train' or None = as found) and restore every submodule's mode."""
    if mode not in (None, "eval", "train"):
        raise ValueError(f"mode must be 'eval', 'train' or None, got {mode!r}")
    saved = [(module, module.training) for module in model.modules()]
    try:
        if mode is not None:
            model.train(mode == "train")
        yield
    finally:
        for module, training in saved:
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` of the model's trainable parameters inside the block, then restore it.

    An attack needs the gradient with respect to its input only. Eager autograd already skips weight
    gradients that ``torch.autograd.grad(loss, delta)`` does not ask for, but it still saves the tensors
    they would need, and a ``torch.compile``d backward computes every gradient its graph was traced with.
    Freezing the parameters removes both costs; the input gradient is unchanged.
    """
    trainable = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample norm, shaped to broadcast against t."""
    return t.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    if norm is Norm.LINF:
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta, 2).clamp_min(1e-30)).clamp(max=1.0)
    return delta * scale


def random_start_delta(x: torch.Tensor, eps: float, norm: Norm | str,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD's random start: a perturbation uniform in the eps-ball of ``norm``, shape and dtype of x (N, ...).

    Draws from ``generator`` exactly what :func:`pgd` draws, so a batched attack that calls it per model
    starts where :func:`pgd` would.
    """
    norm = _norm(norm)
    if norm is Norm.LINF:
        return (torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) * 2 - 1) * eps
    # uniform in the l2 ball: gaussian direction, radius eps * U^(1/d)
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    direction = direction / _flat_norm(direction, 2).clamp_min(1e-30)
    d = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, dtype=x.dtype,
                        device=x.device) ** (1.0 / d)
    return direction * radius * eps


def _sum_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Norm | str = Norm.LINF,
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        clamp: tuple[float, float] | None = None, loss_fn: LossFn | None = None,
        generator: torch.Generator | None = None, mode: str | None = "eval",
        start: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` (Madry et al. 2018).

    Args:
        model: any module mapping (N, ...) inputs to (N, K) logits.
        x: clean inputs, shape (N, ...).
        y: targets passed to ``loss_fn``: (N,) labels by default.
        eps: radius of the ball (>= 0); eps = 0 returns a copy of x.
        norm: 'linf' (signed-gradient steps) or 'l2' (normalised-gradient steps).
        steps: number of ascent steps (>= 1).
        step_size: size of each step; default eps / 4 (the paper's official recipe, 2/255 at 8/255).
        random_start: start from a uniform point of the ball.
        clamp: optional (low, high) box for x_adv, e.g. (0, 1) for images.
        loss_fn: ``loss_fn(logits, y) -> scalar`` to maximise; default summed cross-entropy.
        generator: torch.Generator for the random start (reproducibility).
        mode: run the model in 'eval' (default, as the official CAS code) or 'train' mode, or None
            to keep its mode; the mode found is always restored.
        start: the initial perturbation (shape of x, inside the ball), in place of ``random_start``;
            ``pgd(..., start=random_start_delta(x, eps, norm, g))`` equals ``pgd(..., random_start=True,
            generator=g)`` bit for bit (a CUDA-graphed attack draws its start outside the graph this way).

    Returns:
        x_adv, same shape and dtype as x, detached.

    Example:
        >>> x_adv = pgd(model, x, y, eps=8 / 255, steps=20, clamp=(0, 1))
    """
    norm = _norm(norm)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    step_size = eps / 4 if step_size is None else float(step_size)
    loss_fn = loss_fn or _sum_cross_entropy
    with preserve_mode(model, mode), frozen_parameters(model):
        if start is not None:
            if start.shape != x.shape:
                raise ValueError(f"start must have the shape of x {tuple(x.shape)}, got {tuple(start.shape)}")
            delta = start.detach()
        else:
            delta = random_start_delta(x, eps, norm, generator) if random_start else torch.zeros_like(x)
        if clamp is not None:
            delta = (x + delta).clamp(*clamp) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(model(x + delta), y)
                (grad,) = torch.autograd.grad(loss, delta)
            delta = delta.detach()
            if norm is Norm.LINF:
                delta = delta + step_size * grad.sign()
            else:
                delta = delta + step_size * grad / _flat_norm(grad, 2).clamp_min(1e-30)
            delta = _project(delta, eps, norm)
            if clamp is not None:
                delta = (x + delta).clamp(*clamp) - x
    return (x + delta).detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Norm | str = Norm.LINF,
         clamp: tuple[float, float] | None = None, loss_fn: LossFn | None = None,
         generator: torch.Generator | None = None, mode: str | None = "eval") -> torch.Tensor:
    """One full-size gradient step from x (Goodfellow et al. 2015): PGD with steps=1, step eps, no random start."""
    return pgd(model, x, y, eps=eps, norm=norm, steps=1, step_size=eps, random_start=False, clamp=clamp,
               loss_fn=loss_fn, generator=generator, mode=mode)


# name -> attack function with the shared signature (the population engine's attack *formalisations* are
# another vocabulary: synthmodel.population)
ATTACK_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"pgd": pgd, "fgsm": fgsm}


# -- exact worst cases for linear models ------------------------------------------------------
def dual_norm(v: torch.Tensor, norm: Norm | str, dim: int = -1) -> torch.Tensor:
    """The dual norm of the threat model: l1 for an l_inf ball, l2 for an l2 ball."""
    return v.norm(p=1 if _norm(norm) is Norm.LINF else 2, dim=dim)


def linear_margins(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean margins ``m[n, k] = z_y - z_k`` and weight differences ``W_y - W_k``, shapes (N, K), (N, K, d)."""
    logits = x @ weight.T
    if bias is not None:
        logits = logits + bias
    margins = logits.gather(1, y[:, None]) - logits
    diffs = weight[y][:, None, :] - weight[None, :, :]
    return margins, diffs


def linear_worst_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                         norm: Norm | str = Norm.LINF) -> torch.Tensor:
    """Exact minimum over the eps-ball of each margin ``z_y - z_k``, shape (N, K); +inf at k = y."""
    weight, bias = linear_parameters(model)
    margins, diffs = linear_margins(weight, bias, x, y)
    worst = margins - eps * dual_norm(diffs, norm)
    return worst.scatter(1, y[:, None], math.inf)


def linear_robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                          norm: Norm | str = Norm.LINF) -> torch.Tensor:
    """bool (N,): classified correctly under *every* perturbation in the ball (exact, linear models)."""
    return linear_worst_margins(model, x, y, eps, norm).min(dim=1).values > 0


def linear_logitwise_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                            norm: Norm | str = Norm.LINF) -> torch.Tensor:
    """Logits with each wrong logit raised by its own worst case: ``z_k + eps ||W_y - W_k||_*``.

    Cross-entropy of these is an upper bound on the joint robust cross-entropy, equal for K = 2.
    """
    weight, bias = linear_parameters(model)
    logits = x @ weight.T
    if bias is not None:
        logits = logits + bias
    diffs = weight[y][:, None, :] - weight[None, :, :]
    return logits + eps * dual_norm(diffs, norm)  # the k = y term is eps * 0


def linear_scorewise_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                            norm: Norm | str = Norm.LINF) -> torch.Tensor:
    """Logits with every score attacked on its own: ``z_y - eps ||W_y||_*`` and ``z_k + eps ||W_k||_*`` (k != y).

    x (N, d), y (N,) -> (N, K). Its cross-entropy bounds the logitwise one from above (triangle inequality).
    """
    weight, bias = linear_parameters(model)
    logits = x @ weight.T
    if bias is not None:
        logits = logits + bias
    row_norms = dual_norm(weight, norm)                                   # (K,)
    sign = 1.0 - 2.0 * F.one_hot(y, weight.shape[0]).to(logits.dtype)     # -1 on the true class, +1 elsewhere
    return logits + eps * sign * row_norms


def linear_pairwise_delta(model: nn.Module, y: torch.Tensor, k: torch.Tensor, eps: float,
                          norm: Norm | str = Norm.LINF) -> torch.Tensor:
    """The perturbation minimising the margin of y over k: shape (N, d)."""
    weight, _ = linear_parameters(model)
    diff = weight[y] - weight[k]
    if _norm(norm) is Norm.LINF:
        return -eps * diff.sign()
    return -eps * diff / diff.norm(dim=1, keepdim=True).clamp_min(1e-30)
