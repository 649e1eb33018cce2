"""proofs_check: sympy pieces equal the quadrature engine; CLI contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs_check.__main__ import main
from proofs_check.claims import _larger
from proofs_check.derivations import claim2_numeric, fo_numeric, worst_case
from proofs_check.verdicts import Verdict
from synthmodel.population import FORMALISATION_ATTACKS, Formalisation, loss_derivatives, robust_accuracy, world_from

PAPER3 = world_from("paper3")


@pytest.mark.parametrize("k", [3, 4])
def test_worst_case_is_separable_with_closed_form_radii(k):
    wc = worst_case(k)
    assert wc["separable"]
    assert str(wc["linf_radius"]) == "2*w1 + 2*w2"


@settings(max_examples=3, deadline=None)
@given(w1=st.floats(0.2, 4.0), eps=st.floats(0.01, 0.49), alpha=st.sampled_from([0.0, 0.15]))
def test_first_order_condition_sympy_equals_quadrature(w1, eps, alpha):
    symbolic = fo_numeric(3, "linf", alpha > 0, w1, eps, 1.0, 0.5, alpha)
    engine = loss_derivatives(PAPER3, Formalisation(alpha=alpha), w1, 0.0, eps)[1][0, 1]
    # both are quadratures of smooth integrands, each accurate to ~1e-10
    assert symbolic == pytest.approx(engine, abs=1e-8)


@settings(max_examples=3, deadline=None)
@given(w2=st.floats(0.001, 1.0), eps=st.floats(0.01, 0.49), norm=st.sampled_from(["linf", "l2"]))
def test_claim2_cdf_expression_equals_engine(w2, eps, norm):
    # the grid's first column (w2/w1 = 1e-3) included: the e-step follows the integrand's width ~ w2 / w1
    p, dp = claim2_numeric(3, norm, 1.0, w2, eps, 1.0, 0.5)
    assert p == pytest.approx(robust_accuracy(PAPER3, 1.0, w2, eps, norm).value[0], abs=1e-8)
    h = 1e-5
    fd = (robust_accuracy(PAPER3, 1.0, w2 + h, eps, norm).value[0]
          - robust_accuracy(PAPER3, 1.0, w2 - h, eps, norm).value[0]) / (2 * h)
    assert dp == pytest.approx(fd, abs=1e-6)  # central difference error O(h^2) + 1e-14/h


def test_cli_json_and_errors(capsys):
    assert main(["--weights", "l1-share", "--json", "--quiet", "--no-zero-one"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["formalisations"]
    assert {(r["attack"], r["norm"]) for r in rows} == {(a, n) for a in FORMALISATION_ATTACKS for n in ("linf", "l2")}
    verdicts = {v.value for v in Verdict}
    for row in rows:
        assert set(row) >= {"attack", "weights", "loss", "objective", "claims", "eps0", "eps1"}
        assert set(row["claims"]) == {"1", "2", "3"}
        for claim in row["claims"].values():
            assert set(claim) == {"verdict", "reason", "evidence"} and claim["verdict"] in verdicts
        for eps in (row["eps0"], row["eps1"]):
            assert eps is None or 0 < eps < 0.5
        if row["eps0"] is None and row["claims"]["1"]["verdict"] != "not computed":
            assert row["claims"]["1"]["verdict"] == "fails"  # claim 1 needs a threshold
        ev = row["claims"]["1"]["evidence"]
        if ev["eps0"] is None:  # no bracketed sign change: the evidence shows one sign on the grid (or none below 0)
            values = np.array(ev["derivative"])
            assert not np.any((values[:-1] < 0) & (values[1:] >= 0))
    for bad in (["--alpha", "1.5"], ["--preset", "ring-3"], ["--mu", "-1"], ["--mu", "0"], ["--sigma", "-0.5"],
                ["--alpha", "0.2", "--teacher", "1", "1", "1"]):
        assert main([*bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1


def test_cli_distillation_teacher_option(capsys):
    # pgd (AT-style) distillation: student and teacher see the same x + delta*, so a student equal to the
    # teacher over T reproduces the targets exactly (pointwise KL 0): the optimum is (a1, a2) / T at every eps
    assert main(["--weights", "unconstrained", "--attacks", "pgd", "--teacher", "1.5", "0.9", "2", "--json",
                 "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["teacher"] == [1.5, 0.9, 2.0] and out["alpha"] is None
    rows = out["formalisations"]
    assert {r["attack"] for r in rows} == {"pgd"}
    (row,) = [r for r in rows if r["norm"] == "linf"]
    assert row["loss"] == "distillation"
    np.testing.assert_allclose(row["claims"]["3"]["evidence"]["w1_soft"], 0.75, atol=1e-6)
    np.testing.assert_allclose(row["claims"]["3"]["evidence"]["w2_soft"], 0.45, atol=1e-6)
    assert main(["--teacher", "1", "1", "0", "--quiet"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_comparisons_within_the_weights_errors_are_undecided():
    a = np.array([1.0, 2.0, 3.0])
    assert _larger(a + 0.5, a, np.full(3, 0.1)) is True
    assert _larger(a - 0.5, a, np.full(3, 0.1)) is False
    assert _larger(a + 0.05, a, np.full(3, 0.1)) is None          # inside the error everywhere
    assert _larger(a + np.array([0.5, 0.05, -0.5]), a, np.full(3, 0.1)) is False  # one point surely below
    assert _larger(a + 0.5, a, np.array([0.1, np.nan, 0.1])) is None  # an unknown error decides nothing


@pytest.mark.slow
def test_default_table_reproduces_the_pinned_verdicts():
    # proofs_check/expected.json is `python -m proofs_check --summary`: any change of a verdict or a threshold is a
    # visible diff of that file (thresholds compared to 1e-6: brentq's xtol 1e-7 plus the quadrature's 1e-8)
    from pathlib import Path

    from proofs_check.__main__ import build_parser, run, summary

    expected = json.loads((Path(__file__).parents[1] / "proofs_check" / "expected.json").read_text())
    got = summary(run(build_parser().parse_args(["--quiet"])))
    assert got["world"] == expected["world"] and len(got["formalisations"]) == len(expected["formalisations"])
    for row, want in zip(got["formalisations"], expected["formalisations"], strict=True):
        key = tuple(row[k] for k in ("attack", "norm", "weights", "objective"))
        assert key == tuple(want[k] for k in ("attack", "norm", "weights", "objective"))
        for name in ("eps0", "eps1"):
            assert (row[name] is None) == (want[name] is None), (key, name)
            if row[name] is not None:
                assert row[name] == pytest.approx(want[name], abs=1e-6), (key, name)
        for claim in ("1", "2", "3"):
            assert row["claims"][claim]["verdict"] == want["claims"][claim]["verdict"], (key, claim)
            assert row["claims"][claim]["verdict"] in {v.value for v in Verdict}
