"""Central finite differences of the population engine's analytic gradient and Hessian, at one fixed rule."""

from __future__ import annotations

import numpy as np
import pytest

from synthmodel.population import loss_derivatives


def assert_derivatives_match_fd(world, form, w1: float, w2: float, eps: float, *, level=(4, 4), h: float = 1e-5,
                                grad_tol: float = 1e-8, hess_tol: float | None = 1e-6) -> None:
    """At a fixed rule the quadrature is a smooth function of w: central differences (error O(h^2) plus
    rounding ~1e-16 / h) of the value equal the analytic gradient, and of the gradient the Hessian
    (not checked with ``hess_tol=None``: a Hessian documented as approximate)."""
    _, grad, hess = loss_derivatives(world, form, w1, w2, eps, level=level)
    for j, (da, db) in enumerate(((h, 0.0), (0.0, h))):
        plus = loss_derivatives(world, form, w1 + da, w2 + db, eps, level=level)
        minus = loss_derivatives(world, form, w1 - da, w2 - db, eps, level=level)
        assert (plus[0][0] - minus[0][0]) / (2 * h) == pytest.approx(grad[0, j], abs=grad_tol)
        if hess_tol is not None:
            np.testing.assert_allclose((plus[1][0] - minus[1][0]) / (2 * h), hess[0, j], atol=hess_tol)
