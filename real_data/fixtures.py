"""Tiny data sets in the exact on-disk formats the readers take, for tests and smoke runs.

The images are learnable on purpose: each class has its own mean colour (plus Gaussian pixel
noise), so a few steps of training lower the loss.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

__all__ = ["fake_images", "write_cifar10", "write_cifar100", "write_npz", "write_idx_file", "write_idx_set"]

_IDX_TYPE_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
                   np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def fake_images(labels: np.ndarray, palette: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                noise: float = 40.0) -> np.ndarray:
    """uint8 (N, H, W, C) images of mean colour ``palette[label]`` (palette: (K, C)) plus Gaussian noise."""
    h, w = shape
    c = palette.shape[1]
    images = palette[labels][:, None, None, :] + rng.normal(0, noise, size=(labels.size, h, w, c))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) channel-major rows, CIFAR's layout."""
    return images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1)


def _dump(obj: object, path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_cifar10(folder: str | Path, per_class: int = 2, seed: int = 0) -> Path:
    """Write ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` with ``per_class`` images per class each.

    Keys are bytes, as in the real files (pickled by Python 2) read with ``encoding='bytes'``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(30, 225, size=(10, 3))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = fake_images(labels, palette, (32, 32), rng)
        _dump({b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": _cifar_rows(images),
               b"filenames": [f"{name}_{i}.png".encode() for i in range(labels.size)]}, folder / name)
    _dump({b"num_cases_per_batch": 10 * per_class, b"label_names": [f"class{i}".encode() for i in range(10)],
           b"num_vis": 3072}, folder / "batches.meta")
    return folder


def write_cifar100(folder: str | Path, per_class: int = 1, seed: int = 0) -> Path:
    """Write ``train``, ``test`` and ``meta`` (``fine_labels``, ``coarse_labels``, ``fine_label_names``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(30, 225, size=(100, 3))
    for name in ("train", "test"):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        images = fake_images(labels, palette, (32, 32), rng)
        _dump({b"filenames": [b"x.png"] * labels.size, b"batch_label": name.encode(), b"fine_labels": labels.tolist(),
               b"coarse_labels": (labels // 5).tolist(), b"data": _cifar_rows(images)}, folder / name)
    _dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
           b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, folder / "meta")
    return folder


def write_npz(path: str | Path, n_train: int = 40, n_test: int = 20, n_classes: int = 4,
              shape: tuple[int, int, int] = (8, 8, 1), seed: int = 0) -> Path:
    """Write ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 NHWC images, int64 labels)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % n_classes
    y_test = np.arange(n_test) % n_classes
    palette = rng.uniform(30, 225, size=(n_classes, shape[2]))
    x_train = fake_images(y_train, palette, shape[:2], rng)
    x_test = fake_images(y_test, palette, shape[:2], rng)
    order = rng.permutation(n_train)
    np.savez(path, x_train=x_train[order], y_train=y_train[order].astype(np.int64), x_test=x_test,
             y_test=y_test.astype(np.int64))
    return path


def write_idx_file(path: str | Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` as one IDX file: magic (two zero bytes, type code, dimension count), big-endian
    uint32 sizes, big-endian values; gzipped if ``compress``."""
    path = Path(path)
    big = array.astype(array.dtype.newbyteorder(">"))
    code = _IDX_TYPE_CODES[big.dtype]
    blob = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + big.tobytes()
    path.write_bytes(gzip.compress(blob, mtime=0) if compress else blob)
    return path


def write_idx_set(folder: str | Path, per_class: int = 3, test_per_class: int = 2, shape: tuple[int, int] = (28, 28),
                  compress: bool = True, seed: int = 0) -> Path:
    """Write the four Fashion-MNIST / MNIST IDX files (10 classes, uint8 grey images) into ``folder``.

    Names as upstream (``train-images-idx3-ubyte`` ...), with ``.gz`` when ``compress``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(30, 225, size=(10, 1))
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), count)).astype(np.uint8)
        images = fake_images(labels, palette, shape, rng)[..., 0]
        write_idx_file(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx_file(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder
