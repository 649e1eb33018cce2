"""Verdicts as data: what proofs_check says about a claim, why, and the numbers it rests on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

__all__ = ["Verdict", "ClaimResult", "Claim1Evidence", "Claim2Evidence", "Claim3Evidence", "to_json"]


class Verdict(str, Enum):
    """A claim under one formalisation."""

    HOLDS = "holds"
    FAILS = "fails"
    WEAKER = "holds in a weaker form"
    UNDECIDED = "undecided"
    NOT_COMPUTED = "not computed"


def to_json(value: Any) -> Any:
    """Plain JSON values: arrays to lists, non-finite floats to None, dataclasses and enums unpacked."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass(frozen=True)
class Claim1Evidence:
    """Claim 1: optimal weights on an eps grid and the first-order condition at w2 = 0.

    ``eps0``: the threshold computed (bracketing of the numeric first-order condition; for the 0-1 objective the
    eps where the certified optimal ratio becomes 0); ``eps0_derived``: what the derivation gives (None: no sign
    change in (0, mu/2)), ``derived``: whether one exists. For the 0-1 objective ``ratio`` and ``enclosure`` are the
    certified optimal w2/w1 and the interval holding every global optimum, ``derivative`` dP/dtheta at w2 = 0.
    """

    eps_grid: list[float]
    w1: list[float]
    w2: list[float]
    derivative_eps: list[float]
    derivative: list[float]
    eps0: float | None
    eps0_derived: float | None
    derived: bool
    method: str
    ratio: list[float] | None = None
    enclosure: list[list[float]] | None = None


@dataclass(frozen=True)
class Claim2Evidence:
    """Claim 2 (depends on the adversary and the norm only): slopes of P(robust correct) in w2 at w1 = 1.

    ``r_star``: per eps of ``eps_grid``, the largest r such that P rises on [0, r] (>= ``r_max`` when it rises on
    the whole scan); ``weak``: per eps, whether P(w2) >= P(0) on (0, w1] (the weaker reading); ``weak_range``: the
    interval of eps in (0, mu/2) where the weaker reading holds, ends refined by bisection (None: nowhere).
    """

    adversary: str
    norm: str
    eps_grid: list[float]
    w2_grid: list[float]
    negative_points: int
    points: int
    min_slope: float
    r_star: list[float]
    r_max: float
    weak: list[bool]
    weak_range: list[float] | None


@dataclass(frozen=True)
class Claim3Evidence:
    """Claim 3: thresholds and optimal weights without and with soft targets on the eps grid."""

    eps0: float | None
    eps1: float | None
    eps1_derived: float | None
    derived: bool
    eps_grid: list[float]
    w1: list[float]
    w2: list[float]
    w1_soft: list[float]
    w2_soft: list[float]
    w_error: list[float]
    w_error_soft: list[float]
    w2_larger: bool | None
    ratio_larger: bool | None
    soft: str = "label smoothing"


@dataclass(frozen=True)
class ClaimResult:
    """One claim's verdict, its reason (one line) and its evidence."""

    verdict: Verdict
    reason: str
    evidence: Any = field(default=None)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict.value, "reason": self.reason, "evidence": to_json(self.evidence)}

    def line(self) -> str:
        return f"{self.verdict.value}: {self.reason}" if self.reason else self.verdict.value
