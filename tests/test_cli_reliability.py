"""Bad input to the command lines: one line ``error: ...``, exit status 2, found before any work, nothing left
behind. Every CLI is called in-process (``main(argv)``), its expensive steps replaced by a function that fails
the test if it runs, so "before any work" is what is checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import experiments.explore as explore
import figures.__main__ as figures_cli
import real_data.cas as cas_cli
import real_data.saliency as saliency_cli
import real_data.train as real_train
import synthmodel.train as synth_train
from real_data.checkpoints import read_checkpoint
from real_data.data import load_dataset
from real_data.fixtures import write_npz
from synthmodel.atomic import atomic_path, check_input_file, check_output_dir, check_output_file, save_figure
from synthmodel.population import optimal_weights
from synthmodel.population.formalisation import MAX_EPS, WORLD_SCALE, Formalisation, World
from synthmodel.population.point import theory_point, validate_theory_params
from synthmodel.spec import make_preset
from synthmodel.sweep import cli as sweep_cli

TINY = ["--epochs", "1", "--n-train", "64", "--n-test", "64", "--quiet"]
REAL_FAST = ["--arch", "small-cnn", "--width", "4", "--batch-size", "8", "--steps", "1", "--eval-steps", "1",
             "--epochs", "1", "--quiet", "--device", "cpu"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the bad input was refused")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name)


@pytest.fixture()
def places(tmp_path):
    """A folder, a file, a place under a file (no folder can be created there) and one in a read-only mount."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    return {"folder": tmp_path / "folder", "file": tmp_path / "file", "under_file": tmp_path / "file" / "x" / "y",
            "read_only": Path("/proc/crossclass-test/x"), "read_only_file": Path("/proc/crossclass-test.json")}


# -- item: every output place is checked before any work ---------------------------------------------------------
@pytest.mark.parametrize("case, place, words", [
    ("out", "folder", "is a directory, not a file"),
    ("out", "under_file", "is a file, not a folder"),
    ("out", "read_only_file", "refuses new files"),
    ("save", "file", "is a file, not a folder"),
    ("save", "under_file", "cannot be created"),
])
def test_synthmodel_train_checks_out_and_save_before_training(case, place, words, places, monkeypatch, capsys):
    monkeypatch.setattr(synth_train, "train", _no_work)
    assert synth_train.main([*TINY, f"--{case}", str(places[place])]) == 2
    assert words in _one_error_line(capsys)
    assert places["file"].read_text() == "keep" and _leftovers(places["folder"].parent) == []


@pytest.mark.parametrize("place, words", [("file", "is a file, not a folder"), ("under_file", "cannot be created"),
                                          ("read_only", "refuses new files")])
def test_real_data_train_checks_out_before_reading_the_data(place, words, places, monkeypatch, capsys):
    monkeypatch.setattr(real_train, "load_dataset", _no_work)
    assert real_train.main(["--dataset", "npz:/absent.npz", "--out", str(places[place]), *REAL_FAST]) == 2
    assert words in _one_error_line(capsys)


@pytest.mark.parametrize("place, words", [("file", "is a file, not a folder"), ("under_file", "cannot be created")])
def test_real_data_cas_checks_out_before_reading_anything(place, words, places, monkeypatch, capsys):
    monkeypatch.setattr(cas_cli, "load_dataset", _no_work)
    monkeypatch.setattr(cas_cli, "model_from_checkpoint", _no_work)
    assert cas_cli.main(["--checkpoint", "absent.pt", "--dataset", "npz:/absent.npz", "--device", "cpu",
                         "--out", str(places[place])]) == 2
    assert words in _one_error_line(capsys)


@pytest.mark.parametrize("target, words", [("folder", "is a directory, not a file"),
                                           ("noext", "the suffix must name an image format"),
                                           ("under_file", "is a file, not a folder")])
