"""The results store: one SQLite database per output folder (``<out>/sweep.sqlite``, WAL mode).

Tables (docs/SWEEP.md):

* ``meta(key, value)``: ``schema_version``, ``code_version`` (synthmodel.__version__), ``created_at``,
  ``grid`` (the name of the grid the store holds: one grid per store);
* ``points``: one row per point, keyed by ``hash`` (sha256 of kind, complete params, code version and
  schema version): ``kind``, ``params`` (JSON), ``status`` ('pending' | 'done' | 'failed'),
  ``results`` (JSON object of scalars), ``error``, ``seconds`` (compute time of the point; a batched
  group's time divided by its size), ``group_size`` (points in the batched computation it ran in; 1 = alone),
  ``attempts``, ``finished_at`` (UTC ISO time), ``claimed_by`` (the run computing it now, or NULL);
* ``history``: ``(hash, step, record)``: per-step records (JSON) of points that have them
  (training: one per epoch).

Only client processes write (never workers). Every write is one transaction, so a process killed at any
moment (even SIGKILL) leaves each point either recorded completely or still pending. Several runs may
share a store: each claims the points it is about to compute, and a claim counts only while its run is
alive, which the run shows by holding an exclusive lock on a file in ``<out>/.sweep-runs/`` (the kernel
drops the lock when the process dies, however it dies).

Every SQLite failure is turned into :class:`StoreError` naming the file. An existing store is inspected
read-only (versions, grid, write-ahead log, ``PRAGMA quick_check``) before anything writes to it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, check_output_dir
from .kinds import STORE_SCHEMA, canonical_json, point_hash

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: claims of other runs are taken as void
    fcntl = None  # type: ignore[assignment]

__all__ = ["StoreError", "Store", "STORE_FILE", "RUNS_DIR", "inspect_store", "grid_statuses", "read_points",
           "read_history", "export"]

STORE_FILE = "sweep.sqlite"
RUNS_DIR = ".sweep-runs"  # one locked file per run writing the store
BUSY_TIMEOUT_S = 30.0     # how long to wait for another run's write transaction before calling the store locked

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
    finished_at TEXT,
    claimed_by TEXT
);
CREATE TABLE IF NOT EXISTS history (
    hash TEXT NOT NULL REFERENCES points(hash),
    step INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (hash, step)
);
"""


class StoreError(ValueError):
    """The store cannot be used (damaged, not a sweep store, another version or grid, locked, unwritable)."""


