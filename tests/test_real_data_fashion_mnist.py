"""The real Fashion-MNIST files (Debian's dataset-fashion-mnist, or $FASHION_MNIST_DIR).

Skipped, with the reason, on a machine without them; in CI (CI=true, where .ci/run installs the
package) their absence is a failure instead.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from real_data import train as train_cli
from real_data.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, IDX_FILES, load_dataset, train_subset
from real_data.data import main as data_main

SHOES = ("Sandal", "Sneaker", "Ankle boot")
GARMENTS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt")


def _folder() -> Path:
    folder = Path(os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DEBIAN_DIR)
    if all((folder / (name + ".gz")).is_file() or (folder / name).is_file() for name in IDX_FILES.values()):
        return folder
    reason = (f"the Fashion-MNIST IDX files are not in {folder} (apt-get install dataset-fashion-mnist, or set "
              "FASHION_MNIST_DIR)")
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; CI must run these tests (.ci/run installs the package)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def folder() -> Path:
    return _folder()


@pytest.fixture(scope="module")
def fmnist(folder):
    return load_dataset(f"fashion-mnist:{folder}")


def _direct(folder: Path, name: str, header: int) -> np.ndarray:
    path = folder / (name + ".gz")
    raw = gzip.open(path).read() if path.is_file() else (folder / name).read_bytes()
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def test_real_files_equal_a_direct_decoding_and_have_the_standard_sizes(folder, fmnist):
    # IDX: 16-byte header for the images (magic 2051, N, 28, 28), 8 bytes for the labels (magic 2049, N)
    for split, prefix, n in (("train", "train", 60000), ("test", "t10k", 10000)):
        images = _direct(folder, f"{prefix}-images-idx3-ubyte", 16).reshape(n, 28, 28)
        labels = _direct(folder, f"{prefix}-labels-idx1-ubyte", 8)
        assert torch.equal(getattr(fmnist, f"x_{split}")[..., 0], torch.from_numpy(images.copy()))
        assert getattr(fmnist, f"y_{split}").tolist() == labels.tolist()
    assert fmnist.x_train.shape == (60000, 28, 28, 1) and fmnist.x_test.shape == (10000, 28, 28, 1)
    assert torch.bincount(fmnist.y_train).tolist() == [6000] * 10
    assert torch.bincount(fmnist.y_test).tolist() == [1000] * 10
    assert fmnist.class_names == FASHION_MNIST_CLASSES


def test_normalisation_statistics_are_the_training_splits(fmnist):
    pixels = fmnist.x_train.double() / 255
    assert fmnist.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-12)
    assert fmnist.std[0] == pytest.approx(pixels.std(unbiased=False).item(), rel=1e-9)
    # the values quoted throughout the literature for Fashion-MNIST's training split
    assert round(fmnist.mean[0], 4) == 0.2860 and round(fmnist.std[0], 4) == 0.3530


def test_facts_behind_the_default_augmentation(fmnist):
    # size-normalised, centred objects: in over 90% of the training images a garment reaches both the top
    # and the bottom row, a shoe both the first and the last column; shoes all face one way: their
    # class-mean image differs from its mirror image by over half its mass, a garment's by under a third
    ink = fmnist.x_train[..., 0] > 0
    names = list(fmnist.class_names)
    for name in GARMENTS + SHOES:
        images = ink[fmnist.y_train == names.index(name)]
        edges = (images[:, 0].any(1) & images[:, -1].any(1)) if name in GARMENTS else \
            (images[:, :, 0].any(1) & images[:, :, -1].any(1))
        assert edges.float().mean() > 0.9, name
        mean = fmnist.x_train[fmnist.y_train == names.index(name)][..., 0].double().mean(0)
        asymmetry = ((mean - mean.flip(1)).abs().sum() / mean.sum()).item()
        assert (asymmetry > 0.5) if name in SHOES else (asymmetry < 1 / 3), (name, asymmetry)


def test_describe_cli_on_the_real_files(folder, capsys):
    assert data_main([f"fashion-mnist:{folder}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["n_train"], info["n_test"], info["image_shape"]) == (60000, 10000, [1, 28, 28])
    assert info["train_counts"] == [6000] * 10 and info["test_counts"] == [1000] * 10


def test_stratified_subset_of_the_real_training_split(fmnist):
    subset = train_subset(fmnist, 1000, seed=0)
    assert torch.bincount(subset.y_train).tolist() == [100] * 10


def test_small_at_run_on_real_fashion_mnist(folder, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", f"fashion-mnist:{folder}", "--train-n", "200", "--arch", "small-cnn",
                           "--width", "4", "--epochs", "1", "--batch-size", "50", "--steps", "2", "--eval-steps", "2",
                           "--eval-n", "200", "--eps", "25", "--step-size", "10", "--device", "cpu", "--quiet",
                           "--out", str(out)]) == 0
    log = pd.read_csv(out / "log.csv")
    assert log["epoch"].tolist() == [1] and np.isfinite(log["train_loss"]).all()
    assert json.loads((out / "config.json").read_text())["train_n"] == 200
