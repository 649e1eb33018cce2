"""Grids: which points a sweep computes. TOML files and a registry of presets.

A grid is a dict of the shape a TOML grid file parses to (docs/SWEEP.md has the full format)::

    name = "demo"             # label; default output folder results/<name>/
    kind = "train"            # point kind (synthmodel.sweep.kinds)
    [fixed]                   # values shared by every point
    model = "tied"
    [grid]                    # Cartesian product of these axes (an axis overrides a fixed value)
    eps = [0.1, 0.2]                              # explicit list
    seed = { range = [0, 3] }                     # integers 0, 1, 2 (stop excluded, optional step)
    label_smoothing = { linspace = [0, 0.2, 3] }  # 0.0, 0.1, 0.2 (both ends included)
    [[points]]                # explicit extra points (over `fixed`)
    eps = 0.5
    [[block]]                 # further sub-grids with their own kind / fixed / grid / points;
    grid = { eps = [0.3] }    #   they inherit the top-level kind and fixed values

Points are the union over blocks, in file order, duplicates (same hash) kept once. Every point is
validated against its kind's table before anything runs: :class:`GridError` names the place, the key
and the allowed values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import get_kind, normalize_params, point_hash

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["GridError", "Point", "Grid", "Preset", "GRID_PRESETS", "register_preset", "load_grid", "expand_grid",
           "preset_grid", "DEFAULT_MAX_POINTS"]

# Building and validating a point costs ~0.15-0.3 ms of CPU and 3-4 kB (theory and train kinds, docs/SWEEP.md),
# so a grid of this size takes up to half a minute and ~0.5 GB before anything runs; larger ones must be asked for.
DEFAULT_MAX_POINTS = 100_000

_TOP_KEYS = ("name", "description", "kind", "fixed", "grid", "points", "block")
_BLOCK_KEYS = ("kind", "fixed", "grid", "points")


class GridError(ValueError):
    """A grid that cannot run (malformed file, unknown key, value out of range)."""


@dataclass(frozen=True)
class Point:
    """One point: its kind, complete canonical params and identity hash."""

    kind: str
    params: dict[str, Any]
    hash: str


@dataclass
class Grid:
    """A validated, expanded grid: an ordered list of distinct points."""

    name: str
    points: list[Point]
    description: str = ""
    source: str = ""
    spec: dict = field(default_factory=dict, repr=False)


def _clean_float(value: float) -> float:
    """Round to 12 significant digits so 0.1 * 3 is stored (and hashed) as 0.3."""
    return float(f"{value:.12g}")


def _axis(key: str, spec: Any, where: str) -> Collection:
    """The values of one grid axis: a list, a scalar, or {range=[...]}, {linspace=[...]}, {values=[...]}."""
    if isinstance(spec, list):
        if not spec:
            raise GridError(f"{where}: axis {key!r} is an empty list")
        return spec
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in ("range", "linspace", "values"):
            raise GridError(f"{where}: axis {key!r} must be a list, a value, or one of "
                            "{range = [start, stop, step]}, {linspace = [start, stop, num]}, {values = [...]}")
        (form, args), = spec.items()
        if not isinstance(args, list):
            raise GridError(f"{where}: {key} {form} must be a list")
        if form == "values":
            return _axis(key, args, where)
        if form == "range":
            if not 2 <= len(args) <= 3 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise GridError(f"{where}: {key} range must be [start, stop] or [start, stop, step] of integers")
            if len(args) == 3 and args[2] == 0:
                raise GridError(f"{where}: {key} range step must not be 0")
            values = range(*args)  # a lazy sequence: its length is known before anything is expanded
            if not values:
                raise GridError(f"{where}: {key} range {args} is empty")
            return values
        if (len(args) != 3 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
                or not isinstance(args[2], int) or args[2] < 1 or not all(math.isfinite(a) for a in args[:2])):
            raise GridError(f"{where}: {key} linspace must be [start, stop, num] with finite ends and integer num >= 1")
        return _Linspace(float(args[0]), float(args[1]), args[2])
    return [spec]


class _Linspace:
    """``num`` evenly spaced values from ``start`` to ``stop`` (both included), made only when iterated."""

    def __init__(self, start: float, stop: float, num: int):
        self.start, self.stop, self.num = start, stop, num

    def __len__(self) -> int:
        return self.num

    def __iter__(self):
        if self.num == 1:
            yield _clean_float(self.start)
            return
        for i in range(self.num):
            yield _clean_float(self.start + (self.stop - self.start) * i / (self.num - 1))


def _block_axes(grid: Mapping, points: list, where: str) -> tuple[list[tuple[str, Collection]] | None, int]:
    """A block's axes (None: it has only explicit points) and its number of points, nothing expanded yet."""
    if not isinstance(grid, dict):
        raise GridError(f"{where}: 'fixed' and 'grid' must be tables")
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise GridError(f"{where}: 'points' must be an array of tables ([[points]])")
    if not grid and points:
        return None, len(points)
    axes = [(key, _axis(key, spec, where)) for key, spec in grid.items()]
    return axes, math.prod(len(values) for _, values in axes) + len(points)


def _block_points(kind_name: str, fixed: Mapping, axes: list | None, points: list, where: str) -> list[tuple]:
    if not isinstance(fixed, dict):
        raise GridError(f"{where}: 'fixed' and 'grid' must be tables")
    out: list[tuple[str, dict]] = []
    if axes is not None:
        for combo in itertools.product(*(values for _, values in axes)):
            out.append((kind_name, {**fixed, **{key: value for (key, _), value in zip(axes, combo, strict=True)}}))
    for extra in points:
        out.append((kind_name, {**fixed, **extra}))
    return out


