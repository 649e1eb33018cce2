"""Checkpoint files of this package and of the common adversarial-training codebases, read safely.

Every file is read with ``torch.load(weights_only=True)``: tensors, plain containers and numbers
only, so a file from a stranger cannot run code. A small list of data-only types is allowed beside
them (numpy scalars, arrays and dtypes; ``argparse.Namespace``, whose contents pass the same
restricted unpickler), because training scripts commonly store accuracies and arguments that way.
Any other pickled object is refused with its type named (re-save the state_dict alone, where you
trust the file).

Containers recognised (:func:`read_checkpoint`, reported in ``blob["container"]``):

* this package's files (``format = "real_data-checkpoint-1"``): architecture, options, class and
  channel counts, normalisation statistics, the state_dict, and for ``last.pt`` the resume state;
* a bare state_dict (the paper's official code, TRADES, RobustBench);
* ``{'state_dict': ...}`` (locuslab/robust_overfitting's ``model_best.pth``, RobustBench's downloads);
* ``{'model_state_dict': ...}`` (imrahulr/adversarial_robustness_pytorch);
* ``{'model': ...}``; with ``model.*`` and ``normalizer.new_mean`` / ``new_std`` keys it is a
  MadryLab/robustness ``AttackerModel``: the network is ``model.*`` (the ``attacker.*`` copy is
  ignored) and its input normalisation is read from the file.

Prefixes that every key carries are stripped: ``module.`` (``nn.DataParallel``), ``_orig_mod.``
(``torch.compile``), ``model.`` and a ``nn.Sequential`` position (``0.``, ``1.``: a model wrapped
with a normalisation layer). WideResNets of the TRADES repository carry an unused ``sub_block1``
(shapes of ``block1``, never called in forward): it is dropped. A state_dict that still does not
fit the architecture is refused with the missing, unexpected and mis-shaped keys named.

The input normalisation of a foreign network (``--input-normalization``): ``none`` (the network
takes raw pixels in [0, 1], as RobustBench's and TRADES' models), ``cifar10``, ``cifar100``,
``dataset`` (the data set's statistics inside the model, as the paper's code: the default) or
``MEAN/STD`` (comma-separated per channel, e.g. ``0.5/0.25`` or ``0.49,0.48,0.45/0.25,0.24,0.26``).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from synthmodel.atomic import check_input_file

from .data import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, ImageData
from .models import ImageClassifier, WideResNet, build_arch

__all__ = ["CHECKPOINT_FORMAT", "read_checkpoint", "model_from_checkpoint", "load_weights", "strip_prefixes",
           "InputNormalization", "parse_input_normalization", "input_normalization_arg", "NORMALIZATIONS",
           "safe_globals"]

CHECKPOINT_FORMAT = "real_data-checkpoint-1"  # this package's checkpoint files (model_meta in real_data.train)

NORMALIZATIONS = "none | cifar10 | cifar100 | dataset | MEAN/STD"
_PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel / DDP, torch.compile, a wrapper's .model
_POSITION = re.compile(r"(\d+)\.")               # a common nn.Sequential position
_CONTAINER_KEYS = (("state_dict", "{'state_dict': ...}"), ("model_state_dict", "{'model_state_dict': ...}"),
                   ("model", "{'model': ...}"))


# -- safe reading -------------------------------------------------------------------------------
def safe_globals() -> list[Any]:
    """The data-only types allowed beside tensors: numpy scalars / arrays / dtypes (numpy 1 and 2
    names) and ``argparse.Namespace``. Object arrays are not among them."""
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.ndarray, np.dtype, core.multiarray.scalar, core.multiarray._reconstruct,
                          argparse.Namespace,
                          (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
                          (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [t for name in dir(dtypes) if isinstance(t := getattr(dtypes, name), type)
                    and issubclass(t, np.dtype) and t is not getattr(dtypes, "ObjectDType", None)]
    return allowed


def _allowed_names() -> set[str]:
    names = set()
    for item in safe_globals():
        obj, name = item if isinstance(item, tuple) else (item, None)
        names.add(name or f"{obj.__module__}.{obj.__qualname__}")
    return names


def _load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or unsafe files
        try:
            unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _allowed_names())
        except Exception:  # not a zip-format torch file: no list to give
            unsafe = []
        if unsafe:
            raise ValueError(f"checkpoint {path} holds pickled objects besides tensors ({', '.join(unsafe[:6])}"
                             f"{' ...' if len(unsafe) > 6 else ''}), refused because unpickling them can run code; "
                             "where you trust the file, re-save its state_dict alone") from None
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(f"checkpoint {path} is not a safe, readable torch file ({exc.__class__.__name__}: "
                         f"{first})") from None


def _is_state(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _strip(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    state, stripped = dict(state), []
    while state:
        keys = list(state)
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in keys)), None)
        if prefix is None:
            match = _POSITION.match(keys[0])
            prefix = match[0] if match and all(k.startswith(match[0]) for k in keys) else None
        if prefix is None:
            return state, stripped
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped.append(prefix)
    return state, stripped


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes that *every* key carries: ``module.``, ``_orig_mod.``, ``model.`` or an
    ``nn.Sequential`` position ``N.``, repeatedly (wrappers nest)."""
    return _strip(state)[0]


