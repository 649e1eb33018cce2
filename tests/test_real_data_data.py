"""real_data.data: the CIFAR / npz readers and the batched augmentation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from real_data.data import CIFAR10_FILES, augment, load_dataset, to_float
from real_data.fixtures import write_cifar10, write_cifar100, write_npz


def test_cifar10_layout_decodes_pixels_labels_and_names(tmp_path):
    folder = write_cifar10(tmp_path / "c10", per_class=2)
    data = load_dataset(f"cifar10:{folder}")
    assert data.x_train.shape == (5 * 20, 32, 32, 3) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (20, 32, 32, 3) and data.n_classes == 10
    assert data.class_names[3] == "class3"
    # decode one row by hand from the file: CIFAR rows are channel-major, each channel row-major 32 x 32
    with open(folder / "data_batch_2", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    row, label = raw[b"data"][5], raw[b"labels"][5]
    n = 20 + 5  # batch 2 follows batch 1's 20 images
    for channel, i, j in [(0, 0, 0), (1, 7, 30), (2, 31, 4)]:
        assert data.x_train[n, i, j, channel].item() == row[channel * 1024 + i * 32 + j]
    assert data.y_train[n].item() == label
    assert torch.bincount(data.y_train, minlength=10).tolist() == [10] * 10


def test_cifar100_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path / "c100", per_class=1)
    data = load_dataset(f"cifar100:{folder}")
    with open(folder / "test", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    assert data.n_classes == 100 and data.class_names[7] == "fine7"
    assert data.y_test.tolist() == raw[b"fine_labels"]
    assert data.mean[0] == pytest.approx(0.5070751592371323)


def test_npz_set_and_its_normalisation_statistics(tmp_path):
    path = write_npz(tmp_path / "set.npz", n_train=12, n_test=8, n_classes=3, shape=(8, 8, 2))
    data = load_dataset(f"npz:{path}")
    arrays = np.load(path)
    assert data.image_shape == (2, 8, 8) and data.n_classes == 3
    # the statistics are those of the training pixels in [0, 1] (computed independently here)
    pixels = arrays["x_train"].astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(data.std, pixels.std(axis=(0, 1, 2)), rtol=1e-12)


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="data_batch_1.*test_batch.*batches.meta"):
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")
    folder = write_cifar10(tmp_path / "c10", per_class=1)
    os.remove(folder / "test_batch")
    with pytest.raises(ValueError, match="lacks test_batch"):
        load_dataset(f"cifar10:{folder}")
    with pytest.raises(ValueError, match="train, test, meta"):
        load_dataset(f"cifar100:{tmp_path}")
    with pytest.raises(ValueError, match="cifar10:DIR"):
        load_dataset("imagenet:/data")
    assert len(CIFAR10_FILES) == 7


@pytest.mark.parametrize("bad, message", [
    ({"x_train": np.zeros((4, 8, 8), np.uint8)}, "x_train must be uint8 of shape \\(N, H, W, C\\)"),
    ({"x_train": np.zeros((4, 8, 8, 1), np.float32)}, "x_train must be uint8"),
    ({"y_train": np.zeros(3, np.int64)}, "y_train must be 4 integer labels"),
    ({"x_test": np.zeros((2, 6, 6, 1), np.uint8), "y_test": np.zeros(2, np.int64)}, "differ in shape"),
    ({"y_train": np.array([0, 2, 2, 0])}, "classes 1 have no training image"),
    ({"y_train": np.array([3, 3, 3, 3]), "y_test": np.array([0, 1])}, "classes 0, 1, 2 have no training image"),
])
def test_npz_with_wrong_arrays_is_refused(tmp_path, bad, message):
    arrays = {"x_train": np.zeros((4, 8, 8, 1), np.uint8), "y_train": np.zeros(4, np.int64),
              "x_test": np.zeros((2, 8, 8, 1), np.uint8), "y_test": np.zeros(2, np.int64)}
    arrays.update(bad)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_data_pickles_cannot_run_code(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path / "c10", per_class=1)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": _Exploit()}, handle)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset(f"cifar10:{folder}")
    assert not (tmp_path / "exploited").exists()


def _reference_augment(images: np.ndarray, offsets: np.ndarray, flipped: np.ndarray, padding: int) -> np.ndarray:
    """Per image with numpy: reflect-pad, crop at the offsets, flip; then NCHW float in [0, 1]."""
    n, h, w, _ = images.shape
    out = []
    for k in range(n):
        padded = np.pad(images[k], ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
        crop = padded[offsets[0, k]:offsets[0, k] + h, offsets[1, k]:offsets[1, k] + w]
        out.append(crop[:, ::-1] if flipped[k] else crop)
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 255


@pytest.mark.parametrize("shape, padding", [((6, 32, 32, 3), 4), ((9, 8, 7, 1), 4), ((5, 5, 5, 2), 2)])
def test_batched_augmentation_equals_per_image_numpy(shape, padding):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment(images, torch.Generator().manual_seed(7), padding=padding)
    # the same draws, in augment's documented order: offsets (2, N), then the flip coin per image
    gen = torch.Generator().manual_seed(7)
    offsets = torch.randint(0, 2 * padding + 1, (2, shape[0]), generator=gen).numpy()
    flipped = (torch.rand(shape[0], generator=gen) < 0.5).numpy()
    expected = _reference_augment(images.numpy(), offsets, flipped, padding)
    np.testing.assert_array_equal(out.numpy(), expected)  # exact: same uint8 values divided by 255
    assert out.shape == (shape[0], shape[3], shape[1], shape[2])


def test_augmentation_without_padding_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    assert torch.equal(augment(images, None, padding=0, flip=False), to_float(images))
    assert to_float(images).min() >= 0 and to_float(images).max() <= 1
