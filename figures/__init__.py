"""``python -m figures``: every figure of the project, regenerated from stored results.

The public names (:data:`FIGURES`, :func:`render`, :func:`render_store`, :class:`Sources`,
:class:`MissingData`) load matplotlib and pandas on first use only, so that importing the package (as the
sweep does for its post-run hook, :mod:`figures.sweep_hook`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FIGURES", "render", "render_store", "MissingData", "Sources"]

_HOMES = {"FIGURES": "catalog", "render": "catalog", "render_store": "catalog", "MissingData": "data",
          "Sources": "data"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