# -- turning SQLite's refusals into one line ------------------------------------------------------------
def _explain(path: Path, exc: sqlite3.Error) -> str:
    """One line for a SQLite failure on ``path``, by its result code (Python >= 3.11) or its message."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return (f"the store {path} is locked by another program ({text}); try again when it has finished, "
                "or choose another --out")
    if name.startswith("SQLITE_NOTADB") or "not a database" in text or "no such table" in text:
        return f"{path} is not a sweep store ({text}); choose another --out"
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return f"the store {path} is damaged ({text}); copy what you need out of it and use another --out"
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN")) or "readonly" in text:
        return f"cannot use the store {path} ({text}): check its permissions, or choose another --out"
    if name.startswith("SQLITE_FULL") or "full" in text:
        return f"cannot write the store {path}: {text}; the points recorded so far are kept"
    return f"the store {path} cannot be used ({text})"


@contextlib.contextmanager
def _refusals(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(_explain(path, exc)) from None


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # the URI form quotes the path (a '?' or '#' in a folder name would otherwise end it)
    return sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)


# -- the write-ahead log (https://www.sqlite.org/walformat.html) -------------------------------------------
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit says whether the checksum reads words big-endian


def _wal_checksum(data: bytes, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _accepted_frames(shm: Path, salts: bytes) -> int | None:
    """Frames of the log SQLite accepted (``mxFrame`` of the wal-index header in ``-shm``), or None when the
    header is not one SQLite has just built for this log."""
    try:
        with open(shm, "rb") as f:
            head = f.read(96)
    except OSError:
        return None
    if len(head) < 96 or head[:48] != head[48:96] or head[12] != 1 or head[32:40] != salts:
        return None
    return struct.unpack("=I", head[16:20])[0]


def _check_wal(path: Path) -> None:
    """Refuse a store whose write-ahead log SQLite would silently cut short.

    After a crash the log holds transactions not yet copied into the database. SQLite replays its frames up
    to the first one whose checksum fails and ignores the rest, so a log damaged in the middle would lose
    every point recorded after the damage, without an error. A commit frame of the log's current generation
    (same salts as its header) beyond what SQLite accepted means exactly that. Call only after a connection
    has read the store (so ``-shm`` reflects SQLite's view) and while no other run writes to it.
    """
    wal = path.with_name(path.name + "-wal")
    try:
        size = wal.stat().st_size
        with open(wal, "rb") as f:
            header = f.read(32)
            if size < 32 + 24:  # not one complete frame: nothing that could be lost
                return
            magic, _version, page_size, _seq, _s1, _s2, ck1, ck2 = struct.unpack(">8I", header)
            if magic not in _WAL_MAGIC or _wal_checksum(header[:24], magic & 1 == 1) != (ck1, ck2):
                raise StoreError(f"the store's write-ahead log {wal} is damaged (bad header): opening the store would "
                                 "drop every point recorded since its last checkpoint; keep a copy of the folder and "
                                 "use another --out")
            accepted = _accepted_frames(path.with_name(path.name + "-shm"), header[16:24])
            if accepted is None:
                return
            frame_size = 24 + page_size
            frames = (size - 32) // frame_size
            for index in range(accepted, frames):
                f.seek(32 + index * frame_size)
                _page, commit = struct.unpack(">2I", f.read(8))
                salts = f.read(8)
                if commit and salts == header[16:24]:
                    raise StoreError(
                        f"the store's write-ahead log {wal} is damaged at frame {accepted + 1} of {frames}: opening "
                        "the store would drop the points recorded after it; keep a copy of the folder and use "
                        "another --out")
    except OSError:
        return


# -- runs and their claims ---------------------------------------------------------------------------
def _run_alive(runs_dir: Path, owner: str, *, tidy: bool = True) -> bool:
    """Whether the run ``owner`` still holds its lock file (it lives exactly as long as its process).
    ``tidy``: remove the file of a run found dead."""
    if fcntl is None:  # pragma: no cover
        return False
    lock = runs_dir / owner
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:  # nobody holds it: that run died without cleaning up
        if tidy:
            with contextlib.suppress(OSError):
                lock.unlink()
        return False
    finally:
        os.close(fd)


def _live_runs(out_dir: Path) -> list[str]:
    runs_dir = out_dir / RUNS_DIR
    try:
        names = [n for n in os.listdir(runs_dir) if not n.startswith(".")]
    except OSError:
        return []
    return [n for n in names if _run_alive(runs_dir, n, tidy=False)]


# -- read-only inspection ------------------------------------------------------------------------------
def _hash_schema_1(kind: str, params: Mapping[str, Any], code_version: str) -> str:
    """A point's identity as store schema 1 computed it (point_hash with schema 1), to migrate such stores."""
    text = canonical_json({"kind": kind, "params": dict(params), "code": code_version, "schema": 1})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _is_empty(con: sqlite3.Connection) -> bool:
    return con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def inspect_store(path: str | Path, *, code_version: str | None = None, grid_name: str | None = None,
                  deep: bool = True) -> dict[str, str]:
    """Check an existing store without writing to it; return its ``meta`` table ({} for an empty database).

    Args:
        path: the ``sweep.sqlite`` file.
        code_version: refuse a store written by another ``synthmodel`` version or store schema (schema 1 of
            the same code version is accepted: :meth:`Store.open` migrates it). None: any version.
        grid_name: refuse a store that holds another grid.
        deep: also check the write-ahead log and run ``PRAGMA quick_check`` (reads the whole file).

    Raises:
        StoreError: one line naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a sweep store; choose another --out")
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot read the store {path}: permission denied")
    with _refusals(path):
        con = _connect_read_only(path)
        try:
            if _is_empty(con):  # a database with nothing in it (e.g. one being created right now)
                return {}
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            schema, code = meta.get("schema_version"), meta.get("code_version")
            if schema is None or code is None:
                raise StoreError(f"{path} is not a sweep store (no versions in its meta table); choose another --out")
            if not schema.isdigit() or int(schema) > STORE_SCHEMA:  # a format this code does not know
                raise StoreError(f"store {path} has store schema {schema}, newer than this synthmodel {_version()} "
                                 f"reads (schema {STORE_SCHEMA}): upgrade synthmodel")
            if code_version is not None and (code != code_version or schema not in (str(STORE_SCHEMA), "1")):
                raise StoreError(f"store {path} was written by synthmodel {code} (store schema {schema}); this is "
                                 f"synthmodel {code_version} (schema {STORE_SCHEMA}): use a new --out folder")
            held = meta.get("grid")
            if grid_name is not None and held is not None and held != grid_name:
                raise StoreError(f"the store {path} holds the grid {held!r}, not {grid_name!r} (one grid per store): "
                                 f"choose another --out, or run {held!r} into it")
            if deep:
                if not _live_runs(path.parent):
                    _check_wal(path)
                # a problem may span lines ("*** in database main ***\nPage 84: ..."): one line each, for the error line
                problems = [" ".join(str(row[0]).split()) for row in con.execute("PRAGMA quick_check(3)").fetchall()]
                if problems != ["ok"]:
                    raise StoreError(f"the store {path} is damaged (quick_check: {'; '.join(problems)}); copy what "
                                     "you need out of it and use another --out")
        finally:
            con.close()
    return meta


class Store:
    """The SQLite store of one output folder. Use :meth:`open`."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self.con = con
        self.path = path
        self.owner: str | None = None  # this run's name while it may claim points (begin_run .. end_run)
        self._lock_fd: int | None = None

    @property
    def runs_dir(self) -> Path:
        return self.path.parent / RUNS_DIR

    @classmethod
    def open(cls, out_dir: str | Path, code_version: str | None = None, *, grid_name: str | None = None) -> Store:
        """Open or create ``<out_dir>/sweep.sqlite`` for writing.

        An existing store is inspected read-only first (:func:`inspect_store`), so one that is damaged, of
        another version or holding another grid is left untouched. A store of schema 1 (same code version) is
        migrated in place in one transaction.

        Args:
            grid_name: the grid about to run; recorded in a new store, compared with an existing one's.

        Raises:
            StoreError: unusable folder or store (one line naming it).
        """
        if code_version is None:
            from .. import __version__ as code_version
        out_dir = Path(out_dir)
        try:
            check_output_dir(out_dir)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
        path = out_dir / STORE_FILE
        if path.exists() or path.is_symlink():
            inspect_store(path, code_version=code_version, grid_name=grid_name)
        with _refusals(path):
            con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against process crashes, fast commits
                with con:
                    con.execute("BEGIN IMMEDIATE")  # one creator / migrator at a time
                    for statement in _SCHEMA.split(";"):  # not executescript: it would commit on its own
                        if statement.strip():
                            con.execute(statement)
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(STORE_SCHEMA),))
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('code_version', ?)", (code_version,))
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (_now(),))
                    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                    if meta["schema_version"] == "1":
                        _migrate_from_1(con, path, code_version)
                    held = meta.get("grid")
                    if grid_name is not None and held is not None and held != grid_name:  # created meanwhile
                        raise StoreError(f"the store {path} holds the grid {held!r}, not {grid_name!r} (one grid "
                                         f"per store): choose another --out, or run {held!r} into it")
                    if grid_name is not None and held is None:
                        con.execute("INSERT INTO meta VALUES ('grid', ?)", (grid_name,))
            except BaseException:
                con.close()
                raise
        return cls(con, path)

    def close(self) -> None:
        self.end_run()
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs sharing the store ------------------------------------------------------------------------
    def begin_run(self) -> str:
        """Register this process as a run that claims points; returns its name (``host-pid-random``).

        The run holds an exclusive lock on ``<out>/.sweep-runs/<name>`` until :meth:`end_run` or until the
        process dies; while the lock is held, its claims keep other runs off its points.
        """
        if self.owner is not None:
            return self.owner
        name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self.runs_dir.mkdir(exist_ok=True)
            partial = self.runs_dir / f".{name}"
            fd = os.open(partial, os.O_CREAT | os.O_RDWR, 0o644)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(partial, self.runs_dir / name)  # visible only once locked
        except OSError as exc:
            raise StoreError(f"cannot register the run in {self.runs_dir}: {exc.strerror or exc}") from None
        self.owner, self._lock_fd = name, fd
        return name

    def end_run(self) -> None:
        """Give up this run's claims on points it did not finish, and its lock file."""
        if self.owner is None:
            return
        try:  # tidiness only: once the lock file is gone these claims are void anyway
            with _refusals(self.path), self.con:
                self.con.execute("BEGIN IMMEDIATE")
                self.con.execute("UPDATE points SET claimed_by = NULL WHERE claimed_by = ?", (self.owner,))
        except StoreError:
            pass
        finally:
            with contextlib.suppress(OSError):
                (self.runs_dir / self.owner).unlink()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            self.owner = self._lock_fd = None

    def claim(self, expected: Mapping[str, int]) -> tuple[list[str], list[str], list[str]]:
        """Claim points for this run (after :meth:`begin_run`), in one transaction.

        Args:
            expected: hash -> the ``attempts`` the point had when this run planned it.

        Returns:
            (claimed now, settled by another run since (attempts changed), held by another live run).
        """
        claimed, settled, held = [], [], []
        alive: dict[str, bool] = {}
        with _refusals(self.path), self.con:
            self.con.execute("BEGIN IMMEDIATE")
            for hash_, attempts, owner in self._rows(list(expected)):
                if attempts != expected[hash_]:
                    settled.append(hash_)
                elif owner is None or owner == self.owner:
                    claimed.append(hash_)
                else:
                    if owner not in alive:
                        alive[owner] = _run_alive(self.runs_dir, owner)
                    (held if alive[owner] else claimed).append(hash_)
            self.con.executemany("UPDATE points SET claimed_by = ? WHERE hash = ?",
                                 [(self.owner, h) for h in claimed])
        return claimed, settled, held

    def held_elsewhere(self, expected: Mapping[str, int]) -> bool:
        """True while every one of these points is unchanged and claimed by another live run (read only)."""
        alive: dict[str, bool] = {}
        with _refusals(self.path):
            for hash_, attempts, owner in self._rows(list(expected)):
                if attempts != expected[hash_] or owner is None or owner == self.owner:
                    return False
                if owner not in alive:
                    alive[owner] = _run_alive(self.runs_dir, owner)
                if not alive[owner]:
                    return False
        return True

    def _rows(self, hashes: Sequence[str]) -> list[tuple[str, int, str | None]]:
        rows = []
        for start in range(0, len(hashes), 500):  # SQLite limits the number of bound parameters
            chunk = hashes[start:start + 500]
            rows += self.con.execute(f"SELECT hash, attempts, claimed_by FROM points WHERE hash IN "
                                     f"({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    # -- writes (client process only) ---------------------------------------------------------
    def add_pending(self, points: Iterable[Any]) -> None:
        """Insert points not yet in the store as 'pending' (one transaction)."""
        rows = [(p.hash, p.kind, json.dumps(p.params, sort_keys=True)) for p in points]
        with _refusals(self.path), self.con:
            self.con.execute("BEGIN IMMEDIATE")
            self.con.executemany(
                "INSERT OR IGNORE INTO points (hash, kind, params, status) VALUES (?, ?, ?, 'pending')", rows)

    def record(self, outcomes: Sequence[dict[str, Any]]) -> None:
        """Write finished points in one transaction and drop their claims. Each outcome: hash, status
        ('done'|'failed'), results (JSON text or None), history (list of JSON texts), error, seconds, group_size."""
        now = _now()
        with _refusals(self.path), self.con:
            self.con.execute("BEGIN IMMEDIATE")
            for out in outcomes:
                self.con.execute(
                    "UPDATE points SET status = ?, results = ?, error = ?, seconds = ?, group_size = ?, "
                    "attempts = attempts + 1, finished_at = ?, claimed_by = NULL WHERE hash = ?",
                    (out["status"], out["results"], out["error"], out["seconds"], out["group_size"], now, out["hash"]))
                self.con.execute("DELETE FROM history WHERE hash = ?", (out["hash"],))
                self.con.executemany("INSERT INTO history (hash, step, record) VALUES (?, ?, ?)",
                                     [(out["hash"], step, rec) for step, rec in enumerate(out["history"], start=1)])

    # -- reads ----------------------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        """hash -> status of every point in the store."""
        with _refusals(self.path):
            return dict(self.con.execute("SELECT hash, status FROM points").fetchall())

    def states(self) -> dict[str, tuple[str, int]]:
        """hash -> (status, attempts) of every point in the store."""
        with _refusals(self.path):
            return {h: (s, a) for h, s, a in self.con.execute("SELECT hash, status, attempts FROM points")}

    def errors(self, hashes: Iterable[str]) -> list[tuple[str, str]]:
        wanted = set(hashes)
        with _refusals(self.path):
            rows = self.con.execute("SELECT hash, error FROM points WHERE status = 'failed'").fetchall()
        return [(h, e) for h, e in rows if h in wanted]


def _migrate_from_1(con: sqlite3.Connection, path: Path, code_version: str) -> None:
    """Schema 1 -> 2 inside the caller's transaction: a ``claimed_by`` column, and every point's hash
    recomputed with the new schema (the hash covers it). Refused when a stored hash is not what schema 1 gives
    for the stored params (then the store is not what it claims, and nothing is changed)."""
    renames = []
    for old, kind, params in con.execute("SELECT hash, kind, params FROM points").fetchall():
        values = json.loads(params)
        if _hash_schema_1(kind, values, code_version) != old:
            raise StoreError(f"cannot migrate the store {path} from schema 1: point {old} does not match its params; "
                             "use a new --out folder")
        renames.append((point_hash(kind, values, code_version), old))
    con.execute("ALTER TABLE points ADD COLUMN claimed_by TEXT")
    con.executemany("UPDATE history SET hash = ? WHERE hash = ?", renames)
    con.executemany("UPDATE points SET hash = ? WHERE hash = ?", renames)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(STORE_SCHEMA),))


