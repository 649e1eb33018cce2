"""real_data.data: the CIFAR / IDX / npz readers, the batched augmentation, the stratified training subset."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from real_data import data as data_module
from real_data.data import (
    CIFAR10_FILES,
    FASHION_MNIST_CLASSES,
    Augmentation,
    augment,
    load_dataset,
    read_idx,
    stratified_counts,
    to_float,
    train_subset,
)
from real_data.data import main as data_main
from real_data.fixtures import write_cifar10, write_cifar100, write_idx_file, write_idx_set, write_npz


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
    with pytest.raises(ValueError, match="cifar10:DIR.*fashion-mnist\\[:DIR\\], mnist:DIR"):
        load_dataset("imagenet:/data")
    with pytest.raises(ValueError, match="mnist:DIR"):
        load_dataset("mnist")
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


# -- IDX (Fashion-MNIST / MNIST) ----------------------------------------------------------------
def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """IDX bytes written by hand from the format's definition (independent of real_data.fixtures)."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_equals_direct_numpy_decoding(tmp_path, compress):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    floats = rng.normal(size=(3, 2)).astype(np.float32)
    for name, array, code in (("img", images, 0x08), ("f", floats, 0x0D)):
        blob = _idx_bytes(array, code)
        path = tmp_path / (name + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(blob) if compress else blob)
        header = 4 + 4 * array.ndim
        # the same bytes decoded directly: big-endian values after the header, shape from the header
        shape = tuple(int(v) for v in np.frombuffer(blob, ">u4", count=array.ndim, offset=4))
        direct = np.frombuffer(blob, dtype=array.dtype.newbyteorder(">"), offset=header).reshape(shape)
        ours = read_idx(path)
        assert ours.shape == shape and ours.dtype.isnative
        np.testing.assert_array_equal(ours, direct)
        np.testing.assert_array_equal(ours, array)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_loads_as_fashion_mnist_and_mnist(tmp_path, compress, monkeypatch):
    folder = write_idx_set(tmp_path / "fm", per_class=3, test_per_class=2, compress=compress)
    data = load_dataset(f"fashion-mnist:{folder}")
    assert data.x_train.shape == (30, 28, 28, 1) and data.x_test.shape == (20, 28, 28, 1)
    assert data.class_names == FASHION_MNIST_CLASSES and data.class_names[9] == "Ankle boot"
    suffix = ".gz" if compress else ""
    raw = read_idx(folder / f"train-images-idx3-ubyte{suffix}")
    assert torch.equal(data.x_train[..., 0], torch.from_numpy(raw))
    assert data.y_test.tolist() == read_idx(folder / f"t10k-labels-idx1-ubyte{suffix}").tolist()
    np.testing.assert_allclose(data.mean, [raw.mean() / 255], rtol=1e-12)
    np.testing.assert_allclose(data.std, [raw.std() / 255], rtol=1e-12)
    assert data.augmentation == Augmentation(2, False, "zeros")
    digits = load_dataset(f"mnist:{folder}")
    assert digits.class_names == tuple("0123456789") and torch.equal(digits.x_train, data.x_train)
    # fashion-mnist alone: $FASHION_MNIST_DIR first
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    assert torch.equal(load_dataset("fashion-mnist").x_test, data.x_test)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "absent-too")
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def _corrupt(folder, name: str, how: str) -> None:
    path = folder / name
    blob = path.read_bytes()
    if how == "truncate":
        path.write_bytes(blob[:-5])
    elif how == "extra":
        path.write_bytes(blob + b"\0")
    elif how == "swap":  # a valid IDX label file where the image file belongs
        path.write_bytes((folder / "train-labels-idx1-ubyte").read_bytes())
    elif how == "junk":
        path.write_bytes(b"PK\x03\x04 not an IDX file")
    elif how == "gzip-truncate":
        path.write_bytes(gzip.compress(blob)[:-20])
        path.rename(path.with_name(name + ".gz"))
    elif how == "gzip-corrupt":
        packed = bytearray(gzip.compress(blob))
        packed[len(packed) // 2] ^= 0xFF
        path.write_bytes(bytes(packed))
        path.rename(path.with_name(name + ".gz"))
    elif how == "delete":
        path.unlink()


@pytest.mark.parametrize("name, how, message", [
    ("train-images-idx3-ubyte", "truncate", "train-images-idx3-ubyte is truncated: its header promises shape"),
    ("t10k-labels-idx1-ubyte", "extra", "t10k-labels-idx1-ubyte has trailing bytes"),
    ("train-images-idx3-ubyte", "swap", "must hold uint8 images of 3 dimension\\(s\\) \\(IDX magic 00000803\\)"),
    ("t10k-images-idx3-ubyte", "junk", "t10k-images-idx3-ubyte is not an IDX file: magic number 504b0304"),
    ("train-labels-idx1-ubyte", "gzip-truncate", "train-labels-idx1-ubyte.gz is not a readable \\(gzipped\\) IDX"),
    ("t10k-images-idx3-ubyte", "gzip-corrupt", "t10k-images-idx3-ubyte.gz is not a readable \\(gzipped\\) IDX"),
    ("t10k-labels-idx1-ubyte", "delete", "lacks t10k-labels-idx1-ubyte\\[.gz\\]; expected the four IDX files"),
])
def test_corrupt_truncated_or_missing_idx_files_are_one_error_line(tmp_path, capsys, name, how, message):
    folder = write_idx_set(tmp_path / "fm", compress=False)
    _corrupt(folder, name, how)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"fashion-mnist:{folder}")
    assert data_main([f"fashion-mnist:{folder}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: ")


def test_label_file_that_does_not_match_its_image_file(tmp_path):
    folder = write_idx_set(tmp_path / "fm", per_class=2, compress=False)
    labels = read_idx(folder / "train-labels-idx1-ubyte")
    write_idx_file(folder / "train-labels-idx1-ubyte", labels[:-1])
    with pytest.raises(ValueError, match="holds 19 labels but .*train-images-idx3-ubyte holds 20 images"):
        load_dataset(f"mnist:{folder}")
    write_idx_file(folder / "train-labels-idx1-ubyte", np.where(labels == 3, 12, labels).astype(np.uint8))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 10\\), got up to 12"):
        load_dataset(f"mnist:{folder}")
    write_idx_file(folder / "train-labels-idx1-ubyte", np.where(labels == 3, 4, labels).astype(np.uint8))
    with pytest.raises(ValueError, match="classes 3 have no training image"):
        load_dataset(f"mnist:{folder}")


