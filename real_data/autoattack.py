"""AutoAttack robust accuracy through an installed package, resumable (optional; nothing else needs it).

AutoAttack (Croce & Hein, 2020: APGD-CE, APGD-T, FAB-T and Square in its ``standard`` version) is
the field's reference evaluation. This module does not reimplement it; it runs one of these
packages when present:

* ``pyautoattack``: the authors' code as published on PyPI (``pip install --no-deps pyautoattack``;
  metadata: authors Croce & Hein, homepage fra31/auto-attack; RobustBench 1.1.1 depends on it). Its
  API: ``AutoAttack(model, *, norm=, eps=, version=, device=, seed=)``,
  ``run_standard_evaluation(x, y, *, batch_size=, state_path=)`` returning ``(x_adv, y_adv)``. The
  wheel installs the single top-level package ``pyautoattack`` (no ``robustbench``, no other
  name), imports only torch, numpy and the standard library (tensorflow only in its unused
  ``utils_tf*.py``), and declares no dependencies;
* ``autoattack``: the same authors' code installed from its git repository (the import name of
  ``pip install git+https://github.com/fra31/auto-attack``), with the older signature
  ``AutoAttack(model, norm=, eps=, version=, device=, seed=, verbose=)`` and
  ``run_standard_evaluation(x, y, bs=)`` returning ``x_adv``;
* ``torchattacks`` (PyPI), whose ``AutoAttack(model, norm=, eps=, version=, n_classes=, seed=)``
  composes the same four attacks (its metadata asks for torchvision, which it does not import:
  ``pip install --no-deps torchattacks``).

``backend="auto"`` takes the first importable of these, in that order. Our models take pixels in
[0, 1] and normalise inside, as all three expect.

**Resuming.** The authors' ``state_path`` does not resume in pyautoattack 0.2.0 (nor in the git
master): the state file stores the set of attacks as its Python ``str()``, so every restore fails
its own check ("different set of attacks"), and the restoring branch never defines ``y_adv``
(``UnboundLocalError`` at return). So this module drives the package one attack at a time:
for each attack of the version, the images still robust are split into chunks of ``batch_size``
in index order and each chunk is passed to the package with ``attacks_to_run = [that attack]``.
These are exactly the batches the package's own loop forms (it, too, attacks the still-robust
points in index order, ``batch_size`` at a time, every attack reseeded per batch), so the robust
set equals one uninterrupted ``run_standard_evaluation`` on all images (tested). With
``state_dir`` the robust flags are written after every chunk (atomically) to
``state_dir/autoattack-<fingerprint>.json``, the fingerprint being a sha256 of the settings, the
model's parameters and buffers (input statistics included) and the images; a later call for the
same evaluation continues from there, another evaluation gets a file of its own. torchattacks runs
as one stage (all four attacks per chunk).

What this module adds besides: batches of uint8 images, the model in eval mode and float32, a
fixed seed (and the caller's global RNG state restored afterwards: the packages reseed torch's
global generators), the packages' prints sent to stderr (so ``--json`` output stays clean), as
many target classes as exist when there are fewer than 10 (the package would index past the
logits), and a check that every returned point lies in the threat model (the eps-ball around its
image, within [0, 1]); a point outside is an error, not a number. A test image counts as robust
when it is classified correctly both clean and at the returned point.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from synthmodel.attacks import Norm, preserve_mode

from .data import to_float

__all__ = ["BACKENDS", "VERSIONS", "STATE_FORMAT", "find_backend", "backend_label", "autoattack_correct",
           "autoattack_fingerprint"]

BACKENDS = ("auto", "pyautoattack", "autoattack", "torchattacks")
VERSIONS = ("standard", "plus", "rand")
STATE_FORMAT = "real_data-autoattack-state-1"
_INSTALL = ("pip install --no-deps pyautoattack (the authors' package on PyPI) or "
            "pip install --no-deps torchattacks")
# projection and clamping in float32 leave the returned points this far outside the ball at most
_BALL_SLACK = 1e-5


def find_backend(name: str = "auto") -> str:
    """The package :func:`autoattack_correct` will use: ``name`` itself if importable, or for 'auto' the
    first of pyautoattack, autoattack, torchattacks. Raises ValueError naming how to install one."""
    if name not in BACKENDS:
        raise ValueError(f"AutoAttack backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    candidates = BACKENDS[1:] if name == "auto" else (name,)
    for candidate in candidates:
        if importlib.util.find_spec(candidate) is not None:
            return candidate
    raise ValueError(f"AutoAttack needs the package {' or '.join(candidates)}, which is not installed: {_INSTALL}")


def backend_label(backend: str) -> str:
    """``backend`` with its installed version, e.g. 'pyautoattack 0.2.0' (the bare name if unknown)."""
    try:
        return f"{backend} {importlib.metadata.version(backend)}"
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules.get(backend), "__version__", None)
        return f"{backend} {version}" if version else backend


def _attacker(backend: str, model: torch.nn.Module, *, eps: float, norm: str, version: str, n_classes: int,
              seed: int, device: torch.device) -> Any:
    package = importlib.import_module(backend)
    norm_name = "Linf" if norm == Norm.LINF.value else "L2"
    if backend == "torchattacks":
        return package.AutoAttack(model, norm=norm_name, eps=eps, version=version, n_classes=n_classes, seed=seed)
    if backend == "pyautoattack":
        attacker = package.AutoAttack(model, norm=norm_name, eps=eps, version=version, device=str(device), seed=seed)
    else:
        attacker = package.AutoAttack(model, norm=norm_name, eps=eps, version=version, device=str(device), seed=seed,
                                      verbose=False)
    # the versions target 9 classes; with K < 10 there are only K - 1 (more would index past the logits)
    for attack in (attacker.apgd_targeted, attacker.fab):
        attack.n_target_classes = min(attack.n_target_classes, n_classes - 1)
    return attacker


def _stages(backend: str, attacker: Any) -> list[str]:
    return ["autoattack"] if backend == "torchattacks" else list(attacker.attacks_to_run)


def _run(backend: str, attacker: Any, stage: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One chunk through one stage: the returned points (N, C, H, W)."""
    if backend == "torchattacks":
        return attacker(x, y)
    attacker.attacks_to_run = [stage]
    if backend == "pyautoattack":
        return attacker.run_standard_evaluation(x, y, batch_size=x.shape[0])[0]
    return attacker.run_standard_evaluation(x, y, bs=x.shape[0])


