"""Where and in which precision the real-data pipeline runs: device, bf16 autocast, channels_last."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["DEVICES", "PRECISIONS", "MEMORY_FORMATS", "resolve_device", "precision_dtype", "use_channels_last",
           "autocast"]

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
