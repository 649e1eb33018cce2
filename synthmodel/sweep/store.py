"""The results store: one SQLite database per output folder (``<out>/sweep.sqlite``, WAL mode).

Tables (docs/SWEEP.md):

* ``meta(key, value)``: ``schema_version``, ``code_version`` (synthmodel.__version__), ``created_at``;
* ``points``: one row per point, keyed by ``hash`` (sha256 of kind, complete params, code version and
  schema version): ``kind``, ``params`` (JSON), ``status`` ('pending' | 'done' | 'failed'),
  ``results`` (JSON object of scalars), ``error``, ``seconds`` (compute time of the point; a batched
  group's time divided by its size), ``group_size`` (points in the batched computation it ran in; 1 = alone),
  ``attempts``, ``finished_at`` (UTC ISO time);
* ``history``: ``(hash, step, record)``: per-step records (JSON) of points that have them
  (training: one per epoch).

Only the client process writes. Every write is one transaction, so a process killed at any moment
(even SIGKILL) leaves each point either recorded completely or still pending.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .kinds import STORE_SCHEMA

__all__ = ["StoreError", "Store", "STORE_FILE", "read_points", "read_history", "export"]

STORE_FILE = "sweep.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    results TEXT,
    error TEXT,
    seconds REAL,
    group_size INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS history (
    hash TEXT NOT NULL REFERENCES points(hash),
    step INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (hash, step)
);
"""


class StoreError(ValueError):
    """The store cannot be used (not a sweep store, incompatible version, unwritable folder)."""


def _check_existing(path: Path, code_version: str) -> None:
    """Read-only inspection of an existing store: raise StoreError before anything writes to it."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = dict(con.execute("SELECT key, value FROM meta").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a sweep store ({exc}); choose another --out") from None
    schema, code = rows.get("schema_version"), rows.get("code_version")
    if schema != str(STORE_SCHEMA) or code != code_version:
        raise StoreError(f"store {path} was written by synthmodel {code} (store schema {schema}); this is synthmodel "
                         f"{code_version} (schema {STORE_SCHEMA}): use a new --out folder")


class Store:
    """The SQLite store of one output folder. Use :meth:`open`."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self.con = con
        self.path = path

    @classmethod
    def open(cls, out_dir: str | Path, code_version: str | None = None) -> Store:
        """Open or create ``<out_dir>/sweep.sqlite`` (StoreError when unusable; an existing store is checked
        read-only first, so an incompatible one is left untouched)."""
        if code_version is None:
            from .. import __version__ as code_version
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
        if not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK):
            raise StoreError(f"output folder {out_dir} is not writable")
        path = out_dir / STORE_FILE
        if path.exists():
            _check_existing(path, code_version)
        try:
            con = sqlite3.connect(path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against process crashes, fast commits
            with con:
                con.execute("BEGIN")
                for statement in _SCHEMA.split(";"):  # not executescript: it would commit on its own
                    if statement.strip():
                        con.execute(statement)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(STORE_SCHEMA),))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('code_version', ?)", (code_version,))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (_now(),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the store {path}: {exc}") from None
        return cls(con, path)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes (client process only) ---------------------------------------------------------
    def add_pending(self, points: Iterable[Any]) -> None:
        """Insert points not yet in the store as 'pending' (one transaction)."""
        rows = [(p.hash, p.kind, json.dumps(p.params, sort_keys=True)) for p in points]
        with self.con:
            self.con.execute("BEGIN")
            self.con.executemany(
                "INSERT OR IGNORE INTO points (hash, kind, params, status) VALUES (?, ?, ?, 'pending')", rows)

    def record(self, outcomes: Sequence[dict[str, Any]]) -> None:
        """Write finished points in one transaction. Each outcome: hash, status ('done'|'failed'), results
        (JSON text or None), history (list of JSON texts), error, seconds, group_size."""
        now = _now()
        with self.con:
            self.con.execute("BEGIN")
            for out in outcomes:
                self.con.execute(
                    "UPDATE points SET status = ?, results = ?, error = ?, seconds = ?, group_size = ?, "
                    "attempts = attempts + 1, finished_at = ? WHERE hash = ?",
                    (out["status"], out["results"], out["error"], out["seconds"], out["group_size"], now, out["hash"]))
                self.con.execute("DELETE FROM history WHERE hash = ?", (out["hash"],))
                self.con.executemany("INSERT INTO history (hash, step, record) VALUES (?, ?, ?)",
                                     [(out["hash"], step, rec) for step, rec in enumerate(out["history"], start=1)])

    # -- reads ----------------------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        """hash -> status of every point in the store."""
        return dict(self.con.execute("SELECT hash, status FROM points").fetchall())

    def errors(self, hashes: Iterable[str]) -> list[tuple[str, str]]:
        wanted = set(hashes)
        rows = self.con.execute("SELECT hash, error FROM points WHERE status = 'failed'").fetchall()
        return [(h, e) for h, e in rows if h in wanted]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _connect_ro(store: str | Path) -> sqlite3.Connection:
    path = Path(store)
    if path.is_dir():
        path = path / STORE_FILE
    if not path.is_file():
        raise StoreError(f"no sweep store at {path}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a sweep store ({exc})") from None
    return con