def _check_in_threat_model(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, backend: str) -> None:
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise ValueError(f"{backend} returned adversarial images of shape {tuple(x_adv.shape)} (or non-finite "
                         f"values) for inputs of shape {tuple(x.shape)}")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == Norm.LINF.value else delta.norm(dim=1)
    worst = size.max().item()
    if worst > eps + _BALL_SLACK or x_adv.min().item() < -_BALL_SLACK or x_adv.max().item() > 1 + _BALL_SLACK:
        raise ValueError(f"{backend} returned points outside the threat model ({norm} distance {worst:.6g} for "
                         f"eps {eps:.6g}, pixel range [{x_adv.min().item():.4g}, {x_adv.max().item():.4g}])")


def autoattack_fingerprint(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                           settings: dict[str, Any]) -> str:
    """sha256 of the settings, the model's parameters and buffers (also the non-persistent input statistics,
    which are not in its state_dict) and the images and labels: what a saved state belongs to."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    tensors = {**dict(model.named_parameters()), **{f"buffer:{k}": v for k, v in model.named_buffers()}}
    for key, value in sorted(tensors.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    for tensor in (images, labels):
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in flags.tolist())


def _flags(bits: str, device: torch.device) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool, device=device)


def _read_state(path: Path, fingerprint: str, n: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        valid = (state.get("format") == STATE_FORMAT and len(state["robust"]) == len(state["members"]) == n
                 and isinstance(state["stage"], int) and isinstance(state["batches_done"], int))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ValueError(f"AutoAttack state {path} is not readable ({exc.__class__.__name__}: {exc})") from None
    if not valid:
        raise ValueError(f"AutoAttack state {path} is malformed (not a {STATE_FORMAT} file for {n} images)")
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"AutoAttack state {path} belongs to another model, image set or setting; delete it")
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def autoattack_correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                       norm: str = "linf", version: str = "standard", backend: str = "auto", seed: int = 0,
                       batch_size: int = 256, n_classes: int | None = None, progress: bool = False,
                       desc: str = "autoattack", state_dir: str | Path | None = None) -> torch.Tensor:
    """Which images AutoAttack fails to break: bool (N,), True = correct clean and under every attack.

    Args:
        model: maps images (N, C, H, W) in [0, 1] to logits (N, K); run in eval mode, float32.
        images: uint8 (N, H, W, C), or float (N, C, H, W) in [0, 1]; on the model's device.
        labels: (N,) int64 on the same device.
        eps: radius in pixel units of [0, 1] (8/255 is the paper's l_inf budget).
        norm: 'linf' | 'l2'.
        version: AutoAttack's 'standard', 'plus' or 'rand'.
        backend: 'auto' | 'pyautoattack' | 'autoattack' | 'torchattacks' (see :func:`find_backend`).
        seed: seed of the attacks' random starts (same seed, same result on CPU).
        batch_size: images per call of the package.
        n_classes: K (default: the model's output width).
        progress: tqdm bar on stderr.
        state_dir: folder of resumable progress: ``autoattack-<fingerprint>.json`` (written after every
            chunk; read back when the same model, images and settings are evaluated again).

    Raises:
        ValueError: no package installed, bad settings, a state of another evaluation, the package
            failing, or points returned outside the threat model.
    """
    norm = Norm(norm).value
    if version not in VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if not eps > 0 or batch_size < 1:
        raise ValueError(f"AutoAttack needs eps > 0 and batch_size >= 1, got {eps} and {batch_size}")
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need as many labels as images (> 0), got {images.shape[0]} and {labels.shape[0]}")
    backend = find_backend(backend)
    device = labels.device
    if n_classes is None:
        with torch.no_grad(), preserve_mode(model, "eval"):
            n_classes = int(model(_as_float(images[:1])).shape[1])
    needed = {"standard": 4, "plus": 4, "rand": 3}[version]  # targeted DLR needs 4 logits, DLR 3
    if backend != "torchattacks" and n_classes < needed:
        raise ValueError(f"AutoAttack {version} needs at least {needed} classes (its DLR loss), the model has "
                         f"{n_classes}")
    n = images.shape[0]
    rng_devices = [device] if device.type == "cuda" else []
    with preserve_mode(model, "eval"), torch.random.fork_rng(devices=rng_devices), \
            contextlib.redirect_stdout(sys.stderr):
        attacker = _attacker(backend, model, eps=eps, norm=norm, version=version, n_classes=n_classes, seed=seed,
                             device=device)
        stages = _stages(backend, attacker)
        settings = {"backend": backend_label(backend), "eps": eps, "norm": norm, "version": version, "seed": seed,
                    "batch_size": batch_size, "n_classes": n_classes, "stages": stages}
        fingerprint = autoattack_fingerprint(model, images, labels, settings) if state_dir is not None else ""
        path = Path(state_dir) / f"autoattack-{fingerprint[:20]}.json" if state_dir is not None else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        state = _read_state(path, fingerprint, n) if path is not None else None
        if state is None:
            clean = torch.cat([_predict(model, images[s:s + batch_size]) == labels[s:s + batch_size]
                               for s in range(0, n, batch_size)])
            state = {"format": STATE_FORMAT, "fingerprint": fingerprint, "settings": settings, "stage": 0,
                     "batches_done": 0, "members": _bits(clean), "robust": _bits(clean)}
        robust = _flags(state["robust"], device)
        for index in range(state["stage"], len(stages)):
            stage = stages[index]
            members = torch.nonzero(_flags(state["members"], device)).flatten()  # robust when the stage began
            starts = range(state["batches_done"] * batch_size, members.numel(), batch_size)
            if progress:
                from tqdm.auto import tqdm
                starts = tqdm(starts, desc=f"{desc} {stage}", unit="batch", file=sys.stderr, leave=False)
            for start in starts:
                chunk = members[start:start + batch_size]
                x, y = _as_float(images[chunk]).contiguous(), labels[chunk]
                try:
                    x_adv = _run(backend, attacker, stage, x, y).detach().to(x.device, x.dtype)
                except Exception as exc:  # a third-party package: report it as bad input, not a traceback
                    raise ValueError(f"{backend} failed on images of shape {tuple(x.shape)} "
                                     f"({exc.__class__.__name__}: {exc})") from exc
                _check_in_threat_model(x, x_adv, eps, norm, backend)
                robust[chunk[_predict(model, x_adv) != y]] = False
                state.update(batches_done=state["batches_done"] + 1, robust=_bits(robust))
                if path is not None:
                    _write_state(path, state)
            state.update(stage=index + 1, batches_done=0, members=_bits(robust))
            if path is not None:
                _write_state(path, state)
    return robust


def _predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(_as_float(images).contiguous()).argmax(1)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images
