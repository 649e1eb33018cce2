"""The sweep's ``theory`` point kind: one point of the exact population engine.

:class:`TheoryPoint` is the one declaration of a point's settings (:mod:`synthmodel.schema`); its table has no
defaults (``param_table(..., defaults=False)``), so a point's hash covers exactly the keys its grid gives and the
engine applies the defaults below. Importing this module registers the kind (idempotently).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..schema import REQUIRED, Bounds, from_mapping, option, param_table
from ..spec import make_preset
from .accuracy import population_cas, robust_accuracy
from .engine import optimal_weights, robust_loss, threshold
from .formalisation import (
    FORMALISATION_ATTACKS,
    LOSSES,
    MAX_EPS,
    NORMS,
    OBJECTIVES,
    WEIGHTS,
    WORLD_SCALE,
    Formalisation,
    world_from,
)
from .registry import supports

__all__ = ["TheoryPoint", "THEORY_DEFAULTS", "theory_table", "validate_theory_params", "theory_point", "KIND"]

def _preset_ok(value: str) -> bool:
    return value == "paper3" or (value.startswith("all-but-one-") and value.removeprefix("all-but-one-").isdigit())


@dataclass(frozen=True)
class TheoryPoint:
    """One point of the population theory: a world, a radius and a formalisation (docs/DEFINITIONS.md)."""

    preset: str = option(REQUIRED, "world", check=_preset_ok, rule="(paper3 | all-but-one-K, K a number)")
    # the ranges the engine is accurate in (synthmodel.population.formalisation: WORLD_SCALE, MAX_EPS)
    mu: float = option(REQUIRED, "feature mean", bounds=Bounds(*WORLD_SCALE))
    sigma: float = option(REQUIRED, "feature standard deviation", bounds=Bounds(*WORLD_SCALE))
    eps: float = option(REQUIRED, "perturbation radius", units="input units", bounds=Bounds(0, MAX_EPS))
    alpha: float = option(0.0, "label smoothing", bounds=Bounds(low=0, high=1, high_open=True))
    attack: str = option("logitwise", "attack formalisation", choices=FORMALISATION_ATTACKS)
    norm: str = option("linf", "threat model", choices=NORMS)
    weights: str = option("unconstrained", "weight constraint", choices=tuple(WEIGHTS))
    weight_decay: float = option(0.0, "lambda of weights 'weight-decay'", bounds=Bounds(low=0))
    loss: str = option("ce", "targets: 'ce' (label-smoothed by alpha) or 'kd' (distillation, alpha = 0)",
                       choices=LOSSES)
    teacher_w1: float = option(1.0, "distillation teacher's w1")
    teacher_w2: float = option(0.0, "distillation teacher's w2")
    temperature: float = option(1.0, "distillation temperature", bounds=Bounds(low=0, low_open=True))
    objective: str = option("cross-entropy", "what is minimised", choices=OBJECTIVES)

    @property
    def formalisation(self) -> Formalisation:
        return Formalisation(attack=self.attack, norm=self.norm, alpha=self.alpha, weights=self.weights,
                             weight_decay=self.weight_decay, loss=self.loss, teacher_w1=self.teacher_w1,
                             teacher_w2=self.teacher_w2, temperature=self.temperature, objective=self.objective)

    @property
    def k(self) -> int:
        return 3 if self.preset == "paper3" else int(self.preset.removeprefix("all-but-one-"))


# what theory_point assumes for a key a grid leaves out
THEORY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TheoryPoint) if f.default is not dataclasses.MISSING}


def theory_table():
    """The sweep's validation table (no defaults: the hash covers exactly the keys a grid gives)."""
    return param_table(TheoryPoint, defaults=False)


def _point(params: dict) -> TheoryPoint:
    missing = [f.name for f in dataclasses.fields(TheoryPoint) if f.default is dataclasses.MISSING
               and f.name not in params]
    if missing:
        raise ValueError(f"missing parameter {missing[0]!r}")
    return from_mapping(TheoryPoint, params, what="parameter")


def validate_theory_params(params: dict) -> TheoryPoint:
    """Raise ValueError naming the first unknown key, impossible value or unsupported combination (the sweep's
    pre-check, before anything runs); returns the checked point."""
    point = _point(params)
    form = point.formalisation  # cross-key contradictions (e.g. kd with alpha > 0)
    support = supports(form, point.k)
    if not support:
        raise ValueError(f"preset {point.preset}: {support.reason}")
    return point


def theory_point(params: dict) -> dict:
    """Population theory at one point of a sweep grid.

    Args:
        params: flat dict; keys of :class:`TheoryPoint` (preset, mu, sigma, eps required; the others default
            to :data:`THEORY_DEFAULTS`).

    Returns:
        flat dict of floats / None: w1, w2, ratio (w2/w1; None where w1 = 0, e.g. a collapsed optimum),
        robust_loss (objective without penalty; the robust 0-1 error for objective 'zero-one'), robust_acc,
        cas (clean inputs), cas_adv (l_inf adversarial inputs of the input-space hard-label worst case), eps0
        (threshold with alpha = 0), eps1 (threshold of the given soft-target objective, label smoothing or
        distillation; None for hard labels), quad_error (largest error estimate), convex (1.0 if convexity is
        established, else 0.0). Zero-one: (w1, w2) is the certified optimal direction (unit l2 norm, or the
        constraint's normalisation).

    Raises:
        ValueError: unknown key, impossible value, unsupported combination (names the key).
    """
    point = validate_theory_params(params)
    try:
        world = world_from(make_preset(point.preset, mu=point.mu, sigma=point.sigma))
    except ValueError as exc:
        raise ValueError(f"preset: {exc}") from None
    form = point.formalisation
    eps = point.eps
    opt = optimal_weights(world, form, [eps])
    w1, w2 = float(opt["w1"][0]), float(opt["w2"][0])
    acc = robust_accuracy(world, w1, w2, eps, form.norm, adversary=form.adversary)
    if form.zero_one:
        loss_value, loss_error = 1.0 - float(acc.value[0]), float(acc.error[0])
    else:
        plain = form.replace(weights="unconstrained", weight_decay=0.0)  # the objective without the penalty
        loss = robust_loss(world, plain, w1, w2, eps)
        loss_value, loss_error = float(loss.value[0]), float(loss.error[0])
    eps0 = threshold(world, form.replace(alpha=0.0, loss="ce")).eps
    eps1 = threshold(world, form).eps if not form.hard else None
    return {
        "w1": w1, "w2": w2, "ratio": w2 / w1 if w1 != 0 else None,
        "robust_loss": loss_value, "robust_acc": float(acc.value[0]),
        "cas": population_cas(world, w1, w2), "cas_adv": population_cas(world, w1, w2, eps, form.norm),
        "eps0": eps0, "eps1": eps1, "quad_error": float(max(loss_error, acc.error[0])),
        "convex": 1.0 if form.convex else 0.0,
    }


def _register():
    from ..sweep.kinds import KINDS, PointKind, register_kind

    kind = PointKind(name="theory", run=theory_point, params=theory_table, check=validate_theory_params,
                     description="exact population engine (synthmodel.population.theory_point): optimal w1, w2, "
                                 "robust acc, CAS, eps0, eps1")
    if KINDS.get("theory") is None or KINDS["theory"].run is not theory_point:
        register_kind(kind, replace=True)
    return KINDS["theory"]


KIND = _register()
