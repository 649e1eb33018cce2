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

__all__ = ["MissingData", "Sources", "discover_stores", "point_histories", "THEORY_COMMAND", "DYNAMICS_COMMAND",
           "FMNIST_COMMAND", "REAL_COMMAND"]


class MissingData(LookupError):
    """The data a figure needs is not in the given sources; ``command`` is what produces that data."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        self.command = command


# the commands that produce each kind of data (printed beside a skipped figure)
THEORY_COMMAND = "python -m synthmodel.sweep --preset paper-theory"
DYNAMICS_COMMAND = "python -m synthmodel.sweep --preset paper-dynamics"
FMNIST_COMMAND = "python -m synthmodel.sweep --preset paper-fmnist"
REAL_COMMAND = ("python -m real_data.train --dataset cifar10:DIR --out runs/at && python -m real_data.cas "
                "--checkpoint runs/at/best.pt runs/at/epoch_*.pt runs/at/last.pt --dataset cifar10:DIR "
                "--out results/real-at && python -m figures --real results/real-at")


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
        progress: show a progress bar while computing that world (on a terminal only).
        computed: what was computed, kept for the next figure that needs it.
    """

    stores: list[Path] = field(default_factory=list)
    real: list[Path] = field(default_factory=list)
    compute_missing: bool = True  # compute theory figures with the population engine when no store has them
    notices: list[str] = field(default_factory=list)
    progress: bool = False  # a progress bar (on a terminal) while the theory figures' data are computed
    computed: dict = field(default_factory=dict, repr=False)  # data computed here, shared by the figures

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
                self.notices.append(f"skipped {folder}: no cas.csv (python -m real_data.cas --checkpoint ... "
                                    f"--out {folder})")
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
