"""Real-data runs as sweep points (kind ``real-train``, preset ``paper-fmnist``) on tiny IDX files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments import fmnist
from real_data.fixtures import write_idx_set
from real_data.point import KIND, teacher_params
from synthmodel.sweep import expand_grid, get_kind, normalize_params, read_history, read_points, run_sweep
from synthmodel.sweep.grid import GridError

REPO = Path(__file__).resolve().parents[1]


def _tiny(folder: Path, **changes) -> dict:
    """Settings that make paper-fmnist's points seconds long: 40 training images of 8x8, 20 test images."""
    return {"dataset": f"fashion-mnist:{folder}", "train_n": 40, "eval_n": 20, "width": 4, "epochs": 3,
            "milestones": [2], "batch_size": 10, "steps": 2, "eval_steps": 2, **changes}


@pytest.fixture(scope="module")
def idx(tmp_path_factory) -> Path:
    return write_idx_set(tmp_path_factory.mktemp("fm") / "idx", per_class=6, test_per_class=2, shape=(8, 8))


def test_the_preset_holds_the_three_observations_and_validates():
    grid = expand_grid(fmnist.grid_spec())
    points = [p.params for p in grid.points]
    assert all(p.kind == KIND for p in grid.points) and len({p.hash for p in grid.points}) == len(points)
    at = [p for p in points if p["mode"] == "at" and p["label_smoothing"] == 0 and not p.get("awp_gamma")]
    assert sorted({p["eps"] for p in at}) == sorted(fmnist.EPS_GRID)
    assert all(sorted(p["seed"] for p in at if p["eps"] == eps) == list(fmnist.SEEDS) for eps in fmnist.EPS_GRID)
    soft = [p for p in points if p["eps"] == fmnist.SOFT_EPS]
    assert {p["mode"] for p in soft} == {"at", "kd"} and any(p["label_smoothing"] > 0 for p in soft)
    # the distillation points come after their teachers (the AT points of the same seed)
    order = {json.dumps(p, sort_keys=True): i for i, p in enumerate(points)}
    for p in points:
        if p["teacher_from"] == "at_best":
            assert order[json.dumps(teacher_params(p), sort_keys=True)] < order[json.dumps(p, sort_keys=True)]


@pytest.mark.parametrize("bad, words", [
    ({"teacher_from": "at_best"}, "needs mode 'kd'"),
    ({"mode": "kd"}, "needs teacher_from"),
    ({"mode": "kd", "teacher_from": "at_best", "label_smoothing": 0.1}, "not both"),
    ({"eps": -1.0}, "eps"),
    ({"epochs": 0}, "epochs"),
    ({"color": 1}, "unknown key 'color'"),
])
def test_bad_points_are_refused_before_anything_runs(tmp_path, idx, bad, words):
    spec = {"kind": KIND, "points": [_tiny(idx, **bad)]}
    with pytest.raises(GridError, match=words):
        expand_grid(spec)
    assert not (tmp_path / "out").exists()


def test_a_sweep_trains_the_points_distils_from_the_at_point_and_the_figures_render(tmp_path, idx):
    from figures.catalog import render
    from figures.data import Sources

    out = tmp_path / "out"
    spec = fmnist.grid_spec(seeds=[0], overrides=_tiny(idx))
    spec["points"] = [p for p in spec["points"] if p["eps"] in (4.0, 8.0)]
    grid = expand_grid(spec)
    summary = run_sweep(grid, out, workers=2, progress=False)
    assert summary.failed == 0 and summary.computed == len(grid.points)
    table = read_points(out, status="done")
    kd = table[table["mode"] == "kd"]
    assert len(kd) == 1
    # the KD point's teacher is the AT point of its settings, trained once, in that point's own folder
    at = table[(table["mode"] == "at") & (table["eps"] == 8.0) & (table["label_smoothing"] == 0)
               & (table.get("awp_gamma", 0) == 0)]
    assert len(at) == 1
    teacher_file = out / "points" / at.iloc[0]["hash"] / "best.pt"
    config = json.loads((out / "points" / kd.iloc[0]["hash"] / "config.json").read_text())
    assert config["teacher"] == str(teacher_file) and config["mode"] == "kd"
    history = read_history(out)
    for _, row in table.iterrows():
        epochs = history[history["hash"] == row["hash"]]
        assert epochs["epoch"].tolist() == [1, 2, 3]
        assert row["cas_drop"] == pytest.approx(row["cas_best"] - row["cas_last"], abs=0)
        assert row["cas_best"] == epochs["cas"].iloc[int(row["best_epoch"]) - 1]
        assert all(len(m) == 10 and len(m[0]) == 10 for m in epochs["class_matrix"])
    text = Path(fmnist.write_tables(out)).read_text()
    assert "AT over the training eps" in text and "AT + KD" in text and "AT + LS 0.2" in text
    made = render(Sources(stores=[out], compute_missing=False), tmp_path / "figures",
                  only=["dynamics_curves", "dynamics_cas_drop", "dynamics_soft_labels", "matrices_synthetic",
                        "real_gradcam"], log=lambda line: None)
    assert set(made) == {"dynamics_curves", "dynamics_cas_drop", "dynamics_soft_labels", "matrices_synthetic",
                         "real_gradcam"}
    assert all(f.stat().st_size > 1000 for files in made.values() for f in files)


def _sweep(grid: Path, out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "synthmodel.sweep", "--grid", str(grid), "--out", str(out),
                             "--workers", "1", "--quiet", "--export", "none", "--no-hooks"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_point_killed_mid_run_resumes_through_the_sweep_to_the_uninterrupted_bits(tmp_path, idx):
    params = _tiny(idx, epochs=4, milestones=[3], eps=8.0, step_size=2.0)
    grid = tmp_path / "one.toml"
    grid.write_text(f'kind = "{KIND}"\n[fixed]\n' + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in {**fmnist.SETUP, **params}.items()))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _sweep(grid, whole)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = _sweep(grid, killed, start_new_session=True)
    workdirs = killed / "points"
    deadline = time.monotonic() + 600
    # kill the sweep (and its worker) once the point has saved an epoch but not finished
    while time.monotonic() < deadline:
        logs = list(workdirs.glob("*/log.csv"))
        if logs and 2 <= len(logs[0].read_text().splitlines()) <= 3:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert read_points(killed)["status"].tolist() != ["done"]
    proc = _sweep(grid, killed)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    a, b = read_points(whole), read_points(killed)
    results = ["best_epoch", "best_robust_acc", "robust_acc", "clean_acc", "train_loss", "cas_best", "cas_last"]
    assert a[results].equals(b[results])
    assert read_history(whole).drop(columns="hash").equals(read_history(killed).drop(columns="hash"))
    (folder_a,), (folder_b,) = (list((d / "points").iterdir()) for d in (whole, killed))
    for name in ("best.pt", "last.pt"):
        sa, sb = (torch.load(f / name, weights_only=True)["model"] for f in (folder_a, folder_b))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_kind_is_registered_by_real_data_not_by_the_sweep():
    for path in (REPO / "synthmodel").rglob("*.py"):
        text = path.read_text()
        assert "import real_data" not in text and "from real_data" not in text, path
        assert "import figures" not in text and "from figures" not in text, path
    kind = get_kind(KIND)
    assert kind.workdir and normalize_params(kind, {"dataset": "fashion-mnist"})["device"] == "cpu"
