"""Running a grid: planning tasks, executors (inline, local process pool, Dask) and the resumable loop.

Determinism: a point's result depends only on its params (seeds derive from them), never on order,
worker count or executor:

* batch groups are formed from the *whole grid* in grid order (points with equal ``batch_key``, split
  into near-equal consecutive chunks of at most ``max_batch``), not from what is pending or which
  worker is free; a group with any pending member is recomputed whole and written in one transaction;
* every task runs with the same number of torch threads (default 1) in whichever process runs it,
  since a different thread count may change float summation order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .grid import Grid, Point
from .kinds import HISTORY_KEY, WORKDIRS, get_kind
from .store import Store

__all__ = ["Task", "plan_tasks", "run_task", "run_sweep", "SweepSummary", "EXECUTORS"]

EXECUTORS = ("local", "dask")
MAX_CHUNK = 64  # unbatched points per dispatched task, at most


@dataclass(frozen=True)
class Task:
    """A unit of work sent to a worker: points of one kind, run one by one or as one batch."""

    kind: str
    func: Callable[..., Any]                   # kind.run, or kind.run_batch when batched
    batched: bool
    items: tuple[tuple[str, dict], ...]        # (hash, params)
    threads: int = 1
    workdirs: str | None = None                # kinds with workdir=True: <out>/points (each point: /<hash>)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Split into ceil(n / size) consecutive chunks of near-equal length (deterministic in n and size)."""
    if not items:
        return []
    n_chunks = math.ceil(len(items) / size)
    bounds = [round(i * len(items) / n_chunks) for i in range(n_chunks + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def plan_tasks(points: Sequence[Point], todo: set[str], *, max_batch: int = 64, workers: int = 1,
               threads: int = 1, out_dir: str | Path | None = None) -> list[Task]:
    """Tasks computing every point whose hash is in ``todo``.

    Batch groups come from the whole ``points`` list (see module docstring); unbatched points are sent in
    chunks sized for load balance (chunking does not affect their results). Points of a kind with
    ``workdir=True`` are sent one per task (they are long) and need ``out_dir``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    groups: dict[tuple[str, Any], list[Point]] = {}
    singles: list[Point] = []
    for point in points:
        kind = get_kind(point.kind)
        key = kind.batch_key(point.params) if kind.batch_key is not None and kind.run_batch is not None else None
        if key is None:
            if point.hash in todo:
                singles.append(point)
        else:
            groups.setdefault((point.kind, key), []).append(point)
    tasks: list[Task] = []
    for (kind_name, _), members in groups.items():
        kind = get_kind(kind_name)
        for chunk in _chunks(members, max_batch):
            if not any(p.hash in todo for p in chunk):
                continue
            items = tuple((p.hash, p.params) for p in chunk)
            if len(chunk) == 1:
                tasks.append(Task(kind_name, kind.run, False, items, threads))
            else:
                tasks.append(Task(kind_name, kind.run_batch, True, items, threads))
    size = max(1, min(MAX_CHUNK, len(singles) // max(1, 8 * workers)))
    by_kind: dict[str, list[Point]] = {}
    for p in singles:
        by_kind.setdefault(p.kind, []).append(p)
    for kind_name, members in by_kind.items():
        kind = get_kind(kind_name)
        if kind.workdir:
            if out_dir is None:
                raise ValueError(f"points of kind {kind_name!r} need an output folder for their workdirs")
            root = str(Path(out_dir) / WORKDIRS)
            tasks += [Task(kind_name, kind.run, False, ((p.hash, p.params),), threads, root) for p in members]
            continue
        for chunk in _chunks(members, size):
            tasks.append(Task(kind_name, kind.run, False, tuple((p.hash, p.params) for p in chunk), threads))
    return tasks


# -- worker side ----------------------------------------------------------------------------------
def _json_scalar(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # NaN / inf -> null (standard JSON)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch 0-d
        return _json_scalar(value.item())
    raise ValueError(f"{type(value).__name__} is not a JSON scalar")


def _json_value(value: Any) -> Any:
    """A JSON scalar, or a (nested) list of them: history records may hold small matrices such as C."""
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return _json_scalar(value)


def _encode(results: Any) -> tuple[str, list[str]]:
    """(results JSON text, [history record JSON texts]); ValueError if the kind returned something else."""
    import json

    if not isinstance(results, dict):
        raise ValueError(f"a point kind must return a dict, got {type(results).__name__}")
    history = results.get(HISTORY_KEY, [])
    scalars = {}
    for key, value in results.items():
        if key == HISTORY_KEY:
            continue
        try:
            scalars[str(key)] = _json_scalar(value)
        except ValueError as exc:
            raise ValueError(f"result {key!r}: {exc}") from None
    records = []
    for record in history:
        if not isinstance(record, dict):
            raise ValueError("history records must be dicts")
        records.append(json.dumps({str(k): _json_value(v) for k, v in record.items()}, sort_keys=True))
    return json.dumps(scalars, sort_keys=True), records


def _failure(hash_: str, exc: BaseException, seconds: float, batch_size: int) -> dict[str, Any]:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return dict(hash=hash_, status="failed", results=None, history=[], error=last, seconds=seconds,
                group_size=batch_size)


def _outcome(hash_: str, results: Any, seconds: float, batch_size: int) -> dict[str, Any]:
    try:
        text, history = _encode(results)
    except ValueError as exc:
        return _failure(hash_, exc, seconds, batch_size)
    return dict(hash=hash_, status="done", results=text, history=history, error=None, seconds=seconds,
                group_size=batch_size)


def run_task(task: Task) -> list[dict[str, Any]]:
    """Compute a task's points (in any process). A failing point is recorded as failed, never raised;
    a failing batch fails each of its points with the batch's error."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        if task.batched:
            start = time.perf_counter()
            try:
                results = task.func([params for _, params in task.items])
                if len(results) != len(task.items):
                    raise ValueError(f"run_batch returned {len(results)} results for {len(task.items)} points")
            except Exception as exc:  # recorded per point; the sweep goes on
                seconds = (time.perf_counter() - start) / len(task.items)
                return [_failure(h, exc, seconds, len(task.items)) for h, _ in task.items]
            seconds = (time.perf_counter() - start) / len(task.items)
            return [_outcome(h, r, seconds, len(task.items)) for (h, _), r in zip(task.items, results, strict=True)]
        outcomes = []
        for hash_, params in task.items:
            start = time.perf_counter()
            try:
                if task.workdirs is None:
                    results = task.func(params)
                else:
                    results = task.func(params, workdir=Path(task.workdirs) / hash_)
            except Exception as exc:  # recorded; the sweep goes on
                outcomes.append(_failure(hash_, exc, time.perf_counter() - start, 1))
                continue
            outcomes.append(_outcome(hash_, results, time.perf_counter() - start, 1))
        return outcomes
    finally:
        torch.set_num_threads(saved)


# -- executors --------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker when the sweep's process dies, even by SIGKILL.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. The signal comes when the *thread* that started the worker
    ends; workers are started by the thread that submits to the pool, which is the thread running
    :func:`run_sweep`, and it outlives the pool. Elsewhere (or if prctl fails) a thread watches the parent pid.
    Without a worker the multiprocessing resource tracker ends too (its pipe closes with the last holder).
    """
    import os

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-sweep-parent", daemon=True).start()


class _Inline:
    """Runs each task in this process when submitted."""

    def __init__(self) -> None:
        self._finished: list[tuple[object, Any]] = []

    def capacity(self) -> int:
        return 1

    def submit(self, task: Task) -> object:
        handle = object()
        try:
            result: Any = run_task(task)
        except Exception as exc:  # recorded as the task's failure, like a worker's
            result = exc
        self._finished.append((handle, result))
        return handle

    def collect(self, timeout: float) -> list[tuple[object, Any]]:
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        pass


class _Pool:
    """A local process pool (spawned interpreters whose lives end with this process's)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._futures: set[Any] = set()
        self._pool = self._start()

    def _start(self):
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (fork after torch/OpenMP threads have started can hang)
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))

    def capacity(self) -> int:
        return 2 * self.workers  # one task queued behind each running one, so no worker waits on the store

    def submit(self, task: Task) -> object:
        from concurrent.futures.process import BrokenProcessPool

        try:
            future = self._pool.submit(run_task, task)
        except BrokenProcessPool:
            self._restart()
            future = self._pool.submit(run_task, task)
        self._futures.add(future)
        return future

    def collect(self, timeout: float) -> list[tuple[object, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait(self._futures, timeout=timeout, return_when=FIRST_COMPLETED)
        finished = []
        for future in done:
            self._futures.discard(future)
            try:
                finished.append((future, future.result()))
            except Exception as exc:  # a worker died (killed, out of memory, crashed): its points failed
                finished.append((future, exc))
        if any(isinstance(result, BrokenProcessPool) for _, result in finished):
            self._restart()
        return finished

    def _restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._start()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Dask:
    """A dask client: a LocalCluster of single-threaded worker processes, or the cluster at ``scheduler``.

    LocalCluster's worker processes end with this process already: distributed starts them with a pipe
    from their parent and exits them when it closes.
    """

    def __init__(self, workers: int, scheduler: str | None):
        try:
            import distributed
        except ImportError:
            raise ValueError("--executor dask needs dask[distributed] (pip install 'dask[distributed]')") from None
        self._distributed = distributed
        self.workers = workers
        self.cluster = None
        if scheduler:
            try:
                self.client = distributed.Client(scheduler, timeout="20s")
            except OSError as exc:
                raise ValueError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        else:
            self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                    host="127.0.0.1", dashboard_address=None,
                                                    silence_logs=logging.ERROR)
            self.client = distributed.Client(self.cluster)
        self._futures: set[Any] = set()
        self._threads, self._asked = workers, 0.0

    def capacity(self) -> int:
        if time.monotonic() - self._asked > 2.0:  # a cluster may grow or shrink while the sweep runs
            self._threads = max(self.workers, sum(self.client.nthreads().values()))
            self._asked = time.monotonic()
        return 2 * self._threads

    def submit(self, task: Task) -> object:
        future = self.client.submit(run_task, task, pure=False)
        self._futures.add(future)
        return future

    def collect(self, timeout: float) -> list[tuple[object, Any]]:
        if not self._futures:
            return []
        try:
            done, _ = self._distributed.wait(list(self._futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except self._distributed.TimeoutError:
            return []
        finished = []
        for future in done:
            self._futures.discard(future)
            try:
                finished.append((future, future.result()))
            except Exception as exc:  # e.g. KilledWorker: its points failed
                finished.append((future, exc))
        return finished

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def _executor(executor: str, workers: int, scheduler: str | None):
    if executor == "dask":
        return _Dask(workers, scheduler)
    return _Inline() if workers == 1 else _Pool(workers)


# -- the loop -----------------------------------------------------------------------------------
POLL_S = 0.5  # how often a run waiting for points that another run is computing looks at them again


@dataclass
class SweepSummary:
    """What a sweep did. ``errors``: every failed point of the grid in the store at the end, this run's or not."""

    name: str
    out_dir: Path
    total: int
    already_done: int
    computed: int = 0
    failed: int = 0
    by_others: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    exports: list[Path] = field(default_factory=list)
    hooks: dict[str, str] = field(default_factory=dict)  # post-run hook name -> its line (synthmodel.sweep.plugins)

    def lines(self) -> list[str]:
        others = f", {self.by_others} by another run at the same time" if self.by_others else ""
        out = [f"sweep {self.name}: {self.total} points; {self.already_done} already in the store, "
               f"{self.computed} computed now{others}, {self.failed} failed ({self.seconds:.1f} s)",
               f"store:   {self.out_dir / 'sweep.sqlite'}"]
        out += [f"table:   {path}" for path in self.exports]
        out += [f"{name + ':':<8} {line}" for name, line in self.hooks.items()]
        if self.errors:
            out.append(f"failures: {self.failure_line()}:")
            out += [f"  {h[:12]}  {e}" for h, e in self.errors[:5]]
            if len(self.errors) > 5:
                out.append(f"  ... {len(self.errors) - 5} more (column 'error' of the table)")
        return out

    def failure_line(self) -> str:
        return (f"{len(self.errors)} of {self.total} points failed; fix the cause and rerun with --retry-failed "
                "to compute them again")


def run_sweep(grid: Grid, out_dir: str | Path, *, executor: str = "local", workers: int | None = None,
              scheduler: str | None = None, retry_failed: bool = False, max_batch: int = 64, threads: int = 1,
              progress: bool = True, export_format: str | None = "csv") -> SweepSummary:
    """Compute every point of ``grid`` not yet done in ``<out_dir>/sweep.sqlite``.

    Several runs of the same grid may share one store at once: each claims the points it is about to
    compute, so every point is computed once; a run whose remaining points another run is computing waits
    for them (and takes them over if that run dies).

    Args:
        grid: a validated grid (:func:`load_grid`, :func:`preset_grid`, :func:`expand_grid`).
        out_dir: output folder (created); holds the store and exported tables.
        executor: 'local' (process pool; inline when workers == 1) or 'dask' (LocalCluster, or the cluster
            at ``scheduler``).
        workers: processes (default: CPU count).
        scheduler: address of an existing dask scheduler (tcp://HOST:PORT); implies executor 'dask'.
        retry_failed: recompute points recorded as failed.
        max_batch: largest batch of a batchable kind (part of the plan: results may differ in the last
            float bits between batch compositions, so keep it fixed across reruns of one sweep).
        threads: torch threads per task (default 1, in every executor, for identical results).
        progress: show a progress bar on stderr.
        export_format: 'csv', 'parquet' or None: write points/history tables at the end.

    Returns:
        the summary; ``summary.errors`` lists the grid's failed points (non-empty: the grid is not complete).

    Raises:
        ValueError (StoreError): unusable store or folder (damaged, another version, another grid), bad
            executor settings.
    """
    import os

    if scheduler:
        executor = "dask"
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    store = Store.open(out_dir, grid_name=grid.name)
    try:
        store.add_pending(grid.points)
        states = store.states()
        wanted = {"pending", "failed"} if retry_failed else {"pending"}
        todo = {p.hash: states[p.hash][1] for p in grid.points if states[p.hash][0] in wanted}  # hash -> attempts
        summary = SweepSummary(grid.name, out_dir, len(grid.points), len(grid.points) - len(todo))
        tasks = plan_tasks(grid.points, set(todo), max_batch=max_batch, workers=workers, threads=threads,
                           out_dir=out_dir)
        store.begin_run()
        pool = _executor(executor, workers, scheduler) if tasks else _Inline()
        bar = _bar(len(grid.points), summary.already_done, progress, grid.name)
        try:
            _compute(tasks, todo, store, pool, summary, bar)
        finally:
            if bar is not None:
                bar.close()
            pool.close()
            store.end_run()
        summary.errors = store.errors(p.hash for p in grid.points)
    finally:
        store.close()
    if export_format:
        from .store import export

        summary.exports = export(out_dir, export_format)
    summary.seconds = time.perf_counter() - started
    return summary


def _compute(tasks: Sequence[Task], todo: dict[str, int], store: Store, pool: Any, summary: SweepSummary,
             bar: Any) -> None:
    """Claim, dispatch and record tasks until none of ``todo`` is left (computed here or by another run)."""
    from collections import deque

    queue = deque(tasks)
    running: dict[object, tuple[Task, set[str]]] = {}
    waiting: list[Task] = []  # tasks with points another live run is computing
    looked = time.monotonic()

    def pending_of(task: Task) -> dict[str, int]:
        return {h: todo[h] for h, _ in task.items if h in todo}

    def settled(hashes: Sequence[str], *, here: bool) -> None:
        for h in hashes:
            todo.pop(h, None)
        if not here:
            summary.by_others += len(hashes)
        if bar is not None and hashes:
            bar.update(len(hashes))

    while queue or running or waiting:
        while queue and len(running) < pool.capacity():
            task = queue.popleft()
            expected = pending_of(task)
            if not expected:
                continue
            claimed, elsewhere, held = store.claim(expected)
            settled(elsewhere, here=False)
            if held:
                waiting.append(task)
            if claimed:
                if not task.batched:  # only a batch must run whole (its members' bits depend on each other)
                    task = dataclasses.replace(task, items=tuple(item for item in task.items if item[0] in claimed))
                running[pool.submit(task)] = (task, set(claimed))
        if running:
            for handle, result in pool.collect(timeout=POLL_S if waiting else 5.0):
                task, claimed = running.pop(handle)
                if isinstance(result, BaseException):
                    outcomes = [_failure(h, result, 0.0, len(task.items)) for h, _ in task.items if h in claimed]
                else:
                    outcomes = [o for o in result if o["hash"] in claimed]
                store.record(outcomes)
                summary.computed += sum(o["status"] == "done" for o in outcomes)
                summary.failed += sum(o["status"] == "failed" for o in outcomes)
                settled([o["hash"] for o in outcomes], here=True)
        elif waiting and not queue:
            time.sleep(POLL_S)
        if waiting and time.monotonic() - looked >= POLL_S:  # another run finished, released or died?
            looked = time.monotonic()
            still = []
            for task in waiting:
                expected = pending_of(task)
                if expected and store.held_elsewhere(expected):
                    still.append(task)
                elif expected:
                    queue.append(task)
            waiting = still


def _bar(total: int, initial: int, enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="point", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)