def _unwrap(blob: Any, path: Path) -> dict[str, Any]:
    """The state_dict inside a foreign container, what the container was, and stored statistics."""
    if _is_state(blob):
        state, container, extra = blob, "bare state_dict", {}
    else:
        found = [(key, name) for key, name in _CONTAINER_KEYS if isinstance(blob, Mapping) and _is_state(blob.get(key))]
        if not found:
            kind = (f"a dict with keys {', '.join(map(str, list(blob)[:8]))}" if isinstance(blob, Mapping)
                    else f"a {type(blob).__name__}")
            raise ValueError(f"checkpoint {path} is an unknown container ({kind}): expected a real_data checkpoint, "
                             "a bare state_dict, or a dict holding one under 'state_dict', 'model_state_dict' or "
                             "'model'")
        key, container = found[0]
        state = blob[key]
        extra = {k: v for k, v in blob.items() if k == "epoch" and isinstance(v, int)}
    state, stripped = _strip(state)
    result: dict[str, Any] = {"format": "state_dict", **extra}
    if "normalizer.new_mean" in state and any(k.startswith("model.") for k in state):
        # MadryLab/robustness AttackerModel: normalizer (C, 1, 1) buffers, the network under model.*
        result["input_mean"] = tuple(float(v) for v in state["normalizer.new_mean"].flatten())
        result["input_std"] = tuple(float(v) for v in state["normalizer.new_std"].flatten())
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        container = "MadryLab robustness {'model': ...} (normalizer statistics from the file)"
    notes = [container] + [f"prefix {p} stripped" for p in stripped]
    result.update(model=state, container=", ".join(notes))
    return result


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (weights_only=True) onto the CPU.

    Returns:
        this package's dict as written, or for a foreign container ``{"format": "state_dict",
        "model": state (prefixes stripped), "container": description, ["epoch"], ["input_mean",
        "input_std"] (MadryLab robustness)}``.

    Raises:
        ValueError: a missing, corrupt or unsafe file, or an unknown container (its keys named).
    """
    path = check_input_file(path, "checkpoint")
    blob = _load(path)
    if isinstance(blob, Mapping) and blob.get("format") == CHECKPOINT_FORMAT:
        return {**blob, "container": "real_data checkpoint"}
    return _unwrap(blob, path)


# -- loading into a model -------------------------------------------------------------------------
def _wrn_shape(state: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """(depth, width) of a WideResNet state_dict in the TRADES / RobustBench layout, else None."""
    blocks = [k for k in state if re.fullmatch(r"block1\.layer\.\d+\.conv1\.weight", k)]
    first = state.get("block1.layer.0.conv1.weight")
    if not blocks or first is None or first.dim() != 4:
        return None
    return 6 * len(blocks) + 4, max(first.shape[0] // 16, 1)


def _drop_unused_sub_block(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """TRADES' WideResNet defines ``sub_block1`` (block1's shapes) and never calls it: drop those keys
    when every one mirrors a ``block1`` key of the same shape."""
    extra = [k for k in state if k.startswith("sub_block1.")]
    if not isinstance(model, WideResNet) or not extra:
        return state, ""
    expected = model.state_dict()
    mirrors = all(("block1." + k[len("sub_block1."):]) in expected
                  and expected["block1." + k[len("sub_block1."):]].shape == state[k].shape for k in extra)
    if not mirrors:
        return state, ""
    return {k: v for k, v in state.items() if k not in extra}, f"{len(extra)} unused sub_block1 keys dropped"


def load_weights(model: nn.Module, state: Mapping[str, object], source: str = "checkpoint") -> str:
    """Load a state_dict into ``model`` strictly, after stripping wrapper prefixes and unused keys.

    Returns:
        what was adapted ('' if nothing), e.g. "30 unused sub_block1 keys dropped".

    Raises:
        ValueError: naming the missing, unexpected and wrongly shaped keys (a checkpoint of another
            architecture, depth, width or class count), never a half-loaded model.
    """
    if not _is_state(state):
        raise ValueError(f"{source} does not hold a state_dict of tensors")
    clean, _ = _strip(state)  # type: ignore[arg-type]
    clean, note = _drop_unused_sub_block(model, clean)
    expected = model.state_dict()
    missing = [k for k in expected if k not in clean]
    unexpected = [k for k in clean if k not in expected]
    shapes = [f"{k} {tuple(clean[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in clean and clean[k].shape != v.shape]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        found = _wrn_shape(clean)
        what = type(model).__name__
        if isinstance(model, WideResNet):
            what = f"wrn-{model.depth}-{model.widen}"
            if found is not None and found != (model.depth, model.widen):
                what += f" (the checkpoint holds a wrn-{found[0]}-{found[1]}: pass --arch wrn-{found[0]}-{found[1]})"
        parts = [f"missing keys {few(missing)}" if missing else "",
                 f"unexpected keys {few(unexpected)}" if unexpected else "",
                 f"shape mismatches {few(shapes)}" if shapes else ""]
        raise ValueError(f"{source} does not fit {what}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(clean, strict=True)
    return note


# -- input normalisation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class InputNormalization:
    """How a network expects its inputs: ``kind`` none | cifar10 | cifar100 | dataset | custom (with
    ``mean`` / ``std``: one value for every channel, or one per channel)."""

    kind: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def resolve(self, data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std), one value per channel of ``data``'s images."""
        channels = data.image_shape[0]
        mean, std = {"none": ((0.0,), (1.0,)), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
                     "cifar100": (CIFAR100_MEAN, CIFAR100_STD), "dataset": (data.mean, data.std),
                     "custom": (self.mean, self.std)}[self.kind]
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"input normalisation {self} has {len(mean)} values, the images of {data.name} have "
                             f"{channels} channels")
        return tuple(mean), tuple(std)

    def __str__(self) -> str:
        if self.kind != "custom":
            return self.kind
        return ",".join(f"{v:g}" for v in self.mean) + "/" + ",".join(f"{v:g}" for v in self.std)