def test_real_data_saliency_checks_out_before_reading_anything(target, words, places, monkeypatch, capsys):
    monkeypatch.setattr(saliency_cli, "load_dataset", _no_work)
    path = places["folder"] / "grid" if target == "noext" else places[target]
    assert saliency_cli.main(["--checkpoint", "absent.pt", "--dataset", "npz:/absent.npz", "--out", str(path)]) == 2
    assert words in _one_error_line(capsys)
    assert _leftovers(places["folder"].parent) == []


@pytest.mark.parametrize("cli", ["figures", "explore", "sweep"])
def test_the_other_clis_with_an_output_folder_check_it_first(cli, places, monkeypatch, capsys, tmp_path):
    out = str(places["file"])
    if cli == "figures":
        monkeypatch.setattr(figures_cli, "render", _no_work)
        code = figures_cli.main(["--out", out, "--store", str(tmp_path)])
    elif cli == "explore":
        monkeypatch.setattr(explore, "run_sweep", _no_work)
        code = explore.main([next(iter(explore.GROUPS)), "--out", out])
    else:
        grid = tmp_path / "g.toml"
        grid.write_text('kind = "theory"\n[fixed]\npreset = "paper3"\nmu = 1.0\nsigma = 0.5\neps = 0.1\n')
        code = sweep_cli.main(["--grid", str(grid), "--out", out, "--quiet", "--no-hooks"])
    assert code == 2
    assert f"{out} is a file, not a folder" in _one_error_line(capsys)
    assert places["file"].read_text() == "keep"


