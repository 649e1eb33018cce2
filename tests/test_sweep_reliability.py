"""The sweep when things go wrong: damaged or foreign stores are refused in one line and left as they were, no
process outlives a killed sweep, failed points show in the exit status, runs sharing a store compute each point
once, and a grid's size is checked before it is expanded."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import ROOT, _cli, _done_count, _file_digest, _results, _run_main

from synthmodel import __version__
from synthmodel.sweep import STORE_FILE, GridError, expand_grid, load_grid, read_points, run_sweep
from synthmodel.sweep import grid as grid_module
from synthmodel.sweep import store as store_module
from synthmodel.sweep.kinds import canonical_json

BIG = 'name = "big"\nkind = "toy"\n[grid]\na = { linspace = [0, 1, 50] }\nb = { range = [0, 20] }\n'  # 1000 points
PAGE = 4096  # SQLite's default page size, which the store keeps


def _store_bytes(out: Path) -> dict[str, str]:
    """sha256 of the store and of its write-ahead log, by file name: what SQLite reads. (A read-only connection
    may leave an empty log and the -shm index behind; neither holds data.)"""
    files = (out / STORE_FILE, out / f"{STORE_FILE}-wal")
    return {p.name: _file_digest(p) for p in files if p.is_file() and p.stat().st_size}


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """A finished 1000-point store (about 170 pages) and its grid file, made once."""
    folder = tmp_path_factory.mktemp("big")
    (folder / "big.toml").write_text(BIG)
    run_sweep(load_grid(folder / "big.toml"), folder / "out", workers=1, progress=False, export_format=None)
    return folder


@pytest.fixture(scope="module")
def hot_wal_store(tmp_path_factory) -> Path:
    """A store as a crash leaves it: recent transactions only in ``sweep.sqlite-wal``, not yet checkpointed.

    First every point fails (a flag file exists); then, while another connection keeps the database open (so
    nothing checkpoints at close), a --retry-failed run records them all as done. The three files are copied
    as they are at that moment.
    """
    folder = tmp_path_factory.mktemp("hotwal")
    flag = folder / "flag"
    flag.write_text("")
    (folder / "hot.toml").write_text(f'name = "hot"\nkind = "toy"\n[fixed]\nfail_flag = "{flag}"\n[grid]\n'
                                     'a = { linspace = [0, 1, 10] }\nb = { range = [0, 20] }\n')
    grid = load_grid(folder / "hot.toml")
    source = folder / "source"
    run_sweep(grid, source, workers=1, progress=False, export_format=None)
    flag.unlink()
    keeper = sqlite3.connect(source / STORE_FILE)
    keeper.execute("SELECT count(*) FROM points").fetchone()
    run_sweep(grid, source, workers=1, progress=False, export_format=None, retry_failed=True)
    snapshot = folder / "out"
    snapshot.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(source / f"{STORE_FILE}{suffix}", snapshot / f"{STORE_FILE}{suffix}")
    keeper.close()
    return folder


def _overwrite(path: Path, offset: int, length: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(rng.getrandbits(8) for _ in range(length)))


def _garbage_mid_page(fraction: float):
    def damage(out: Path) -> None:
        pages = (out / STORE_FILE).stat().st_size // PAGE
        _overwrite(out / STORE_FILE, int(pages * fraction) * PAGE, PAGE)
    return damage


def _truncate(out: Path) -> None:
    os.truncate(out / STORE_FILE, (out / STORE_FILE).stat().st_size // 2)


def _random_bytes(out: Path) -> None:
    size = (out / STORE_FILE).stat().st_size
    (out / STORE_FILE).write_bytes(random.Random(1).randbytes(size))


def _a_directory(out: Path) -> None:
    (out / STORE_FILE).unlink()
    (out / STORE_FILE).mkdir()


def _another_programs_database(out: Path) -> None:
    (out / STORE_FILE).unlink()
    con = sqlite3.connect(out / STORE_FILE)
    with con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('not a sweep')")
    con.close()


def _set_meta(key: str, value: str):
    def damage(out: Path) -> None:
        con = sqlite3.connect(out / STORE_FILE)
        with con:
            con.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        con.close()
    return damage


def _unreadable(out: Path) -> None:
    (out / STORE_FILE).chmod(0)


DAMAGE = {
    "garbage in a page a third in": _garbage_mid_page(1 / 3),
    "garbage in the middle page": _garbage_mid_page(1 / 2),
    "garbage in a page two thirds in": _garbage_mid_page(2 / 3),
    "truncated to half": _truncate,
    "random bytes": _random_bytes,
    "a directory": _a_directory,
    "another program's database": _another_programs_database,
    "a newer store schema": _set_meta("schema_version", "99"),
    "unreadable": _unreadable,
}
COMMANDS = {
    "sweep": lambda grid, out: ["--grid", str(grid), "--out", str(out), "--workers", "1"],
    "export": lambda grid, out: ["--out", str(out), "--export", "csv"],
    "dry-run": lambda grid, out: ["--grid", str(grid), "--out", str(out), "--dry-run"],
}


def _assert_refused(capsys, args: list[str], out: Path) -> str:
    before = _store_bytes(out)
    code, stdout, stderr = _run_main(capsys, *args)
    assert (code, stdout) == (2, ""), stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and STORE_FILE in stderr, stderr
    assert _store_bytes(out) == before, "the store's bytes changed"
    assert not (out / "points.csv").exists()
    return stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_store_sqlite_refuses_or_that_is_not_ours_gives_one_line_and_stays_as_it_was(big_store, tmp_path, capsys,
                                                                                        monkeypatch, damage, command):
    out = tmp_path / "out"
    shutil.copytree(big_store / "out", out)
    DAMAGE[damage](out)
    if damage == "unreadable" and os.geteuid() == 0:  # root reads any file: say what a user would be told
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (Path(p) != out / STORE_FILE or not mode & os.R_OK)
                            and access(p, mode, **kw))
    try:
        _assert_refused(capsys, COMMANDS[command](big_store / "big.toml", out), out)
    finally:
        if (out / STORE_FILE).is_file():
            (out / STORE_FILE).chmod(0o644)


def test_a_store_of_another_code_version_is_refused_by_sweep_and_dry_run_but_exported(big_store, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(big_store / "out", out)
    _set_meta("code_version", "0.0.1")(out)
    for command in ("sweep", "dry-run"):
        stderr = _assert_refused(capsys, COMMANDS[command](big_store / "big.toml", out), out)
        assert "0.0.1" in stderr and "new --out" in stderr
    code, stdout, _ = _run_main(capsys, *COMMANDS["export"](big_store / "big.toml", out))  # its results stay readable
    assert code == 0 and "points.csv" in stdout


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["header", "middle"])
def test_a_damaged_write_ahead_log_is_refused_instead_of_silently_cut_short(hot_wal_store, tmp_path, capsys, where,
                                                                             command):
    out = tmp_path / "out"
    shutil.copytree(hot_wal_store / "out", out)
    wal = out / f"{STORE_FILE}-wal"
    frames = (wal.stat().st_size - 32) // (24 + PAGE)
    assert frames >= 8, "the fixture must leave several transactions in the log"
    if where == "header":
        _overwrite(wal, 0, 32)
    else:  # a whole frame in the middle: SQLite would stop replaying there and drop every later transaction
        _overwrite(wal, 32 + (frames // 2) * (24 + PAGE), 24 + PAGE)
    stderr = _assert_refused(capsys, COMMANDS[command](hot_wal_store / "hot.toml", out), out)
    assert "write-ahead log" in stderr


def test_a_damaged_shared_memory_index_is_rebuilt_and_nothing_is_lost(hot_wal_store, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(hot_wal_store / "out", out)
    _overwrite(out / f"{STORE_FILE}-shm", 0, 4096)  # SQLite's index of the log: rebuilt from the log itself
    code, stdout, stderr = _run_main(capsys, "--grid", str(hot_wal_store / "hot.toml"), "--out", str(out),
                                     "--workers", "1", "--export", "none")
    assert code == 0, stderr
    assert "200 already in the store, 0 computed now" in stdout
    assert set(read_points(out)["status"]) == {"done"}


def test_a_locked_store_is_refused_in_one_line_after_waiting(big_store, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(big_store / "out", out)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2, raising=False)
    holder = sqlite3.connect(out / STORE_FILE, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # another program keeps the database to itself
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for command in COMMANDS.values():
            stderr = _assert_refused(capsys, command(big_store / "big.toml", out), out)
            assert "locked by another program" in stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- no process outlives a killed sweep --------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int) -> set[int]:
    children, found, stack = _children_map(), set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _running(pids: set[int]) -> set[int]:
    """The pids that still run (a zombie has ended: it only waits to be reaped)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.add(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("executor", ["local", "dask"])
def test_sigkill_of_a_sweep_leaves_no_process_behind(tmp_path, executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    grid = tmp_path / "slow.toml"
    grid.write_text('kind = "toy"\n[fixed]\ndelay = 0.2\n[grid]\na = [0.5, 1.5]\nb = { range = [0, 60] }\n')
    out = tmp_path / "out"
    proc = _cli("--grid", str(grid), "--out", str(out), "--workers", "2", "--executor", executor, cwd=tmp_path)
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            tree = _descendants(proc.pid)
            if len(tree) >= 3 and _done_count(out / STORE_FILE) >= 2:  # 2 workers + the resource tracker, busy
                break
            time.sleep(0.1)
        assert proc.poll() is None and len(tree) >= 3, "the sweep must be killed while its workers compute"
        tree |= _descendants(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _running(tree) and time.monotonic() < deadline:
            tree |= set().union(*(_descendants(p) for p in _running(tree)))
            time.sleep(0.1)
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in _running(tree)}
        assert not left, f"still running 10 s after kill -9 of the sweep: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _running(tree):
            os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)  # its pipes (orphans would hold them open)


# -- exit status -----------------------------------------------------------------------------------------
def test_failed_points_give_exit_1_saying_how_many_and_how_to_retry(tmp_path, capsys):
    flag = tmp_path / "flag"
    flag.write_text("")
    grid = tmp_path / "g.toml"
    grid.write_text(f'kind = "toy"\n[grid]\nb = [1, 2, 3]\n[[points]]\nb = 4\nfail_flag = "{flag}"\n'
                    f'[[points]]\nb = 5\nfail_flag = "{flag}"\n')
    args = ("--grid", str(grid), "--out", str(tmp_path / "out"), "--workers", "1")
    code, stdout, stderr = _run_main(capsys, *args)
    assert code == 1
    assert "2 of 5 points failed" in stderr and "--retry-failed" in stderr and stderr.count("\n") == 1
    assert "failures: 2 of 5 points failed" in stdout and "toy failure" in stdout
    code, stdout, stderr = _run_main(capsys, *args)  # still incomplete, although this run computed nothing
    assert code == 1 and "0 computed now" in stdout and "2 of 5 points failed" in stderr
    flag.unlink()
    code, stdout, stderr = _run_main(capsys, *args, "--retry-failed")
    assert (code, stderr) == (0, "") and "2 computed now, 0 failed" in stdout


# -- runs sharing a store ------------------------------------------------------------------------------------
def _claimants(store: Path) -> set[str]:
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in con.execute("SELECT DISTINCT claimed_by FROM points WHERE claimed_by IS NOT NULL")}
        finally:
            con.close()
    except sqlite3.Error:
        return set()


