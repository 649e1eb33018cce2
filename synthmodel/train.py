"""One training loop for every mode: standard, adversarial (AT) and TRADES, with optional label
smoothing or a teacher, on any world and model of this package.

Library use::

    from synthmodel.train import TrainConfig, train
    result = train(TrainConfig(preset="paper3", mode="at", eps=0.25))
    result.final          # {"clean_acc", "robust_acc", "cas", "w1", "w2"}
    result.history        # one dict per epoch (synthmodel.training.EpochRecord)

CLI: ``python -m synthmodel.train --help``. Sweep point kind ``train`` (registered on import): one run per
point, linear models batched by :mod:`synthmodel.batched`.

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

The objectives, the learning-rate schedule, the epoch loop, the best-epoch tracker and the epoch record
are the training core's (:mod:`synthmodel.objectives`, :mod:`synthmodel.training`), shared with
:mod:`synthmodel.batched` and :mod:`real_data.train`.
"""

from __future__ import annotations

import argparse
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
from .atomic import atomic_path, check_input_file, check_output_dir, check_output_file, write_text
from .attribution import Attribution, attribution, attribution_ensemble
from .cli import ArgumentParser
from .losses import robust_objective
from .models import MODELS, TiedLinear, build_model, is_linear_model
from .objectives import Learner, logitwise_objective, make_objective, target_loss, teacher_logits
from .sample import derive_seed, sample
from .schema import Bounds, add_arguments, check_fields, from_mapping, from_namespace, option, param_table, to_dict
from .spec import FeatureModel, make_preset, preset_names
from .sweep import PointKind, register_kind
from .training import SCHEDULES, BestEpoch, EpochRecord, LRSchedule, fit_epoch

__all__ = ["Mode", "TrainConfig", "TrainResult", "train", "build_world", "save_checkpoint", "load_checkpoint",
           "logitwise_objective", "robust_objective", "copy_state", "epoch_record", "train_results", "run_point",
           "main"]


class Mode(str, Enum):
    STANDARD = "standard"
    AT = "at"
    TRADES = "trades"


