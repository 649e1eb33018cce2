"""Plugins: the modules that register point kinds, presets and post-run hooks with the sweep.

The sweep core names no domain. A domain module registers what it brings when imported
(:func:`~synthmodel.sweep.register_kind`, :func:`~synthmodel.sweep.register_preset`, :func:`register_hook`)
and is listed as an entry point of the group ``crossclass.sweep`` of its distribution
(``pyproject.toml``: ``[project.entry-points."crossclass.sweep"]``, ``name = "module.path"``). Every module
of that group is imported once per process before a kind or a preset is looked up
(:func:`load_entry_points`: by the library as by the CLI). Other modules (your own kinds) are imported by
``--plugin MODULE`` or :func:`load_plugins`.

A *post-run hook* is ``fn(out_dir) -> str | None``, called by ``python -m synthmodel.sweep`` after a sweep
with its output folder (e.g. to render figures from the store); it returns a line for the summary. A hook
that raises is reported in its line: the sweep's results are already in the store.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ENTRY_POINT_GROUP", "HOOKS", "load_entry_points", "load_plugins", "register_hook", "run_hooks",
           "missing_plugins_hint"]

ENTRY_POINT_GROUP = "crossclass.sweep"
HOOKS: dict[str, Callable[[Path], str | None]] = {}
_state = {"loaded": False, "loading": False, "found": 0}


def missing_plugins_hint() -> str:
    """A hint for lookup errors when no plugin is installed (a source tree on PYTHONPATH, not installed)."""
    if _state["found"]:
        return ""
    return f" (no {ENTRY_POINT_GROUP} plugins are installed: `pip install -e .` in the repository registers them)"


def load_entry_points() -> None:
    """Import every module of the entry-point group ``crossclass.sweep`` (once per process).

    Raises:
        ValueError: a listed module cannot be imported (naming it and why).
    """
    if _state["loaded"] or _state["loading"]:  # loading: a plugin looking a kind up while it is imported
        return
    _state["loading"] = True
    try:
        entries = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        _state["found"] = len(entries)
        for entry in entries:
            try:
                importlib.import_module(entry.value)
            except Exception as exc:
                raise ValueError(f"sweep plugin {entry.name!r} (module {entry.value}) cannot be imported: "
                                 f"{type(exc).__name__}: {exc}") from exc
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def load_plugins(names: Iterable[str] = ()) -> None:
    """The entry points, then each module in ``names`` (``--plugin MODULE``).

    Raises:
        ValueError: a module that does not exist.
    """
    load_entry_points()
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ValueError(f"--plugin {name}: module not found ({exc.name})") from None


def register_hook(name: str, fn: Callable[[Path], str | None], *, replace: bool = False) -> None:
    """Run ``fn(out_dir)`` after every CLI sweep (ValueError if ``name`` is taken and ``replace`` is False)."""
    if name in HOOKS and HOOKS[name] is not fn and not replace:
        raise ValueError(f"post-run hook {name!r} is already registered")
    HOOKS[name] = fn


def run_hooks(out_dir: str | Path) -> dict[str, str]:
    """Call every registered hook with ``out_dir``; returns hook name -> summary line (hooks returning None:
    no line). A hook's exception becomes its line, never the sweep's failure."""
    load_entry_points()
    lines: dict[str, str] = {}
    for name, fn in HOOKS.items():
        try:
            line = fn(Path(out_dir))
        except Exception as exc:  # the store holds the results; a hook's problem must not hide them
            line = f"failed ({type(exc).__name__}: {exc})"
        if line is not None:
            lines[name] = line
    return lines
