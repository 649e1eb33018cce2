"""Image data sets for the real-data pipeline: CIFAR-10/100 (python pickles), Fashion-MNIST / MNIST (IDX files)
and ``.npz`` sets.

A data set is named by a spec string:

* ``cifar10:DIR``: DIR holds the standard CIFAR-10 python files ``data_batch_1`` .. ``data_batch_5``,
  ``test_batch`` and ``batches.meta`` (keys ``data`` (N, 3072) uint8 channel-major, ``labels``;
  ``label_names``);
* ``cifar100:DIR``: DIR holds ``train``, ``test`` and ``meta`` (keys ``data``, ``fine_labels``;
  ``fine_label_names``);
* ``fashion-mnist[:DIR]``, ``mnist:DIR``: DIR holds the four IDX files of the upstream distribution,
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not. ``fashion-mnist`` alone reads
  ``$FASHION_MNIST_DIR`` if that is set, else ``/usr/share/datasets/fashion-mnist`` (where Debian's
  package ``dataset-fashion-mnist`` puts them). Magic numbers, dimensions, byte counts and the
  agreement of each label file with its image file are checked;
* ``npz:FILE``: arrays ``x_train``, ``x_test`` (uint8, N x H x W x C) and ``y_train``, ``y_test``
  (integer labels, N); optional ``class_names``.

Nothing is downloaded. The pickles are read with a restricted unpickler that accepts only the numpy
array reconstruction CIFAR's files use, so a file from a stranger cannot run code.

Each split is kept whole as one uint8 tensor in NHWC layout (on the training device, where it is
~150 MB for CIFAR); augmentation (random crop with reflect padding, horizontal flip) is one batched
gather on the device (:func:`augment`). Images become float in [0, 1] only per batch; normalisation
by the data set's mean/std happens inside the model (:mod:`real_data.models`), so attacks work in
pixel space. The statistics are the published constants for CIFAR and, for every other set, the
per-channel mean and standard deviation of the full training split.

``python -m real_data.data SPEC [--json]`` describes a data set (sizes, image shape, class names and
counts, normalisation statistics, default augmentation).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import pickle
import sys
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from synthmodel.atomic import check_input_file

__all__ = ["ImageData", "Augmentation", "load_dataset", "parse_spec", "to_float", "augment", "read_idx",
           "pixel_statistics", "train_subset", "hold_out", "stratified_indices", "stratified_counts", "describe",
           "augmentation_defaults",
           "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_DEBIAN_DIR", "DATASET_KINDS", "DATASET_SPECS", "AUGMENTATIONS", "main"]

# per-channel statistics used by the paper's official code (and the CIFAR literature)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

# the ten Fashion-MNIST labels 0..9, as the upstream distribution names them
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

DATASET_KINDS = ("cifar10", "cifar100", "fashion-mnist", "mnist", "npz")
DATASET_SPECS = "cifar10:DIR | cifar100:DIR | fashion-mnist[:DIR] | mnist:DIR | npz:FILE"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")
# (split, images or labels) -> upstream IDX file name (each may also be gzipped: NAME.gz)
IDX_FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
             ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: a random crop of the same size from the image padded by ``padding`` pixels
    (``fill`` 'reflect' mirrors the border without repeating it, 'zeros' pads with black), then a
    horizontal flip with probability 1/2 if ``flip``. ``padding`` 0 and no flip: no augmentation."""

    padding: int = 4
    flip: bool = True
    fill: str = "reflect"

    def apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """uint8 (N, H, W, C) -> augmented float32 (N, C, H, W) in [0, 1] (see :func:`augment`)."""
        return augment(images, generator, padding=self.padding, flip=self.flip, fill=self.fill)

    def describe(self) -> str:
        crop = (f"random crop with {self.padding}-px {'zero' if self.fill == 'zeros' else self.fill} padding"
                if self.padding else "no crop")
        return f"{crop}, {'horizontal flip' if self.flip else 'no flip'}"


