"""One training loop for every mode: standard, adversarial (AT) and TRADES, with optional label
smoothing or a teacher, on any world and model of this package.

Library use::

    from synthmodel.train import TrainConfig, train
    result = train(TrainConfig(preset="paper3", mode="at", eps=0.25))
    result.final          # {"clean_acc", "robust_acc", "cas", "w1", "w2"}
    result.history        # one dict per epoch

CLI: ``python -m synthmodel.train --help``.

Definitions used here (see also docs/DEFINITIONS.md):

* the threat model is ``eps`` in ``norm``; standard training ignores it for training but every
  evaluation uses it;
* the inner attack of AT maximises hard-label cross-entropy (also when the outer objective uses
  soft targets), as in the literature; ``attack='logitwise'`` (linear models only) replaces the
  attack by the closed-form per-logit worst case: the loss of a sample with target distribution t is
  ``sum_c t_c * CE(logitwise_logits(x, c), c)``, each term bounded by its own worst case;
  ``attack='scorewise'`` (linear models only) attacks every score on its own
  (:func:`synthmodel.attacks.linear_scorewise_logits`: the scores set by the hard label) and evaluates the
  objective (soft targets included, a teacher on the clean input) at those logits;
* a teacher's soft labels are computed on the same (adversarial) input the student sees;
* robust accuracy of a linear model is computed exactly (closed-form worst margins); of other
  models with PGD (``eval_steps`` steps of size eps/4, random start). CAS uses PGD adversarial
  test inputs, as in the official code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import attacks as atk
from .attribution import Attribution, attribution, attribution_ensemble
from .cli import ArgumentParser
from .losses import check_alpha, robust_objective, soft_targets, trades_attack_loss, trades_loss
from .models import MODELS, TiedLinear, build_model, is_linear_model
from .sample import derive_seed, sample
from .spec import FeatureModel, make_preset

__all__ = ["Mode", "TrainConfig", "TrainResult", "train", "build_world", "save_checkpoint", "load_checkpoint",
           "logitwise_objective", "copy_state", "main"]


class Mode(str, Enum):
    STANDARD = "standard"
    AT = "at"
    TRADES = "trades"


TRAIN_ATTACKS = ("pgd", "fgsm", "logitwise", "scorewise")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def settings_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build the settings dataclass ``cls`` from a dict, naming unknown keys instead of a TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(unknown)}")
    return cls(**data)


@dataclass
class TrainConfig:
    """Every setting of a training run (units in comments). Defaults: the paper's world, AT."""

    # world
    preset: str = "paper3"              # paper3 | all-but-one-K | pairs-K | ring-K
    k: int | None = None                # number of classes for presets spelled with K
    mu: float = 1.0                     # mean of a present feature
    sigma: float = 0.5                  # std of a present feature
    noise_dims: int = 0                 # extra pure-noise input dimensions
    # model
    model: str = "tied"                 # tied | linear | mlp
    hidden: tuple[int, ...] = (64,)     # MLP widths
    bias: bool = True                   # bias of the full linear model
    # objective
    mode: str = "at"                    # standard | at | trades
    eps: float = 0.25                   # threat-model radius (input units); training and evaluation
    norm: str = "linf"                  # linf | l2
    attack: str = "pgd"                 # inner attack: pgd | fgsm | logitwise | scorewise (linear models)
    attack_steps: int = 10              # PGD steps in training
    attack_step_size: float | None = None  # PGD step (input units); None = eps / 4
    eval_steps: int = 20                # PGD steps for evaluation and CAS
    label_smoothing: float = 0.0        # alpha in [0, 1)
    teacher: str | None = None          # checkpoint file of a teacher (distillation)
    temperature: float = 1.0            # teacher temperature
    trades_beta: float = 6.0            # TRADES weight of the KL term
    # optimisation
    optimizer: str = "sgd"              # sgd | adam
    lr: float = 0.1                     # initial learning rate
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 0.0           # L2 penalty (optimizer weight decay)
    schedule: str = "step"              # constant | step (x0.1 at 50% and 75% of epochs) | cosine
    epochs: int = 30
    batch_size: int = 128
    n_train: int = 2000
    n_test: int = 2000
    seed: int = 0
    dtype: str = "float32"              # float32 | float64

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first impossible setting."""
        def choice(name: str, allowed) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")

        choice("model", tuple(MODELS))
        choice("mode", tuple(m.value for m in Mode))
        choice("norm", tuple(n.value for n in atk.Norm))
        choice("attack", TRAIN_ATTACKS)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("dtype", tuple(DTYPES))
        for name in ("mu", "sigma", "eps", "lr", "momentum", "weight_decay", "temperature", "trades_beta"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.trades_beta < 0:
            raise ValueError(f"trades_beta must be >= 0, got {self.trades_beta}")
        check_alpha(self.label_smoothing)
        if self.label_smoothing and self.teacher:
            raise ValueError("use either label smoothing or a teacher, not both")
        step = self.attack_step_size
        if step is not None and not (math.isfinite(step) and step > 0):
            raise ValueError(f"attack_step_size must be > 0, got {self.attack_step_size}")
        for name in ("epochs", "batch_size", "attack_steps", "eval_steps", "n_train", "n_test"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attack in ("logitwise", "scorewise") and self.model not in ("tied", "linear"):
            raise ValueError(f"attack {self.attack!r} is closed-form for linear models only (model tied or linear)")
        if self.attack in ("logitwise", "scorewise") and self.mode == Mode.TRADES.value:
            raise ValueError(f"attack {self.attack!r} applies to mode 'at' (TRADES needs an input-space attack)")
        build_world(self)  # validates the world parameters
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return settings_from_dict(cls, data)


def build_world(config: TrainConfig) -> FeatureModel:
    """The FeatureModel a config names."""
    return make_preset(config.preset, k=config.k, mu=config.mu, sigma=config.sigma, noise_dims=config.noise_dims)


@dataclass
class TrainResult:
    """What a run produced, with what it was."""

    config: TrainConfig
    history: list[dict[str, Any]]
    model: nn.Module
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    last_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    epoch_states: list[dict[str, torch.Tensor]] = field(repr=False, default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        last = self.history[-1]
        keys = ["clean_acc", "robust_acc", "cas"] + (["w1", "w2"] if "w1" in last else [])
        renamed = {"clean_acc": "test_clean_acc", "robust_acc": "test_robust_acc"}
        return {key: last[renamed.get(key, key)] for key in keys}

    def to_json(self) -> dict[str, Any]:
        return finite_or_none({"config": self.config.to_dict(), "final": self.final, "best_epoch": self.best_epoch,
                                "history": self.history})


def finite_or_none(obj: Any) -> Any:
    """NaN/inf -> None, recursively through dicts and lists, so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def logitwise_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, *,
                        alpha: float = 0.0, teacher_logits: torch.Tensor | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``sum_c t_c * CE(logitwise_logits(x, c), c)`` (t: the target distribution).

    With hard labels this is the cross-entropy of :func:`synthmodel.attacks.linear_logitwise_logits`.
    """
    if teacher_logits is None and not alpha:
        return F.cross_entropy(atk.linear_logitwise_logits(model, x, y, eps, norm), y)
    n_classes = model.head.weight.shape[0]
    targets = soft_targets(y, n_classes, alpha=alpha, teacher_logits=teacher_logits, temperature=temperature,
                           dtype=x.dtype)
    total = x.new_zeros(())
    for c in range(n_classes):
        yc = torch.full_like(y, c)
        per_sample = F.cross_entropy(atk.linear_logitwise_logits(model, x, yc, eps, norm), yc, reduction="none")
        total = total + (targets[:, c] * per_sample).mean()
    return total


def adversarial_attribution(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """``{"cas", "class_matrix"}`` on adversarial inputs; a zero model's NaN CAS is recorded, not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = attribution(model, x_adv, y, mode=None)
    return _attribution_record(result)


