"""Many linear-model training runs as one batched tensor computation (an ensemble dimension E).

:func:`train_batched` runs the algorithm of :func:`synthmodel.train.train` for E configurations that
share every shape and every discrete setting (:func:`batch_key`), differing only in continuous ones
(eps, seed, label smoothing, step size, learning rate, momentum, weight decay, mu, sigma). The training
core is the loop's: the same objective (:mod:`synthmodel.objectives`), learning-rate schedule, epoch loop,
best-epoch tracker and epoch record (:mod:`synthmodel.training`). What this module adds is the ensemble
itself, as the core's :class:`~synthmodel.objectives.Learner` and a torch optimiser:

* the E models as stacked parameters (:class:`_Ensemble`), with the same data
  (:func:`synthmodel.sample.sample` with the same derived seeds), initialisation
  (:func:`synthmodel.models.build_model`), shuffling, PGD random starts and evaluation generators per member;
* PGD (training and evaluation) through the closed-form input gradient of a linear model's cross-entropy,
  for all members at once (:func:`_pgd`);
* :class:`_EnsembleSGD`: ``torch.optim.SGD``'s update with per-member learning rate, momentum and weight
  decay (written with ``addcmul`` so that its fused multiply-add is reproduced);
* evaluation: the exact robust accuracy of :func:`synthmodel.attacks.linear_worst_margins` and CAS with
  :class:`synthmodel.attribution.AttributionAccumulator` (ensemble dimension) for all members at once.

Not bit-identical to the one-at-a-time loop: batched matrix products (``bmm``) and per-member
reductions may sum in a different order than their unbatched counterparts, so results agree to
floating rounding (tests: float64 histories agree to ~1e-9), not bit for bit. A member's result can
also differ in the last bits between batch compositions. Results are bit-reproducible for a fixed
batch composition (the sweep fixes composition from the grid, not from scheduling).

The one-at-a-time loop is not this ensemble at E = 1: the ensemble's speed comes from the closed-form
gradient of linear models (MLPs and real networks need autograd), and the loop's results would move in the
last bits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import attacks as atk
from .losses import label_smoothing_targets
from .models import TiedLinear, build_model
from .objectives import Learner, make_objective
from .sample import derive_seed, sample
from .train import (
    DTYPES,
    Mode,
    TrainConfig,
    TrainResult,
    adversarial_attribution_ensemble,
    build_world,
    copy_state,
    epoch_record,
)
from .training import BestEpoch, fit_epoch

__all__ = ["BATCH_VARYING", "batch_key", "train_batched"]

# settings members of one batch may differ in; everything else must be equal
BATCH_VARYING = ("eps", "seed", "label_smoothing", "attack_step_size", "lr", "momentum", "weight_decay", "mu",
                 "sigma")


def batch_key(config: TrainConfig) -> tuple | None:
    """Hashable key: configs with equal keys can train together; None if this config cannot be batched.

    Batchable: models 'tied' and 'linear', modes 'standard' and 'at' (attacks pgd, fgsm, logitwise, scorewise),
    optimizer 'sgd', schedules 'constant' and 'step', no teacher.
    """
    if (config.model not in ("tied", "linear") or config.mode not in (Mode.STANDARD.value, Mode.AT.value)
            or config.optimizer != "sgd" or config.schedule not in ("constant", "step") or config.teacher):
        return None
    data = config.to_dict()
    return tuple((k, json.dumps(data[k])) for k in sorted(data) if k not in BATCH_VARYING)


class _Ensemble:
    """E linear models as stacked parameters; member modules mirror them for evaluation."""

    def __init__(self, configs: Sequence[TrainConfig], worlds: list, dtype: torch.dtype):
        self.members = [build_model(c.model, w, seed=c.seed, dtype=dtype, hidden=c.hidden, bias=c.bias)
                        for c, w in zip(configs, worlds, strict=True)]
        first = self.members[0]
        self.tied = isinstance(first, TiedLinear)
        if self.tied:
            self.exclusive = first.head.exclusive_mask
            self.shared = first.head.shared_mask
            self.w1 = torch.stack([m.head.w1.detach() for m in self.members]).requires_grad_(True)  # (E,)
            self.w2 = torch.stack([m.head.w2.detach() for m in self.members]).requires_grad_(True)  # (E,)
            self.params = [self.w1, self.w2]
        else:
            self.weight = torch.stack([m.head.weight.detach() for m in self.members]).requires_grad_(True)  # (E,K,d)
            self.bias = (torch.stack([m.head.bias.detach() for m in self.members]).requires_grad_(True)
                         if first.head.bias is not None else None)                                      # (E,K)
            self.params = [self.weight] + ([self.bias] if self.bias is not None else [])

    def head_weight(self) -> torch.Tensor:
        """(E, K, d), as TiedHead.weight / nn.Linear.weight per member."""
        if self.tied:
            return self.w1[:, None, None] * self.exclusive + self.w2[:, None, None] * self.shared
        return self.weight

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, N, d) -> logits (E, N, K)."""
        z = torch.bmm(x, self.head_weight().transpose(1, 2))
        if not self.tied and self.bias is not None:
            z = z + self.bias[:, None, :]
        return z

    def sync(self) -> None:
        """Copy the stacked parameters into the member modules."""
        with torch.no_grad():
            for e, member in enumerate(self.members):
                if self.tied:
                    member.head.w1.copy_(self.w1[e])
                    member.head.w2.copy_(self.w2[e])
                else:
                    member.head.weight.copy_(self.weight[e])
                    if self.bias is not None:
                        member.head.bias.copy_(self.bias[e])


