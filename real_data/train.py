"""Adversarial training on CIFAR-10/100 or any .npz image set, fast on one GPU, testable on CPU.

``python -m real_data.train --dataset cifar10:DIR --out runs/at`` runs the paper's official recipe
(PAPER.md, "Official training recipe"): PreActResNet-18, SGD (momentum 0.9, weight decay 5e-4),
lr 0.1 x0.1 at epochs 100 and 150 of 200, batch 128, random crop (4 px reflect padding) + flip,
PGD-10 l_inf AT with eps 8/255, step 2/255, random start, attacked in train (batch-norm) mode as the
official code does; PGD-20 (step eps/4) test evaluation every epoch; best / last / every-10th
checkpoints. Every part is a flag (``--help``).

Modes: ``standard`` (clean training), ``at`` (PGD AT, l_inf or l2; ``--label-smoothing`` gives
AT + label smoothing), ``trades`` (beta 6), ``kd`` (AT against a teacher's soft labels on the same
adversarial input, ``--teacher FILE``). Losses and the attack are synthmodel's (one implementation).

Output folder: ``config.json``, ``log.csv`` (one row per epoch), ``last.pt`` (everything needed to
resume: model, optimiser, epoch, RNG states, history), ``best.pt`` (highest test robust accuracy),
``epoch_NNN.pt`` every ``--save-every`` epochs. ``--resume`` continues from ``last.pt``; the
continued run equals an uninterrupted one bit for bit on CPU (same device kind required).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from synthmodel.attacks import Norm, pgd, preserve_mode
from synthmodel.cli import ArgumentParser
from synthmodel.losses import check_alpha, robust_objective, trades_attack_loss, trades_loss
from synthmodel.sample import derive_seed
from synthmodel.train import settings_from_dict

from .checkpoints import load_weights, model_from_checkpoint, read_checkpoint
from .cpu import tune_allocator
from .data import DATASET_SPECS, ImageData, augmentation_defaults, load_dataset, to_float, train_subset
from .evaluate import Evaluation, ThreatModel, evaluate
from .graphs import GraphedPGD
from .models import ARCHS, ImageClassifier, build_arch
from .runtime import (
    CHECKPOINT_FORMAT,
    MEMORY_FORMATS,
    PRECISIONS,
    autocast,
    model_forwards,
    precision_dtype,
    resolve_device,
    save_atomic,
    use_channels_last,
)

__all__ = ["Mode", "TrainConfig", "Trainer", "train", "build_parser", "main"]


class Mode(str, Enum):
    STANDARD = "standard"
    AT = "at"
    TRADES = "trades"
    KD = "kd"


SCHEDULES = ("step", "cosine", "constant")
ATTACK_BN = ("auto", "train", "eval")
_DEFAULT_EPS = {"linf": 8.0, "l2": 128.0}   # in 1/255 pixel units (the official code's units)
_DEFAULT_STEP = {"linf": 2.0, "l2": 16.0}


@dataclass
class TrainConfig:
    """Everything that determines a run's result (units in comments). Defaults: the official recipe."""

    dataset: str                        # see real_data.data.DATASET_SPECS
    train_n: int = 0                    # seeded, stratified subset of the training split (0 = all of it)
    arch: str = "preact-resnet18"       # see real_data.models.ARCHS
    width: int = 32                     # channels of small-cnn's first stage (other archs ignore it)
    mode: str = "at"                    # standard | at | trades | kd
    norm: str = "linf"                  # linf | l2
    eps: float | None = None            # radius in 1/255 pixel units; None = 8 (linf) / 128 (l2)
    step_size: float | None = None      # PGD step in 1/255 units; None = 2 (linf) / 16 (l2)
    steps: int = 10                     # PGD steps in training
    random_start: bool = True           # uniform random start in the ball
    attack_bn: str = "auto"             # BN mode while attacking: auto (at/kd train, trades eval) | train | eval
    eval_steps: int = 20                # PGD steps of the per-epoch test evaluation
    eval_step_size: float | None = None  # 1/255 units; None = eps / 4
    eval_n: int = 0                     # test images evaluated per epoch (0 = all)
    trades_beta: float = 6.0            # TRADES weight of the KL term
    label_smoothing: float = 0.0        # alpha in [0, 1)
    teacher: str | None = None          # teacher checkpoint (mode kd)
    teacher_arch: str = "preact-resnet18"  # architecture of a bare-state_dict teacher
    temperature: float = 1.0            # teacher softmax temperature
    epochs: int = 200
    batch_size: int = 128               # images per SGD step
    lr: float = 0.1                     # initial learning rate (per batch of batch_size)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"              # step | cosine | constant
    milestones: tuple[int, ...] | None = None  # step schedule: epochs where lr *= gamma; None = 50% and 75%
    gamma: float = 0.1
    augment: bool = True                # the data set's default augmentation (real_data.data.AUGMENTATIONS)
    seed: int = 0
    save_every: int = 10                # epoch_NNN.pt every this many epochs (0 = never)
    precision: str = "auto"             # auto (bf16 autocast on CUDA) | bf16 | fp32
    memory_format: str = "auto"         # auto (channels_last, CPU and CUDA) | channels_last | contiguous
    compile: bool = False               # torch.compile the forward pass
    cuda_graphs: bool = True            # on CUDA, replay each attack from a CUDA graph (not with compile)
    eval_batch_size: int = 512

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

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (constant within an epoch, as in the official code)."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        milestones = self.milestones if self.milestones is not None else (self.epochs // 2, (3 * self.epochs) // 4)
        return self.lr * self.gamma ** sum(epoch >= m for m in milestones)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first impossible setting."""
        def choice(name: str, allowed) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

        choice("arch", tuple(ARCHS))
        choice("teacher_arch", tuple(ARCHS))
        choice("mode", tuple(m.value for m in Mode))
        choice("norm", tuple(n.value for n in Norm))
        choice("attack_bn", ATTACK_BN)
        choice("schedule", SCHEDULES)
        choice("precision", PRECISIONS)
        choice("memory_format", MEMORY_FORMATS)
        for name in ("eps", "step_size", "eval_step_size", "trades_beta", "temperature", "lr", "momentum",
                     "weight_decay", "gamma"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.lr <= 0 or self.temperature <= 0 or (self.step_size is not None and self.step_size <= 0):
            raise ValueError("lr, temperature and step_size must be > 0")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        for name in ("epochs", "batch_size", "steps", "eval_steps", "eval_batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_n < 0 or self.save_every < 0 or self.train_n < 0:
            raise ValueError("eval_n, save_every and train_n must be >= 0")
        check_alpha(self.label_smoothing)
        if self.mode == Mode.KD.value and not self.teacher:
            raise ValueError("mode kd needs --teacher CHECKPOINT")
        if self.teacher and self.label_smoothing:
            raise ValueError("use either label smoothing or a teacher, not both")
        if self.milestones is not None and any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be epochs >= 1, got {list(self.milestones)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = None if self.milestones is None else list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return settings_from_dict(cls, data)


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
        self.data = train_subset(data, config.train_n, derive_seed(config.seed, "train-n")).to(device)
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
        self.generators = {name: torch.Generator(device=device).manual_seed(derive_seed(config.seed, name))
                           for name in ("shuffle", "augment", "attack")}
        self.teacher = self._load_teacher() if config.teacher else None
        self.epoch = 0          # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_robust = -1.0
        self.best_epoch = 0

    def _load_teacher(self) -> ImageClassifier:
        c = self.config
        teacher, _ = model_from_checkpoint(c.teacher, self.data, arch=c.teacher_arch)
        teacher.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    # -- one batch ---------------------------------------------------------------------------
    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(x).float()

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss of a batch (x (N, C, H, W) in [0, 1], y (N,)) and the logits it was computed from."""
        c = self.config
        soft = {"alpha": c.label_smoothing, "temperature": c.temperature}
        eps = c.eps_pixels
        if c.mode == Mode.STANDARD.value or eps == 0:
            logits = self.forwards.clean(x)
            if c.mode == Mode.TRADES.value:
                return trades_loss(logits, logits, y, c.trades_beta, teacher_logits=self._teacher_logits(x),
                                   **soft), logits
            return robust_objective(logits, y, teacher_logits=self._teacher_logits(x), **soft), logits
        attack = {"eps": eps, "norm": c.norm, "steps": c.steps, "step_size": c.step_pixels,
                  "random_start": c.random_start, "clamp": (0.0, 1.0), "generator": self.generators["attack"],
                  "mode": c.bn_mode}
        if c.mode == Mode.TRADES.value:
            with torch.no_grad(), preserve_mode(self.model, c.bn_mode):
                probs_natural = torch.softmax(self.forwards.clean(x).float(), dim=1)
            x_adv = self.pgd(self.forwards.attack, x, probs_natural, loss_fn=trades_attack_loss, **attack)
            logits_adv = self.forwards.clean(x_adv)
            return trades_loss(self.forwards.clean(x), logits_adv, y, c.trades_beta,
                               teacher_logits=self._teacher_logits(x), **soft), logits_adv
        x_adv = self.pgd(self.forwards.attack, x, y, **attack)
        logits = self.forwards.clean(x_adv)
        return robust_objective(logits, y, teacher_logits=self._teacher_logits(x_adv), **soft), logits

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """Run epoch ``self.epoch + 1``: train, evaluate on the test split, record and return its log row."""
        c = self.config
        lr, train_loss, train_acc = self.fit_epoch()
        self.epoch += 1
        test = self.evaluate_test()
        row = {"epoch": self.epoch, "lr": lr, "train_loss": train_loss,
               "train_robust_acc" if c.mode != Mode.STANDARD.value else "train_acc": train_acc,
               "test_clean_acc": test.clean_acc, "test_robust_acc": test.robust_acc,
               "test_robust_loss": test.robust_loss, **attribution_record(test)}
        self.history.append(row)
        return row

    def fit_epoch(self) -> tuple[float, float, float]:
        """One pass of SGD over the shuffled, augmented training split; returns (lr, mean loss, accuracy).

        Does not advance ``self.epoch`` (:meth:`train_epoch` does); the benchmark times this alone.
        """
        c = self.config
        lr = c.lr_at(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.data.x_train, self.data.y_train
        n = images.shape[0]
        order = torch.randperm(n, generator=self.generators["shuffle"], device=self.device)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        starts = range(0, n, c.batch_size)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f"epoch {self.epoch + 1}/{c.epochs}", unit="batch", file=sys.stderr,
                          leave=False)
        self.model.train()
        for start in starts:
            idx = order[start:start + c.batch_size]
            batch = images[idx]
            x = self.data.augmentation.apply(batch, self.generators["augment"]) if c.augment else to_float(batch)
            x = x if self.channels_last else x.contiguous()
            y = labels[idx]
            with autocast(self.device, self.amp_dtype):
                loss, logits = self.batch_loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += loss.detach().double() * idx.numel()
            correct += (logits.detach().argmax(1) == y).sum()
        return lr, total_loss.item() / n, correct.item() / n

    def evaluate_test(self):
        """PGD test evaluation (eval mode) with an RNG stream of its own, so it never shifts training RNG."""
        c = self.config
        n = c.eval_n or self.data.x_test.shape[0]
        threat = ThreatModel(eps=c.eps_pixels, norm=c.norm, steps=c.eval_steps,
                             step_size=None if c.eval_step_size is None else c.eval_step_size / 255.0)
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(c.seed, "eval", self.epoch))
        return evaluate(self.model, self.data.x_test[:n], self.data.y_test[:n], threat, generator=generator,
                        batch_size=c.eval_batch_size, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
                        with_attribution=True, progress=self.progress, forwards=self.forwards,
                        desc=f"test {self.epoch}", pgd_fn=self.pgd)

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
                "device_type": self.device.type, "history": self.history, "best_robust": self.best_robust,
                "best_epoch": self.best_epoch}

    def restore(self, blob: dict[str, Any], source: str) -> None:
        """Continue from a :meth:`full_checkpoint` (same config and device kind)."""
        stored = blob.get("config")
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
        self.best_robust = float(blob["best_robust"])
        self.best_epoch = int(blob["best_epoch"])


