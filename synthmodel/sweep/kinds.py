"""Point kinds: what one point of a sweep computes, and which parameters it accepts.

A point kind is a function ``params dict -> results dict`` of JSON scalars, plus a validation table
(:class:`Param` per allowed key) so that a grid is rejected before anything runs, naming the key and
its allowed values. A kind may also declare how its points are *batched*: ``batch_key(params)``
groups points that can run as one tensor computation and ``run_batch([params, ...])`` runs a group.

A results dict may carry one non-scalar entry, ``"_history"``: a list of per-step records (dicts of
JSON scalars), stored in the store's ``history`` table (one row per step).

Registry: :data:`KINDS`, :func:`register_kind`, :func:`get_kind`. Kinds are registered by the modules that
define them, imported as sweep plugins (:mod:`synthmodel.sweep.plugins`) before any lookup: ``train``
(:mod:`synthmodel.train`), ``dynamics`` (:mod:`synthmodel.dynamics`), ``theory`` (the exact population
engine, :mod:`synthmodel.population.point`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schema import MISSING, Param

__all__ = ["Param", "PointKind", "KINDS", "register_kind", "get_kind", "normalize_params", "point_hash",
           "STORE_SCHEMA", "HISTORY_KEY", "MISSING", "WORKDIRS", "point_workdir"]

STORE_SCHEMA = 2          # bump when the store's tables or the hashing change (2: claims, grid name)
HISTORY_KEY = "_history"  # the one non-scalar entry a results dict may carry
WORKDIRS = "points"       # <out>/points/<hash>/: the folders of kinds with ``workdir=True``


@dataclass(frozen=True)
class PointKind:
    """A family of sweep points.

    Args:
        name: registry name, used in grid files (``kind = "train"``).
        run: ``params -> results`` (results: str -> JSON scalar, optionally ``"_history"``); a module-level
            function, so it pickles to worker processes.
        params: the validation table, or a zero-argument callable returning it (for lazily imported kinds).
        description: one line for ``--list-kinds``.
        check: cross-key validation of a complete params dict (raise ValueError); runs before anything runs.
        batch_key: ``params -> hashable`` grouping points that ``run_batch`` can run together (None: alone).
        run_batch: ``[params, ...] -> [results, ...]`` in the same order; module-level function.
        workdir: ``run`` is called as ``run(params, workdir=PATH)`` with a folder of the point's own,
            ``<out>/points/<hash>/`` (:func:`point_workdir`), kept across runs: for checkpoints and resumable
            state (a killed point resumes from there). Not with ``run_batch``. Under Dask the workers must see
            the same filesystem as the sweep.
    """

    name: str
    run: Callable[[dict], dict]
    params: Mapping[str, Param] | Callable[[], Mapping[str, Param]]
    description: str = ""
    check: Callable[[dict], None] | None = None
    batch_key: Callable[[dict], Hashable | None] | None = None
    run_batch: Callable[[list[dict]], list[dict]] | None = None
    workdir: bool = False

    def __post_init__(self) -> None:
        if self.workdir and self.run_batch is not None:
            raise ValueError(f"point kind {self.name!r}: a kind with a workdir cannot be batched")

    def table(self) -> Mapping[str, Param]:
        return self.params() if callable(self.params) else self.params


KINDS: dict[str, PointKind] = {}


def register_kind(kind: PointKind, *, replace: bool = False) -> PointKind:
    """Add ``kind`` to the registry (ValueError if the name is taken and ``replace`` is False)."""
    if kind.name in KINDS and not replace and KINDS[kind.name] is not kind:
        raise ValueError(f"point kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> PointKind:
    """The registered kind ``name`` (the sweep plugins are loaded first); ValueError naming the known ones."""
    from .plugins import load_entry_points, missing_plugins_hint

    load_entry_points()
    if name not in KINDS:
        raise ValueError(f"unknown point kind {name!r}; choose from {', '.join(sorted(KINDS))}{missing_plugins_hint()}")
    return KINDS[name]


def normalize_params(kind: PointKind, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``params`` against the kind's table, coerce the values and fill the defaults.

    Raises:
        ValueError: unknown key (naming the allowed keys), bad value (naming the allowed values), or the
            kind's cross-key check failing.
    """
    table = kind.table()
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for point kind {kind.name!r}; allowed keys: "
                         f"{', '.join(table)}")
    out: dict[str, Any] = {}
    for key, param in table.items():
        if key in params:
            out[key] = param.coerce(key, params[key])
        elif param.default is not MISSING:
            out[key] = param.default
    if kind.check is not None:
        kind.check(out)
    return out


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_hash(kind: str, params: Mapping[str, Any], code_version: str) -> str:
    """Identity of a point: sha256 of its kind, complete params, code version and store schema (32 hex)."""
    text = canonical_json({"kind": kind, "params": dict(params), "code": code_version, "schema": STORE_SCHEMA})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def point_workdir(out_dir: str | Path, point_hash_: str) -> Path:
    """The folder of a point of a kind with ``workdir=True``: ``<out_dir>/points/<hash>``."""
    return Path(out_dir) / WORKDIRS / point_hash_