def test_describe_cli_table_and_json(tmp_path, capsys):
    folder = write_idx_set(tmp_path / "fm", per_class=3, test_per_class=2)
    assert data_main([f"fashion-mnist:{folder}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_train"] == 30 and info["n_test"] == 20 and info["image_shape"] == [1, 28, 28]
    assert info["train_counts"] == [3] * 10 and info["test_counts"] == [2] * 10
    assert info["class_names"][0] == "T-shirt/top" and info["source"] == str(folder)
    assert data_main([f"fashion-mnist:{folder}"]) == 0
    table = capsys.readouterr().out
    assert "n_train 30, n_test 20" in table and "Ankle boot" in table
    assert "random crop with 2-px zero padding, no flip" in table


def test_zero_filled_augmentation_equals_numpy_constant_padding():
    images = torch.randint(1, 256, (6, 7, 9, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    for flip in (False, True):
        out = augment(images, torch.Generator().manual_seed(8), padding=3, flip=flip, fill="zeros")
        gen = torch.Generator().manual_seed(8)
        offsets = torch.randint(0, 7, (2, 6), generator=gen).numpy()
        flipped = (torch.rand(6, generator=gen) < 0.5).numpy() if flip else np.zeros(6, bool)
        padded = np.pad(images.numpy(), ((0, 0), (3, 3), (3, 3), (0, 0)), mode="constant")
        expected = np.stack([padded[k, offsets[0, k]:offsets[0, k] + 7, offsets[1, k]:offsets[1, k] + 9]
                             for k in range(6)])
        expected = np.where(flipped[:, None, None, None], expected[:, :, ::-1], expected)
        np.testing.assert_array_equal(out.numpy(), expected.transpose(0, 3, 1, 2).astype(np.float32) / 255)


@pytest.mark.parametrize("counts, n", [([5, 5, 5, 5], 8), ([50, 30, 20], 10), ([6, 6], 12), ([7, 3, 9, 2], 13),
                                       ([6000] * 10, 1000), ([6000] * 10, 1234)])
def test_stratified_counts_are_the_largest_remainder_shares(counts, n):
    take = stratified_counts(np.array(counts), n)
    quota = n * np.array(counts) / sum(counts)
    assert take.sum() == n and (take <= counts).all()
    # every exact share is >= 1 here: each class gets its share rounded down or up, never further off
    assert (np.floor(quota) <= take).all() and (take <= np.ceil(quota)).all()


@pytest.mark.parametrize("counts, n, expected", [([97, 2, 1], 4, [2, 1, 1]), ([1000, 1, 1, 1, 1], 5, [1] * 5),
                                                 ([10, 1, 1], 3, [1, 1, 1]), ([8, 8, 1], 4, [2, 1, 1])])
def test_stratified_counts_give_every_class_one_image(counts, n, expected):
    # shares below one image are lifted to one, taken from the class with the smallest remainder
    assert stratified_counts(np.array(counts), n).tolist() == expected


def test_train_subset_is_seeded_stratified_and_refuses_impossible_sizes(tmp_path):
    data = load_dataset(f"mnist:{write_idx_set(tmp_path / 'm', per_class=6, test_per_class=1)}")
    subset = train_subset(data, 20, seed=5)
    assert torch.bincount(subset.y_train, minlength=10).tolist() == [2] * 10
    # each chosen image is one of the originals with its label, none twice, in the original order
    rows = {bytes(img.numpy().tobytes()) + bytes([lab]) for img, lab in zip(data.x_train, data.y_train.tolist())}
    chosen = [bytes(img.numpy().tobytes()) + bytes([lab]) for img, lab in zip(subset.x_train, subset.y_train.tolist())]
    assert set(chosen) <= rows and len(set(chosen)) == 20
    assert torch.equal(train_subset(data, 20, seed=5).x_train, subset.x_train)
    assert not torch.equal(train_subset(data, 20, seed=6).x_train, subset.x_train)
    assert torch.equal(subset.x_test, data.x_test) and subset.mean == data.mean
    assert train_subset(data, 0, seed=5) is data
    for bad in (9, 61):
        with pytest.raises(ValueError, match="train_n must be between the number of classes \\(10\\) and the 60"):
            train_subset(data, bad, seed=0)


@pytest.mark.parametrize("n", ["9", "31", "-1"])
def test_train_n_outside_the_split_is_one_error_line_and_writes_nothing(tmp_path, capsys, n):
    from real_data import train as train_cli

    folder = write_idx_set(tmp_path / "fm", per_class=3, test_per_class=1)
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", f"fashion-mnist:{folder}", "--train-n", n, "--arch", "small-cnn", "--width",
                           "2", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train_n" in err[0]
    assert not out.exists()


def test_train_n_run_trains_on_the_subset(tmp_path):
    from real_data import train as train_cli
    from real_data.checkpoints import read_checkpoint

    folder = write_idx_set(tmp_path / "fm", per_class=4, test_per_class=1)
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", f"fashion-mnist:{folder}", "--train-n", "20", "--arch", "small-cnn", "--width",
                           "2", "--epochs", "1", "--batch-size", "8", "--steps", "1", "--eval-steps", "1",
                           "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    blob = read_checkpoint(out / "last.pt")
    assert blob["config"]["train_n"] == 20 and blob["class_names"][0] == "T-shirt/top"