def _version() -> str:
    from .. import __version__

    return __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _store_path(store: str | Path) -> Path:
    path = Path(store)
    return path / STORE_FILE if path.is_dir() else path


@contextlib.contextmanager
def _reading(store: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing store; any SQLite failure becomes one StoreError line."""
    path = _store_path(store)
    if not path.exists():
        raise StoreError(f"no sweep store at {path}")
    inspect_store(path, deep=False)
    with _refusals(path):
        con = _connect_read_only(path)
        try:
            yield con
        finally:
            con.close()


def grid_statuses(out_dir: str | Path, grid: Any, code_version: str | None = None) -> dict[str, str]:
    """hash -> status ('new' when absent) of a grid's points in ``<out_dir>/sweep.sqlite``, read only.

    The store is checked as a run would check it (versions, grid name, damage), so a dry run reports the
    problem a run would stop at. Points are matched by kind and params, so a schema-1 store reads right too.
    """
    if code_version is None:
        from .. import __version__ as code_version
    path = Path(out_dir) / STORE_FILE
    found: dict[tuple[str, str], str] = {}
    if path.exists() or path.is_symlink():
        if inspect_store(path, code_version=code_version, grid_name=grid.name):
            with _reading(path) as con, _refusals(path):
                found = {(k, p): s for k, p, s in con.execute("SELECT kind, params, status FROM points")}
    return {p.hash: found.get((p.kind, json.dumps(p.params, sort_keys=True)), "new") for p in grid.points}


def read_points(store: str | Path, *, status: str | None = None) -> Any:
    """The points of a store as a pandas DataFrame, one row per point.

    Columns: hash, kind, status, seconds, group_size, attempts, finished_at, error, then every params key
    (a params key equal to one of those becomes ``param_<key>``), then every results key (a results key
    equal to an earlier column becomes ``result_<key>``). List-valued params (e.g. ``hidden``) are JSON text.

    Args:
        store: the output folder or the ``sweep.sqlite`` file.
        status: keep only rows with this status ('done', 'failed', 'pending').

    Raises:
        StoreError: no store there, or SQLite cannot read it (one line naming the file).
    """
    import pandas as pd

    with _reading(store) as con, _refusals(_store_path(store)):
        rows = con.execute("SELECT hash, kind, status, seconds, group_size, attempts, finished_at, error, params, "
                           "results FROM points ORDER BY rowid").fetchall()
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

    with _reading(store) as con, _refusals(_store_path(store)):
        rows = con.execute("SELECT hash, step, record FROM history ORDER BY hash, step").fetchall()
    return pd.DataFrame.from_records([{"hash": h, "step": s, **json.loads(r)} for h, s, r in rows])


def export(store: str | Path, fmt: str) -> list[Path]:
    """Write ``points.<fmt>`` and (when there is history) ``history.<fmt>`` next to the store, atomically.

    The store is checked first (:func:`inspect_store`, read only) and both tables are read before either
    file is written, so a damaged store replaces nothing.

    Args:
        store: the output folder.
        fmt: 'csv' or 'parquet' (parquet needs pyarrow).

    Returns:
        the files written.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"export format must be csv or parquet, got {fmt!r}")
    out_dir = Path(store)
    path = out_dir / STORE_FILE
    if not path.exists():
        raise StoreError(f"no sweep store at {path}")
    inspect_store(path)
    tables = {"points": read_points(out_dir), "history": read_history(out_dir)}
    written = []
    for name, frame in tables.items():
        if frame.empty and name == "history":
            continue
        target = out_dir / f"{name}.{fmt}"
        try:
            with atomic_path(target) as tmp:  # a temporary per process: runs may export at once
                if fmt == "csv":
                    frame.to_csv(tmp, index=False)
                else:
                    try:
                        frame.to_parquet(tmp, index=False)
                    except ImportError as exc:
                        raise ValueError(f"--export parquet needs pyarrow: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from None
        written.append(target)
    return written
