"""Adversarial training on CIFAR-10/100 or any .npz image set, fast on one GPU, testable on CPU.

``python -m real_data.train --dataset cifar10:DIR --out runs/at`` runs the paper's official recipe
(docs/PAPER.md, "Official training recipe"): PreActResNet-18, SGD (momentum 0.9, weight decay 5e-4),
lr 0.1 x0.1 at epochs 100 and 150 of 200, batch 128, random crop (4 px reflect padding) + flip,
PGD-10 l_inf AT with eps 8/255, step 2/255, random start, attacked in train (batch-norm) mode as the
official code does; PGD-20 (step eps/4) test evaluation every epoch; best / last / every-10th
checkpoints. Every setting is a field of :class:`TrainConfig` and a flag (``--help``).

Modes: ``standard`` (clean training), ``at`` (PGD AT, l_inf or l2; ``--label-smoothing`` gives
AT + label smoothing), ``trades`` (beta 6), ``kd`` (AT against a teacher's soft labels on the same
adversarial input, ``--teacher FILE``); ``--awp-gamma`` adds adversarial weight perturbation (AWP) to at,
trades and kd (:class:`synthmodel.objectives.WeightPerturbed`). The objectives, learning-rate schedule,
epoch loop, best-epoch tracker and epoch record are synthmodel's training core
(:mod:`synthmodel.objectives`, :mod:`synthmodel.training`), as are the attack and the losses: one
implementation of each.

Output folder: ``config.json``, ``log.csv`` (one row per epoch), ``last.pt`` (everything needed to
resume: model, optimiser, epoch, RNG states, history), ``best.pt`` (highest test robust accuracy, or with
``--val N`` highest robust accuracy on N held-out training images),
``epoch_NNN.pt`` every ``--save-every`` epochs, each written atomically. ``--resume`` continues from
``last.pt``; the continued run equals an uninterrupted one bit for bit on CPU (same device kind required).
:func:`run` is a run as a function ``settings -> scalars`` (resumable), the shape of a sweep point kind.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from synthmodel.atomic import atomic_path, check_output_dir, write_text
from synthmodel.attacks import Norm, pgd
from synthmodel.cli import ArgumentParser
from synthmodel.objectives import Learner, WeightPerturbed, make_objective, target_loss
from synthmodel.sample import derive_seed
from synthmodel.schema import (
    REQUIRED,
    Bounds,
    add_arguments,
    check_fields,
    from_mapping,
    from_namespace,
    option,
    to_dict,
)
from synthmodel.training import SCHEDULES, BestEpoch, EpochRecord, LRSchedule, fit_epoch

from .checkpoints import CHECKPOINT_FORMAT, load_weights, model_from_checkpoint, read_checkpoint
from .cpu import tune_allocator
from .data import DATASET_SPECS, ImageData, augmentation_defaults, hold_out, load_dataset, to_float, train_subset
from .device import MEMORY_FORMATS, PRECISIONS, autocast, precision_dtype, resolve_device, use_channels_last
from .evaluate import Evaluation, ThreatModel, evaluate
from .forwards import model_forwards
from .graphs import GraphedPGD
from .models import ARCH_NAMES, ImageClassifier, arch_constructor, build_arch

__all__ = ["Mode", "TrainConfig", "Trainer", "TrainOutcome", "train", "run", "build_parser", "main"]


class Mode(str, Enum):
    STANDARD = "standard"
    AT = "at"
    TRADES = "trades"
    KD = "kd"


ATTACK_BN = ("auto", "train", "eval")
_DEFAULT_EPS = {"linf": 8.0, "l2": 128.0}   # in 1/255 pixel units (the official code's units)
_DEFAULT_STEP = {"linf": 2.0, "l2": 16.0}
_PIXELS = "1/255 pixel units"
_LINF_RANGE = 255.0  # pixels lie in [0, 255] of these units
# settings added after runs were first written, with the value that reproduces those runs (Trainer.restore)
_ADDED_SETTINGS = {"awp_gamma": 0.0, "awp_warmup": 0, "val": 0}


def _known_arch(name: str) -> bool:
    """A registered architecture or wrn-D-W (real_data.models.arch_constructor)."""
    try:
        arch_constructor(name)
    except ValueError:
        return False
    return True
_POSITIVE = Bounds(low=0, low_open=True)
_NON_NEGATIVE = Bounds(low=0)
_AT_LEAST_ONE = Bounds(low=1)


@dataclass
class TrainConfig:
    """Everything that determines a run's result. Defaults: the official recipe. (Field order = the keys'
    order in config.json and checkpoints; the CLI lists the flags by group.)"""

    dataset: str = option(REQUIRED, DATASET_SPECS, group="data and model")
    train_n: int = option(0, "train on a seeded, class-stratified subset of N training images (0 = all)",
                          bounds=_NON_NEGATIVE, metavar="N", group="data and model")
    arch: str = option("preact-resnet18", f"architecture: {ARCH_NAMES}", check=_known_arch, rule="(an architecture)",
                       group="data and model")
    width: int = option(32, "channels of small-cnn's first stage (other architectures ignore it)",
                        bounds=_AT_LEAST_ONE, group="data and model")
    mode: str = option("at", "standard | at (PGD AT) | trades | kd (AT with a teacher's soft labels)",
                       choices=tuple(m.value for m in Mode), group="objective")
    norm: str = option("linf", "threat-model norm", choices=tuple(n.value for n in Norm), group="objective")
    eps: float | None = option(None, "radius", units=_PIXELS, bounds=_NON_NEGATIVE, none="8 (linf) / 128 (l2)",
                               group="objective")
    step_size: float | None = option(None, "PGD step in training", units=_PIXELS, bounds=_POSITIVE,
                                     none="2 (linf) / 16 (l2)", group="objective")
    steps: int = option(10, "PGD steps in training", bounds=_AT_LEAST_ONE, group="objective")
    random_start: bool = option(True, "start PGD at a uniform point of the ball", group="objective")
    attack_bn: str = option("auto", "batch-norm mode while attacking: auto = train for at/kd, eval for trades (the "
                                    "official code's choices)", choices=ATTACK_BN, group="objective")
    eval_steps: int = option(20, "PGD steps of the per-epoch test evaluation", bounds=_AT_LEAST_ONE,
                             group="evaluation")
    eval_step_size: float | None = option(None, "step of the test attack", units=_PIXELS, bounds=_POSITIVE,
                                          none="eps / 4", group="evaluation")
    eval_n: int = option(0, "test images evaluated per epoch (0 = all)", bounds=_NON_NEGATIVE, group="evaluation")
    val: int = option(0, "hold out N training images (seeded, class-stratified, never trained on), attack them "
                         "each epoch with the test attack and choose best.pt by their robust accuracy; the test "
                         "set then only reports (0 = choose best.pt by the test set, the official recipe)",
                      bounds=_NON_NEGATIVE, metavar="N", group="evaluation")
    trades_beta: float = option(6.0, "TRADES weight of the KL term", bounds=_NON_NEGATIVE, group="objective")
    label_smoothing: float = option(0.0, "label smoothing alpha", bounds=Bounds(0, 1, high_open=True),
                                    metavar="ALPHA", group="objective")
    teacher: str | None = option(None, "teacher checkpoint (mode kd)", none="no teacher", metavar="CHECKPOINT",
                                 group="objective")
    teacher_arch: str = option("preact-resnet18", "architecture of a bare-state_dict teacher (official "
                                                  "checkpoints)", check=_known_arch, rule="(an architecture)",
                               group="objective")
    temperature: float = option(1.0, "teacher softmax temperature", bounds=_POSITIVE, group="objective")
    awp_gamma: float = option(0.0, "adversarial weight perturbation (AWP, modes at, trades, kd): each conv/linear "
                                   "weight moved up the training loss's gradient by this fraction of its norm "
                                   "before every step (0 = off; published: 0.01 at, 0.005 trades)",
                              bounds=_NON_NEGATIVE, metavar="GAMMA", group="objective")
    awp_warmup: int = option(0, "epochs trained without AWP before it starts", bounds=_NON_NEGATIVE, metavar="EPOCHS",
                             group="objective")
    epochs: int = option(200, "training epochs", bounds=_AT_LEAST_ONE, group="optimisation")
    batch_size: int = option(128, "images per SGD step", bounds=_AT_LEAST_ONE, group="optimisation")
    lr: float = option(0.1, "initial learning rate (per batch of batch_size)", bounds=_POSITIVE,
                       group="optimisation")
    momentum: float = option(0.9, "SGD momentum", bounds=Bounds(0, 1, high_open=True), group="optimisation")
    weight_decay: float = option(5e-4, "SGD weight decay", bounds=_NON_NEGATIVE, group="optimisation")
    schedule: str = option("step", "learning-rate schedule", choices=SCHEDULES, group="optimisation")
    milestones: tuple[int, ...] | None = option(None, "step schedule: 0-based indices of the first epochs at a "
                                                      "lower rate (lr *= gamma)", bounds=_AT_LEAST_ONE,
                                                none="50% and 75% of the epochs", group="optimisation")
    gamma: float = option(0.1, "lr factor at each milestone", bounds=_NON_NEGATIVE, group="optimisation")
    augment: bool = option(True, f"the data set's default augmentation ({augmentation_defaults()})",
                           group="optimisation")
    seed: int = option(0, "seed of every random stream (initialisation, shuffling, augmentation, attacks)",
                       bounds=_NON_NEGATIVE, group="optimisation")
    save_every: int = option(10, "epoch_NNN.pt every this many epochs (0 = never)", bounds=_NON_NEGATIVE,
                             group="output")
    precision: str = option("auto", "auto = bf16 autocast on CUDA", choices=PRECISIONS, group="speed")
    memory_format: str = option("auto", "auto = channels_last (faster on CUDA and on CPU)", choices=MEMORY_FORMATS,
                                group="speed")
    compile: bool = option(False, "torch.compile the forward pass", group="speed")
    cuda_graphs: bool = option(True, "on CUDA, replay each attack from a CUDA graph (not with --compile)",
                               group="speed")
    eval_batch_size: int = option(512, "images per evaluation batch", bounds=_AT_LEAST_ONE, group="evaluation")

    def __post_init__(self) -> None:
        if self.milestones is not None:
            self.milestones = tuple(int(m) for m in self.milestones)

    # -- derived values (pixel units in [0, 1]) --
    @property
    def eps_pixels(self) -> float:
        return (_DEFAULT_EPS[self.norm] if self.eps is None else self.eps) / 255.0

    @property
    def step_pixels(self) -> float:
        return (_DEFAULT_STEP[self.norm] if self.step_size is None else self.step_size) / 255.0

    @property
    def bn_mode(self) -> str:
        """Model mode during the training attack (the official code: train for AT, eval for TRADES)."""
        if self.attack_bn != "auto":
            return self.attack_bn
        return "eval" if self.mode == Mode.TRADES.value else "train"

    @property
    def objective(self) -> str:
        """The training objective's name (:data:`synthmodel.objectives.OBJECTIVES`); kd is AT with a teacher."""
        return Mode.AT.value if self.mode == Mode.KD.value else self.mode

    @property
    def selection_metric(self) -> str:
        """The log column best.pt is chosen by: validation robust accuracy with ``val``, else test robust accuracy."""
        return "val_robust_acc" if self.val else "test_robust_acc"

    @property
    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(self.schedule, self.lr, self.epochs, self.milestones, self.gamma)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (constant within an epoch, as in the official code)."""
        return self.lr_schedule.lr_at(epoch)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first impossible setting."""
        check_fields(self)
        if self.mode == Mode.KD.value and not self.teacher:
            raise ValueError("mode kd needs --teacher CHECKPOINT")
        if self.teacher and self.label_smoothing:
            raise ValueError("use either label smoothing or a teacher, not both")
        if self.awp_gamma and self.mode == Mode.STANDARD.value:
            raise ValueError("awp_gamma perturbs the weights against the adversarial training loss: use it with mode "
                             "at, trades or kd, not standard")
        if self.awp_gamma and self.awp_warmup >= self.epochs:
            raise ValueError(f"awp_warmup {self.awp_warmup} leaves none of the {self.epochs} epochs to AWP; "
                             f"choose awp_warmup < epochs")
        if self.milestones is not None:
            if self.schedule != "step":
                raise ValueError(f"milestones apply to the step schedule, not {self.schedule!r}")
            late = [m for m in self.milestones if m >= self.epochs]
            if late:
                raise ValueError(f"milestones {', '.join(map(str, late))} are beyond the {self.epochs} epochs (a "
                                 f"milestone m lowers the rate from 0-based epoch m: it must be < epochs)")
        if self.norm == Norm.LINF.value:  # the l2 limit depends on the image size: check_data
            for name in ("eps", "step_size", "eval_step_size"):
                value = getattr(self, name)
                if value is not None and value > _LINF_RANGE:
                    raise ValueError(f"{name}={value:g} is beyond the pixel range: pixels lie in [0, 255] "
                                     f"({_PIXELS}), so an l_inf radius of {_LINF_RANGE:g} already reaches every image")
        return self

    def check_data(self, data: ImageData) -> TrainConfig:
        """Raise ValueError naming the first setting the data set makes impossible (an l2 radius beyond the
        images' diameter); returns the config."""
        if self.norm == Norm.L2.value:
            diameter = 255.0 * math.sqrt(math.prod(data.image_shape))  # of [0, 255]^(C H W), in 1/255 units
            for name in ("eps", "step_size", "eval_step_size"):
                value = getattr(self, name)
                if value is not None and value > diameter:
                    raise ValueError(f"{name}={value:g} is beyond the diameter of the {data.name} images "
                                     f"({'x'.join(map(str, data.image_shape))}: 255 sqrt(C H W) = {diameter:.4g} "
                                     f"{_PIXELS}): an l2 radius of it already reaches every image")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return from_mapping(cls, data, what="training settings")


