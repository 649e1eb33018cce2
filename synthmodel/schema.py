"""Typed configurations: one dataclass per point kind is the single schema of its settings.

A configuration is a dataclass whose fields are declared with :func:`option`: the annotation gives the type,
the default is the default, and the field's metadata holds a :class:`Spec` (help text, units, closed
choices, a range, the CLI group). Everything else is derived from that one declaration:

* :func:`param_table`: the sweep's validation table (one :class:`Param` per key);
* :func:`add_arguments` / :func:`from_namespace`: argparse flags ``--field-name`` with ``choices=``, the
  default and the units in the help text, booleans as ``--x`` / ``--no-x``;
* :func:`from_mapping`: a configuration from a dict (a grid point, a JSON file), naming unknown keys;
* :func:`check_fields`: every field's type, choices and range (a configuration's ``validate`` calls it and
  then checks what involves several fields);
* :func:`to_dict`: plain JSON values (tuples as lists);
* :func:`describe`: a Markdown table of the fields, for the docs.

Example::

    @dataclass
    class Config:
        eps: float = option(0.25, "perturbation radius", units="input units", bounds=Bounds(low=0))
        norm: str = option("linf", "threat model", choices=("linf", "l2"))

Supported annotations: ``float``, ``int``, ``str``, ``bool``, ``tuple[int, ...]`` (a list of integers), each
optionally ``| None`` (the value may be None: "not set", whose meaning :attr:`Spec.none` states). A field
declared ``option(REQUIRED, ...)`` has no default: a grid or the command line must give it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Bounds", "Spec", "Param", "MISSING", "REQUIRED", "option", "spec_of", "fields_of", "param_table",
           "check_fields", "from_mapping", "to_dict", "add_arguments", "from_namespace", "describe"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a Param default meaning "not filled in when absent"
REQUIRED: Any = dataclasses.MISSING  # an option() default meaning "no default: must be given"

_TYPES = ("float", "int", "str", "bool", "int_list")


@dataclass(frozen=True)
class Bounds:
    """A numeric range: ``low <= v`` (``low < v`` if ``low_open``), likewise ``high``; None = unbounded.

    For an integer list the bounds apply to every element.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    @property
    def rule(self) -> str:
        """'> 0', '>= 1', 'in [0, 1)', ..."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""


@dataclass(frozen=True)
class Param:
    """One accepted key of a table (a point kind's, or derived from a configuration by :func:`param_table`).

    Args:
        type: 'float' | 'int' | 'str' | 'bool' | 'int_list'.
        default: value filled in when a grid omits the key (MISSING: left out); None allowed if nullable.
        choices: closed set of allowed values (None: any value of the type passing ``check``).
        check: predicate on the coerced value; ``rule`` describes it for error messages (e.g. '>= 0').
        nullable: None is an allowed value.
        help: what the key means (for listings and docs).
    """

    type: str
    default: Any = MISSING
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    nullable: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"Param type must be one of {', '.join(_TYPES)}, got {self.type!r}")

    def allowed(self) -> str:
        """Human description of the allowed values."""
        if self.choices is not None:
            text = ", ".join(json.dumps(c) for c in self.choices)
        else:
            text = {"float": "a finite number", "int": "an integer", "str": "a string", "bool": "true or false",
                    "int_list": "a list of integers"}[self.type]
            if self.rule:
                text += f" {self.rule}"
        return text + (" (or omitted)" if self.nullable else "")

    def coerce(self, key: str, value: Any) -> Any:
        """The canonical value, or ValueError naming ``key`` and the allowed values."""
        bad = ValueError(f"{key}={json.dumps(value, default=str)} is not allowed: {key} must be {self.allowed()}")
        if value is None:
            if self.nullable:
                return None
            raise bad
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            value = float(value)
        elif self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif self.type == "str":
            if not isinstance(value, str):
                raise bad
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise bad
        else:  # int_list
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
                raise bad
            value = [int(v) for v in value]
        if self.choices is not None and value not in self.choices:
            raise bad
        if self.check is not None and not self.check(value):
            raise bad
        return value


@dataclass(frozen=True)
class Spec:
    """What a configuration field means, beyond its type and default (kept in the field's metadata).

    Args:
        help: one line: what it is.
        units: e.g. 'input units', '1/255 pixel units', 'epochs'; shown after the default.
        choices: closed set of allowed values.
        bounds: numeric range (every element for an integer list).
        check, rule: any other predicate on the value and its description (e.g. 'non-empty').
        none: what None means for a nullable field (e.g. 'eps / 4'); shown as the default.
        group: CLI argument group (fields of one group are listed together, in declaration order).
        flag: the CLI flag when it is not ``--field-name``; ``cli=False``: no flag at all.
        metavar: argparse metavar.
        sweep: the key is accepted in sweep grids (False: e.g. a device or an output path).
    """

    help: str
    units: str = ""
    choices: tuple | None = None
    bounds: Bounds | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    none: str = "none"
    group: str = ""
    flag: str | None = None
    cli: bool = True
    metavar: str | None = None
    sweep: bool = True

    def predicate(self) -> tuple[Callable[[Any], bool] | None, str]:
        """One predicate combining ``bounds`` and ``check``, with its rule text."""
        tests, rules = [], []
        if self.bounds is not None:
            bounds = self.bounds
            tests.append(lambda v: all(bounds(x) for x in v) if isinstance(v, list) else bounds(v))
            rules.append(self.bounds.rule)
        if self.check is not None:
            tests.append(self.check)
            rules.append(self.rule)
        if not tests:
            return None, ""
        return (lambda v: all(t(v) for t in tests)), ", ".join(r for r in rules if r)


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with a default (or :data:`REQUIRED`) and a :class:`Spec` (keyword arguments are Spec's)."""
    if isinstance(default, list):
        raise TypeError("a list default would be shared between instances: use a tuple")
    return dataclasses.field(default=default, metadata={"spec": Spec(help=help, **spec)})


def spec_of(field: dataclasses.Field) -> Spec:
    """The field's Spec (a field declared without :func:`option` gets an empty one)."""
    return field.metadata.get("spec") or Spec(help="")


@dataclass(frozen=True)
class FieldInfo:
    """A resolved field: name, schema type ('float', ..., 'int_list'), nullable, default, spec."""

    name: str
    type: str
    nullable: bool
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    def param(self, with_default: bool = True) -> Param:
        check, rule = self.spec.predicate()
        default = MISSING
        if with_default and self.default is not dataclasses.MISSING:
            default = list(self.default) if isinstance(self.default, tuple) else self.default
        return Param(self.type, default, choices=self.spec.choices, check=check, rule=rule, nullable=self.nullable,
                     help=self.spec.help)


def _schema_type(annotation: Any, where: str) -> tuple[str, bool]:
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: only 'X | None' unions are supported, got {annotation}")
        nullable, annotation = True, args[0]
        origin = typing.get_origin(annotation)
    if annotation in (float, int, str, bool):
        return annotation.__name__, nullable
    if origin in (tuple, list) and typing.get_args(annotation)[:1] == (int,):
        return "int_list", nullable
    raise TypeError(f"{where}: unsupported annotation {annotation}")


def fields_of(cls: type) -> list[FieldInfo]:
    """The resolved fields of a configuration class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, nullable = _schema_type(hints[f.name], f"{cls.__name__}.{f.name}")
        out.append(FieldInfo(f.name, kind, nullable, f.default, spec_of(f)))
    return out


def param_table(cls: type, *, exclude: Iterable[str] = (), defaults: bool = True) -> dict[str, Param]:
    """The sweep's validation table of ``cls``: one Param per field with ``spec.sweep``, not in ``exclude``.

    ``defaults=False`` leaves every default out (a grid then names what it sets; the hash covers exactly that).
    """
    skip = set(exclude)
    return {f.name: f.param(defaults) for f in fields_of(cls) if f.spec.sweep and f.name not in skip}


def check_fields(config: Any) -> None:
    """Raise ValueError naming the first field whose value has the wrong type, choice or range."""
    for f in fields_of(type(config)):
        f.param().coerce(f.name, getattr(config, f.name))


def from_mapping(cls: type, data: Mapping[str, Any], *, what: str = "settings") -> Any:
    """``cls(**data)`` with every value checked and coerced (lists to tuples for integer lists).

    Raises:
        ValueError: an unknown key (naming the allowed ones), a required one absent, or a value of the wrong
            type / choice / range.
    """
    infos = {f.name: f for f in fields_of(cls)}
    unknown = sorted(set(data) - set(infos))
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; allowed: {', '.join(infos)}")
    absent = [name for name, f in infos.items() if f.default is dataclasses.MISSING and name not in data]
    if absent:
        raise ValueError(f"missing {what}: {', '.join(absent)}")
    values = {}
    for key, value in data.items():
        value = infos[key].param().coerce(key, value)
        values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """Field name -> value, tuples as lists (JSON values)."""
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in dataclasses.fields(config)}


def _shown_default(f: FieldInfo) -> str:
    if f.default is None or f.default is dataclasses.MISSING:
        return f.spec.none if f.default is None else "required"
    if isinstance(f.default, tuple):
        return " ".join(map(str, f.default))
    return str(f.default)


def _help(f: FieldInfo) -> str:
    units = f" {f.spec.units}" if f.spec.units and f.default is not None else ""
    text = f.spec.help
    if f.spec.units and f.default is None:
        text += f" ({f.spec.units})"
    return f"{text} (default: {_shown_default(f)}{units})".replace("%", "%%")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                  required: Iterable[str] = ()) -> dict[str, Any]:
    """Add one flag per field of ``cls`` with ``spec.cli`` (not in ``exclude``), grouped by ``spec.group``.

    Defaults are the dataclass defaults (``required``: fields without one, or to be given explicitly).
    Values are checked by :func:`from_namespace` (through :func:`check_fields`), not by argparse, so a
    range error reads the same from the CLI and from a grid.

    Returns:
        group name -> the argument group created for it (a CLI adds its own flags, e.g. ``--out``, there).
    """
    skip, needed = set(exclude), set(required)
    groups: dict[str, Any] = {}
    for f in fields_of(cls):
        if not f.spec.cli or f.name in skip:
            continue
        target = parser
        if f.spec.group:
            if f.spec.group not in groups:
                groups[f.spec.group] = parser.add_argument_group(f.spec.group)
            target = groups[f.spec.group]
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(f)}
        if f.spec.metavar:
            kwargs["metavar"] = f.spec.metavar
        if f.name in needed or f.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if f.type == "bool":
            kwargs.pop("metavar", None)
            target.add_argument(f.flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.type == "int_list":
            kwargs.update(type=_int, nargs="+")
        else:
            kwargs["type"] = {"float": _float, "int": _int, "str": str}[f.type]
        if f.spec.choices is not None:
            kwargs["choices"] = list(f.spec.choices)
        target.add_argument(f.flag, **kwargs)
    return groups


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The configuration an argparse namespace (from :func:`add_arguments`) holds; checked field by field.

    Fields without a flag keep their defaults. Raises ValueError as :func:`from_mapping`.
    """
    names = {f.name for f in fields_of(cls)}
    data = {k: v for k, v in vars(namespace).items() if k in names}
    return from_mapping(cls, data)


def describe(cls: type, *, exclude: Iterable[str] = ()) -> str:
    """A Markdown table of the fields: key, type, default, allowed values, meaning."""
    skip = set(exclude)
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for f in fields_of(cls):
        if f.name in skip:
            continue
        param = f.param()
        allowed = param.allowed() if (param.choices is not None or param.rule) else ""
        units = f" ({f.spec.units})" if f.spec.units else ""
        rows.append(f"| `{f.name}` | {f.type}{'?' if f.nullable else ''} | `{_shown_default(f)}` | {allowed} | "
                    f"{f.spec.help}{units} |")
    return "\n".join(rows)
