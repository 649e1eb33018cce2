"""AutoAttack robust accuracy through an installed package (optional; nothing here needs it).

AutoAttack (Croce & Hein, 2020: APGD-CE, APGD-T, FAB-T and Square in its ``standard`` version) is
the field's reference evaluation. This module does not reimplement it; it runs one of two
packages when present:

* ``autoattack``, the authors' package (``pip install git+https://github.com/fra31/auto-attack``),
  through its ``AutoAttack(model, norm=, eps=, version=, device=, seed=)`` and
  ``run_standard_evaluation(x, y, bs=)``;
* ``torchattacks`` (PyPI), whose ``AutoAttack(model, norm=, eps=, version=, n_classes=, seed=)``
  composes the same four attacks. Its metadata asks for torchvision, which it does not import:
  ``pip install --no-deps torchattacks`` keeps a CPU or CUDA torch as it is.

``backend="auto"`` takes the authors' package if importable, else torchattacks. Our models take
pixels in [0, 1] and normalise inside, as both packages expect. What this module adds: batches
of uint8 images, the model in eval mode and float32, a fixed seed (and the caller's global RNG
state restored afterwards: both packages reseed torch's global generators), the packages' prints
sent to stderr (so ``--json`` output stays clean), and a check that every returned point lies in
the threat model (the eps-ball around its image, within [0, 1]); a point outside is an error,
not a number. A test image counts as robust when it is classified correctly both clean and at
the returned point.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from typing import Any

import torch

from synthmodel.attacks import Norm, preserve_mode

from .data import to_float

__all__ = ["BACKENDS", "VERSIONS", "find_backend", "autoattack_correct"]

BACKENDS = ("auto", "autoattack", "torchattacks")
VERSIONS = ("standard", "plus", "rand")
_INSTALL = ("pip install git+https://github.com/fra31/auto-attack (the authors' package) or "
            "pip install --no-deps torchattacks")
# projection and clamping in float32 leave the returned points this far outside the ball at most
_BALL_SLACK = 1e-5


def find_backend(name: str = "auto") -> str:
    """The package :func:`autoattack_correct` will use: ``name`` itself if importable, or for 'auto' the
    authors' ``autoattack``, else ``torchattacks``. Raises ValueError naming how to install one."""
    if name not in BACKENDS:
        raise ValueError(f"AutoAttack backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    candidates = ("autoattack", "torchattacks") if name == "auto" else (name,)
    for candidate in candidates:
        if importlib.util.find_spec(candidate) is not None:
            return candidate
    raise ValueError(f"AutoAttack needs the package {' or '.join(candidates)}, which is not installed: {_INSTALL}")


def _attacker(backend: str, model: torch.nn.Module, *, eps: float, norm: str, version: str, n_classes: int,
              seed: int, device: torch.device) -> Any:
    package = importlib.import_module(backend)
    norm_name = "Linf" if norm == Norm.LINF.value else "L2"
    if backend == "torchattacks":
        return package.AutoAttack(model, norm=norm_name, eps=eps, version=version, n_classes=n_classes, seed=seed)
    return package.AutoAttack(model, norm=norm_name, eps=eps, version=version, device=str(device), seed=seed,
                              verbose=False)


def _run(backend: str, attacker: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if backend == "torchattacks":
        return attacker(x, y)
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


def autoattack_correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                       norm: str = "linf", version: str = "standard", backend: str = "auto", seed: int = 0,
                       batch_size: int = 256, n_classes: int | None = None, progress: bool = False,
                       desc: str = "autoattack") -> torch.Tensor:
    """Which images AutoAttack fails to break: bool (N,), True = correct clean and under the attack.

    Args:
        model: maps images (N, C, H, W) in [0, 1] to logits (N, K); run in eval mode, float32.
        images: uint8 (N, H, W, C), or float (N, C, H, W) in [0, 1]; on the model's device.
        labels: (N,) int64 on the same device.
        eps: radius in pixel units of [0, 1] (8/255 is the paper's l_inf budget).
        norm: 'linf' | 'l2'.
        version: AutoAttack's 'standard', 'plus' or 'rand'.
        backend: 'auto' | 'autoattack' | 'torchattacks' (see :func:`find_backend`).
        seed: seed of the attacks' random starts (same seed, same result on CPU).
        batch_size: images per call of the package.
        n_classes: K (default: the model's output width).
        progress: tqdm bar on stderr.

    Raises:
        ValueError: no package installed, bad settings, or points returned outside the threat model.
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
    starts = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, leave=False)
    robust = []
    rng_devices = [device] if device.type == "cuda" else []
    with preserve_mode(model, "eval"), torch.random.fork_rng(devices=rng_devices), \
            contextlib.redirect_stdout(sys.stderr):
        attacker = _attacker(backend, model, eps=eps, norm=norm, version=version, n_classes=n_classes, seed=seed,
                             device=device)
        for start in starts:
            x = _as_float(images[start:start + batch_size]).contiguous()
            y = labels[start:start + batch_size]
            try:
                x_adv = _run(backend, attacker, x, y).detach().to(x.device, x.dtype)
            except Exception as exc:  # a third-party package: report it as bad input, not a traceback
                raise ValueError(f"{backend} failed on images of shape {tuple(x.shape)} "
                                 f"({exc.__class__.__name__}: {exc})") from exc
            _check_in_threat_model(x, x_adv, eps, norm, backend)
            with torch.no_grad():
                robust.append((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y))
    return torch.cat(robust)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images