def read_points(store: str | Path, *, status: str | None = None) -> Any:
    """The points of a store as a pandas DataFrame, one row per point.

    Columns: hash, kind, status, seconds, group_size, attempts, finished_at, error, then every params key
    (a params key equal to one of those becomes ``param_<key>``), then every results key (a results key
    equal to an earlier column becomes ``result_<key>``). List-valued params (e.g. ``hidden``) are JSON text.

    Args:
        store: the output folder or the ``sweep.sqlite`` file.
        status: keep only rows with this status ('done', 'failed', 'pending').
    """
    import pandas as pd

    con = _connect_ro(store)
    try:
        rows = con.execute("SELECT hash, kind, status, seconds, group_size, attempts, finished_at, error, params, "
                           "results FROM points ORDER BY rowid").fetchall()
    finally:
        con.close()
    records = []
    for h, kind, st, seconds, batch, attempts, finished, error, params, results in rows:
        if status is not None and st != status:
            continue
        rec: dict[str, Any] = dict(hash=h, kind=kind, status=st, seconds=seconds, group_size=batch,
                                   attempts=attempts, finished_at=finished, error=error)
        p = json.loads(params)
        meta = set(rec)
        rec.update({f"param_{k}" if k in meta else k: json.dumps(v) if isinstance(v, list) else v
                    for k, v in p.items()})
        taken = set(rec)
        for key, value in (json.loads(results) if results else {}).items():
            rec[f"result_{key}" if key in taken else key] = value
        records.append(rec)
    return pd.DataFrame.from_records(records)


def read_history(store: str | Path) -> Any:
    """Per-step records of a store as a pandas DataFrame: hash, step, then the record's keys.

    Join with :func:`read_points` on ``hash`` for the parameters (e.g. CAS against epoch per eps).
    """
    import pandas as pd

    con = _connect_ro(store)
    try:
        rows = con.execute("SELECT hash, step, record FROM history ORDER BY hash, step").fetchall()
    finally:
        con.close()
    return pd.DataFrame.from_records([{"hash": h, "step": s, **json.loads(r)} for h, s, r in rows])


def export(store: str | Path, fmt: str) -> list[Path]:
    """Write ``points.<fmt>`` and (when there is history) ``history.<fmt>`` next to the store, atomically.

    Args:
        store: the output folder.
        fmt: 'csv' or 'parquet' (parquet needs pyarrow).

    Returns:
        the files written.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"export format must be csv or parquet, got {fmt!r}")
    out_dir = Path(store)
    written = []
    for name, frame in (("points", read_points(out_dir)), ("history", read_history(out_dir))):
        if frame.empty and name == "history":
            continue
        target = out_dir / f"{name}.{fmt}"
        tmp = target.with_name(target.name + ".tmp")
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise ValueError(f"--export parquet needs pyarrow: {exc}") from None
        tmp.replace(target)
        written.append(target)
    return written
