"""Image data sets for the real-data pipeline: CIFAR-10/100 (python pickle layout) and ``.npz`` sets.

A data set is named by a spec string:

* ``cifar10:DIR``: DIR holds the standard CIFAR-10 python files ``data_batch_1`` .. ``data_batch_5``,
  ``test_batch`` and ``batches.meta`` (keys ``data`` (N, 3072) uint8 channel-major, ``labels``;
  ``label_names``);
* ``cifar100:DIR``: DIR holds ``train``, ``test`` and ``meta`` (keys ``data``, ``fine_labels``;
  ``fine_label_names``);
* ``npz:FILE``: arrays ``x_train``, ``x_test`` (uint8, N x H x W x C) and ``y_train``, ``y_test``
  (integer labels, N); optional ``class_names``.

Nothing is downloaded. The pickles are read with a restricted unpickler that accepts only the numpy
array reconstruction CIFAR's files use, so a file from a stranger cannot run code.

Each split is kept whole as one uint8 tensor in NHWC layout (on the training device, where it is
~150 MB for CIFAR); augmentation (random crop with reflect padding, horizontal flip) is one batched
gather on the device (:func:`augment`). Images become float in [0, 1] only per batch; normalisation
by the data set's mean/std happens inside the model (:mod:`real_data.models`), so attacks work in
pixel space.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageData", "load_dataset", "parse_spec", "to_float", "augment", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD", "DATASET_KINDS"]

# per-channel statistics used by the paper's official code (and the CIFAR literature)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

DATASET_KINDS = ("cifar10", "cifar100", "npz")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set, both splits.

    Attributes:
        name: the spec it was loaded from.
        x_train: uint8 (N, H, W, C); y_train: int64 (N,).
        x_test: uint8 (M, H, W, C); y_test: int64 (M,).
        class_names: K names.
        mean, std: per-channel statistics for the model's input normalisation (C values each).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the model sees it."""
        _, h, w, c = self.x_train.shape
        return c, h, w

    def to(self, device: torch.device | str) -> ImageData:
        """The same data with every tensor on ``device``."""
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what CIFAR's files hold); refuses any other global."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_pickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            blob = _ArrayUnpickler(io.BufferedReader(handle), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ValueError(f"{path} is not a CIFAR python pickle: {exc}") from None
    if not isinstance(blob, dict):
        raise ValueError(f"{path} does not hold a dict (the CIFAR python layout)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in blob.items()}


def _field(blob: dict[str, object], key: str, path: Path) -> object:
    if key not in blob:
        raise ValueError(f"{path} has no key {key!r} (keys: {', '.join(sorted(blob))})")
    return blob[key]


def _cifar_images(blob: dict[str, object], path: Path) -> np.ndarray:
    data = np.asarray(_field(blob, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    # rows are channel-major (1024 red, 1024 green, 1024 blue values, each row-major 32 x 32)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _labels(values: object, n: int, path: Path) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be {n} integers, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _names(values: object) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)  # type: ignore[union-attr]


def _check_folder(folder: Path, files: tuple[str, ...], kind: str) -> None:
    if not folder.is_dir():
        raise ValueError(f"{kind} folder {folder} does not exist; it must hold the python-pickle files "
                         f"{', '.join(files)}")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{kind} folder {folder} lacks {', '.join(missing)}; expected the python-pickle files "
                         f"{', '.join(files)} (as in cifar-{kind[5:]}-python.tar.gz)")


def _load_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    _check_folder(folder, CIFAR10_FILES, "cifar10")
    xs, ys = [], []
    for name in CIFAR10_FILES[:5]:
        blob = _read_pickle(folder / name)
        x = _cifar_images(blob, folder / name)
        xs.append(x)
        ys.append(_labels(_field(blob, "labels", folder / name), x.shape[0], folder / name))
    test = _read_pickle(folder / "test_batch")
    x_test = _cifar_images(test, folder / "test_batch")
    y_test = _labels(_field(test, "labels", folder / "test_batch"), x_test.shape[0], folder / "test_batch")
    names = _names(_field(_read_pickle(folder / "batches.meta"), "label_names", folder / "batches.meta"))
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test, names


def _load_cifar100(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    _check_folder(folder, CIFAR100_FILES, "cifar100")
    out = []
    for name in ("train", "test"):
        blob = _read_pickle(folder / name)
        x = _cifar_images(blob, folder / name)
        out += [x, _labels(_field(blob, "fine_labels", folder / name), x.shape[0], folder / name)]
    names = _names(_field(_read_pickle(folder / "meta"), "fine_label_names", folder / "meta"))
    return out[0], out[1], out[2], out[3], names


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    if not path.is_file():
        raise ValueError(f"npz file {path} does not exist; it must hold x_train, y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            blob = {k: arrays[k] for k in arrays.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in blob]
    if missing:
        raise ValueError(f"{path} lacks the arrays {', '.join(missing)}")
    for split in ("train", "test"):
        x, y = blob[f"x_{split}"], blob[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or min(x.shape) < 1:
            raise ValueError(f"{path}: x_{split} must be uint8 of shape (N, H, W, C), got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: y_{split} must be {x.shape[0]} integer labels, got {y.dtype} {y.shape}")
    if blob["x_train"].shape[1:] != blob["x_test"].shape[1:]:
        raise ValueError(f"{path}: train images {blob['x_train'].shape[1:]} and test images "
                         f"{blob['x_test'].shape[1:]} differ in shape")
    labels = np.concatenate([blob["y_train"], blob["y_test"]])
    if labels.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0, got {int(labels.min())}")
    k = int(labels.max()) + 1
    names = _names(blob["class_names"]) if "class_names" in blob else tuple(str(i) for i in range(k))
    if len(names) < k:
        raise ValueError(f"{path}: {len(names)} class_names for labels up to {k - 1}")
    absent = np.setdiff1d(np.arange(len(names)), blob["y_train"])
    if absent.size:
        raise ValueError(f"{path}: classes {', '.join(map(str, absent[:10].tolist()))}"
                         f"{' ...' if absent.size > 10 else ''} have no training image (labels must be "
                         f"0..K-1 with every class present)")
    return blob["x_train"], blob["y_train"].astype(np.int64), blob["x_test"], blob["y_test"].astype(np.int64), names


def parse_spec(spec: str) -> tuple[str, Path]:
    """Split ``'kind:PATH'`` into (kind, path), with a clear error for an unknown kind."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in DATASET_KINDS or not path:
        raise ValueError(f"dataset must be one of cifar10:DIR, cifar100:DIR, npz:FILE; got {spec!r}")
    return kind, Path(path).expanduser()


def load_dataset(spec: str) -> ImageData:
    """Read a data set named by ``spec`` (see module docstring) into CPU tensors.

    For ``npz`` sets the normalisation statistics are the per-channel mean and standard deviation of
    the training images (in [0, 1] units); CIFAR sets use the official constants.

    Raises:
        ValueError: unknown spec, missing files (the message names them), malformed arrays.
    """
    kind, path = parse_spec(spec)
    if kind == "cifar10":
        x_train, y_train, x_test, y_test, names = _load_cifar10(path)
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif kind == "cifar100":
        x_train, y_train, x_test, y_test, names = _load_cifar100(path)
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        x_train, y_train, x_test, y_test, names = _load_npz(path)
        pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64) / 255.0
        mean = tuple(float(v) for v in pixels.mean(0))
        std = tuple(float(max(v, 1e-3)) for v in pixels.std(0))  # a constant channel must not divide by 0
    k = len(names)
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{spec}: {split} labels must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]")
    return ImageData(name=spec, x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
                     y_train=torch.from_numpy(y_train), x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
                     y_test=torch.from_numpy(y_test), class_names=names, mean=tuple(mean), std=tuple(std))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], in channels_last memory (no copy of the layout)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in a reflect-padded axis back to [0, size) (numpy/torch 'reflect': edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, generator: torch.Generator | None, padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop (same size, ``padding`` reflect padding) and horizontal flip of a whole batch, on its device.

    Equivalent per image to ``np.pad(img, padding, mode='reflect')``, a crop at a uniform offset in
    ``[0, 2 * padding]`` on each axis, and a flip with probability 1/2, done as one gather.

    Args:
        images: uint8 (N, H, W, C).
        generator: torch.Generator on the images' device (reproducible augmentation).
        padding: reflect padding in pixels (< H and < W).
        flip: whether to flip horizontally at random.

    Returns:
        float32 (N, C, H, W) in [0, 1] (channels_last memory).
    """
    n, h, w, _ = images.shape
    if not 0 <= padding < min(h, w):
        raise ValueError(f"padding must be in [0, {min(h, w)}), got {padding}")
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=device)
    rows = _reflect(offsets[0][:, None] + torch.arange(h, device=device) - padding, h)
    cols = _reflect(offsets[1][:, None] + torch.arange(w, device=device) - padding, w)
    if flip:
        flipped = torch.rand(n, generator=generator, device=device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    return to_float(images[batch, rows[:, :, None], cols[:, None, :]])