def _world_key(config: TrainConfig) -> tuple:
    """The settings :func:`synthmodel.train.build_world` reads."""
    return config.preset, config.k, config.mu, config.sigma, config.noise_dims


def _col(values: Sequence[float], dtype: torch.dtype, ndim: int) -> torch.Tensor:
    """Per-member scalars shaped (E, 1, ..., 1) with ``ndim`` dims in all."""
    return torch.tensor(list(values), dtype=dtype).view(-1, *([1] * (ndim - 1)))


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Per-member mean cross-entropy: logits (E, N, K), y (E, N), targets (E, N, K) or None -> (E,)."""
    e, n, k = logits.shape
    flat = logits.reshape(e * n, k)
    per_sample = F.cross_entropy(flat, y.reshape(-1) if targets is None else targets.reshape(e * n, k),
                                 reduction="none")
    return per_sample.view(e, n).mean(1)


def _pgd(ens: _Ensemble, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float], norm: atk.Norm, steps: int,
         step_sizes: Sequence[float], random_start: bool, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """:func:`synthmodel.attacks.pgd` (summed cross-entropy, no box) for every member at once.

    x (E, N, d), y (E, N) -> x_adv (E, N, d) (a transposed view of a contiguous (E, d, N) tensor).
    """
    x = x.detach()
    active = [e > 0 for e in eps]
    if not any(active):
        return x.clone()
    # Work in the layout (E, d, N): the logits come out as (E, K, N), so the softmax reduces across K rows of
    # contiguous samples instead of along a last dimension of size K = 3, and both bmm's run several times
    # faster than with (E, N, d) inputs (measured). Elementwise steps give the same numbers in any layout.
    x_t = x.transpose(1, 2).contiguous()  # no copy when x is already a transposed view of such a tensor
    delta_t = torch.zeros_like(x_t)
    if random_start:
        for m, gen in enumerate(generators):
            if active[m]:  # eps = 0 members draw nothing, as pgd returns at once
                delta_t[m].copy_(atk.random_start_delta(x[m], eps[m], norm, gen).T)
    weight = ens.head_weight().detach()                               # (E, K, d)
    weight_t = weight.transpose(1, 2).contiguous()                    # (E, d, K)
    bias = None if ens.tied or ens.bias is None else ens.bias.detach()[:, :, None]   # (E, K, 1)
    n_members, n_classes = weight.shape[:2]
    onehot = torch.zeros(n_members, n_classes, x.shape[1], dtype=x.dtype).scatter_(1, y[:, None, :], 1.0)  # (E,K,N)
    eps_t, step_t = _col(eps, x.dtype, 3), _col(step_sizes, x.dtype, 3)
    neg_eps_t = -eps_t
    # the logits are affine in delta: W (x + delta) + b = (W x + b) + W delta, with W x + b computed once per attack
    # (equal to the loop's logits up to float rounding)
    clean_logits = torch.bmm(weight, x_t) if bias is None else torch.baddbmm(bias, weight, x_t)  # (E, K, N)
    # preallocated buffers, reused by every step
    grad = torch.empty_like(x_t)                                      # (E, d, N)
    z = torch.empty_like(clean_logits)                                # (E, K, N)
    top, total = torch.empty_like(z[:, :1]), torch.empty_like(z[:, :1])
    for _ in range(steps):
        torch.baddbmm(clean_logits, weight, delta_t, out=z)
        # input gradient of the summed cross-entropy of a linear model: W^T (softmax(z) - onehot(y)) per sample
        # (softmax written out: torch.softmax is slow across a dimension of size K = 3)
        torch.amax(z, dim=1, keepdim=True, out=top)
        z.sub_(top).exp_()
        torch.sum(z, dim=1, keepdim=True, out=total)
        z.div_(total).sub_(onehot)
        torch.bmm(weight_t, z, out=grad)
        if norm is atk.Norm.LINF:
            # step * sign(grad) is exact, so the fused multiply-add rounds as delta + step * sign(grad) does
            delta_t.addcmul_(grad.sign_(), step_t)
            torch.minimum(delta_t, eps_t, out=delta_t)                # clamp to [-eps, eps] per member
            torch.maximum(delta_t, neg_eps_t, out=delta_t)
        else:
            grad_norm = grad.norm(p=2, dim=1, keepdim=True).clamp_min_(1e-30)
            delta_t.add_(grad.mul_(step_t).div_(grad_norm))
            delta_t.mul_((eps_t / delta_t.norm(p=2, dim=1, keepdim=True).clamp_min_(1e-30)).clamp_(max=1.0))
    return torch.add(x_t, delta_t, out=grad).transpose(1, 2)  # x + delta, as pgd returns it


class _EnsembleSGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` (momentum, weight decay; no dampening, no Nesterov) for stacked parameters whose
    first dimension is the member: ``lr``, ``momentum``, ``weight_decay`` are lists with one value per member
    (set ``param_groups[0]["lr"]`` to a new list to change the rates)."""

    def __init__(self, params: Sequence[torch.Tensor], lr: Sequence[float], momentum: Sequence[float],
                 weight_decay: Sequence[float]):
        super().__init__(list(params), {"lr": list(lr), "momentum": list(momentum),
                                        "weight_decay": list(weight_decay)})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                nd, dtype = param.dim(), param.dtype
                d_p = torch.addcmul(param.grad, param, _col(group["weight_decay"], dtype, nd))
                momentum = _col(group["momentum"], dtype, nd)
                state = self.state[param]
                buf = state.get("momentum_buffer")
                buf = d_p.clone() if buf is None else buf.mul_(momentum).add_(d_p)
                state["momentum_buffer"] = buf
                # members with momentum 0 step along d_p itself (torch keeps no buffer for them)
                step = torch.where(momentum != 0, buf, d_p)
                # addcmul by -lr reproduces the fused add(.., alpha=-lr) of torch's update
                param.addcmul_(step, _col([-lr for lr in group["lr"]], dtype, nd))