def expand_grid(spec: Mapping[str, Any], *, source: str = "grid", code_version: str | None = None,
                max_points: int | None = DEFAULT_MAX_POINTS) -> Grid:
    """Validate and expand a grid spec (the dict a TOML grid file parses to) into distinct points.

    Args:
        max_points: refuse a grid with more points than this (counted from the axes' lengths before anything
            is expanded, duplicates included); None: no limit.

    Raises:
        GridError: malformed spec, unknown kind or key, a value outside the allowed set (the message
            names the point's place, the key and the allowed values), or more than ``max_points`` points.
    """
    if code_version is None:
        from .. import __version__ as code_version
    if not isinstance(spec, Mapping):
        raise GridError(f"{source}: a grid must be a table")
    unknown = sorted(set(spec) - set(_TOP_KEYS))
    if unknown:
        raise GridError(f"{source}: unknown top-level key {unknown[0]!r}; allowed: {', '.join(_TOP_KEYS)}")
    name = spec.get("name", Path(source).stem if source.endswith(".toml") else source)
    if not isinstance(name, str) or not name or "/" in name:
        raise GridError(f"{source}: name must be a non-empty string without '/'")
    top_kind, top_fixed = spec.get("kind"), spec.get("fixed", {})
    blocks = spec.get("block", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise GridError(f"{source}: 'block' must be an array of tables ([[block]])")
    if not isinstance(top_fixed, dict):
        raise GridError(f"{source}: 'fixed' must be a table")
    plan: list[tuple[dict, str]] = []
    if any(k in spec for k in ("grid", "points")) or not blocks:
        plan.append(({"kind": top_kind, "fixed": top_fixed, "grid": spec.get("grid", {}),
                      "points": spec.get("points", [])}, source))
    for i, block in enumerate(blocks):
        where = f"{source} block {i + 1}"
        bad = sorted(set(block) - set(_BLOCK_KEYS))
        if bad:
            raise GridError(f"{where}: unknown key {bad[0]!r}; a block allows {', '.join(_BLOCK_KEYS)}")
        fixed = block.get("fixed", {})
        if not isinstance(fixed, dict):
            raise GridError(f"{where}: 'fixed' must be a table")
        plan.append(({"kind": block.get("kind", top_kind), "fixed": {**top_fixed, **fixed},
                      "grid": block.get("grid", {}), "points": block.get("points", [])}, where))
    sized = [(block, where, *_block_axes(block["grid"], block["points"], where)) for block, where in plan]
    count = sum(n for *_, n in sized)
    if max_points is not None and count > max_points:
        raise GridError(f"{source}: the grid has {count} points, more than the limit of {max_points}; "
                        f"raise it with --max-points {count} (max_points= in Python) if you mean it")
    raw: list[tuple[str, dict, str]] = []
    for block, where, axes, _ in sized:
        kind_name = block["kind"]
        if not isinstance(kind_name, str):
            raise GridError(f"{where}: missing 'kind' (the point kind, e.g. kind = \"train\")")
        for kind_n, params in _block_points(kind_name, block["fixed"], axes, block["points"], where):
            raw.append((kind_n, params, where))
    points: list[Point] = []
    seen: set[str] = set()
    for index, (kind_name, params, where) in enumerate(raw):
        try:
            kind = get_kind(kind_name)
            canonical = normalize_params(kind, params)
        except ValueError as exc:
            raise GridError(f"{where}, point {index + 1}: {exc}") from None
        digest = point_hash(kind_name, canonical, code_version)
        if digest not in seen:
            seen.add(digest)
            points.append(Point(kind_name, canonical, digest))
    if not points:
        raise GridError(f"{source}: the grid has no points")
    return Grid(name=name, points=points, description=str(spec.get("description", "")), source=source,
                spec=dict(spec))


def load_grid(path: str | Path, *, max_points: int | None = DEFAULT_MAX_POINTS) -> Grid:
    """Read, validate and expand a TOML grid file (GridError with one clear line on any problem)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"grid file {path} is not valid TOML: {exc}") from None
    return expand_grid(spec, source=str(path), max_points=max_points)


# -- presets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named grid: ``spec`` is a grid dict or a zero-argument callable returning one."""

    name: str
    description: str
    spec: Mapping[str, Any] | Callable[[], Mapping[str, Any]]

    def grid_spec(self) -> dict[str, Any]:
        spec = dict(self.spec() if callable(self.spec) else self.spec)
        spec.setdefault("name", self.name)
        spec.setdefault("description", self.description)
        return spec


GRID_PRESETS: dict[str, Preset] = {}  # name -> named grid; filled by the sweep plugins


def register_preset(name: str, description: str, spec: Mapping[str, Any] | Callable[[], Mapping[str, Any]], *,
                    replace: bool = False) -> Preset:
    """Add a named grid (experiment modules register theirs, e.g. :mod:`experiments.dynamics`)."""
    if name in GRID_PRESETS and not replace:
        raise ValueError(f"preset {name!r} is already registered")
    GRID_PRESETS[name] = Preset(name, description, spec)
    return GRID_PRESETS[name]


def preset_grid(name: str, *, max_points: int | None = DEFAULT_MAX_POINTS) -> Grid:
    """Validate and expand a registered preset (the sweep plugins are loaded first)."""
    from .plugins import load_entry_points, missing_plugins_hint

    load_entry_points()
    if name not in GRID_PRESETS:
        raise GridError(f"unknown preset {name!r}; choose from {', '.join(sorted(GRID_PRESETS))}"
                        f"{missing_plugins_hint()}")
    return expand_grid(GRID_PRESETS[name].grid_spec(), source=f"preset {name}", max_points=max_points)