def adversarial_attribution_ensemble(weight: torch.Tensor, x_adv: torch.Tensor,
                                     y: torch.Tensor) -> list[dict[str, Any]]:
    """:func:`adversarial_attribution` for E linear models (identity features) at once.

    Args:
        weight: head weights (E, K, d); x_adv: adversarial inputs (E, N, d); y: labels (E, N).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results = attribution_ensemble(weight, x_adv, y)
    return [_attribution_record(result) for result in results]


def _attribution_record(result: Attribution) -> dict[str, Any]:
    return {"cas": result.cas, "class_matrix": result.matrix.tolist()}


def epoch_record(epoch: int, lr: float, train_loss: float, train_eval: dict[str, Any], test_eval: dict[str, Any],
                 model: nn.Module) -> dict[str, Any]:
    """One history entry (the same keys for the loop here and the batched trainer)."""
    record: dict[str, Any] = {
        "epoch": epoch, "lr": lr, "train_loss": train_loss,
        "train_clean_acc": train_eval["clean_acc"], "train_robust_acc": train_eval["robust_acc"],
        "train_robust_loss": train_eval["robust_loss"],
        "test_clean_acc": test_eval["clean_acc"], "test_robust_acc": test_eval["robust_acc"],
        "test_robust_loss": test_eval["robust_loss"], "cas": test_eval["cas"],
        "class_matrix": test_eval["class_matrix"],
    }
    if isinstance(model, TiedLinear):
        record["w1"], record["w2"] = model.w1, model.w2
    return record


class _Trainer:
    def __init__(self, config: TrainConfig, teacher: nn.Module | None, keep_epoch_states: bool):
        self.config = config.validate()
        self.keep_epoch_states = keep_epoch_states
        self.dtype = DTYPES[config.dtype]
        self.world = build_world(config)
        train_seed, test_seed = derive_seed(config.seed, "train"), derive_seed(config.seed, "test")
        self.x_train, self.y_train = sample(self.world, config.n_train, train_seed, dtype=self.dtype)
        self.x_test, self.y_test = sample(self.world, config.n_test, test_seed, dtype=self.dtype)
        self.model = build_model(config.model, self.world, seed=config.seed, dtype=self.dtype,
                                 hidden=config.hidden, bias=config.bias)
        if teacher is None and config.teacher:
            teacher, _ = load_checkpoint(config.teacher)
        if teacher is not None:
            teacher = teacher.to(self.dtype).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.teacher = teacher
        self.linear = is_linear_model(self.model)
        self.step_size = config.attack_step_size
        self.attack_gen = torch.Generator().manual_seed(derive_seed(config.seed, "attack"))
        self.shuffle_gen = torch.Generator().manual_seed(derive_seed(config.seed, "shuffle"))

    # -- pieces --------------------------------------------------------------------------
    def _optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.schedule == "step":
            milestones = sorted({max(1, c.epochs // 2), max(1, (3 * c.epochs) // 4)})
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        elif c.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return opt, sched

    def _train_attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.attack == "fgsm":
            return atk.fgsm(self.model, x, y, eps=c.eps, norm=c.norm, mode=None)
        return atk.pgd(self.model, x, y, eps=c.eps, norm=c.norm, steps=c.attack_steps, step_size=self.step_size,
                       random_start=True, generator=self.attack_gen, mode=None)

    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(x)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        soft = dict(alpha=c.label_smoothing, temperature=c.temperature)
        if c.mode == Mode.STANDARD.value:
            return robust_objective(self.model(x), y, teacher_logits=self._teacher_logits(x), **soft)
        if c.mode == Mode.AT.value:
            if c.attack == "logitwise":
                return logitwise_objective(self.model, x, y, c.eps, c.norm, teacher_logits=self._teacher_logits(x),
                                           **soft)
            if c.attack == "scorewise":
                logits = atk.linear_scorewise_logits(self.model, x, y, c.eps, c.norm)
                return robust_objective(logits, y, teacher_logits=self._teacher_logits(x), **soft)
            x_adv = self._train_attack(x, y)
            return robust_objective(self.model(x_adv), y, teacher_logits=self._teacher_logits(x_adv), **soft)
        # TRADES: the attack maximises KL(p_natural || p_adv)
        with torch.no_grad():
            probs_natural = torch.softmax(self.model(x), dim=1)
        x_adv = atk.pgd(self.model, x, probs_natural, eps=c.eps, norm=c.norm, steps=c.attack_steps,
                        step_size=self.step_size, random_start=True, generator=self.attack_gen,
                        loss_fn=trades_attack_loss, mode=None)
        return trades_loss(self.model(x), self.model(x_adv), y, c.trades_beta,
                           teacher_logits=self._teacher_logits(x), **soft)

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, epoch: int, with_cas: bool) -> dict[str, Any]:
        """Clean/robust accuracy, robust loss and (optionally) C and CAS on PGD inputs, in eval mode."""
        c = self.config
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "eval", epoch, x.shape[0]))
        with atk.preserve_mode(self.model, "eval"):
            with torch.no_grad():
                clean = (self.model(x).argmax(1) == y).double().mean().item()
            x_adv = atk.pgd(self.model, x, y, eps=c.eps, norm=c.norm, steps=c.eval_steps, random_start=True,
                            generator=gen, mode=None)
            with torch.no_grad():
                logits_adv = self.model(x_adv)
                robust_loss = F.cross_entropy(logits_adv, y).item()
                if self.linear:
                    robust = atk.linear_robust_correct(self.model, x, y, c.eps, c.norm).double().mean().item()
                else:
                    robust = (logits_adv.argmax(1) == y).double().mean().item()
            out = {"clean_acc": clean, "robust_acc": robust, "robust_loss": robust_loss}
            if with_cas:
                out.update(adversarial_attribution(self.model, x_adv, y))
        return out

    # -- loop ------------------------------------------------------------------------------
    def run(self, progress: bool) -> TrainResult:
        c = self.config
        opt, sched = self._optimizer()
        history: list[dict[str, Any]] = []
        epoch_states: list[dict[str, torch.Tensor]] = []
        best_epoch, best_robust, best_state = 0, -1.0, {}
        n = self.x_train.shape[0]
        bar = _progress(range(1, c.epochs + 1), progress, desc=f"{c.mode} {c.model} eps={c.eps:g}")
        for epoch in bar:
            self.model.train()
            lr = opt.param_groups[0]["lr"]
            order = torch.randperm(n, generator=self.shuffle_gen)
            total, seen = 0.0, 0
            for start in range(0, n, c.batch_size):
                idx = order[start:start + c.batch_size]
                loss = self._batch_loss(self.x_train[idx], self.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * idx.numel()
                seen += idx.numel()
            sched.step()
            train_eval = self._evaluate(self.x_train, self.y_train, epoch, with_cas=False)
            test_eval = self._evaluate(self.x_test, self.y_test, epoch, with_cas=True)
            record = epoch_record(epoch, lr, total / seen, train_eval, test_eval, self.model)
            history.append(record)
            state = copy_state(self.model)
            if self.keep_epoch_states:
                epoch_states.append(state)
            if record["test_robust_acc"] > best_robust:
                best_epoch, best_robust, best_state = epoch, record["test_robust_acc"], state
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(rob=f"{record['test_robust_acc']:.3f}", cas=f"{record['cas']:.2f}")
        self.model.eval()
        return TrainResult(config=c, history=history, model=self.model, best_epoch=best_epoch,
                           best_state=best_state, last_state=copy_state(self.model), epoch_states=epoch_states)


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()`` (the weights of one epoch, kept while training goes on)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but training must not need it
        return iterable
    return tqdm(iterable, desc=desc, unit="epoch", file=sys.stderr, leave=False)


def train(config: TrainConfig, *, teacher: nn.Module | None = None, progress: bool = False,
          keep_epoch_states: bool = False) -> TrainResult:
    """Train one model as ``config`` says; deterministic per ``config.seed`` on CPU.

    Args:
        config: all settings (validated here; ValueError names the first bad one).
        teacher: a model whose soft labels replace the one-hot targets (overrides ``config.teacher``).
        progress: show a progress bar on stderr.
        keep_epoch_states: keep a copy of the weights after every epoch (``result.epoch_states``).
    """
    return _Trainer(config, teacher, keep_epoch_states).run(progress)


# -- checkpoints ------------------------------------------------------------------------
def save_checkpoint(path: str | Path, model: nn.Module, config: TrainConfig, *, state: dict | None = None,
                    epoch: int | None = None) -> None:
    """Write {config, state_dict, epoch} atomically (temp file, then rename); loadable with weights_only."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": "synthmodel-checkpoint-1", "config": config.to_dict(), "epoch": epoch,
                "state_dict": state if state is not None else copy_state(model)}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint` (safe: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt files
        raise ValueError(f"checkpoint {path} is not a readable torch file: {exc.__class__.__name__}") from None
    if not isinstance(blob, dict) or blob.get("format") != "synthmodel-checkpoint-1":
        raise ValueError(f"checkpoint {path} was not written by synthmodel.train")
    config = TrainConfig.from_dict(blob["config"])
    world = build_world(config)
    model = build_model(config.model, world, dtype=DTYPES[config.dtype], hidden=config.hidden, bias=config.bias)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match its own configuration: {exc}") from None
    return model.eval(), config


# -- CLI ----------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = ArgumentParser(prog="python -m synthmodel.train",
                       description="Train one model in the synthetic cross-class world and report "
                                   "clean/robust accuracy, CAS and (tied model) w1, w2 per epoch.")
    g = p.add_argument_group("world")
    g.add_argument("--preset", default=defaults.preset, help="paper3 | all-but-one-K | pairs-K | ring-K (K a number)")
    g.add_argument("--k", type=int, default=None, help="number of classes when the preset is spelled with K")
    g.add_argument("--mu", type=float, default=defaults.mu, help="mean of a present feature (default %(default)s)")
    g.add_argument("--sigma", type=float, default=defaults.sigma, help="std of a present feature (default %(default)s)")
    g.add_argument("--noise-dims", type=int, default=defaults.noise_dims, help="pure-noise dimensions")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=list(MODELS), default=defaults.model)
    g.add_argument("--hidden", type=int, nargs="+", default=list(defaults.hidden), help="MLP hidden widths")
    g.add_argument("--bias", type=_bool, default=defaults.bias, help="bias in the full linear model (true/false)")
    g = p.add_argument_group("objective")
    g.add_argument("--mode", choices=[m.value for m in Mode], default=defaults.mode)
    g.add_argument("--eps", type=float, default=defaults.eps, help="perturbation radius (default %(default)s)")
    g.add_argument("--norm", choices=[n.value for n in atk.Norm], default=defaults.norm)
    g.add_argument("--attack", choices=TRAIN_ATTACKS, default=defaults.attack,
                   help="inner attack; logitwise = closed-form per-logit worst case, scorewise = every score "
                        "attacked on its own (both closed form, linear models)")
    g.add_argument("--attack-steps", type=int, default=defaults.attack_steps)
    g.add_argument("--attack-step-size", type=float, default=None, help="default eps/4")
    g.add_argument("--eval-steps", type=int, default=defaults.eval_steps, help="PGD steps for evaluation and CAS")
    g.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing, metavar="ALPHA")
    g.add_argument("--teacher", default=None, metavar="CHECKPOINT", help="distil from this checkpoint's soft labels")
    g.add_argument("--temperature", type=float, default=defaults.temperature)
    g.add_argument("--trades-beta", type=float, default=defaults.trades_beta)
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    g.add_argument("--lr", type=float, default=defaults.lr)
    g.add_argument("--momentum", type=float, default=defaults.momentum)
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                   help="step = x0.1 at 50%% and 75%% of the epochs (the paper's shape)")
    g.add_argument("--epochs", type=int, default=defaults.epochs)
    g.add_argument("--batch-size", type=int, default=defaults.batch_size)
    g.add_argument("--n-train", type=int, default=defaults.n_train)
    g.add_argument("--n-test", type=int, default=defaults.n_test)
    g.add_argument("--seed", type=int, default=defaults.seed)
    g.add_argument("--dtype", choices=list(DTYPES), default=defaults.dtype)
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object {config, final, best_epoch, history}")
    g.add_argument("--out", metavar="FILE", help="also write that JSON object to FILE")
    g.add_argument("--save", metavar="DIR", help="write best.pt and last.pt checkpoints to DIR")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _summary(result: TrainResult) -> str:
    final = result.final
    parts = [f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in final.items()]
    c = result.config
    return (f"{c.preset} {c.model} {c.mode} eps={c.eps:g} ({c.norm}) seed={c.seed}: " + " ".join(parts)
            + f" best_epoch={result.best_epoch}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        config.validate()
        if args.out and not Path(args.out).resolve().parent.is_dir():
            raise ValueError(f"output folder {Path(args.out).parent} does not exist")
        result = train(config, progress=not args.quiet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    payload = result.to_json()
    text = json.dumps(payload, indent=None if args.json else 2)
    if args.out:
        tmp = Path(args.out + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    if args.save:
        out_dir = Path(args.save)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out_dir / "best.pt", result.model, config, state=result.best_state, epoch=result.best_epoch)
        save_checkpoint(out_dir / "last.pt", result.model, config, epoch=config.epochs)
    print(text if args.json else _summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
