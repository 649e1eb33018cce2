"""Device, precision and checkpoint handling shared by the real-data CLIs.

Checkpoint files (``.pt``) are read with ``torch.load(weights_only=True)``: only tensors and plain
containers are accepted, so a file from a stranger cannot run code. Two kinds are understood:

* this package's files (``format = "real_data-checkpoint-1"``): the architecture, its options,
  class and channel counts, normalisation statistics, the model state_dict, and for ``last.pt``
  everything needed to resume (optimiser, RNG states, history);
* the official code's files: a bare state_dict of PreActResNet-18 (possibly saved from
  ``nn.DataParallel``, with ``module.`` prefixes). The architecture and normalisation then come
  from the command line and the data set.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["resolve_device", "autocast", "Forwards", "model_forwards", "precision_dtype", "use_channels_last",
           "save_atomic", "save_figure_atomic", "CHECKPOINT_FORMAT", "PRECISIONS", "MEMORY_FORMATS"]

CHECKPOINT_FORMAT = "real_data-checkpoint-1"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")           # auto = bf16 autocast on CUDA, fp32 on CPU
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # auto = channels_last (on CUDA and on CPU)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU -> ValueError."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bfloat16 or None (full float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def use_channels_last(memory_format: str, device: torch.device) -> bool:
    """Whether activations and weights are laid out channels_last ('auto': yes, on every device).

    On CUDA cuDNN's bf16 kernels want NHWC; on CPU oneDNN's convolutions, batch norm and max-pooling are
    faster in NHWC too (one PGD-10 AT epoch of the small CNN on Fashion-MNIST: 1.3-1.5x, PreActResNet-18
    on CIFAR shapes 1.1x; ``benchmarks/real_data_cpu_epoch.py``).
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return memory_format != "contiguous"  # the same choice on every device kind (see above)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """bf16 autocast on ``device`` when dtype is given, else nothing (float32)."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


class _AttackView(torch.nn.Module):
    """``model`` as PGD calls it; a class of its own so that torch.compile keeps the attack's graphs apart.

    Dynamo keeps one cache of compiled graphs per code object and stops compiling a function after
    ``torch._dynamo.config.recompile_limit`` (8) variants, running it eagerly from then on. Attacks
    (input requires grad, weights frozen; train or eval mode) and clean passes / training steps
    (weights require grad, or no grad at all) are different graphs, and the last batch of an epoch
    adds a dynamic-batch variant of each: in one cache, an AT run with its test evaluation fills all
    8 entries. With the attack behind this view each cache holds about half of them.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@dataclass(frozen=True)
class Forwards:
    """How a model is called: ``clean`` for clean logits and training steps, ``attack`` inside PGD.

    Both compute ``model(x)``; they differ only in whether (and with which cache) they are compiled.
    """

    clean: torch.nn.Module
    attack: torch.nn.Module


def model_forwards(model: torch.nn.Module, compile: bool = False, mode: str | None = None) -> Forwards:
    """The model itself twice, or two torch.compile'd entry points with separate graph caches.

    Args:
        model: the classifier (its parameters are updated in place; compiled graphs read them live).
        compile: wrap in ``torch.compile``.
        mode: torch.compile's mode (None = its default); implies ``compile``.
    """
    if not (compile or mode):
        return Forwards(clean=model, attack=model)
    return Forwards(clean=torch.compile(model, mode=mode), attack=torch.compile(_AttackView(model), mode=mode))


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_figure_atomic(fig: Any, path: str | Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG to a temporary file, then rename (as :func:`save_atomic`); close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
