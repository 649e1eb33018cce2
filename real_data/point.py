"""The sweep point kind ``real-train``: one :mod:`real_data.train` run, with CAS at every epoch.

Registered with the sweep when the sweep loads its plugins (``pyproject.toml``, entry point group
``crossclass.sweep``); :mod:`synthmodel.sweep` itself never imports this package. A point's parameters are
the fields of :class:`real_data.train.TrainConfig` (same names, defaults and checks), plus:

* ``teacher_from``: ``"none"`` or ``"at_best"``: distil (mode ``kd``) from the best checkpoint of the same
  point trained with plain AT (mode ``at``, hard labels, no weight perturbation). That AT run is the sweep
  point of those settings: it is trained in *its* folder when this point needs it first (a file lock keeps
  two workers from training one folder at once), so a grid holding both trains it once;
* ``device``: where the run trains (``cpu`` by default, so a point's result is the same on every machine;
  ``cuda`` points run in bf16 autocast unless ``precision = "fp32"``).

Each point trains in its own folder ``<out>/points/<hash>/`` (``best.pt``, ``last.pt``, ``log.csv``,
``config.json``, as :mod:`real_data.train` writes them) and resumes from ``last.pt`` after an interruption,
to the same bits as an uninterrupted run on CPU. Results (one row of the store's ``points`` table):
``epochs_done``, ``best_epoch``, ``best_robust_acc``, ``clean_acc``, ``robust_acc``, ``robust_loss``,
``train_loss`` (:meth:`real_data.train.TrainOutcome.results`), ``cas_best`` and ``cas_last`` (CAS of the
test attack's adversarial inputs at the best and the last epoch), ``cas_drop = cas_best - cas_last`` and
``robust_gap = best_robust_acc - robust_acc`` (the robust-overfitting gap). The per-epoch records, with
the class matrix C as K lists of K floats, go to the store's ``history`` table.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from synthmodel.schema import Param
from synthmodel.sweep import PointKind, get_kind, normalize_params, point_hash, point_workdir, register_kind

__all__ = ["KIND", "TEACHER_FROM", "params_table", "teacher_params", "run_point"]

KIND = "real-train"
TEACHER_FROM = ("none", "at_best")
LOCK_FILE = ".lock"
# what the AT teacher of a ``teacher_from = "at_best"`` point drops: its soft-label and regularisation
# settings go back to their defaults (mode at, hard labels); everything else (data, model, attack,
# optimisation, seed) is the point's own
_TEACHER_RESET = ("mode", "label_smoothing", "teacher", "teacher_arch", "temperature", "trades_beta",
                  "awp_gamma", "awp_warmup", "teacher_from")


@functools.lru_cache(maxsize=1)
def params_table() -> dict[str, Param]:
    """TrainConfig's fields as sweep parameters, plus ``teacher_from`` and ``device`` (imported lazily)."""
    from synthmodel.schema import param_table

    from .train import TrainConfig

    table = dict(param_table(TrainConfig))
    table["teacher_from"] = Param("str", "none", choices=TEACHER_FROM,
                                  help="at_best: distil from the best checkpoint of this point's AT run")
    table["device"] = Param("str", "cpu", help="cpu | cuda | cuda:N")
    return table


def _check(params: dict[str, Any]) -> None:
    from .train import TrainConfig

    distil = params["teacher_from"] == "at_best"
    if distil and params["mode"] != "kd":
        raise ValueError(f"teacher_from = 'at_best' distils: it needs mode 'kd', got {params['mode']!r}")
    if distil and params.get("teacher"):
        raise ValueError("give either teacher_from = 'at_best' or a teacher checkpoint, not both")
    if distil and params["label_smoothing"]:
        raise ValueError("use either label smoothing or a teacher (teacher_from), not both")
    if params["mode"] == "kd" and not distil and not params.get("teacher"):
        raise ValueError("mode 'kd' needs teacher_from = 'at_best' or a teacher checkpoint")
    # the teacher of an at_best point exists only once its AT run has trained: check the rest as AT
    TrainConfig.validate(_config(params, mode="at") if distil else _config(params))


def _config(params: Mapping[str, Any], **changes: Any):
    from .train import TrainConfig

    fields = {k: v for k, v in params.items() if k not in ("teacher_from", "device")}
    return TrainConfig.from_dict({**fields, **changes})


def teacher_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of the AT point whose best checkpoint a ``teacher_from = 'at_best'`` point distils."""
    table = params_table()
    reset = {key: table[key].default for key in _TEACHER_RESET if key in table}
    return normalize_params(get_kind(KIND), {**params, **reset, "mode": "at"})


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (blocking): one process trains a folder at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train(params: Mapping[str, Any], workdir: Path, teacher: str | None = None) -> dict[str, Any]:
    from .train import train

    config = _config(params, teacher=teacher) if teacher else _config(params)
    with _locked(workdir):
        outcome = train(config, workdir, device=params["device"], resume=True)
    results = outcome.results()
    history = [{k: v for k, v in row.items() if v is not None} for row in outcome.history]
    cas = [row.get("cas", float("nan")) for row in history]
    best = outcome.best_epoch
    results["cas_best"] = cas[best - 1] if best else float("nan")
    results["cas_last"] = cas[-1] if cas else float("nan")
    results["cas_drop"] = results["cas_best"] - results["cas_last"]
    results["robust_gap"] = results["best_robust_acc"] - results["robust_acc"]
    results["_history"] = history
    return results


def run_point(params: dict[str, Any], *, workdir: Path) -> dict[str, Any]:
    """Train (or resume) one point in ``workdir``; its teacher first when it distils (see the module doc)."""
    from synthmodel import __version__

    teacher = None
    if params["teacher_from"] == "at_best":
        at = teacher_params(params)
        teacher_dir = point_workdir(Path(workdir).parent.parent, point_hash(KIND, at, __version__))
        _train(at, teacher_dir)  # done already when the sweep ran that point first: read back, not retrained
        teacher = str(teacher_dir / "best.pt")
    return _train(params, Path(workdir), teacher)


register_kind(PointKind(
    name=KIND, run=run_point, params=params_table, check=_check, workdir=True,
    description="real-data AT run (real_data.train.TrainConfig keys + teacher_from, device), CAS per epoch"))
