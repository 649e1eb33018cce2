"""The preset ``paper-theory``: the paper's world on the exact population engine (point kind ``theory``).

paper3, mu = 1, sigma = 0.5, l_inf; eps over [0, mu/2] (26 values: Claim 1's range), label smoothing alpha in
{0, 0.1, 0.2, 0.3} (Claim 3), attack formalisations ``joint``, ``logitwise`` and ``pgd`` (what AT + label
smoothing trains on: the hard-label attack, the smoothed loss taken there); the weight constraint is the
engine's default. 312 points. ``python -m synthmodel.sweep --preset paper-theory`` (the main job).
"""

from __future__ import annotations

from synthmodel.sweep import register_preset

__all__ = ["PAPER_THEORY"]

PAPER_THEORY = {
    "kind": "theory",
    "fixed": {"preset": "paper3", "mu": 1.0, "sigma": 0.5, "norm": "linf"},
    "grid": {
        "eps": {"linspace": [0.0, 0.5, 26]},        # input units; mu / 2 = 0.5 bounds Claim 1's range
        "alpha": [0.0, 0.1, 0.2, 0.3],              # label smoothing
        "attack": ["joint", "logitwise", "pgd"],
    },
}

register_preset("paper-theory", "population engine: eps x label smoothing x attack formalisation (paper3, linf)",
                PAPER_THEORY)
