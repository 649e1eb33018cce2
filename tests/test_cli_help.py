"""Every command line of the project shows each option's default in ``--help``.

The entry points are found, not listed: every module of the packages with ``if __name__ == "__main__"`` (and
each package's ``__main__``). Their parsers are taken from ``main`` itself (``parse_args`` intercepted), so
a parser built inside ``main`` is covered too; nothing runs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("synthmodel", "proofs_check", "real_data", "figures", "experiments")


def _entry_points() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if 'if __name__ == "__main__"' in path.read_text() or path.name == "__main__.py":
                names.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return names


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _parser_of(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds (its ``parse_args`` raises with it before parsing anything)."""
    def capture(self, *args, **kwargs):
        raise _Parser(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr("sys.argv", [module_name])
    if module_name.endswith(".__main__"):
        module = importlib.import_module(module_name.removesuffix(".__main__"))
        main = getattr(module, "main", None) or importlib.import_module(module_name).main
        if module_name == "synthmodel.sweep.__main__":
            main = importlib.import_module("synthmodel.sweep.cli").main
    else:
        main = importlib.import_module(module_name).main
    with pytest.raises(_Parser) as captured:
        main()
    return captured.value.parser


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _shown(value) -> list[str]:
    """Spellings of a default in help text."""
    if isinstance(value, (list, tuple)):
        return [" ".join(map(str, value)), str(list(value)), str(value)]
    return [str(value), f"{value:g}" if isinstance(value, float) else str(value)]


def test_the_entry_points_are_found():
    found = _entry_points()
    assert {"synthmodel.train", "synthmodel.sweep.__main__", "proofs_check.__main__", "real_data.train",
            "real_data.cas", "figures.__main__", "experiments.explore"} <= set(found)
    assert not any(name.startswith("benchmarks") for name in found)


@pytest.mark.parametrize("module_name", _entry_points())
def test_every_option_with_a_default_shows_it_in_help(module_name, monkeypatch):
    missing = []
    for parser in _parsers(_parser_of(module_name, monkeypatch)):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS, []):
                continue
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                                   argparse._VersionAction)):
                continue  # a switch: its default is that it is off (on for store_false)
            text = " ".join(formatter._expand_help(action).split()) if action.help else "(no help)"
            if "default" not in text or not any(spelling in text for spelling in _shown(action.default)):
                missing.append(f"{action.option_strings[0]} (default {action.default!r}): {text!r}")
    assert not missing, f"python -m {module_name.removesuffix('.__main__')}: " + "; ".join(missing)
