"""The experiments layer: presets and research logs are valid grids, run through the sweep."""

from __future__ import annotations

import json

import pytest

from experiments import explore
from experiments.theory import PAPER_THEORY
from synthmodel.sweep import expand_grid, preset_grid


def test_every_explore_group_is_a_valid_train_grid_with_one_point_per_change():
    for name, (_, changes) in explore.GROUPS.items():
        grid = expand_grid(explore.group_grid(name))
        assert {p.kind for p in grid.points} == {"train"} and len(grid.points) == len(changes), name


def test_paper_theory_preset_is_the_grid_it_declares():
    points = preset_grid("paper-theory").points
    assert len(points) == 26 * 4 * 3
    assert {p.params["attack"] for p in points} == set(PAPER_THEORY["grid"]["attack"])
    assert max(p.params["eps"] for p in points) == 0.5  # mu / 2


def test_explore_runs_a_group_through_the_sweep_and_prints_a_line_per_run(tmp_path, capsys, monkeypatch):
    tiny = {"preset": "paper3", "noise_dims": 2, "n_train": 60, "n_test": 60, "epochs": 3, "batch_size": 30,
            "attack_steps": 2, "eval_steps": 2}
    monkeypatch.setitem(explore.GROUPS, "tiny", (tiny, [{"model": "tied", "eps": 0.1}, {"model": "mlp",
                                                                                         "hidden": [4]}]))
    assert explore.main(["tiny", "--out", str(tmp_path), "--workers", "1", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("# tiny: 2 runs, 2 computed now")
    tied = json.loads(lines[0].split(" ", 2)[2].split("} ", 1)[1])
    assert tied["best_ep"] in (1, 2, 3) and "w1" in tied and len(tied["cas_ep"]) == 3
    assert (tmp_path / "tiny" / "sweep.sqlite").is_file()


def test_explore_unknown_group_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        explore.main(["g9"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