class _BatchedTrainer:
    def __init__(self, configs: Sequence[TrainConfig]):
        if not configs:
            raise ValueError("train_batched needs at least one configuration")
        for c in configs:
            c.validate()
        keys = {batch_key(c) for c in configs}
        if None in keys:
            raise ValueError("a configuration cannot be batched (see synthmodel.batched.batch_key)")
        if len(keys) != 1:
            raise ValueError(f"configurations differ in more than {', '.join(BATCH_VARYING)}: cannot batch them")
        self.configs = list(configs)
        c = self.c = configs[0]
        self.dtype = DTYPES[c.dtype]
        self.norm = atk.Norm(c.norm)
        # members of one world and seed (e.g. an eps scan) share their world and data: build and draw them once
        # (deterministic, so the same tensors as drawing per member)
        world_memo: dict[tuple, Any] = {}
        for cfg in configs:
            if _world_key(cfg) not in world_memo:
                world_memo[_world_key(cfg)] = build_world(cfg)
        worlds = [world_memo[_world_key(cfg)] for cfg in configs]
        self.x_train, self.y_train = self._draw(worlds, "n_train", "train")
        self.x_test, self.y_test = self._draw(worlds, "n_test", "test")
        self.ens = _Ensemble(configs, worlds, self.dtype)
        self.n_classes = self.ens.exclusive.shape[0] if self.ens.tied else self.ens.weight.shape[1]
        self.eps = [cfg.eps for cfg in configs]
        self.eps_t = _col(self.eps, self.dtype, 3)
        self.alpha = [cfg.label_smoothing for cfg in configs]
        self.attack_gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, "attack")) for cfg in configs]
        self.shuffle_gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, "shuffle")) for cfg in configs]
        self.objective = make_objective(c.objective)
        self.learner = Learner(forward=self.ens.logits, attack=self._attack, loss=self._loss,
                               attacking=any(e > 0 for e in self.eps), logitwise=self._logitwise,
                               scorewise=self._scorewise_logits)

    def _draw(self, worlds: list, size: str, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's :func:`synthmodel.sample.sample` of ``size`` samples (config field) and seed label,
        stacked: x (E, N, d), y (E, N); x is a transposed view of a contiguous (E, d, N) tensor, the layout
        :func:`_pgd` works in."""
        memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for world, cfg in zip(worlds, self.configs, strict=True):
            key = (_world_key(cfg), cfg.seed)
            if key not in memo:
                memo[key] = sample(world, getattr(cfg, size), derive_seed(cfg.seed, label), dtype=self.dtype)
        drawn = [memo[(_world_key(cfg), cfg.seed)] for cfg in self.configs]
        return torch.stack([x.T for x, _ in drawn]).transpose(1, 2), torch.stack([y for _, y in drawn])

    # -- the ensemble as the core's Learner ---------------------------------------------------------------
    def _targets(self, y: torch.Tensor) -> torch.Tensor | None:
        """Label-smoothed targets (E, N, K), or None when all alpha = 0."""
        if not any(self.alpha):
            return None
        return label_smoothing_targets(y, self.n_classes, _col(self.alpha, self.dtype, 3), self.dtype)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-member cross-entropy against the (smoothed) targets: logits (E, N, K), y (E, N) -> (E,)."""
        return _cross_entropy(logits, y, self._targets(y))

    def _attack(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Any = None) -> torch.Tensor:
        """Every member's training attack: PGD (or FGSM) on hard-label cross-entropy."""
        if loss_fn is not None:
            raise ValueError("batched training attacks cross-entropy only")
        c = self.c
        if c.attack == "fgsm":
            return _pgd(self.ens, x, y, self.eps, self.norm, 1, self.eps, False, self.attack_gens)
        steps = [cfg.attack_step_size if cfg.attack_step_size is not None else cfg.eps / 4 for cfg in self.configs]
        return _pgd(self.ens, x, y, self.eps, self.norm, c.attack_steps, steps, True, self.attack_gens)

    def _logitwise_logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:func:`synthmodel.attacks.linear_logitwise_logits` per member: x (E, N, d), y (E, N) -> (E, N, K)."""
        weight = self.ens.head_weight()
        rows = torch.arange(weight.shape[0])[:, None]
        diffs = weight[rows, y][:, :, None, :] - weight[:, None, :, :]           # (E, N, K, d)
        return self.ens.logits(x) + self.eps_t * atk.dual_norm(diffs, self.norm)

    def _scorewise_logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:func:`synthmodel.attacks.linear_scorewise_logits` per member: x (E, N, d), y (E, N) -> (E, N, K)."""
        weight = self.ens.head_weight()                                          # (E, K, d)
        row_norms = atk.dual_norm(weight, self.norm)[:, None, :]                 # (E, 1, K)
        sign = 1.0 - 2.0 * F.one_hot(y, weight.shape[1]).to(row_norms.dtype)
        return self.ens.logits(x) + self.eps_t * sign * row_norms

    def _logitwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:func:`synthmodel.objectives.logitwise_objective` per member: x (E, N, d), y (E, N) -> (E,)."""
        k = self.n_classes
        targets = self._targets(y)
        if targets is None:
            return _cross_entropy(self._logitwise_logits(x, y), y, None)
        total = x.new_zeros(x.shape[0])
        for cls in range(k):
            yc = torch.full_like(y, cls)
            per_sample = F.cross_entropy(self._logitwise_logits(x, yc).reshape(-1, k), yc.reshape(-1),
                                         reduction="none").view(y.shape)
            total = total + (targets[:, :, cls] * per_sample).mean(1)
        # eps = 0 members train on the clean objective
        clean = _cross_entropy(self.ens.logits(x), y, targets)
        return torch.where(torch.tensor([e == 0 for e in self.eps]), clean, total)

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, epoch: int, with_cas: bool) -> list[dict[str, Any]]:
        """Per member, as the loop's evaluation: batched PGD, exact robust accuracy and batched CAS."""
        c = self.c
        seeds = {seed: derive_seed(seed, "eval", epoch, x.shape[1]) for seed in {cfg.seed for cfg in self.configs}}
        gens = [torch.Generator().manual_seed(seeds[cfg.seed]) for cfg in self.configs]
        x_adv = _pgd(self.ens, x, y, self.eps, self.norm, c.eval_steps, [e / 4 for e in self.eps], True, gens)
        with torch.no_grad():
            logits = self.ens.logits(x)
            clean = (logits.argmax(2) == y).double().mean(1)
            robust_loss = _cross_entropy(self.ens.logits(x_adv), y, None)
            # exact worst margins as attacks.linear_worst_margins: z_y - z_k - eps ||W_y - W_k||_*, k != y
            weight = self.ens.head_weight().detach()
            pair_norms = atk.dual_norm(weight[:, :, None, :] - weight[:, None, :, :], self.norm)   # (E, K, K)
            rows = torch.arange(weight.shape[0])[:, None]
            worst = (logits.gather(2, y[..., None]) - logits
                     - self.eps_t * pair_norms[rows, y]).scatter(2, y[..., None], math.inf)
            robust = (worst.min(dim=2).values > 0).double().mean(1)
        # one conversion to Python floats for all members
        out = [{"clean_acc": a, "robust_acc": r, "robust_loss": loss}
               for a, r, loss in zip(clean.tolist(), robust.tolist(), robust_loss.tolist(), strict=True)]
        if with_cas:
            for record, cas in zip(out, adversarial_attribution_ensemble(weight, x_adv, y), strict=True):
                record.update(cas)
        return out

    def run(self) -> list[TrainResult]:
        c, n_members = self.c, len(self.configs)
        schedules = [cfg.lr_schedule for cfg in self.configs]
        optimizer = _EnsembleSGD(self.ens.params, [s.lr_at(0) for s in schedules],
                                 [cfg.momentum for cfg in self.configs], [cfg.weight_decay for cfg in self.configs])
        histories: list[list[dict[str, Any]]] = [[] for _ in range(n_members)]
        best = [BestEpoch() for _ in range(n_members)]
        rows = torch.arange(n_members)[:, None]
        for epoch in range(1, c.epochs + 1):
            lrs = [s.lr_at(epoch - 1) for s in schedules]
            optimizer.param_groups[0]["lr"] = lrs
            order = torch.stack([torch.randperm(self.x_train.shape[1], generator=g) for g in self.shuffle_gens])
            batches = ((self.x_train[rows, idx], self.y_train[rows, idx]) for idx in order.split(c.batch_size, dim=1))
            train_losses = fit_epoch(self.objective, self.learner, optimizer, batches).mean_loss()
            self.ens.sync()
            train_eval = self._evaluate(self.x_train, self.y_train, epoch, with_cas=False)
            test_eval = self._evaluate(self.x_test, self.y_test, epoch, with_cas=True)
            for m, model in enumerate(self.ens.members):
                record = epoch_record(epoch, lrs[m], train_losses[m], train_eval[m], test_eval[m], model)
                histories[m].append(record)
                best[m].update(epoch, record["test_robust_acc"], lambda model=model: copy_state(model))
        results = []
        for m, model in enumerate(self.ens.members):
            model.eval()
            results.append(TrainResult(config=self.configs[m], history=histories[m], model=model,
                                       best_epoch=best[m].epoch, best_state=best[m].state,
                                       last_state=copy_state(model)))
        return results


def train_batched(configs: Sequence[TrainConfig]) -> list[TrainResult]:
    """Train E linear models together; result m is what ``train(configs[m])`` computes, up to float rounding.

    Args:
        configs: E configurations with one :func:`batch_key` (same shapes and discrete settings).

    Returns:
        one :class:`synthmodel.train.TrainResult` per config, in order (model = that member's module).

    Raises:
        ValueError: a config is invalid, not batchable, or the configs do not share a batch key.
    """
    return _BatchedTrainer(configs).run()


