"""Checkpoint files of the real-data pipeline (reading and rebuilding models).

Checkpoint files (``.pt``) are read with ``torch.load(weights_only=True)``: only tensors and plain
containers are accepted, so a file from a stranger cannot run code. Two kinds are understood:

* this package's files (``format = "real_data-checkpoint-1"``): the architecture, its options,
  class and channel counts, normalisation statistics, the model state_dict, and for ``last.pt``
  everything needed to resume (optimiser, RNG states, history);
* the official code's files: a bare state_dict of PreActResNet-18 (possibly saved from
  ``nn.DataParallel``, with ``module.`` prefixes). The architecture and normalisation then come
  from the command line and the data set.

Device and precision live in :mod:`real_data.device`, compiled forwards in :mod:`real_data.forwards`,
atomic writes in :mod:`synthmodel.atomic`; the names :mod:`real_data.cas` and :mod:`real_data.saliency` take
from here are re-exported (``save_figure_atomic`` writes through :func:`synthmodel.atomic.atomic_path`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from synthmodel.atomic import atomic_path

from .data import ImageData
from .device import MEMORY_FORMATS, PRECISIONS, precision_dtype, resolve_device, use_channels_last
from .models import ImageClassifier, build_arch, load_weights

__all__ = ["read_checkpoint", "model_from_checkpoint", "CHECKPOINT_FORMAT", "save_figure_atomic", "resolve_device",
           "precision_dtype", "use_channels_last", "PRECISIONS", "MEMORY_FORMATS"]

CHECKPOINT_FORMAT = "real_data-checkpoint-1"


def save_figure_atomic(fig: Any, path: str | Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG atomically (:func:`synthmodel.atomic.atomic_path`) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (weights_only=True) onto the CPU.

    Returns:
        this package's dict as written, or for an official bare state_dict
        ``{"format": "state_dict", "model": state}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(f"checkpoint {path} is not a safe, readable torch file ({exc.__class__.__name__}: "
                         f"{first})") from None
    if isinstance(blob, Mapping) and blob.get("format") == CHECKPOINT_FORMAT:
        return dict(blob)
    if isinstance(blob, Mapping) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return {"format": "state_dict", "model": dict(blob)}
    if isinstance(blob, Mapping) and isinstance(blob.get("state_dict"), Mapping):
        return {"format": "state_dict", "model": dict(blob["state_dict"])}
    raise ValueError(f"checkpoint {path} is neither a real_data checkpoint nor a state_dict")


def model_from_checkpoint(path: str | Path, data: ImageData | None = None, arch: str = "preact-resnet18",
                          arch_options: Mapping[str, Any] | None = None) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild a model (CPU, eval mode) from a checkpoint of either kind.

    Args:
        path: the file.
        data: the data set (required for bare state_dicts: class count, channels, mean/std; for this
            package's files it is checked against the stored class count).
        arch: architecture of a bare state_dict (default the paper's PreActResNet-18).
        arch_options: options of that architecture (e.g. ``{"width": 8}`` for small-cnn).

    Returns:
        (model, blob) where blob is what :func:`read_checkpoint` returned.
    """
    blob = read_checkpoint(path)
    if blob["format"] == CHECKPOINT_FORMAT:
        n_classes, in_channels = int(blob["n_classes"]), int(blob["in_channels"])
        if data is not None and (data.n_classes != n_classes or data.image_shape[0] != in_channels):
            raise ValueError(f"checkpoint {path} is for {n_classes} classes / {in_channels} channels, the data set "
                             f"{data.name} has {data.n_classes} / {data.image_shape[0]}")
        model = build_arch(blob["arch"], n_classes=n_classes, in_channels=in_channels, mean=tuple(blob["mean"]),
                           std=tuple(blob["std"]), **dict(blob.get("arch_options") or {}))
    else:
        if data is None:
            raise ValueError(f"checkpoint {path} is a bare state_dict: give the data set to rebuild its model")
        model = build_arch(arch, n_classes=data.n_classes, in_channels=data.image_shape[0], mean=data.mean,
                           std=data.std, **dict(arch_options or {}))
    load_weights(model, blob["model"], source=f"checkpoint {path}")
    return model.eval(), blob