def _arch_options(arch: str, width: int) -> dict[str, Any]:
    return {"width": width} if arch == "small-cnn" else {}


def model_meta(config: TrainConfig, data: ImageData) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model without the training config."""
    return {"format": CHECKPOINT_FORMAT, "arch": config.arch, "arch_options": _arch_options(config.arch, config.width),
            "n_classes": data.n_classes, "in_channels": data.image_shape[0], "mean": list(data.mean),
            "std": list(data.std), "class_names": list(data.class_names)}


class Trainer:
    """One training run: model, optimiser, RNG streams and history; one epoch at a time.

    Args:
        config: the run's settings (validated).
        data: the data set (moved to ``device`` here).
        device: where everything runs.
        progress: tqdm bars on stderr.
    """

    def __init__(self, config: TrainConfig, data: ImageData, device: torch.device, progress: bool = False):
        self.config = config.validate()
        self.device = device
        if device.type == "cpu":
            tune_allocator()  # fewer page faults per epoch (real_data.cpu); results unchanged
        self.progress = progress
        self.data, self.val_images, self.val_labels = self._split(data)
        self.amp_dtype = precision_dtype(config.precision, device)
        self.channels_last = use_channels_last(config.memory_format, device)
        c, h, w = data.image_shape
        if config.eval_n > data.x_test.shape[0]:
            raise ValueError(f"eval_n {config.eval_n} exceeds the {data.x_test.shape[0]} test images of {data.name}")
        if min(h, w) <= data.augmentation.padding and config.augment:
            raise ValueError(f"images of {h}x{w} are too small for {data.augmentation.padding}-pixel crop augmentation "
                             "(use --no-augment)")
        self.model = build_arch(config.arch, n_classes=data.n_classes, in_channels=c, mean=data.mean, std=data.std,
                                seed=derive_seed(config.seed, "init"), **_arch_options(config.arch, config.width))
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.forwards = model_forwards(self.model, compile=config.compile)
        graphs = config.cuda_graphs and not config.compile and device.type == "cuda"
        self.pgd = GraphedPGD() if graphs else pgd
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.schedule = config.lr_schedule
        self.generators = {name: torch.Generator(device=device).manual_seed(derive_seed(config.seed, name))
                           for name in ("shuffle", "augment", "attack")}
        self.teacher = self._load_teacher() if config.teacher else None
        self.objective = make_objective(config.objective,
                                        **({"beta": config.trades_beta} if config.mode == Mode.TRADES.value else {}))
        # AWP wraps the objective's step from epoch awp_warmup + 1 on (WeightPerturbed); None when off
        self.awp = WeightPerturbed(self.objective, config.awp_gamma) if config.awp_gamma else None
        self.learner = Learner(forward=lambda x: self.forwards.clean(x), attack=self._attack,
                               loss=target_loss(config.label_smoothing, self.teacher, config.temperature),
                               attacking=config.eps_pixels > 0, model=self.model, natural_mode=config.bn_mode,
                               autocast=lambda: autocast(self.device, self.amp_dtype))
        self.epoch = 0          # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best = BestEpoch()

    def _split(self, data: ImageData) -> tuple[ImageData, torch.Tensor | None, torch.Tensor | None]:
        """(training data, held-out validation images, their labels; None without ``val``), on the device.

        The ``val`` images are held out first (seeded by ``seed`` alone: the same validation set for every
        ``train_n``), then the ``train_n`` subset is drawn from the rest: the two never share an image.
        """
        c = self.config
        seed = derive_seed(c.seed, "train-n")
        if not c.val:
            return train_subset(data, c.train_n, seed).to(self.device), None, None
        total = data.x_train.shape[0]
        if c.train_n and c.val + c.train_n > total:
            raise ValueError(f"val {c.val} and train_n {c.train_n} ask for {c.val + c.train_n} of the {total} "
                             f"training images of {data.name}")
        rest, images, labels = hold_out(data, c.val, derive_seed(c.seed, "val"))
        return train_subset(rest, c.train_n, seed).to(self.device), images.to(self.device), labels.to(self.device)

    def _load_teacher(self) -> ImageClassifier:
        c = self.config
        teacher, _ = model_from_checkpoint(c.teacher, self.data, arch=c.teacher_arch)
        teacher.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def _attack(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Any = None) -> torch.Tensor:
        """The training attack: PGD in the configured BN mode, pixels clamped to [0, 1] (``loss_fn``: TRADES')."""
        c = self.config
        return self.pgd(self.forwards.attack, x, y, eps=c.eps_pixels, norm=c.norm, steps=c.steps,
                        step_size=c.step_pixels, random_start=c.random_start, clamp=(0.0, 1.0),
                        generator=self.generators["attack"], mode=c.bn_mode, loss_fn=loss_fn)

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """Run epoch ``self.epoch + 1``: train, evaluate on the validation set (``val``) and the test split,
        record and return its log row."""
        c = self.config
        lr, train_loss, train_acc = self.fit_epoch()
        self.epoch += 1
        val = self.evaluate_val() if c.val else None
        test = self.evaluate_test()
        standard = c.mode == Mode.STANDARD.value
        row = EpochRecord(epoch=self.epoch, lr=lr, train_loss=train_loss, train_acc=train_acc if standard else None,
                          train_robust_acc=None if standard else train_acc,
                          val_clean_acc=None if val is None else val.clean_acc,
                          val_robust_acc=None if val is None else val.robust_acc, test_clean_acc=test.clean_acc,
                          test_robust_acc=test.robust_acc, test_robust_loss=test.robust_loss,
                          **attribution_record(test)).as_dict()
        self.history.append(row)
        return row

    def fit_epoch(self) -> tuple[float, float, float]:
        """One pass of SGD over the shuffled, augmented training split; returns (lr, mean loss, accuracy).

        Does not advance ``self.epoch`` (:meth:`train_epoch` does); the benchmark times this alone. With
        ``awp_gamma`` the steps of epochs past ``awp_warmup`` are AWP steps.
        """
        lr = self.schedule.lr_at(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        objective = self.awp if self.awp is not None and self.epoch >= self.config.awp_warmup else self.objective
        totals = fit_epoch(objective, self.learner, self.optimizer, self._batches())
        return lr, totals.mean_loss(), totals.accuracy()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's training batches: shuffled, augmented on the device, in the model's memory format."""
        c = self.config
        images, labels = self.data.x_train, self.data.y_train
        n = images.shape[0]
        order = torch.randperm(n, generator=self.generators["shuffle"], device=self.device)
        starts = range(0, n, c.batch_size)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f"epoch {self.epoch + 1}/{c.epochs}", unit="batch", file=sys.stderr,
                          leave=False)
        for start in starts:
            idx = order[start:start + c.batch_size]
            batch = images[idx]
            x = self.data.augmentation.apply(batch, self.generators["augment"]) if c.augment else to_float(batch)
            yield (x if self.channels_last else x.contiguous()), labels[idx]

    def eval_threat(self) -> ThreatModel:
        """The per-epoch evaluation attack (test and validation sets)."""
        c = self.config
        return ThreatModel(eps=c.eps_pixels, norm=c.norm, steps=c.eval_steps,
                           step_size=None if c.eval_step_size is None else c.eval_step_size / 255.0)

    def evaluate_test(self) -> Evaluation:
        """PGD test evaluation (eval mode) with an RNG stream of its own, so it never shifts training RNG."""
        c = self.config
        n = c.eval_n or self.data.x_test.shape[0]
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(c.seed, "eval", self.epoch))
        return evaluate(self.model, self.data.x_test[:n], self.data.y_test[:n], self.eval_threat(),
                        generator=generator, batch_size=c.eval_batch_size, amp_dtype=self.amp_dtype,
                        channels_last=self.channels_last, with_attribution=True, progress=self.progress,
                        forwards=self.forwards, desc=f"test {self.epoch}", pgd_fn=self.pgd)

    def evaluate_val(self) -> Evaluation:
        """The test attack on the held-out validation images (an RNG stream of their own); no attribution."""
        c = self.config
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(c.seed, "val", self.epoch))
        return evaluate(self.model, self.val_images, self.val_labels, self.eval_threat(), generator=generator,
                        batch_size=c.eval_batch_size, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
                        progress=self.progress, forwards=self.forwards, desc=f"val {self.epoch}", pgd_fn=self.pgd)

    # -- state -------------------------------------------------------------------------------
    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()}

    def model_checkpoint(self) -> dict[str, Any]:
        return {**model_meta(self.config, self.data), "model": self.model_state(), "epoch": self.epoch,
                "config": self.config.to_dict()}

    def full_checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`restore` needs (tensors and plain containers only: loads with weights_only)."""
        return {**self.model_checkpoint(), "optimizer": self.optimizer.state_dict(),
                "rng": {name: g.get_state() for name, g in self.generators.items()},
                "device_type": self.device.type, "history": self.history, "best_robust": self.best.value,
                "best_epoch": self.best.epoch}

    def restore(self, blob: dict[str, Any], source: str) -> None:
        """Continue from a :meth:`full_checkpoint` (same config and device kind)."""
        stored = blob.get("config")
        if isinstance(stored, dict):  # runs written before a setting existed resume as runs without it
            stored = {**_ADDED_SETTINGS, **stored}
        if stored != self.config.to_dict():
            differing = sorted(k for k in self.config.to_dict() if (stored or {}).get(k) != self.config.to_dict()[k])
            raise ValueError(f"{source} was written with other settings ({', '.join(differing)}); resume with the "
                             "same flags or choose another --out")
        if "optimizer" not in blob or "rng" not in blob:
            raise ValueError(f"{source} holds no resumable state (optimiser, RNG)")
        if blob.get("device_type") != self.device.type:
            raise ValueError(f"{source} was written on {blob.get('device_type')}; resume on the same device kind")
        load_weights(self.model, blob["model"], source=source)
        self.optimizer.load_state_dict(blob["optimizer"])
        for name, generator in self.generators.items():
            generator.set_state(blob["rng"][name])
        self.epoch = int(blob["epoch"])
        self.history = list(blob["history"])
        self.best = BestEpoch(int(blob["best_epoch"]), float(blob["best_robust"]))


@dataclass
class TrainOutcome:
    """What :func:`train` returns."""

    history: list[dict[str, Any]]
    best_epoch: int
    epochs_done: int
    model: ImageClassifier

    def results(self) -> dict[str, Any]:
        """Scalars of the run: epochs done, best epoch and its test robust accuracy, the last epoch's test
        clean / robust accuracy and robust loss and its training loss (NaN before any epoch)."""
        last = self.history[-1] if self.history else {}
        best = self.history[self.best_epoch - 1] if self.best_epoch else {}
        nan = float("nan")
        return {"epochs_done": self.epochs_done, "best_epoch": self.best_epoch,
                "best_robust_acc": best.get("test_robust_acc", nan), "clean_acc": last.get("test_clean_acc", nan),
                "robust_acc": last.get("test_robust_acc", nan), "robust_loss": last.get("test_robust_loss", nan),
                "train_loss": last.get("train_loss", nan)}


def _save(obj: Any, path: Path) -> None:
    """torch.save atomically: a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def attribution_record(evaluation: Evaluation) -> dict[str, Any]:
    """``cas`` and ``class_matrix`` (C as K lists of K floats) of an evaluation's PGD test inputs.

    The per-epoch test evaluation already crafts those inputs, so the curves of CAS against the epoch
    cost no attack of their own (synthmodel's attribution accumulates ``g(x_adv)`` as the robust
    accuracy is counted).
    """
    if evaluation.attribution is None:
        return {}
    return {"cas": evaluation.attribution.cas, "class_matrix": evaluation.attribution.matrix.tolist()}


def train(config: TrainConfig, out: str | Path, *, device: str = "auto", resume: bool = False,
          stop_after: int | None = None, progress: bool = False, data: ImageData | None = None) -> TrainOutcome:
    """Train (or continue) a run whose files live in ``out``.

    Args:
        config: settings (validated here).
        out: output folder (created).
        device: 'auto' | 'cpu' | 'cuda' | 'cuda:N'.
        resume: continue from ``out/last.pt`` when it exists (a fresh start otherwise).
        stop_after: stop after this many epochs in this call (for time-limited jobs; resume later).
        progress: progress bars on stderr.
        data: the data set, if already loaded (else read from ``config.dataset``).

    Raises:
        ValueError: bad settings, data or checkpoint; an existing run in ``out`` without ``resume``.
    """
    config.validate()
    torch_device = resolve_device(device)
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    out = Path(out)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise ValueError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    data = data if data is not None else load_dataset(config.dataset)
    config.check_data(data)
    trainer = Trainer(config, data, torch_device, progress=progress)
    if resume and last.exists():
        trainer.restore(read_checkpoint(last), source=str(last))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    done_now = 0
    while trainer.epoch < config.epochs and (stop_after is None or done_now < stop_after):
        row = trainer.train_epoch()
        done_now += 1
        if trainer.best.update(trainer.epoch, row[config.selection_metric]):
            _save(trainer.model_checkpoint(), out / "best.pt")
        if config.save_every and trainer.epoch % config.save_every == 0:
            _save(trainer.model_checkpoint(), out / f"epoch_{trainer.epoch:03d}.pt")
        with atomic_path(out / "log.csv") as tmp:
            # the scalar columns (the per-epoch class matrices stay in last.pt's history)
            pd.DataFrame([{k: v for k, v in row.items() if not isinstance(v, list)}
                          for row in trainer.history]).to_csv(tmp, index=False)
        _save(trainer.full_checkpoint(), last)  # last: the resume point, written after everything else
        if progress:
            val = f"val robust {row['val_robust_acc']:.4f} " if config.val else ""
            print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f} {val}test clean {row['test_clean_acc']:.4f} "
                  f"robust {row['test_robust_acc']:.4f}", file=sys.stderr)
    return TrainOutcome(history=trainer.history, best_epoch=trainer.best.epoch, epochs_done=trainer.epoch,
                        model=trainer.model)


def run(params: Mapping[str, Any], out: str | Path, *, device: str = "auto") -> dict[str, Any]:
    """A run as ``settings -> scalars`` (:meth:`TrainOutcome.results`), trained into ``out``, resumed from
    there if interrupted: what a sweep point kind for real data calls."""
    return train(TrainConfig.from_dict(params), out, device=device, resume=True).results()


# -- CLI ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m real_data.train",
                       description="Adversarial training on CIFAR-10/100 or an .npz image set with the "
                                   "paper's official recipe as the default; per-epoch PGD-20 test "
                                   "evaluation, CSV log, best/last/every-k checkpoints, resumable.")
    groups = add_arguments(p, TrainConfig)
    groups["speed"].add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g = groups["output"]
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--resume", action="store_true", help="continue from DIR/last.pt if present")
    g.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N epochs in this call")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = from_namespace(TrainConfig, args).validate()
        check_output_dir(args.out, "--out")  # before the data are read: a wrong place costs nothing
        outcome = train(config, args.out, device=args.device, resume=args.resume, stop_after=args.stop_after,
                        progress=not args.quiet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if outcome.history:
        last = outcome.history[-1]
        print(f"{config.mode} {config.arch} on {config.dataset}: epoch {outcome.epochs_done}/{config.epochs}, "
              f"test clean {last['test_clean_acc']:.4f} robust {last['test_robust_acc']:.4f}, "
              f"best epoch {outcome.best_epoch}; files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
