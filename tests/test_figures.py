"""Every figure renders from a small store made here; missing data gives a notice, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from figures import FIGURES, Sources, render
from figures.__main__ import main
from synthmodel.sweep import expand_grid, run_sweep

TRAIN = {"kind": "train",
         "fixed": {"preset": "paper3", "noise_dims": 4, "n_train": 90, "n_test": 90, "epochs": 3, "batch_size": 30,
                   "attack_steps": 2, "eval_steps": 2},
         "grid": {"eps": [0.1, 0.3], "label_smoothing": [0.0, 0.2], "seed": [0, 1]}}
THEORY = {"kind": "theory", "fixed": {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "attack": "logitwise"},
          "grid": {"eps": [0.1, 0.2, 0.3], "alpha": [0.0, 0.2]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    for spec in (TRAIN, THEORY):
        run_sweep(expand_grid(spec), out, workers=1, progress=False, export_format=None)
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A folder in the layout python -m real_data.cas --out writes: cas.csv and matrix_<i>_<stem>.csv."""
    folder = tmp_path_factory.mktemp("cas")
    names = ["airplane", "automobile", "bird", "cat"]
    rng = np.random.default_rng(0)
    rows = []
    for index, (stem, epoch) in enumerate((("epoch_001", 1), ("best", 2), ("epoch_002", 2), ("last", 3))):
        vectors = rng.normal(size=(4, 6))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        matrix = vectors @ vectors.T
        pd.DataFrame(matrix, index=names, columns=names).to_csv(folder / f"matrix_{index}_{stem}.csv")
        off = ~np.eye(4, dtype=bool)
        rows.append({"checkpoint": f"run/{stem}.pt", "epoch": epoch, "clean_acc": 0.5, "robust_acc": 0.3 + 0.1 * epoch,
                     "cas": float(np.clip(matrix[off], 0, 1).sum())})
    pd.DataFrame(rows).to_csv(folder / "cas.csv", index=False)
    return folder


def _valid(path):
    data = path.read_bytes()
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    return data.startswith(b"%PDF") and b"%%EOF" in data[-64:]


def test_every_figure_renders_valid_png_and_pdf(store, real, tmp_path):
    notices = []
    made = render(Sources(stores=[store], real=[real]), tmp_path, log=notices.append)
    # every registered figure had its data (real_gradcam: its checkpoints come from real-data sweep points,
    # tests/test_real_data_sweep.py)
    assert set(made) == set(FIGURES) - {"real_gradcam"}, notices
    for files in made.values():
        assert {f.suffix for f in files} == {".png", ".pdf"}
        assert all(_valid(f) for f in files)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_missing_store_is_a_notice_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "figures", "--store", str(tmp_path / "nothing"), "--out",
                           str(tmp_path / "figs"), "--only", "matrices_synthetic", "dynamics_curves"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    assert "no sweep store" in proc.stderr
    assert proc.stderr.count("skipped matrices_synthetic") == 1 and "skipped dynamics_curves" in proc.stderr


def test_theory_figures_need_no_store(tmp_path):
    # without theory points the paper's world is computed by the population engine
    made = render(Sources(), tmp_path, only=["claim2_accuracy"], log=lambda _: None)
    assert all(_valid(f) for f in made["claim2_accuracy"])


def test_cli_rejects_unknown_figure_and_lists(tmp_path, capsys):
    assert main(["--only", "nope", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in FIGURES)
