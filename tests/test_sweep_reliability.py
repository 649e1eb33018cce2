"""The sweep when things go wrong: a grid's size is checked before it is expanded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_sweep import ROOT, _run_main

from synthmodel.sweep import GridError, expand_grid
from synthmodel.sweep import grid as grid_module

# -- grid size ----------------------------------------------------------------------------------------------
# 1e15 points. Without a count before expansion, list(range(10**12)) fails at once with MemoryError (8 TB), so a
# regression fails this test instead of filling the machine's memory.
HUGE = {"kind": "toy", "grid": {"a": {"linspace": [0.0, 1.0, 1000]}, "b": {"range": [0, 10**12]}}}


def test_a_grid_larger_than_the_limit_is_refused_before_any_point_is_expanded(monkeypatch):
    def expanded(*args, **kwargs):
        raise AssertionError("a point was expanded")

    monkeypatch.setattr(grid_module, "normalize_params", expanded)
    with pytest.raises(GridError) as info:
        expand_grid(HUGE)
    assert "1000000000000000 points" in str(info.value) and "--max-points" in str(info.value)
    small = {"kind": "toy", "grid": {"b": {"range": [0, 12]}}, "points": [{"b": 20}]}  # 13 points
    with pytest.raises(GridError, match="13 points, more than the limit of 12"):
        expand_grid(small, max_points=12)
    monkeypatch.undo()
    assert len(expand_grid(small, max_points=13).points) == 13
    assert len(expand_grid(small, max_points=None).points) == 13


def _limit_memory() -> None:  # 4 GB of address space: an expansion that forgot the count fails, not the machine
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit")
def test_cli_refuses_a_huge_grid_at_once_and_max_points_raises_the_limit(tmp_path, capsys):
    huge = tmp_path / "huge.toml"  # 1e14 points, the largest axis a linspace
    huge.write_text("kind = 'toy'\n[grid]\na = { linspace = [0.0, 1.0, 1000000000000] }\nb = [1, 2, 3]\n"
                    "delay = { linspace = [0.0, 1.0, 33] }\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    # the guard answers in well under a second; the timeout only stops a run that tries to expand the grid
    done = subprocess.run([sys.executable, "-m", "synthmodel.sweep", "--plugin", "sweep_plugin", "--grid", str(huge),
                           "--dry-run", "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_memory)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "99000000000000 points" in done.stderr and "--max-points" in done.stderr
    small = tmp_path / "small.toml"
    small.write_text("kind = 'toy'\n[grid]\nb = { range = [0, 12] }\n")
    code, stdout, stderr = _run_main(capsys, "--grid", str(small), "--dry-run", "--max-points", "11")
    assert (code, stdout) == (2, "") and "12 points, more than the limit of 11" in stderr
    code, stdout, stderr = _run_main(capsys, "--grid", str(small), "--dry-run", "--max-points", "12",
                                     "--out", str(tmp_path / "out"))
    assert code == 0 and "12 points (12 new)" in stdout
