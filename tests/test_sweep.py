"""The sweep runner: grids, validation, store, resume after SIGKILL, executors, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from synthmodel.sweep import (
    HOOKS,
    STORE_FILE,
    GridError,
    expand_grid,
    get_kind,
    kinds,
    load_grid,
    load_plugins,
    plan_tasks,
    point_hash,
    preset_grid,
    read_history,
    read_points,
    register_hook,
    run_sweep,
)
from synthmodel.sweep.cli import main
from synthmodel.sweep.kinds import normalize_params

load_plugins(["sweep_plugin"])  # the stand-in kind "toy", as --plugin sweep_plugin registers it

ROOT = Path(__file__).resolve().parents[1]
TOY = {"name": "toy", "kind": "toy", "grid": {"a": {"linspace": [0.0, 1.0, 5]}, "b": {"range": [0, 4]}}}
TINY_TRAIN = {"model": "linear", "epochs": 2, "n_train": 48, "n_test": 40, "batch_size": 16, "noise_dims": 2,
              "attack_steps": 2, "eval_steps": 2}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _results(out: Path) -> dict[str, tuple]:
    """hash -> (status, results JSON, history JSON) straight from the store."""
    con = sqlite3.connect(out / STORE_FILE)
    try:
        rows = con.execute("SELECT hash, status, results FROM points").fetchall()
        hist = con.execute("SELECT hash, step, record FROM history ORDER BY hash, step").fetchall()
    finally:
        con.close()
    history: dict[str, list] = {}
    for h, step, record in hist:
        history.setdefault(h, []).append((step, record))
    return {h: (status, results, json.dumps(history.get(h, []))) for h, status, results in rows}


# -- grids --------------------------------------------------------------------------------------
def test_grid_is_the_cartesian_product_plus_explicit_points_without_duplicates():
    spec = {**TOY, "points": [{"a": 9.0, "b": 1}, {"a": 0.0, "b": 0}],  # the second duplicates a grid point
            "block": [{"fixed": {"b": 7}, "grid": {"a": [0.5, 0.5]}}]}
    grid = expand_grid(spec)
    assert len(grid.points) == 5 * 4 + 1 + 1
    assert len({p.hash for p in grid.points}) == len(grid.points)
    assert sorted({p.params["a"] for p in grid.points if p.params["b"] == 0}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # key order and int-vs-float spelling do not change a point's identity; a value does
    same = expand_grid({"kind": "toy", "points": [{"b": 2, "a": 1}]}).points[0]
    again = expand_grid({"kind": "toy", "points": [{"a": 1.0, "b": 2, "delay": 0.0}]}).points[0]
    other = expand_grid({"kind": "toy", "points": [{"a": 1.0, "b": 3}]}).points[0]
    assert same.hash == again.hash != other.hash


def test_linspace_values_are_clean_decimals():
    grid = expand_grid({"kind": "toy", "grid": {"a": {"linspace": [0.0, 0.3, 4]}}})
    assert [p.params["a"] for p in grid.points] == [0.0, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("spec, words", [
    ({"kind": "toy", "grid": {"c": [1]}}, ["'c'", "allowed keys: a, b, delay, fail_flag, gate"]),
    ({"kind": "toy", "grid": {"b": [5, 2000]}}, ["b=2000", "in [0, 1000]"]),
    ({"kind": "toy", "grid": {"a": ["x"]}}, ["a=\"x\"", "finite number"]),
    ({"kind": "nope", "grid": {"a": [1]}}, ["unknown point kind 'nope'", "toy", "train"]),
    ({"kind": "toy", "grid": {"b": {"range": [3, 3]}}}, ["empty"]),
    ({"kind": "toy", "grod": {}}, ["'grod'"]),
    ({"kind": "train", "fixed": {"model": "cnn"}}, ["model=\"cnn\"", "tied", "linear", "mlp"]),
    ({"kind": "train", "fixed": {"model": "mlp", "attack": "logitwise"}}, ["logitwise", "linear models"]),
    ({"kind": "train", "grid": {"eps": [0.1, -0.1]}}, ["eps=-0.1", ">= 0"]),
])
def test_bad_grids_are_rejected_naming_the_key_and_allowed_values(spec, words):
    with pytest.raises(GridError) as info:
        expand_grid(spec)
    for word in words:
        assert word in str(info.value)


def test_paper_presets_expand():
    from experiments.dynamics import all_points, experiment_points

    dynamics = preset_grid("paper-dynamics")
    assert len(dynamics.points) == len(all_points())
    assert {p.kind for p in dynamics.points} == {"dynamics"}
    for name in ("epochs", "eps", "soft"):
        assert len(preset_grid(f"dynamics-{name}").points) == len(experiment_points(name))
    assert len(preset_grid("paper-theory").points) == 26 * 4 * 3  # eps x alpha x attack


# -- store, resume, executors --------------------------------------------------------------------
def test_second_run_computes_nothing_and_store_has_results_and_history(tmp_path):
    grid = expand_grid(TOY)
    first = run_sweep(grid, tmp_path, workers=1, progress=False)
    assert (first.computed, first.already_done, first.failed) == (20, 0, 0)
    before = _results(tmp_path)
    second = run_sweep(grid, tmp_path, workers=1, progress=False)
    assert (second.computed, second.already_done) == (0, 20)
    assert _results(tmp_path) == before
    table = read_points(tmp_path)
    assert len(table) == 20 and set(table["status"]) == {"done"} and set(table["attempts"]) == {1}
    assert table.loc[table["a"] == 0.0, "sine"].isna().all()  # NaN stored as null, read back as NaN
    history = read_history(tmp_path)
    assert len(history) == 60 and set(history["step"]) == {1, 2, 3}
    assert pd.read_csv(tmp_path / "points.csv").shape[0] == 20


def test_failures_are_recorded_and_retried(tmp_path):
    flag = tmp_path / "flag"
    flag.write_text("")
    grid = expand_grid({"kind": "toy", "grid": {"b": [1, 2, 3]}, "points": [{"b": 4, "fail_flag": str(flag)}]})
    out = tmp_path / "out"
    summary = run_sweep(grid, out, workers=1, progress=False)
    assert (summary.computed, summary.failed) == (3, 1)
    assert "toy failure" in summary.errors[0][1]
    assert run_sweep(grid, out, workers=1, progress=False).computed == 0  # failed points wait for --retry-failed
    flag.unlink()
    retried = run_sweep(grid, out, workers=1, progress=False, retry_failed=True)
    assert (retried.computed, retried.failed) == (1, 0)
    table = read_points(out)
    assert set(table["status"]) == {"done"} and table["attempts"].max() == 2


def test_batch_groups_come_from_the_whole_grid_not_from_what_is_pending():
    grid = expand_grid({"kind": "train", "fixed": TINY_TRAIN, "grid": {"eps": [0.1, 0.2, 0.3], "seed": [0, 1, 2]}})
    hashes = [p.hash for p in grid.points]
    full = plan_tasks(grid.points, set(hashes), max_batch=4, workers=1)
    partial = plan_tasks(grid.points, {hashes[5]}, max_batch=4, workers=7)
    groups = [[h for h, _ in t.items] for t in full]
    assert [len(g) for g in groups] == [3, 3, 3] and all(t.batched for t in full)
    assert len(partial) == 1 and [h for h, _ in partial[0].items] in groups


def _mixed_grid():
    return expand_grid({"name": "mixed", "block": [
        {**{k: v for k, v in TOY.items() if k != "name"}},
        {"kind": "train", "fixed": TINY_TRAIN,
         "grid": {"eps": [0.0, 0.2], "seed": [0, 1], "model": ["tied", "linear"]}},
    ]})


@pytest.mark.slow  # about 40 s (a Dask LocalCluster starts); determinism across executors
def test_local_1_and_2_workers_and_a_dask_localcluster_give_identical_results(tmp_path):
    pytest.importorskip("distributed")
    grid = _mixed_grid()
    run_sweep(grid, tmp_path / "one", workers=1, progress=False, max_batch=3)
    run_sweep(grid, tmp_path / "two", workers=2, progress=False, max_batch=3)
    run_sweep(grid, tmp_path / "dask", executor="dask", workers=2, progress=False, max_batch=3)
    one = _results(tmp_path / "one")
    assert len(one) == 20 + 8 and {s for s, _, _ in one.values()} == {"done"}
    assert _results(tmp_path / "two") == one  # bit for bit: results JSON and history JSON
    assert _results(tmp_path / "dask") == one
    group_sizes = read_points(tmp_path / "two").query("kind == 'train'")["group_size"]
    assert set(group_sizes) == {2}  # 2 shape groups of 4 points, split into chunks of <= 3 -> 2 + 2


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "synthmodel.sweep", "--plugin", "sweep_plugin", "--quiet",
                             "--no-figures", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _done_count(store: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM points WHERE status = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_sigkill_then_rerun_gives_each_point_once_with_the_uninterrupted_results(tmp_path):
    grid_file = tmp_path / "slow.toml"
    grid_file.write_text('kind = "toy"\n[fixed]\ndelay = 0.03\n[grid]\na = [0.5, 1.5]\nb = { range = [0, 40] }\n')
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _cli("--grid", str(grid_file), "--out", str(killed), "--workers", "1", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while _done_count(killed / STORE_FILE) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    partial = _done_count(killed / STORE_FILE)
    assert 15 <= partial < 80, "the kill must land mid-sweep"
    reports = {}
    for out in (killed, clean):
        rerun = _cli("--grid", str(grid_file), "--out", str(out), "--workers", "1", cwd=tmp_path)
        reports[out], stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
    assert f"{partial} already in the store, {80 - partial} computed now" in reports[killed]
    resumed = _results(killed)
    assert len(resumed) == 80 and resumed == _results(clean)
    assert set(read_points(killed)["attempts"]) == {1}  # nothing computed twice into the store


# -- CLI errors ----------------------------------------------------------------------------------
def _run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", "--no-figures", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("text, words", [
    ("kind = 'toy'\n[grid\na = [1]\n", ["not valid TOML"]),
    ("kind = 'toy'\n[grid]\nalpha = [1]\n", ["'alpha'", "allowed keys"]),
    ("kind = 'toy'\n[grid]\nb = [1, -3]\n", ["b=-3", "in [0, 1000]"]),
])
def test_cli_bad_grid_one_line_exit_2_store_untouched(tmp_path, capsys, text, words):
    out = tmp_path / "out"
    run_sweep(expand_grid(TOY), out, workers=1, progress=False)
    digest = _file_digest(out / STORE_FILE)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    code, stdout, stderr = _run_main(capsys, "--grid", str(bad), "--out", str(out))
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    for word in words:
        assert word in stderr
    assert _file_digest(out / STORE_FILE) == digest


def test_cli_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    grid = tmp_path / "g.toml"
    grid.write_text("kind = 'toy'\n[grid]\nb = [1]\n")
    code, _, stderr = _run_main(capsys, "--grid", str(grid), "--out", str(blocker / "out"))
    assert code == 2 and stderr.count("\n") == 1 and "output folder" in stderr
    assert blocker.read_text() == "not a folder"


def test_cli_store_of_an_incompatible_version_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    run_sweep(expand_grid(TOY), out, workers=1, progress=False)
    con = sqlite3.connect(out / STORE_FILE)
    with con:
        con.execute("UPDATE meta SET value = '0.0.1' WHERE key = 'code_version'")
    con.close()
    digest = _file_digest(out / STORE_FILE)
    grid = tmp_path / "g.toml"
    grid.write_text("kind = 'toy'\n[grid]\nb = [1, 2]\n")
    code, _, stderr = _run_main(capsys, "--grid", str(grid), "--out", str(out))
    assert code == 2 and stderr.count("\n") == 1 and "0.0.1" in stderr and "new --out" in stderr
    assert _file_digest(out / STORE_FILE) == digest


def test_cli_file_that_is_not_a_store(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / STORE_FILE).write_bytes(b"this is not sqlite" * 100)
    code, _, stderr = _run_main(capsys, "--preset", "paper-dynamics", "--out", str(out))
    assert code == 2 and "not a sweep store" in stderr and stderr.count("\n") == 1
    assert (out / STORE_FILE).read_bytes() == b"this is not sqlite" * 100


def test_cli_dry_run_lists_points_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run_main(capsys, "--preset", "paper-dynamics", "--dry-run", "--out", str(out))
    from experiments.dynamics import all_points

    assert code == 0 and f"{len(all_points())} points" in stdout and "label_smoothing" in stdout
    assert not out.exists()


def test_cli_runs_exports_parquet_and_runs_the_post_run_hooks(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pyarrow")
    calls = []
    monkeypatch.setitem(HOOKS, "figures", lambda out_dir: calls.append(out_dir) or str(out_dir / "figures"))

    def broken(out_dir):
        raise RuntimeError("no display")

    monkeypatch.setitem(HOOKS, "broken", broken)  # registered for this test only
    grid = tmp_path / "g.toml"
    grid.write_text("name = 'small'\nkind = 'toy'\n[grid]\nb = { range = [0, 6, 2] }\n")
    out = tmp_path / "out"
    code = main(["--quiet", "--grid", str(grid), "--out", str(out), "--export", "parquet", "--workers", "1"])
    stdout = capsys.readouterr().out
    assert code == 0 and calls == [out]
    assert "sweep small: 3 points" in stdout and f"figures: {out / 'figures'}" in stdout
    assert "broken:  failed (RuntimeError: no display)" in stdout  # a failing hook is a line, not a lost sweep
    assert list(pd.read_parquet(out / "points.parquet")["b"]) == [0, 2, 4]
    assert len(pd.read_parquet(out / "history.parquet")) == 9
    assert load_grid(grid).name == "small"
    calls.clear()
    assert main(["--quiet", "--grid", str(grid), "--out", str(out), "--no-hooks", "--workers", "1"]) == 0
    assert calls == []


# -- plugins -------------------------------------------------------------------------------------
def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_sweep_core_imports_no_domain_module():
    proc = _fresh_python("import sys, synthmodel.sweep, synthmodel.sweep.cli\n"
                         "domains = ('synthmodel.train', 'synthmodel.batched', 'synthmodel.dynamics', "
                         "'synthmodel.population', 'figures', 'experiments', 'real_data')\n"
                         "print(sorted(m for m in sys.modules if m.split('.')[0] in domains or m in domains))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_entry_points_register_kinds_presets_and_hooks_on_first_lookup():
    proc = _fresh_python("import json\nfrom synthmodel.sweep import HOOKS, KINDS, GRID_PRESETS, get_kind\n"
                         "assert 'train' not in KINDS and not GRID_PRESETS and not HOOKS\n"
                         "get_kind('train')\n"
                         "print(json.dumps([sorted(KINDS), sorted(GRID_PRESETS), sorted(HOOKS)]))")
    assert proc.returncode == 0, proc.stderr
    kinds, presets, hooks = json.loads(proc.stdout)
    assert {"train", "dynamics", "theory"} <= set(kinds)
    assert {"paper-theory", "paper-dynamics", "dynamics-epochs", "dynamics-eps", "dynamics-soft"} <= set(presets)
    assert {"figures", "tables"} <= set(hooks)


def test_complete_default_params_are_those_stores_were_written_with(monkeypatch):
    # sha256 of the complete default params of each kind, hashed with code version 0.1.1: the values synthmodel
    # 0.1.1 computed, before the kinds' tables were derived from their configurations (unchanged params keep the
    # points' identities)
    # (and store schema 1: the schema number is part of the hash, and schema 2 only added columns)
    monkeypatch.setattr(kinds, "STORE_SCHEMA", 1)
    for kind, digest in (("train", "bbc326eb2b128653954769abe6d0a265"),
                         ("dynamics", "4d97bcd6b6cde6916fce467fad5dca27")):
        assert point_hash(kind, normalize_params(get_kind(kind), {}), "0.1.1") == digest


def test_register_hook_refuses_a_taken_name(monkeypatch):
    monkeypatch.setitem(HOOKS, "mine", lambda out_dir: None)
    with pytest.raises(ValueError, match="already registered"):
        register_hook("mine", lambda out_dir: "another")
    register_hook("mine", print, replace=True)
    assert HOOKS["mine"] is print


def test_cli_plugin_that_does_not_exist(tmp_path, capsys):
    code, _, stderr = _run_main(capsys, "--plugin", "no_such_module_here", "--list")
    assert code == 2 and stderr.count("\n") == 1 and "no_such_module_here" in stderr


def test_dry_run_into_a_pipe_closed_early_prints_its_count_first_and_no_traceback(tmp_path):
    grid = tmp_path / "g.toml"  # ~5000 lines: more than a pipe holds, so the reader's close reaches the writer
    grid.write_text("name = 'wide'\nkind = 'toy'\n[grid]\na = { linspace = [0.0, 1.0, 50] }\n"
                    "b = { range = [0, 100] }\n")
    proc = _cli("--grid", str(grid), "--dry-run", "--out", str(tmp_path / "out"), cwd=tmp_path)
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and stderr == ""
    assert first.startswith("wide: 5000 points (5000 new)")
