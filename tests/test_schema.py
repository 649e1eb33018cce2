"""synthmodel.schema: one dataclass declaration gives validation, the sweep table and the CLI."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from synthmodel.schema import (
    MISSING,
    REQUIRED,
    Bounds,
    add_arguments,
    check_fields,
    describe,
    from_mapping,
    from_namespace,
    option,
    param_table,
    to_dict,
)


@dataclass
class Demo:
    eps: float = option(0.25, "radius", units="input units", bounds=Bounds(low=0), group="objective")
    norm: str = option("linf", "threat model", choices=("linf", "l2"), group="objective")
    steps: int = option(10, "attack steps", bounds=Bounds(low=1))
    step: float | None = option(None, "attack step", bounds=Bounds(low=0, low_open=True), none="eps / 4")
    alpha: float = option(0.0, "label smoothing", bounds=Bounds(0, 1, high_open=True))
    hidden: tuple[int, ...] = option((64,), "widths", bounds=Bounds(low=1), check=lambda v: len(v) > 0,
                                     rule="non-empty")
    augment: bool = option(True, "crop and flip")
    device: str = option("cpu", "where", sweep=False)


def test_bounds_rules_and_predicates():
    assert Bounds(low=0).rule == ">= 0" and Bounds(low=0)(0.0) and not Bounds(low=0)(-1e-300)
    assert Bounds(low=0, low_open=True).rule == "> 0" and not Bounds(low=0, low_open=True)(0.0)
    half_open = Bounds(0, 1, high_open=True)
    assert half_open.rule == "in [0, 1)" and half_open(0.0) and not half_open(1.0)
    assert Bounds().rule == "" and Bounds()(1e300)


def test_table_mirrors_the_declaration():
    table = param_table(Demo)
    assert list(table) == ["eps", "norm", "steps", "step", "alpha", "hidden", "augment"]  # device: sweep=False
    assert table["hidden"].type == "int_list" and table["hidden"].default == [64]
    assert table["step"].nullable and table["step"].default is None
    assert table["norm"].choices == ("linf", "l2")
    assert param_table(Demo, defaults=False)["eps"].default is MISSING
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        table["eps"].coerce("eps", -0.1)
    with pytest.raises(ValueError, match="hidden must be a list of integers >= 1, non-empty"):
        table["hidden"].coerce("hidden", [])
    with pytest.raises(ValueError, match="hidden must be"):
        table["hidden"].coerce("hidden", [0])


def test_from_mapping_names_unknown_keys_and_bad_values():
    demo = from_mapping(Demo, {"eps": 1, "hidden": [3, 4]})
    assert demo.eps == 1.0 and isinstance(demo.eps, float) and demo.hidden == (3, 4)
    with pytest.raises(ValueError, match="unknown settings: epz; allowed: eps, norm"):
        from_mapping(Demo, {"epz": 1})
    with pytest.raises(ValueError, match="norm must be \"linf\", \"l2\""):
        from_mapping(Demo, {"norm": "l1"})
    with pytest.raises(ValueError, match="alpha must be a finite number in \\[0, 1\\)"):
        from_mapping(Demo, {"alpha": 1.0})
    with pytest.raises(ValueError, match="eps"):
        from_mapping(Demo, {"eps": float("nan")})


def test_check_fields_catches_values_set_after_construction():
    demo = Demo()
    check_fields(demo)
    demo.steps = 0
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        check_fields(demo)


def test_cli_round_trip_and_help():
    parser = argparse.ArgumentParser()
    groups = add_arguments(parser, Demo)
    assert set(groups) == {"objective"}
    assert from_namespace(Demo, parser.parse_args([])) == Demo()
    args = parser.parse_args(["--eps", "0.5", "--norm", "l2", "--hidden", "8", "8", "--no-augment", "--step", "0.1"])
    assert from_namespace(Demo, args) == Demo(eps=0.5, norm="l2", hidden=(8, 8), augment=False, step=0.1)
    with pytest.raises(ValueError, match="eps must be"):
        from_namespace(Demo, parser.parse_args(["--eps", "-1"]))
    text = parser.format_help()
    assert "radius (default: 0.25 input units)" in text
    assert "attack step (default: eps / 4)" in text
    assert "--no-augment" in text
    assert "objective:" in text  # the group


def test_to_dict_and_describe():
    assert to_dict(Demo())["hidden"] == [64]
    table = describe(Demo)
    assert table.count("\n") == 1 + 8  # header, rule, one row per field
    assert "| `step` | float? | `eps / 4` |" in table


def test_list_defaults_are_refused():
    with pytest.raises(TypeError, match="tuple"):
        option([1], "widths")


@dataclass
class WithRequired:
    dataset: str = option(REQUIRED, "where the data are")
    eps: float = option(8.0, "radius", units="1/255 pixel units")


def test_required_fields_have_no_default_anywhere():
    assert "dataset" not in {k for k, p in param_table(WithRequired).items() if p.default is not MISSING}
    with pytest.raises(ValueError, match="missing settings: dataset"):
        from_mapping(WithRequired, {"eps": 1.0})
    parser = argparse.ArgumentParser()
    add_arguments(parser, WithRequired)
    assert "where the data are (default: required)" in parser.format_help()
    assert from_namespace(WithRequired, parser.parse_args(["--dataset", "npz:x"])) == WithRequired("npz:x")
    with pytest.raises(SystemExit):
        parser.parse_args([])