# Default augmentation per data-set kind (``--no-augment`` turns it off). CIFAR: the official recipe.
# Fashion-MNIST and MNIST: shifts of up to 2 px with black fill and no flip. Their images are size-
# normalised and centred on a black background (in over 90% of the training images a garment touches
# the top and the bottom edge, a shoe the left and the right edge), and all shoes face the same way:
# a 4-px crop would cut up to 14% of an object, reflect padding would mirror object pixels at the edge,
# and a flip makes mirrored shoes that the test split never shows (for digits it changes the symbol).
# These facts are checked on the real files in tests/test_real_data_fashion_mnist.py.
AUGMENTATIONS = {"cifar10": Augmentation(4, True, "reflect"), "cifar100": Augmentation(4, True, "reflect"),
                 "npz": Augmentation(4, True, "reflect"), "fashion-mnist": Augmentation(2, False, "zeros"),
                 "mnist": Augmentation(2, False, "zeros")}


def augmentation_defaults() -> str:
    """One line naming each data-set kind's default augmentation (for ``--help`` texts)."""
    groups: dict[str, list[str]] = {}
    for kind, aug in AUGMENTATIONS.items():
        groups.setdefault(aug.describe(), []).append(kind)
    return "; ".join(f"{'/'.join(kinds)}: {text}" for text, kinds in groups.items())


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set, both splits.

    Attributes:
        name: the spec it was loaded from.
        x_train: uint8 (N, H, W, C); y_train: int64 (N,).
        x_test: uint8 (M, H, W, C); y_test: int64 (M,).
        class_names: K names.
        mean, std: per-channel statistics for the model's input normalisation (C values each).
        augmentation: the data set's default training augmentation.
        source: the folder or file read.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation = field(default_factory=Augmentation)
    source: str = ""

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
    if not path.exists():
        raise ValueError(f"npz file {path} does not exist; it must hold x_train, y_train, x_test, y_test")
    check_input_file(path, "npz file")
    if not zipfile.is_zipfile(path):  # else numpy reads it as a pickle and advises allow_pickle
        raise ValueError(f"{path} is not a valid .npz file (not a zip archive of .npy arrays, as numpy.savez "
                         "writes)")
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
        if x.ndim >= 1 and x.shape[0] == 0:
            raise ValueError(f"{path}: x_{split} holds no images (0 rows)")
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
    if len(names) < 2:
        raise ValueError(f"{path}: the training images hold 1 class; a classifier needs at least 2")
    return blob["x_train"], blob["y_train"].astype(np.int64), blob["x_test"], blob["y_test"].astype(np.int64), names


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not (told apart by the gzip magic bytes).

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions d, then d big-endian uint32 sizes, then the values in C
    order, big-endian. The file must hold exactly that many bytes.

    Returns:
        the array, shape as the header says, native byte order.

    Raises:
        ValueError: unreadable or corrupt gzip stream, wrong magic number, truncated or over-long file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} is not a readable (gzipped) IDX file: {exc}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an IDX file: magic number {raw[:4].hex() or '(empty file)'}, expected "
                         f"0000 + type code + dimension count (e.g. 00000803 for uint8 images)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its header ({len(raw)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path} {state}: its header promises shape {shape} ({expected} bytes), the data hold "
                         f"{len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (name, name + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _fashion_mnist_folder() -> Path:
    """$FASHION_MNIST_DIR if set, else the Debian location; the first that exists is used."""
    candidates = ([Path(os.environ["FASHION_MNIST_DIR"]).expanduser()] if os.environ.get("FASHION_MNIST_DIR") else [])
    candidates.append(FASHION_MNIST_DEBIAN_DIR)
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise ValueError(f"fashion-mnist: no data folder found (looked in {looked}); install it with 'apt-get install "
                     f"dataset-fashion-mnist' (Debian/Ubuntu), or put the four upstream IDX files in a folder and "
                     f"pass fashion-mnist:DIR or set FASHION_MNIST_DIR")


