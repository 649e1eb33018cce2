"""Where the figures' numbers come from: sweep stores, real-data CAS folders, and the population engine.

Every loader returns a pandas DataFrame (possibly empty); a figure whose data is absent raises
:class:`MissingData`, which the CLI turns into a one-line notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["MissingData", "Sources", "discover_stores", "point_histories"]


class MissingData(LookupError):
    """The data a figure needs is not in the given sources."""


def discover_stores(root: Path) -> list[Path]:
    """Sweep output folders (holding ``sweep.sqlite``) at or directly below ``root``."""
    if not root.is_dir():
        return []
    found = [root] if (root / "sweep.sqlite").is_file() else []
    found += sorted(p.parent for p in root.glob("*/sweep.sqlite"))
    return found


@dataclass
class Sources:
    """The sweep stores and real-data CAS folders a figure run reads.

    Attributes:
        stores: sweep output folders (``python -m synthmodel.sweep --out DIR``).
        real: folders written by ``python -m real_data.cas --out DIR`` (``cas.csv``, ``matrix_*.csv``).
        compute_missing: theory figures without theory points compute the paper's world instead of being
            skipped (``python -m figures``); a sweep's own figures render only what its store holds.
    """

    stores: list[Path] = field(default_factory=list)
    real: list[Path] = field(default_factory=list)
    compute_missing: bool = True  # compute theory figures with the population engine when no store has them
    notices: list[str] = field(default_factory=list)

    @cached_property
    def points(self) -> pd.DataFrame:
        """Finished points of every store, with a ``store`` column."""
        from synthmodel.sweep.store import StoreError, read_points

        frames = []
        for store in self.stores:
            try:
                frame = read_points(store, status="done")
            except StoreError as exc:
                self.notices.append(f"skipped store {store}: {exc}")
                continue
            if not frame.empty:
                frames.append(frame.assign(store=str(store)))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @cached_property
    def history(self) -> pd.DataFrame:
        """Per-epoch records of every store (hash, step, record keys)."""
        from synthmodel.sweep.store import StoreError, read_history

        frames = []
        for store in self.stores:
            try:
                frame = read_history(store)
            except StoreError:
                continue
            if not frame.empty:
                frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def kind(self, name: str) -> pd.DataFrame:
        """Finished points of one point kind ('theory', 'train', ...)."""
        points = self.points
        if points.empty or "kind" not in points:
            return pd.DataFrame()
        return points[points["kind"] == name].reset_index(drop=True)

    @cached_property
    def real_tables(self) -> list[tuple[Path, pd.DataFrame, dict[str, pd.DataFrame]]]:
        """(folder, cas.csv table, {checkpoint stem: C matrix}) of every real-data CAS folder."""
        tables = []
        for folder in self.real:
            table_path = folder / "cas.csv"
            if not table_path.is_file():
                self.notices.append(f"skipped {folder}: no cas.csv (run python -m real_data.cas --out {folder})")
                continue
            table = pd.read_csv(table_path)
            matrices = {}
            for path in sorted(folder.glob("matrix_*.csv"), key=lambda p: int(p.stem.split("_")[1])):
                stem = path.stem.split("_", 2)[2] if path.stem.count("_") >= 2 else path.stem
                matrices[stem] = pd.read_csv(path, index_col=0)
            tables.append((folder, table, matrices))
        return tables


def point_histories(sources: Sources, points: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-epoch history of each point (keyed by hash), from the history table or a ``history`` JSON column."""
    out: dict[str, pd.DataFrame] = {}
    table = sources.history
    if not table.empty:
        wanted = set(points["hash"])
        for point_hash, frame in table[table["hash"].isin(wanted)].groupby("hash", sort=False):
            out[point_hash] = frame.sort_values("step").reset_index(drop=True)
    if "history" in points:
        for point_hash, text in zip(points["hash"], points["history"]):
            if point_hash not in out and isinstance(text, str):
                out[point_hash] = pd.DataFrame(json.loads(text))
    return out


def finite(values) -> np.ndarray:
    """Float array with None -> NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)
