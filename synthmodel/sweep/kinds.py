"""Point kinds: what one point of a sweep computes, and which parameters it accepts.

A point kind is a function ``params dict -> results dict`` of JSON scalars, plus a validation table
(:class:`Param` per allowed key) so that a grid is rejected before anything runs, naming the key and
its allowed values. A kind may also declare how its points are *batched*: ``batch_key(params)``
groups points that can run as one tensor computation and ``run_batch([params, ...])`` runs a group.

A results dict may carry one non-scalar entry, ``"_history"``: a list of per-step records (dicts of
JSON scalars), stored in the store's ``history`` table (one row per step).

Registry: :data:`KINDS`, :func:`register_kind`. Built in: ``train`` (finite-sample training through
:mod:`synthmodel.train`, batched for linear models by :mod:`synthmodel.batched`) and ``theory`` (the
exact population engine ``synthmodel.population.theory_point``, imported lazily).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ..schema import MISSING, Param

__all__ = ["Param", "PointKind", "KINDS", "register_kind", "get_kind", "normalize_params", "point_hash",
           "STORE_SCHEMA", "HISTORY_KEY", "MISSING"]

STORE_SCHEMA = 2          # bump when the store's tables or the hashing change (2: claims, grid name)
HISTORY_KEY = "_history"  # the one non-scalar entry a results dict may carry


@dataclass(frozen=True)
class PointKind:
    """A family of sweep points.

    Args:
        name: registry name, used in grid files (``kind = "train"``).
        run: ``params -> results`` (results: str -> JSON scalar, optionally ``"_history"``); a module-level
            function, so it pickles to worker processes.
        params: the validation table, or a zero-argument callable returning it (for lazily imported kinds).
        description: one line for ``--list-kinds``.
        check: cross-key validation of a complete params dict (raise ValueError); runs before anything runs.
        batch_key: ``params -> hashable`` grouping points that ``run_batch`` can run together (None: alone).
        run_batch: ``[params, ...] -> [results, ...]`` in the same order; module-level function.
    """

    name: str
    run: Callable[[dict], dict]
    params: Mapping[str, Param] | Callable[[], Mapping[str, Param]]
    description: str = ""
    check: Callable[[dict], None] | None = None
    batch_key: Callable[[dict], Hashable | None] | None = None
    run_batch: Callable[[list[dict]], list[dict]] | None = None

    def table(self) -> Mapping[str, Param]:
        return self.params() if callable(self.params) else self.params


KINDS: dict[str, PointKind] = {}


def register_kind(kind: PointKind, *, replace: bool = False) -> PointKind:
    """Add ``kind`` to the registry (ValueError if the name is taken and ``replace`` is False)."""
    if kind.name in KINDS and not replace and KINDS[kind.name] is not kind:
        raise ValueError(f"point kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> PointKind:
    if name not in KINDS:
        raise ValueError(f"unknown point kind {name!r}; choose from {', '.join(sorted(KINDS))}")
    return KINDS[name]


def normalize_params(kind: PointKind, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``params`` against the kind's table, coerce the values and fill the defaults.

    Raises:
        ValueError: unknown key (naming the allowed keys), bad value (naming the allowed values), or the
            kind's cross-key check failing.
    """
    table = kind.table()
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for point kind {kind.name!r}; allowed keys: "
                         f"{', '.join(table)}")
    out: dict[str, Any] = {}
    for key, param in table.items():
        if key in params:
            out[key] = param.coerce(key, params[key])
        elif param.default is not MISSING:
            out[key] = param.default
    if kind.check is not None:
        kind.check(out)
    return out


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_hash(kind: str, params: Mapping[str, Any], code_version: str) -> str:
    """Identity of a point: sha256 of its kind, complete params, code version and store schema (32 hex)."""
    text = canonical_json({"kind": kind, "params": dict(params), "code": code_version, "schema": STORE_SCHEMA})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- built-in kind: train -----------------------------------------------------------------------
def _train_table() -> dict[str, Param]:
    from .. import attacks as atk
    from ..models import MODELS
    from ..train import DTYPES, OPTIMIZERS, SCHEDULES, TRAIN_ATTACKS, Mode, TrainConfig

    d = TrainConfig()
    pos, nonneg = (lambda v: v > 0), (lambda v: v >= 0)
    return {
        "preset": Param("str", d.preset, rule="(paper3 | all-but-one-K | pairs-K | ring-K, K a number)"),
        "k": Param("int", d.k, nullable=True, check=lambda v: v >= 2, rule=">= 2"),
        "mu": Param("float", d.mu),
        "sigma": Param("float", d.sigma, check=pos, rule="> 0"),
        "noise_dims": Param("int", d.noise_dims, check=nonneg, rule=">= 0"),
        "model": Param("str", d.model, choices=tuple(MODELS)),
        "hidden": Param("int_list", list(d.hidden), check=lambda v: len(v) > 0 and min(v) >= 1,
                        rule="of widths >= 1"),
        "bias": Param("bool", d.bias),
        "mode": Param("str", d.mode, choices=tuple(m.value for m in Mode)),
        "eps": Param("float", d.eps, check=nonneg, rule=">= 0"),
        "norm": Param("str", d.norm, choices=tuple(n.value for n in atk.Norm)),
        "attack": Param("str", d.attack, choices=TRAIN_ATTACKS),
        "attack_steps": Param("int", d.attack_steps, check=pos, rule=">= 1"),
        "attack_step_size": Param("float", d.attack_step_size, nullable=True, check=pos, rule="> 0"),
        "eval_steps": Param("int", d.eval_steps, check=pos, rule=">= 1"),
        "label_smoothing": Param("float", d.label_smoothing, check=lambda v: 0 <= v < 1, rule="in [0, 1)"),
        "teacher": Param("str", d.teacher, nullable=True, rule="(a checkpoint file)"),
        "temperature": Param("float", d.temperature, check=pos, rule="> 0"),
        "trades_beta": Param("float", d.trades_beta, check=nonneg, rule=">= 0"),
        "optimizer": Param("str", d.optimizer, choices=OPTIMIZERS),
        "lr": Param("float", d.lr, check=pos, rule="> 0"),
        "momentum": Param("float", d.momentum, check=lambda v: 0 <= v < 1, rule="in [0, 1)"),
        "weight_decay": Param("float", d.weight_decay, check=nonneg, rule=">= 0"),
        "schedule": Param("str", d.schedule, choices=SCHEDULES),
        "epochs": Param("int", d.epochs, check=pos, rule=">= 1"),
        "batch_size": Param("int", d.batch_size, check=pos, rule=">= 1"),
        "n_train": Param("int", d.n_train, check=pos, rule=">= 1"),
        "n_test": Param("int", d.n_test, check=pos, rule=">= 1"),
        "seed": Param("int", d.seed, check=nonneg, rule=">= 0"),
        "dtype": Param("str", d.dtype, choices=tuple(DTYPES)),
    }


