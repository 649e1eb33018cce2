"""A tiny stand-in point kind for the sweep tests (importable by worker processes and by --plugin)."""

from __future__ import annotations

import math
import os
import time

import torch

from synthmodel.sample import derive_seed
from synthmodel.sweep import Param, PointKind, register_kind


def run_toy(params: dict) -> dict:
    """value = a * b plus a draw from a generator seeded by the params; a 3-step history."""
    if params["fail_flag"] and os.path.exists(params["fail_flag"]):
        raise RuntimeError(f"toy failure (flag {params['fail_flag']} exists)")
    while params["gate"] and not os.path.exists(params["gate"]):
        time.sleep(0.02)
    if params["delay"]:
        time.sleep(params["delay"])
    gen = torch.Generator().manual_seed(derive_seed(params["b"], "toy", str(params["a"])))
    draw = torch.randn(4, generator=gen, dtype=torch.float64)
    # a float computed through torch, so executor-dependent thread settings would show up in the bits
    value = float((draw * params["a"]).sum() + params["b"])
    return {"value": value, "sine": math.sin(params["a"]) if params["a"] else float("nan"),
            "_history": [{"step_value": value * s} for s in (1, 2, 3)]}


register_kind(PointKind(
    name="toy", run=run_toy, description="test stand-in: arithmetic on a and b",
    params={"a": Param("float", 1.0), "b": Param("int", 0, check=lambda v: 0 <= v <= 1000, rule="in [0, 1000]"),
            "delay": Param("float", 0.0, check=lambda v: v >= 0, rule=">= 0"),
            "fail_flag": Param("str", "", rule="(a file; the point fails while it exists)"),
            "gate": Param("str", "", rule="(a file; the point waits until it exists)")}), replace=True)
