"""Experiment definitions and research logs of the project, run through the sweep.

* :mod:`experiments.theory`: the preset ``paper-theory`` (the paper's world on the exact population engine);
* :mod:`experiments.dynamics`: the three training-dynamics experiments (set-ups, seeds) and the presets
  ``paper-dynamics``, ``dynamics-epochs``, ``dynamics-eps``, ``dynamics-soft``;
* :mod:`experiments.explore`: the set-ups scanned before the dynamics set-up was fixed (a research log);
* :mod:`experiments.attack_check`: PGD-20 against a stronger attack on the dynamics models (a research log);
* ``experiments/bitwise_check.py``: are a code change's results bit-identical (record, then compare).

The presets are registered with the sweep on import (entry points ``crossclass.sweep`` in pyproject.toml).
docs/EXPERIMENTS.md reports what the experiments found.
"""