def _train_check(params: dict) -> None:
    from ..train import TrainConfig

    TrainConfig.from_dict(params).validate()


def train_results(result) -> dict[str, Any]:
    """The results row of a :class:`synthmodel.train.TrainResult`: last-epoch and best-epoch metrics, history.

    Keys: clean_acc, robust_acc, cas (last epoch, test set), train_robust_loss, train_robust_acc (last
    epoch), best_epoch (by test robust accuracy), best_clean_acc, best_robust_acc, best_cas, cas_drop =
    best_cas - cas, w1, w2, best_w1, best_w2 (tied model), and ``_history`` (one record per epoch).
    """
    last = result.history[-1]
    best = result.history[result.best_epoch - 1]
    out: dict[str, Any] = dict(result.final)
    out.update(train_robust_loss=last["train_robust_loss"], train_robust_acc=last["train_robust_acc"],
               best_epoch=result.best_epoch, best_clean_acc=best["test_clean_acc"],
               best_robust_acc=best["test_robust_acc"], best_cas=best["cas"], cas_drop=best["cas"] - last["cas"])
    if "w1" in best:
        out.update(best_w1=best["w1"], best_w2=best["w2"])
    out[HISTORY_KEY] = result.history
    return out


def run_train(params: dict) -> dict:
    """One finite-sample training run (:func:`synthmodel.train.train`)."""
    from ..train import TrainConfig, train

    return train_results(train(TrainConfig.from_dict(params)))


def run_train_batch(params_list: list[dict]) -> list[dict]:
    """Several linear-model training runs as one batched computation (:func:`synthmodel.batched.train_batched`)."""
    from ..batched import train_batched
    from ..train import TrainConfig

    return [train_results(r) for r in train_batched([TrainConfig.from_dict(p) for p in params_list])]


def _train_batch_key(params: dict) -> Hashable | None:
    from ..batched import batch_key
    from ..train import TrainConfig

    return batch_key(TrainConfig.from_dict(params))


register_kind(PointKind(
    name="train", run=run_train, params=_train_table, check=_train_check, batch_key=_train_batch_key,
    run_batch=run_train_batch,
    description="finite-sample training run (synthmodel.train.TrainConfig keys); linear models batched"))


# -- built-in kind: theory (synthmodel.population.point, imported lazily) ---------------------------
def _theory_module():
    import importlib

    try:
        return importlib.import_module("synthmodel.population.point")
    except ModuleNotFoundError as exc:
        if exc.name in ("synthmodel.population", "synthmodel.population.point"):
            raise ValueError("point kind 'theory' needs synthmodel.population, which this installation lacks") from None
        raise


def _theory_table() -> dict[str, Param]:
    return _theory_module().theory_table()


def _theory_check(params: dict) -> None:
    _theory_module().validate_theory_params(params)


def run_theory(params: dict) -> dict:
    """One point of the exact population engine (``synthmodel.population.theory_point``)."""
    return dict(_theory_module().theory_point(dict(params)))


register_kind(PointKind(
    name="theory", run=run_theory, params=_theory_table, check=_theory_check,
    description="exact population engine (synthmodel.population.theory_point): optimal w1, w2, robust acc, "
                "CAS, eps0, eps1"))


# -- built-in kind: dynamics (synthmodel.dynamics: a training run analysed for best vs last) ---------------
def _dynamics_table() -> dict[str, Param]:
    from ..dynamics import TEACHER_SOURCES

    table = {k: v for k, v in _train_table().items() if k != "teacher"}
    table["teacher_from"] = Param("str", "none", choices=TEACHER_SOURCES)
    table["experiment"] = Param("str", None, nullable=True)  # optional label, e.g. for figure filters
    return table


def _dynamics_check(params: dict) -> None:
    from ..dynamics import point_config

    point_config(params)


def run_dynamics_point(params: dict) -> dict:
    """One training-dynamics point (:func:`synthmodel.dynamics.run_point_with_history`)."""
    from ..dynamics import run_point_with_history

    return run_point_with_history(params)


register_kind(PointKind(
    name="dynamics", run=run_dynamics_point, params=_dynamics_table, check=_dynamics_check,
    description="training-dynamics point: best/last CAS and robust acc, overfitting gap; teacher_from='at_best' "
                "distils from an AT teacher trained inside the point"))