def parse_input_normalization(text: str) -> InputNormalization:
    """``none | cifar10 | cifar100 | dataset | MEAN/STD`` (comma-separated values, std > 0).

    Raises:
        ValueError: a string that does not parse.
    """
    text = text.strip()
    if text in ("none", "cifar10", "cifar100", "dataset"):
        return InputNormalization(text)
    mean_text, sep, std_text = text.partition("/")
    try:
        if not sep:
            raise ValueError
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        mean, std = (), ()
    if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"input normalisation must be one of {NORMALIZATIONS} (MEAN/STD: as many comma-separated "
                         f"means as standard deviations, each std > 0, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616)"
                         f"; got {text!r}")
    return InputNormalization("custom", mean, std)


def input_normalization_arg(text: str) -> InputNormalization:
    """argparse ``type=`` for ``--input-normalization`` (the parse error reaches the one error line)."""
    try:
        return parse_input_normalization(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_from_checkpoint(path: str | Path, data: ImageData | None = None, arch: str = "preact-resnet18",
                          arch_options: Mapping[str, Any] | None = None,
                          normalization: InputNormalization | None = None) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild a model (CPU, eval mode) from a checkpoint of any recognised container.

    Args:
        path: the file.
        data: the data set (required for foreign checkpoints: class count, channels, statistics; for
            this package's files it is checked against the stored class and channel counts).
        arch: architecture of a foreign checkpoint (default the paper's PreActResNet-18); for
            ``wrn-D-W`` a missing ``fc.bias`` selects the bias-free head.
        arch_options: options of that architecture (e.g. ``{"width": 8}`` for small-cnn).
        normalization: the network's input normalisation. None: the statistics stored in the file
            (this package's files, MadryLab robustness) or else ``dataset``; given, it overrides.

    Returns:
        (model, blob): blob is what :func:`read_checkpoint` returned, with ``"container"`` extended
        by what loading adapted and ``"input_normalization"`` saying which statistics were used.
    """
    blob = read_checkpoint(path)
    if blob["format"] == CHECKPOINT_FORMAT:
        n_classes, in_channels = int(blob["n_classes"]), int(blob["in_channels"])
        if data is not None and (data.n_classes != n_classes or data.image_shape[0] != in_channels):
            raise ValueError(f"checkpoint {path} is for {n_classes} classes / {in_channels} channels, the data set "
                             f"{data.name} has {data.n_classes} / {data.image_shape[0]}")
        name, options = blob["arch"], dict(blob.get("arch_options") or {})
        stored = (tuple(blob["mean"]), tuple(blob["std"]))
    else:
        if data is None:
            raise ValueError(f"checkpoint {path} is a foreign state_dict: give the data set to rebuild its model")
        n_classes, in_channels, name = data.n_classes, data.image_shape[0], arch
        options = dict(arch_options or {})
        if arch.startswith("wrn-") and "fc.weight" in blob["model"]:
            options.setdefault("head_bias", "fc.bias" in blob["model"])
        stored = (blob["input_mean"], blob["input_std"]) if "input_mean" in blob else None
    if normalization is not None:
        if data is None:
            raise ValueError("an input normalisation needs the data set (its channel count)")
        (mean, std), used = normalization.resolve(data), str(normalization)
    elif stored is not None:
        (mean, std), used = stored, "stored in the checkpoint"
    else:
        (mean, std), used = InputNormalization("dataset").resolve(data), "dataset"  # type: ignore[arg-type]
    model = build_arch(name, n_classes=n_classes, in_channels=in_channels, mean=mean, std=std, **options)
    note = load_weights(model, blob["model"], source=f"checkpoint {path}")
    blob["container"] += f", {note}" if note else ""
    blob["input_normalization"] = used
    return model.eval(), blob