TRAIN_ATTACKS = ("pgd", "fgsm", "logitwise", "scorewise")
CLOSED_FORM_ATTACKS = ("logitwise", "scorewise")  # linear models: no attack is run, each is an objective
OPTIMIZERS = ("sgd", "adam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_POSITIVE = Bounds(low=0, low_open=True)
_NON_NEGATIVE = Bounds(low=0)
_AT_LEAST_ONE = Bounds(low=1)


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults: the paper's world, PGD-10 AT at eps 0.25."""

    # world
    preset: str = option("paper3", f"world: {' | '.join(preset_names())} (K a number, or K with --k)",
                         group="world")
    k: int | None = option(None, "number of classes when the preset is spelled with K", bounds=Bounds(low=2),
                           none="the preset's", group="world")
    mu: float = option(1.0, "mean of a present feature", units="input units", bounds=_POSITIVE, group="world")
    sigma: float = option(0.5, "standard deviation of a present feature", units="input units", bounds=_POSITIVE,
                          group="world")
    noise_dims: int = option(0, "extra pure-noise input dimensions", bounds=_NON_NEGATIVE, group="world")
    # model
    model: str = option("tied", "tied (w1, w2) | linear (W x + b) | mlp", choices=tuple(MODELS), group="model")
    hidden: tuple[int, ...] = option((64,), "MLP hidden widths", bounds=_AT_LEAST_ONE, check=lambda v: len(v) > 0,
                                     rule="non-empty", group="model")
    bias: bool = option(True, "bias of the full linear model", group="model")
    # objective
    mode: str = option("at", "training mode", choices=tuple(m.value for m in Mode), group="objective")
    eps: float = option(0.25, "threat-model radius, in training and every evaluation", units="input units",
                        bounds=_NON_NEGATIVE, group="objective")
    norm: str = option("linf", "threat-model norm", choices=tuple(n.value for n in atk.Norm), group="objective")
    attack: str = option("pgd", "inner attack of AT; logitwise = closed-form per-logit worst case, scorewise = every "
                                "score attacked on its own (both closed form, linear models)",
                         choices=TRAIN_ATTACKS, group="objective")
    attack_steps: int = option(10, "PGD steps in training", bounds=_AT_LEAST_ONE, group="objective")
    attack_step_size: float | None = option(None, "PGD step in training", units="input units", bounds=_POSITIVE,
                                            none="eps / 4", group="objective")
    eval_steps: int = option(20, "PGD steps for evaluation and CAS", bounds=_AT_LEAST_ONE, group="objective")
    label_smoothing: float = option(0.0, "label smoothing alpha", bounds=Bounds(0, 1, high_open=True),
                                    metavar="ALPHA", group="objective")
    teacher: str | None = option(None, "distil from this checkpoint's soft labels", none="no teacher",
                                 metavar="CHECKPOINT", group="objective")
    temperature: float = option(1.0, "teacher softmax temperature", bounds=_POSITIVE, group="objective")
    trades_beta: float = option(6.0, "TRADES weight of the KL term", bounds=_NON_NEGATIVE, group="objective")
    # optimisation
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS, group="optimisation")
    lr: float = option(0.1, "initial learning rate", bounds=_POSITIVE, group="optimisation")
    momentum: float = option(0.9, "SGD momentum", bounds=Bounds(0, 1, high_open=True), group="optimisation")
    weight_decay: float = option(0.0, "L2 penalty (optimiser weight decay)", bounds=_NON_NEGATIVE,
                                 group="optimisation")
    schedule: str = option("step", "learning-rate schedule; step = x0.1 at 50% and 75% of the epochs (the paper's "
                                   "shape)", choices=SCHEDULES, group="optimisation")
    epochs: int = option(30, "training epochs", bounds=_AT_LEAST_ONE, group="optimisation")
    batch_size: int = option(128, "samples per step", bounds=_AT_LEAST_ONE, group="optimisation")
    n_train: int = option(2000, "training samples", bounds=_AT_LEAST_ONE, group="optimisation")
    n_test: int = option(2000, "test samples (evaluation and CAS)", bounds=_AT_LEAST_ONE, group="optimisation")
    seed: int = option(0, "seed of every random stream (data, initialisation, shuffling, attacks)",
                       bounds=_NON_NEGATIVE, group="optimisation")
    dtype: str = option("float32", "floating-point type of data and model", choices=tuple(DTYPES),
                        group="optimisation")

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first impossible setting."""
        check_fields(self)
        if self.label_smoothing and self.teacher:
            raise ValueError("use either label smoothing or a teacher, not both")
        if self.attack in CLOSED_FORM_ATTACKS and self.model not in ("tied", "linear"):
            raise ValueError(f"attack {self.attack!r} is closed-form for linear models only (model tied or linear)")
        if self.attack in CLOSED_FORM_ATTACKS and self.mode == Mode.TRADES.value:
            raise ValueError(f"attack {self.attack!r} applies to mode 'at' (TRADES needs an input-space attack)")
        build_world(self)  # validates the world parameters together
        limit = eps_limit(self)
        if self.eps > limit:
            raise ValueError(f"eps={self.eps:g} is beyond {limit:.3g} = 1e-3 (mu + sigma) / {self.dtype}'s rounding "
                             "unit: x + delta would keep less than 1e-3 of the inputs' scale")
        if self.teacher:
            self._check_teacher()
        return self

    def _check_teacher(self) -> None:
        """The teacher's world must have this run's input dimension and class count (its logits are the targets)."""
        _, teacher_config = load_checkpoint(self.teacher)
        mine, theirs = build_world(self), build_world(teacher_config)
        if (mine.dim, mine.n_classes) != (theirs.dim, theirs.n_classes):
            raise ValueError(f"teacher {self.teacher} was trained in another world: {_world_text(teacher_config)} "
                             f"({theirs.n_classes} classes, {theirs.dim} inputs); this run's is "
                             f"{_world_text(self)} ({mine.n_classes} classes, {mine.dim} inputs)")

    @property
    def objective(self) -> str:
        """The training objective's name (:data:`synthmodel.objectives.OBJECTIVES`)."""
        if self.mode == Mode.AT.value and self.attack in CLOSED_FORM_ATTACKS:
            return self.attack
        return self.mode

    @property
    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(self.schedule, self.lr, self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a dict (a grid point, a checkpoint's config), every value checked."""
        return from_mapping(cls, data, what="training settings")


def eps_limit(config: TrainConfig) -> float:
    """The largest radius a run accepts: 1e-3 (mu + sigma) / (the dtype's rounding unit).

    Beyond it ``x + delta`` keeps less than 1e-3 of the inputs' scale in the data type (float32: about
    1.3e4 for the paper's world), so training and evaluation see rounding noise instead of the world; the
    problem is settled long before, an l_inf adversary of radius mu erasing every feature.
    """
    return 1e-3 * (config.mu + config.sigma) / torch.finfo(DTYPES[config.dtype]).eps


def _world_text(config: TrainConfig) -> str:
    return config.preset + (f" (k={config.k})" if config.k else "") + (
        f" + {config.noise_dims} noise dims" if config.noise_dims else "")


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
    """One history entry of a synthetic-world run (:class:`synthmodel.training.EpochRecord`), from the train and
    test evaluations; ``w1``, ``w2`` for the tied model."""
    tied = isinstance(model, TiedLinear)
    return EpochRecord(
        epoch=epoch, lr=lr, train_loss=train_loss, train_clean_acc=train_eval["clean_acc"],
        train_robust_acc=train_eval["robust_acc"], train_robust_loss=train_eval["robust_loss"],
        test_clean_acc=test_eval["clean_acc"], test_robust_acc=test_eval["robust_acc"],
        test_robust_loss=test_eval["robust_loss"], cas=test_eval["cas"], class_matrix=test_eval["class_matrix"],
        w1=model.w1 if tied else None, w2=model.w2 if tied else None).as_dict()


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
        self.attack_gen = torch.Generator().manual_seed(derive_seed(config.seed, "attack"))
        self.shuffle_gen = torch.Generator().manual_seed(derive_seed(config.seed, "shuffle"))
        self.objective = make_objective(config.objective,
                                        **({"beta": config.trades_beta} if config.mode == Mode.TRADES.value else {}))
        self.learner = Learner(forward=self.model, attack=self._attack, attacking=config.eps > 0,
                               loss=target_loss(config.label_smoothing, self.teacher, config.temperature),
                               model=self.model, logitwise=self._logitwise if self.linear else None,
                               scorewise=self._scorewise if self.linear else None)

    # -- pieces --------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)

    def _attack(self, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> torch.Tensor:
        """The training attack (FGSM only for AT with attack 'fgsm'; TRADES always runs PGD on its KL)."""
        c = self.config
        if c.attack == "fgsm" and c.mode == Mode.AT.value:
            return atk.fgsm(self.model, x, y, eps=c.eps, norm=c.norm, mode=None)
        return atk.pgd(self.model, x, y, eps=c.eps, norm=c.norm, steps=c.attack_steps, step_size=c.attack_step_size,
                       random_start=True, generator=self.attack_gen, loss_fn=loss_fn, mode=None)

    def _logitwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        return logitwise_objective(self.model, x, y, c.eps, c.norm, alpha=c.label_smoothing,
                                   teacher_logits=teacher_logits(self.teacher, x), temperature=c.temperature)

    def _scorewise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        return atk.linear_scorewise_logits(self.model, x, y, c.eps, c.norm)

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
        optimizer = self._optimizer()
        schedule = c.lr_schedule
        history: list[dict[str, Any]] = []
        epoch_states: list[dict[str, torch.Tensor]] = []
        best = BestEpoch()
        bar = _progress(range(1, c.epochs + 1), progress, desc=f"{c.mode} {c.model} eps={c.eps:g}")
        for epoch in bar:
            self.model.train()
            lr = schedule.lr_at(epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order = torch.randperm(self.x_train.shape[0], generator=self.shuffle_gen)
            batches = ((self.x_train[idx], self.y_train[idx]) for idx in order.split(c.batch_size))
            totals = fit_epoch(self.objective, self.learner, optimizer, batches)
            train_eval = self._evaluate(self.x_train, self.y_train, epoch, with_cas=False)
            test_eval = self._evaluate(self.x_test, self.y_test, epoch, with_cas=True)
            record = epoch_record(epoch, lr, totals.mean_loss(), train_eval, test_eval, self.model)
            history.append(record)
            state = copy_state(self.model)
            if self.keep_epoch_states:
                epoch_states.append(state)
            best.update(epoch, record["test_robust_acc"], lambda state=state: state)
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(rob=f"{record['test_robust_acc']:.3f}", cas=f"{record['cas']:.2f}")
        self.model.eval()
        return TrainResult(config=c, history=history, model=self.model, best_epoch=best.epoch,
                           best_state=best.state, last_state=copy_state(self.model), epoch_states=epoch_states)


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()`` (the weights of one epoch, kept while training goes on)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

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
    """Write {config, state_dict, epoch} atomically; loadable with weights_only."""
    with atomic_path(path) as tmp:
        torch.save({"format": "synthmodel-checkpoint-1", "config": config.to_dict(), "epoch": epoch,
                    "state_dict": state if state is not None else copy_state(model)}, tmp)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint` (safe: weights_only=True)."""
    path = check_input_file(path, "checkpoint")
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


# -- sweep point kind 'train' -----------------------------------------------------------
def train_results(result: TrainResult) -> dict[str, Any]:
    """The results row of a run: last-epoch and best-epoch metrics, and the history.

    Keys: clean_acc, robust_acc, cas (last epoch, test set), train_robust_loss, train_robust_acc (last
    epoch), best_epoch (by test robust accuracy), best_clean_acc, best_robust_acc, best_cas, cas_drop =
    best_cas - cas, w1, w2, best_w1, best_w2 (tied model), and ``_history`` (one record per epoch).
    """
    from .sweep import HISTORY_KEY

    last = result.history[-1]
    best = result.history[result.best_epoch - 1]
    out: dict[str, Any] = dict(result.final)
    out.update(train_robust_loss=last["train_robust_loss"], train_robust_acc=last["train_robust_acc"],
               best_epoch=result.best_epoch, best_clean_acc=best["test_clean_acc"],
               best_robust_acc=best["test_robust_acc"], best_cas=best["cas"], cas_drop=best["cas"] - last["cas"])
    if "w1" in best:
        out.update(best_w1=best["w1"], best_w2=best["w2"])
    out[HISTORY_KEY] = result.history
    return out


def run_point(params: dict) -> dict:
    """One point of kind ``train``: :func:`train` of the point's settings."""
    return train_results(train(TrainConfig.from_dict(params)))


def run_point_batch(params_list: list[dict]) -> list[dict]:
    """Points of kind ``train`` on linear models as one computation (:func:`synthmodel.batched.train_batched`)."""
    from .batched import train_batched

    return [train_results(r) for r in train_batched([TrainConfig.from_dict(p) for p in params_list])]


def point_batch_key(params: dict) -> Any:
    """Which ``train`` points can run as one batch (:func:`synthmodel.batched.batch_key`)."""
    from .batched import batch_key

    return batch_key(TrainConfig.from_dict(params))


def _check_point(params: dict) -> None:
    TrainConfig.from_dict(params).validate()


register_kind(PointKind(
    name="train", run=run_point, params=param_table(TrainConfig), check=_check_point, batch_key=point_batch_key,
    run_batch=run_point_batch,
    description="finite-sample training run (synthmodel.train.TrainConfig keys); linear models batched"))


# -- CLI ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m synthmodel.train",
                       description="Train one model in the synthetic cross-class world and report "
                                   "clean/robust accuracy, CAS and (tied model) w1, w2 per epoch.")
    add_arguments(p, TrainConfig)
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
    try:
        config = from_namespace(TrainConfig, args).validate()
        if args.out:  # every output place is checked before the run, which a wrong path would lose
            check_output_file(args.out, "--out")
        if args.save:
            check_output_dir(args.save, "--save")
            for name in ("best.pt", "last.pt") if Path(args.save).is_dir() else ():
                check_output_file(Path(args.save) / name, "--save")
        result = train(config, progress=not args.quiet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    payload = result.to_json()
    text = json.dumps(payload, indent=None if args.json else 2)
    try:
        if args.out:
            write_text(args.out, text + "\n")
        if args.save:
            out_dir = Path(args.save)
            out_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(out_dir / "best.pt", result.model, config, state=result.best_state,
                            epoch=result.best_epoch)
            save_checkpoint(out_dir / "last.pt", result.model, config, epoch=config.epochs)
    except OSError as exc:  # the place changed during the run: the results still reach stdout
        print(text)
        print(f"error: cannot write the outputs: {exc}", file=sys.stderr)
        return 2
    print(text if args.json else _summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