def _load_idx_set(folder: Path, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    expected = ", ".join(IDX_FILES.values())
    if not folder.is_dir():
        raise ValueError(f"{kind} folder {folder} does not exist; it must hold the IDX files {expected} (gzipped or "
                         f"not)")
    paths = {key: _idx_path(folder, name) for key, name in IDX_FILES.items()}
    missing = [IDX_FILES[key] + "[.gz]" for key, path in paths.items() if path is None]
    if missing:
        raise ValueError(f"{kind} folder {folder} lacks {', '.join(missing)}; expected the four IDX files {expected} "
                         f"(gzipped or not)")
    arrays = {}
    for (split, what), path in paths.items():
        array = read_idx(path)
        ndim = 3 if what == "images" else 1
        if array.dtype != np.uint8 or array.ndim != ndim or min(array.shape) < 1:
            raise ValueError(f"{path} must hold uint8 {what} of {ndim} dimension(s) (IDX magic 0000080{ndim}), got "
                             f"{array.dtype} {array.shape}")
        arrays[split, what] = array
    for split in ("train", "test"):
        n_images, n_labels = arrays[split, "images"].shape[0], arrays[split, "labels"].shape[0]
        if n_images != n_labels:
            raise ValueError(f"{paths[split, 'labels']} holds {n_labels} labels but {paths[split, 'images']} holds "
                             f"{n_images} images: the label file does not match its image file")
    if arrays["train", "images"].shape[1:] != arrays["test", "images"].shape[1:]:
        raise ValueError(f"{folder}: train images {arrays['train', 'images'].shape[1:]} and test images "
                         f"{arrays['test', 'images'].shape[1:]} differ in shape")
    names = FASHION_MNIST_CLASSES if kind == "fashion-mnist" else tuple(str(d) for d in range(10))
    for split in ("train", "test"):
        labels = arrays[split, "labels"]
        if labels.max() >= len(names):
            raise ValueError(f"{paths[split, 'labels']}: labels must lie in [0, {len(names)}), got up to "
                             f"{int(labels.max())}")
    absent = np.setdiff1d(np.arange(len(names)), arrays["train", "labels"])
    if absent.size:
        raise ValueError(f"{paths['train', 'labels']}: classes {', '.join(map(str, absent.tolist()))} have no "
                         f"training image")
    return (arrays["train", "images"][..., None], arrays["train", "labels"].astype(np.int64),
            arrays["test", "images"][..., None], arrays["test", "labels"].astype(np.int64), names)


def pixel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, H, W, C) in [0, 1] units.

    Computed from the 256-bin histogram of each channel: exact integer counts, float64 moments, no
    float copy of the images (60000 Fashion-MNIST images would take 376 MB as float64).

    Args:
        images: uint8 (N, H, W, C).
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = torch.bincount(torch.from_numpy(images[..., channel]).reshape(-1), minlength=256).double().numpy()
        mean = counts @ values / counts.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return tuple(means), tuple(stds)


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``'kind:PATH'`` into (kind, path), with a clear error for an unknown kind.

    ``fashion-mnist`` alone gives path None (the default location, see :func:`load_dataset`).
    """
    kind, sep, path = spec.partition(":")
    if kind == "fashion-mnist" and not sep:
        return kind, None
    if not sep or kind not in DATASET_KINDS or not path:
        raise ValueError(f"dataset must be one of {DATASET_SPECS.replace(' | ', ', ')}; got {spec!r}")
    return kind, Path(path).expanduser()


def load_dataset(spec: str) -> ImageData:
    """Read a data set named by ``spec`` (see module docstring) into CPU tensors.

    Normalisation statistics: CIFAR sets use the official constants; every other set the per-channel
    mean and standard deviation of its full training split (in [0, 1] units; :func:`pixel_statistics`).

    Raises:
        ValueError: unknown spec, missing files (the message names them), malformed or corrupt files.
    """
    kind, path = parse_spec(spec)
    if kind == "fashion-mnist" and path is None:
        path = _fashion_mnist_folder()
    if kind == "cifar10":
        x_train, y_train, x_test, y_test, names = _load_cifar10(path)
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif kind == "cifar100":
        x_train, y_train, x_test, y_test, names = _load_cifar100(path)
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        loaded = _load_npz(path) if kind == "npz" else _load_idx_set(path, kind)
        x_train, y_train, x_test, y_test, names = loaded
        mean, std = pixel_statistics(x_train)
        std = tuple(max(v, 1e-3) for v in std)  # a constant channel must not divide by 0
    k = len(names)
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{spec}: {split} labels must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]")
    return ImageData(name=spec, x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
                     y_train=torch.from_numpy(y_train), x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
                     y_test=torch.from_numpy(y_test), class_names=names, mean=tuple(mean), std=tuple(std),
                     augmentation=AUGMENTATIONS[kind], source=str(path))


def stratified_counts(class_counts: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` images to take per class: proportional to ``class_counts`` (largest remainders,
    ties to the lower class index), at least one per class, never more than a class has.

    Requires len(class_counts) <= n <= class_counts.sum() and every count >= 1.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    quota = n * counts / counts.sum()
    take = np.minimum(np.maximum(np.floor(quota).astype(np.int64), 1), counts)
    order = np.argsort(-(quota - take), kind="stable")  # largest remainder first
    while take.sum() < n:
        for k in order:
            if take.sum() < n and take[k] < counts[k]:
                take[k] += 1
    while take.sum() > n:  # only when the floor of one forced some classes up
        for k in order[::-1]:
            if take.sum() > n and take[k] > 1:
                take[k] -= 1
    return take


def stratified_indices(labels: np.ndarray, n_classes: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of the items with these labels (K classes), stratified by class.

    Per class, :func:`stratified_counts` items drawn without replacement by ``numpy.random.default_rng(seed)``,
    class after class. Requires n_classes <= n <= len(labels) and every class present.
    """
    counts = np.bincount(labels, minlength=n_classes)
    take = stratified_counts(counts, n)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), size=int(take[k]), replace=False)
                                   for k in range(n_classes)]))