@dataclass
class TrainOutcome:
    """What :func:`train` returns."""

    history: list[dict[str, Any]]
    best_epoch: int
    epochs_done: int
    model: ImageClassifier


def attribution_record(evaluation: Evaluation) -> dict[str, Any]:
    """``cas`` and ``class_matrix`` (C as K lists of K floats) of an evaluation's PGD test inputs.

    The per-epoch test evaluation already crafts those inputs, so the curves of CAS against the epoch
    cost no attack of their own (synthmodel's attribution accumulates ``g(x_adv)`` as the robust
    accuracy is counted).
    """
    if evaluation.attribution is None:
        return {}
    return {"cas": evaluation.attribution.cas, "class_matrix": evaluation.attribution.matrix.tolist()}


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The scalar columns of ``rows`` (the per-epoch class matrices stay in last.pt's history)."""
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame([{k: v for k, v in row.items() if not isinstance(v, list)} for row in rows]).to_csv(tmp, index=False)
    os.replace(tmp, path)


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
    trainer = Trainer(config, data, torch_device, progress=progress)
    if resume and last.exists():
        trainer.restore(read_checkpoint(last), source=str(last))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    done_now = 0
    while trainer.epoch < config.epochs and (stop_after is None or done_now < stop_after):
        row = trainer.train_epoch()
        done_now += 1
        if row["test_robust_acc"] > trainer.best_robust:
            trainer.best_robust, trainer.best_epoch = row["test_robust_acc"], trainer.epoch
            save_atomic(trainer.model_checkpoint(), out / "best.pt")
        if config.save_every and trainer.epoch % config.save_every == 0:
            save_atomic(trainer.model_checkpoint(), out / f"epoch_{trainer.epoch:03d}.pt")
        _write_csv(trainer.history, out / "log.csv")
        save_atomic(trainer.full_checkpoint(), last)  # last: the resume point, written after everything else
        if progress:
            print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f} test clean {row['test_clean_acc']:.4f} "
                  f"robust {row['test_robust_acc']:.4f}", file=sys.stderr)
    return TrainOutcome(history=trainer.history, best_epoch=trainer.best_epoch, epochs_done=trainer.epoch,
                        model=trainer.model)