def _wait_for_claimants(store: Path, count: int, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 60
    while len(_claimants(store)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} runs claimed points within 60 s"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)


def _gated_grid(tmp_path: Path) -> tuple[Path, Path]:
    gate = tmp_path / "gate"
    grid = tmp_path / "shared.toml"
    grid.write_text(f'name = "shared"\nkind = "toy"\n[fixed]\ngate = "{gate}"\ndelay = 0.01\n'
                    '[grid]\na = [0.5, 1.5]\nb = { range = [0, 40] }\n')
    return grid, gate


def _computed_now(report: str) -> int:
    return int(re.search(r"(\d+) computed now", report).group(1))


def test_two_sweeps_into_one_folder_share_the_points_and_compute_each_once(tmp_path):
    grid, gate = _gated_grid(tmp_path)
    out = tmp_path / "out"
    args = ("--grid", str(grid), "--out", str(out), "--workers", "1")
    procs = [_cli(*args, cwd=tmp_path)]
    try:
        _wait_for_claimants(out / STORE_FILE, 1, procs)  # the first run holds its first points at the gate
        procs.append(_cli(*args, cwd=tmp_path))
        _wait_for_claimants(out / STORE_FILE, 2, procs)  # the second took other points instead of the same ones
        gate.write_text("")
        reports = [p.communicate(timeout=180) for p in procs]
    finally:
        gate.write_text("")
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(procs, reports, strict=True):
        assert p.returncode == 0, stderr
    table = read_points(out)
    assert len(table) == 80 and set(table["status"]) == {"done"}
    assert set(table["attempts"]) == {1}  # no point computed twice
    computed = [_computed_now(stdout) for stdout, _ in reports]
    assert sum(computed) == 80 and min(computed) > 0, computed
    assert _claimants(out / STORE_FILE) == set() and not list((out / ".sweep-runs").iterdir())


def test_the_claims_of_a_killed_run_do_not_block_the_next(tmp_path):
    grid, gate = _gated_grid(tmp_path)
    out = tmp_path / "out"
    args = ("--grid", str(grid), "--out", str(out), "--workers", "1")
    killed = _cli(*args, cwd=tmp_path)
    try:
        _wait_for_claimants(out / STORE_FILE, 1, [killed])
    finally:
        killed.kill()
        killed.communicate(timeout=60)
    assert _claimants(out / STORE_FILE), "the killed run left its claims behind"
    gate.write_text("")
    rerun = _cli(*args, cwd=tmp_path)
    stdout, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, stderr
    assert "0 already in the store, 80 computed now" in stdout
    assert set(read_points(out)["attempts"]) == {1}


def test_another_grid_into_a_store_is_refused_naming_the_grid_it_holds(tmp_path, capsys):
    out = tmp_path / "out"
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text("kind = 'toy'\n[grid]\nb = [1, 2]\n")
    second.write_text("kind = 'toy'\n[grid]\nb = [3]\n")
    assert _run_main(capsys, "--grid", str(first), "--out", str(out), "--workers", "1")[0] == 0
    digest = _file_digest(out / STORE_FILE)
    for extra in ((), ("--dry-run",)):
        code, stdout, stderr = _run_main(capsys, "--grid", str(second), "--out", str(out), "--workers", "1", *extra)
        assert (code, stdout) == (2, "") and stderr.count("\n") == 1
        assert "'first'" in stderr and "'second'" in stderr and "another --out" in stderr
    assert _file_digest(out / STORE_FILE) == digest
    first.write_text("kind = 'toy'\n[grid]\nb = [1, 2, 3]\n")  # the same grid, grown: its new point is added
    code, stdout, _ = _run_main(capsys, "--grid", str(first), "--out", str(out), "--workers", "1")
    assert code == 0 and "2 already in the store, 1 computed now" in stdout


# -- store schema 1 --------------------------------------------------------------------------------------------
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE points (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')), results TEXT, error TEXT, seconds REAL,
    group_size INTEGER, attempts INTEGER NOT NULL DEFAULT 0, finished_at TEXT);
CREATE TABLE history (hash TEXT NOT NULL REFERENCES points(hash), step INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (hash, step));
"""


def _write_schema_1_copy(source: Path, target: Path) -> None:
    """The store at ``source`` as store schema 1 wrote it: no claims column, no grid name, schema-1 hashes."""
    target.mkdir()
    old = sqlite3.connect(source / STORE_FILE)
    new = sqlite3.connect(target / STORE_FILE)
    new.executescript(_SCHEMA_1)
    rename = {}
    for row in old.execute("SELECT hash, kind, params, status, results, error, seconds, group_size, attempts, "
                           "finished_at FROM points"):
        text = canonical_json({"kind": row[1], "params": json.loads(row[2]), "code": __version__, "schema": 1})
        rename[row[0]] = hashlib.sha256(text.encode()).hexdigest()[:32]
        new.execute("INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (rename[row[0]], *row[1:]))
    for h, step, record in old.execute("SELECT hash, step, record FROM history"):
        new.execute("INSERT INTO history VALUES (?, ?, ?)", (rename[h], step, record))
    new.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("code_version", __version__),
                                                        ("created_at", "2026-01-01T00:00:00+00:00")])
    new.commit()
    new.close()
    old.close()


def test_a_schema_1_store_is_migrated_in_place_and_nothing_is_recomputed(tmp_path, capsys):
    grid = tmp_path / "toy.toml"
    grid.write_text("name = 'toy'\nkind = 'toy'\n[grid]\na = { linspace = [0.0, 1.0, 5] }\nb = { range = [0, 4] }\n")
    current = tmp_path / "current"
    run_sweep(load_grid(grid), current, workers=1, progress=False, export_format=None)
    old = tmp_path / "old"
    _write_schema_1_copy(current, old)
    digest = _file_digest(old / STORE_FILE)
    code, stdout, _ = _run_main(capsys, "--grid", str(grid), "--out", str(old), "--dry-run")
    assert code == 0 and "20 points (20 done)" in stdout  # read by params, untouched
    assert _file_digest(old / STORE_FILE) == digest
    code, stdout, stderr = _run_main(capsys, "--grid", str(grid), "--out", str(old), "--workers", "1")
    assert code == 0, stderr
    assert "20 already in the store, 0 computed now" in stdout
    assert _results(old) == _results(current)  # same hashes, results and history as a store made today
    con = sqlite3.connect(old / STORE_FILE)
    assert dict(con.execute("SELECT key, value FROM meta"))["schema_version"] == "2"
    con.close()


# -- grid size ----------------------------------------------------------------------------------------------
# 1e15 points. Without a count before expansion, list(range(10**12)) fails at once with MemoryError (8 TB), so a
# regression fails this test instead of filling the machine's memory.
HUGE = {"kind": "toy", "grid": {"a": {"linspace": [0.0, 1.0, 1000]}, "b": {"range": [0, 10**12]}}}


def test_a_grid_larger_than_the_limit_is_refused_before_any_point_is_expanded(monkeypatch):
    def expanded(*args, **kwargs):
        raise AssertionError("a point was expanded")

    monkeypatch.setattr(grid_module, "normalize_params", expanded)
    with pytest.raises(GridError) as info:
        expand_grid(HUGE)
    assert "1000000000000000 points" in str(info.value) and "--max-points" in str(info.value)
    small = {"kind": "toy", "grid": {"b": {"range": [0, 12]}}, "points": [{"b": 20}]}  # 13 points
    with pytest.raises(GridError, match="13 points, more than the limit of 12"):
        expand_grid(small, max_points=12)
    monkeypatch.undo()
    assert len(expand_grid(small, max_points=13).points) == 13
    assert len(expand_grid(small, max_points=None).points) == 13


def _limit_memory() -> None:  # 4 GB of address space: an expansion that forgot the count fails, not the machine
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit")
def test_cli_refuses_a_huge_grid_at_once_and_max_points_raises_the_limit(tmp_path, capsys):
    huge = tmp_path / "huge.toml"  # 1e14 points, the largest axis a linspace
    huge.write_text("kind = 'toy'\n[grid]\na = { linspace = [0.0, 1.0, 1000000000000] }\nb = [1, 2, 3]\n"
                    "delay = { linspace = [0.0, 1.0, 33] }\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    # the guard answers in well under a second; the timeout only stops a run that tries to expand the grid
    done = subprocess.run([sys.executable, "-m", "synthmodel.sweep", "--plugin", "sweep_plugin", "--grid", str(huge),
                           "--dry-run", "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_memory)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "99000000000000 points" in done.stderr and "--max-points" in done.stderr
    small = tmp_path / "small.toml"
    small.write_text("kind = 'toy'\n[grid]\nb = { range = [0, 12] }\n")
    code, stdout, stderr = _run_main(capsys, "--grid", str(small), "--dry-run", "--max-points", "11")
    assert (code, stdout) == (2, "") and "12 points, more than the limit of 11" in stderr
    code, stdout, stderr = _run_main(capsys, "--grid", str(small), "--dry-run", "--max-points", "12",
                                     "--out", str(tmp_path / "out"))
    assert code == 0 and "12 points (12 new)" in stdout