def train_subset(data: ImageData, n: int, seed: int) -> ImageData:
    """The data set with its training split cut to ``n`` images, stratified by class (0 = unchanged).

    Per class, :func:`stratified_counts` images drawn without replacement by ``numpy.random.default_rng
    (seed)``, kept in their original order (:func:`stratified_indices`). The test split and the normalisation
    statistics (those of the full training split) are unchanged.

    Raises:
        ValueError: ``n`` below the number of classes or above the size of the training split.
    """
    total = data.x_train.shape[0]
    if n == 0:
        return data
    if not data.n_classes <= n <= total:
        raise ValueError(f"train_n must be between the number of classes ({data.n_classes}) and the "
                         f"{total} training images of {data.name} (0 = all), got {n}")
    chosen = stratified_indices(data.y_train.cpu().numpy(), data.n_classes, n, seed)
    index = torch.from_numpy(chosen).to(data.x_train.device)
    return replace(data, x_train=data.x_train[index], y_train=data.y_train[index])


def hold_out(data: ImageData, n: int, seed: int) -> tuple[ImageData, torch.Tensor, torch.Tensor]:
    """Split ``n`` training images off as a validation set, drawn as :func:`train_subset` draws (stratified).

    Returns:
        The data set with its training split reduced to the other images (in their original order; test split
        and normalisation statistics unchanged), and the held-out images uint8 (n, H, W, C) with their labels
        (n,), in their original order.

    Raises:
        ValueError: ``n`` below the number of classes or not below the size of the training split, or leaving
            some class without a training image.
    """
    total = data.x_train.shape[0]
    if not data.n_classes <= n < total:
        raise ValueError(f"val must be at least the number of classes ({data.n_classes}) and below the {total} "
                         f"training images of {data.name} (0 = no validation set), got {n}")
    labels = data.y_train.cpu().numpy()
    held = stratified_indices(labels, data.n_classes, n, seed)
    keep = np.setdiff1d(np.arange(total), held, assume_unique=True)
    emptied = sorted(set(range(data.n_classes)) - set(labels[keep].tolist()))
    if emptied:
        names = ", ".join(data.class_names[k] for k in emptied)
        raise ValueError(f"val {n} would hold out every training image of class {names} of {data.name}; "
                         "hold out fewer")
    held_index = torch.from_numpy(held).to(data.x_train.device)
    keep_index = torch.from_numpy(keep).to(data.x_train.device)
    return (replace(data, x_train=data.x_train[keep_index], y_train=data.y_train[keep_index]),
            data.x_train[held_index], data.y_train[held_index])