# -- CLI ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(dataset="")
    p = ArgumentParser(prog="python -m real_data.train",
                       description="Adversarial training on CIFAR-10/100 or an .npz image set with the "
                                   "paper's official recipe as the default; per-epoch PGD-20 test "
                                   "evaluation, CSV log, best/last/every-k checkpoints, resumable.")
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", required=True, help=DATASET_SPECS)
    g.add_argument("--train-n", type=int, default=d.train_n, metavar="N",
                   help="train on a seeded, class-stratified subset of N training images (default 0: all)")
    g.add_argument("--arch", choices=list(ARCHS), default=d.arch)
    g.add_argument("--width", type=int, default=d.width, help="small-cnn first-stage channels (default %(default)s)")
    g = p.add_argument_group("objective")
    g.add_argument("--mode", choices=[m.value for m in Mode], default=d.mode,
                   help="standard | at (PGD AT) | trades | kd (AT with a teacher's soft labels)")
    g.add_argument("--norm", choices=[n.value for n in Norm], default=d.norm)
    g.add_argument("--eps", type=float, default=None, help="radius in 1/255 units (default 8 linf, 128 l2)")
    g.add_argument("--step-size", type=float, default=None, help="PGD step in 1/255 units (default 2 linf, 16 l2)")
    g.add_argument("--steps", type=int, default=d.steps, help="PGD steps in training (default %(default)s)")
    g.add_argument("--no-random-start", dest="random_start", action="store_false", help="start PGD at x")
    g.add_argument("--attack-bn", choices=ATTACK_BN, default=d.attack_bn,
                   help="batch-norm mode while attacking: auto = train for at/kd, eval for trades (the official "
                        "code's choices)")
    g.add_argument("--trades-beta", type=float, default=d.trades_beta)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="ALPHA")
    g.add_argument("--teacher", default=None, metavar="CHECKPOINT", help="teacher for mode kd")
    g.add_argument("--teacher-arch", choices=list(ARCHS), default=d.teacher_arch,
                   help="architecture of a bare-state_dict teacher (official checkpoints)")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-steps", type=int, default=d.eval_steps, help="PGD steps of the test attack")
    g.add_argument("--eval-step-size", type=float, default=None, help="1/255 units (default eps/4)")
    g.add_argument("--eval-n", type=int, default=d.eval_n, help="test images per epoch (0 = all)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    g.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="step schedule epochs (default 50%% and 75%% of --epochs)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="lr factor at each milestone")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help=f"no augmentation; default per data set: {augmentation_defaults()}")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("speed")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="auto = bf16 autocast on CUDA")
    g.add_argument("--memory-format", choices=MEMORY_FORMATS, default=d.memory_format,
                   help="auto = channels_last (faster on CUDA and on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    g.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="launch the attacks' kernels one by one instead of replaying CUDA graphs")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--save-every", type=int, default=d.save_every, help="epoch_NNN.pt every k epochs (0 = never)")
    g.add_argument("--resume", action="store_true", help="continue from DIR/last.pt if present")
    g.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N epochs in this call")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
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
