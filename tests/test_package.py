"""The distribution: one version everywhere, every sweep plugin importable."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

import synthmodel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_the_code_version_of_the_stores_is_the_package_version():
    assert synthmodel.__version__ == PYPROJECT["project"]["version"]


def test_every_declared_sweep_plugin_is_installed_and_imports():
    declared = PYPROJECT["project"]["entry-points"]["crossclass.sweep"]
    installed = {e.name: e.value for e in importlib.metadata.entry_points(group="crossclass.sweep")}
    assert installed == declared  # `pip install -e .` (setup.sh) after editing the entry points
    for module in declared.values():
        importlib.import_module(module)