def test_output_checks_create_nothing_and_name_the_reason(places, tmp_path):
    new = tmp_path / "new" / "deeper"
    assert check_output_dir(new) == new and not (tmp_path / "new").exists()
    assert check_output_file(places["folder"] / "a.json").name == "a.json"
    for check, path, words in ((check_output_file, Path("/dev/null"), "a character device, not a file"),
                               (check_output_file, tmp_path / "absent" / "a.json", "does not exist"),
                               (check_output_dir, places["under_file"], "cannot be created")):
        with pytest.raises(ValueError, match=words):
            check(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder"]


def test_a_failed_atomic_write_leaves_no_temporary_on_any_path(places):
    folder = places["folder"]
    with pytest.raises(IsADirectoryError):  # the final rename fails: the target is a folder
        with atomic_path(folder) as tmp:
            tmp.write_text("x")
    (folder / "sub").mkdir()
    with pytest.raises(KeyboardInterrupt):  # interrupted while writing
        with atomic_path(folder / "sub" / "a.csv") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with pytest.raises(ValueError):  # matplotlib refuses the format after opening nothing
        save_figure(plt.figure(), folder / "sub" / "fig.unknownformat")
    assert _leftovers(folder.parent) == [] and plt.get_fignums() == []


# -- item: range guards ----------------------------------------------------------------------------------------
def test_theory_points_beyond_the_engines_range_are_refused_in_one_line():
    base = {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.1}
    for key, value, words in (("eps", 1e300, "in [0, 1e+100]"), ("mu", 1e200, "in [0.001, 1000]"),
                              ("sigma", 1e-6, "in [0.001, 1000]")):
        with pytest.raises(ValueError, match=re.escape(f"is not allowed: {key} must be a finite number {words}")):
            validate_theory_params({**base, key: value})
    with pytest.raises(ValueError, match="outside"):
        optimal_weights("paper3", Formalisation(), [1e300])
    with pytest.raises(ValueError, match="world scales"):
        World(k=3, mu=1e4, sigma=0.5)


@pytest.mark.parametrize("scale", [2 * WORLD_SCALE[0], WORLD_SCALE[1]])  # sigma = scale / 2 in range too
def test_the_engine_is_scale_invariant_at_the_ends_of_its_range(scale):
    """mu, sigma, eps -> c mu, c sigma, c eps leaves the problem the same with weights w / c: at the limits of
    the accepted range the engine must still agree with the unit world (to its optimiser's tolerance)."""
    params = {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": 0.3}
    unit = theory_point(params)
    scaled = theory_point({**params, "mu": scale, "sigma": 0.5 * scale, "eps": 0.3 * scale})
    for key in ("w1", "w2"):
        assert scaled[key] * scale == pytest.approx(unit[key], rel=1e-8)
    for key in ("robust_acc", "cas", "robust_loss"):
        assert scaled[key] == pytest.approx(unit[key], rel=1e-8)


def test_the_largest_theory_radius_is_the_exact_collapse():
    result = theory_point({"preset": "paper3", "mu": 1.0, "sigma": 0.5, "eps": MAX_EPS})
    assert (result["w1"], result["w2"]) == (0.0, 0.0)  # eps >= mu erases every feature under l_inf
    assert result["robust_loss"] == pytest.approx(np.log(3), rel=1e-12)


def test_synthmodel_train_refuses_a_radius_the_inputs_cannot_hold(capsys, monkeypatch):
    monkeypatch.setattr(synth_train, "train", _no_work)
    assert synth_train.main([*TINY, "--eps", "1e300"]) == 2
    assert "eps=1e+300 is beyond" in _one_error_line(capsys)
    limit = synth_train.eps_limit(synth_train.TrainConfig())
    assert 1e4 < limit < 2e4  # 1e-3 (1 + 0.5) / 2^-23
    synth_train.TrainConfig(eps=limit).validate()
    assert synth_train.eps_limit(synth_train.TrainConfig(dtype="float64")) > 1e12


def test_sweep_points_go_through_the_same_guards(tmp_path, capsys):
    for kind, key, value in (("train", "eps", "1e300"), ("dynamics", "eps", "1e300"), ("theory", "eps", "1e300"),
                             ("train", "mu", "0.0"), ("theory", "mu", "1e200")):
        grid = tmp_path / f"{kind}.toml"
        fixed = {"preset": '"paper3"', "mu": "1.0", "sigma": "0.5", "eps": "0.1", key: value}
        grid.write_text(f'kind = "{kind}"\n[fixed]\n' + "".join(f"{k} = {v}\n" for k, v in fixed.items()))
        assert sweep_cli.main(["--grid", str(grid), "--dry-run", "--out", str(tmp_path / kind)]) == 2, (kind, key)
        assert f"{key}=" in _one_error_line(capsys)


def test_mu_minus_one_and_zero_get_the_same_range_text(capsys):
    texts = []
    for mu in (-1.0, 0.0):
        with pytest.raises(ValueError) as info:
            synth_train.TrainConfig(mu=mu).validate()
        texts.append(str(info.value).split(": ", 1)[1])
    assert texts[0] == texts[1] == "mu must be a finite number > 0"


def test_a_non_positive_sigma_is_one_readable_value():
    with pytest.raises(ValueError, match=r"^sigma must be > 0, got 0 \(every feature\)$"):
        make_preset("paper3", sigma=0.0)
    with pytest.raises(ValueError, match=r"^sigma must be > 0, got -1 \(feature 5\)$"):
        make_preset("paper3", sigma=[0.5] * 5 + [-1.0])


@pytest.fixture(scope="module")
def synth_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    assert synth_train.main([*TINY, "--save", str(folder)]) == 0
    return folder / "best.pt"


@pytest.mark.parametrize("world", [["--preset", "all-but-one-4"], ["--noise-dims", "2"]])
def test_a_teacher_of_another_world_is_refused_naming_what_differs(world, synth_teacher, capsys, monkeypatch):
    monkeypatch.setattr(synth_train, "train", _no_work)
    assert synth_train.main([*TINY, *world, "--teacher", str(synth_teacher)]) == 2
    line = _one_error_line(capsys)
    assert "trained in another world" in line and "(3 classes, 6 inputs)" in line


@pytest.fixture(scope="module")
def npz_set(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("npz") / "set.npz", n_train=16, n_test=8, n_classes=3)


@pytest.mark.parametrize("extra, words", [
    (["--eps", "1e9"], "eps=1e+09 is beyond the pixel range"),
    (["--eval-step-size", "300"], "eval_step_size=300 is beyond the pixel range"),
    (["--norm", "l2", "--eps", "2041"], "beyond the diameter of the npz:"),
    (["--milestones", "1"], "milestones 1 are beyond the 1 epochs"),
    (["--schedule", "cosine", "--milestones", "1", "--epochs", "3"], "milestones apply to the step schedule"),
])
def test_real_data_train_refuses_impossible_settings_before_training(extra, words, npz_set, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(real_train, "Trainer", _no_work)
    argv = ["--dataset", f"npz:{npz_set}", "--out", str(tmp_path / "run"), *REAL_FAST, *extra]
    assert real_train.main(argv) == 2
    assert words in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_the_l2_radius_limit_is_the_image_diameter(npz_set):
    data = load_dataset(f"npz:{npz_set}")  # 8 x 8 x 1 images: 255 * 8 = 2040
    real_train.TrainConfig(dataset="x", norm="l2", eps=2040.0).validate().check_data(data)
    with pytest.raises(ValueError, match="2040"):
        real_train.TrainConfig(dataset="x", norm="l2", eps=2040.5).validate().check_data(data)


# -- item: data and checkpoint files say what is wrong -----------------------------------------------------------
def _npz(path: Path, y_train: np.ndarray, n_test: int = 2) -> Path:
    np.savez(path, x_train=np.zeros((y_train.size, 8, 8, 1), np.uint8), y_train=y_train.astype(np.int64),
             x_test=np.zeros((n_test, 8, 8, 1), np.uint8), y_test=np.zeros(n_test, np.int64))
    return path


def test_npz_files_that_are_not_data_sets_say_why(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    cases = ((garbage, "is not a valid .npz file"), (_npz(tmp_path / "empty.npz", np.zeros(0)), "x_train holds no "
             "images"), (_npz(tmp_path / "one.npz", np.zeros(4)), "hold 1 class; a classifier needs at least 2"),
             (tmp_path, "is a directory"))
    for path, words in cases:
        with pytest.raises(ValueError, match=words) as info:
            load_dataset(f"npz:{path}")
        assert "allow_pickle" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path, words", [("folder", "is a directory, not a regular file"),
                                         ("/dev/null", "is a character device, not a regular file"),
                                         ("absent", "does not exist")])
def test_a_checkpoint_that_is_no_file_says_what_it_is(path, words, tmp_path, npz_set, capsys):
    (tmp_path / "folder").mkdir()
    target = path if path.startswith("/") else str(tmp_path / path)
    for load in (synth_train.load_checkpoint, read_checkpoint):
        with pytest.raises(ValueError, match=words):
            load(target)
    assert cas_cli.main(["--checkpoint", target, "--dataset", f"npz:{npz_set}", "--device", "cpu", "--quiet"]) == 2
    assert words in _one_error_line(capsys)
    assert saliency_cli.main(["--checkpoint", target, "--dataset", f"npz:{npz_set}", "--indices", "0",
                              "--out", str(tmp_path / "grid.png")]) == 2
    assert words in _one_error_line(capsys)
    argv = ["--dataset", f"npz:{npz_set}", "--mode", "kd", "--teacher", target, "--out", str(tmp_path / "kd")]
    assert real_train.main([*argv, *REAL_FAST]) == 2
    assert words in _one_error_line(capsys)
    assert synth_train.main([*TINY, "--teacher", target]) == 2
    assert words in _one_error_line(capsys)
    with pytest.raises(ValueError, match=words):
        check_input_file(target, "checkpoint")


def test_json_of_a_refused_run_is_never_written(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert synth_train.main([*TINY, "--eps", "-1", "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert not out.exists()
    assert synth_train.main([*TINY, "--out", str(out), "--json"]) == 0
    assert json.loads(out.read_text())["config"]["epochs"] == 1
    assert torch.isfinite(torch.tensor(json.loads(capsys.readouterr().out)["final"]["robust_acc"]))