def describe(data: ImageData) -> dict[str, object]:
    """What ``python -m real_data.data`` prints: sizes, image shape (C, H, W), class names and counts per
    split, normalisation statistics, default augmentation."""
    k = data.n_classes
    return {"dataset": data.name, "source": data.source, "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]), "image_shape": list(data.image_shape), "n_classes": k,
            "class_names": list(data.class_names),
            "train_counts": torch.bincount(data.y_train, minlength=k).tolist(),
            "test_counts": torch.bincount(data.y_test, minlength=k).tolist(),
            "mean": list(data.mean), "std": list(data.std), "augmentation": data.augmentation.describe()}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], in channels_last memory (no copy of the layout)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in a reflect-padded axis back to [0, size) (numpy/torch 'reflect': edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, generator: torch.Generator | None, padding: int = 4,
            flip: bool = True, fill: str = "reflect") -> torch.Tensor:
    """Random crop (same size, ``padding`` pixels of padding) and horizontal flip of a whole batch, on its device.

    Equivalent per image to ``np.pad(img, padding, mode='reflect')`` (``fill='reflect'``) or
    ``mode='constant'`` (``fill='zeros'``), a crop at a uniform offset in ``[0, 2 * padding]`` on each
    axis, and a flip with probability 1/2, done as one gather.

    Args:
        images: uint8 (N, H, W, C).
        generator: torch.Generator on the images' device (reproducible augmentation).
        padding: padding in pixels (< H and < W).
        flip: whether to flip horizontally at random.
        fill: 'reflect' (mirror without repeating the edge) or 'zeros' (black).

    Returns:
        float32 (N, C, H, W) in [0, 1] (channels_last memory).
    """
    n, h, w, _ = images.shape
    if not 0 <= padding < min(h, w):
        raise ValueError(f"padding must be in [0, {min(h, w)}), got {padding}")
    if fill not in ("reflect", "zeros"):
        raise ValueError(f"fill must be 'reflect' or 'zeros', got {fill!r}")
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=device)
    rows = offsets[0][:, None] + torch.arange(h, device=device) - padding
    cols = offsets[1][:, None] + torch.arange(w, device=device) - padding
    if flip:
        flipped = torch.rand(n, generator=generator, device=device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    if fill == "reflect":
        return to_float(images[batch, _reflect(rows, h)[:, :, None], _reflect(cols, w)[:, None, :]])
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    gathered = images[batch, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return to_float(gathered * inside[..., None].to(images.dtype))


def build_parser() -> argparse.ArgumentParser:
    from synthmodel.cli import ArgumentParser

    p = ArgumentParser(prog="python -m real_data.data",
                       description="Describe a data set: sizes, image shape, class names and counts per split, "
                                   "normalisation statistics, default augmentation. Checks every file on the way.")
    p.add_argument("spec", metavar="SPEC", help=DATASET_SPECS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        info = describe(load_dataset(args.spec))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
        return 0
    c, h, w = info["image_shape"]
    print(f"{info['dataset']} ({info['source']})")
    print(f"n_train {info['n_train']}, n_test {info['n_test']}, images {c} x {h} x {w} (C x H x W), "
          f"{info['n_classes']} classes")
    print("normalisation mean " + ", ".join(f"{v:.4f}" for v in info["mean"]) + "; std "
          + ", ".join(f"{v:.4f}" for v in info["std"]))
    print(f"default augmentation: {info['augmentation']}")
    width = max(len("class"), *(len(name) for name in info["class_names"]))
    print(f"{'label':>5}  {'class':<{width}}  {'train':>7}  {'test':>7}")
    for label, (name, n_train, n_test) in enumerate(zip(info["class_names"], info["train_counts"],
                                                        info["test_counts"], strict=True)):
        print(f"{label:>5}  {name:<{width}}  {n_train:>7}  {n_test:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
