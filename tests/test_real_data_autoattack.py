"""AutoAttack through an installed package: exact on linear models, checked, optional.

For a linear classifier the robust set is known exactly (a point is robust iff every margin
z_y - z_k exceeds eps times the dual norm of W_y - W_k; synthmodel.attacks.linear_robust_correct),
so any attack's robust accuracy is bounded below by it, and a complete attack attains it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pandas as pd
import pytest
import torch

from real_data import autoattack as aa
from real_data import cas
from real_data import train as train_cli
from real_data.fixtures import write_npz
from synthmodel.attacks import linear_robust_correct, pgd
from synthmodel.models import FullLinear


def _linear_problem(seed: int = 0, n: int = 64, k: int = 4, shape=(3, 16, 16)):
    """A random linear classifier on images and inputs in [0.3, 0.7]: the [0, 1] box never binds for
    the radii below, so the exact (box-free) certificate is the exact robust set."""
    torch.manual_seed(seed)
    linear = FullLinear(int(torch.tensor(shape).prod()), k)
    model = torch.nn.Sequential(torch.nn.Flatten(), linear)
    x = 0.3 + 0.4 * torch.rand(n, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[: n // 8] = (y[: n // 8] + 1) % k  # some images misclassified from the start
    return model, linear, x, y


@pytest.mark.parametrize("norm, eps", [("linf", 0.004), ("l2", 0.15)])  # each leaves 30-50% exactly robust
def test_torchattacks_attains_the_exact_robust_set_of_a_linear_model(norm, eps):
    pytest.importorskip("torchattacks")
    model, linear, x, y = _linear_problem()
    exact = linear_robust_correct(linear, x.flatten(1), y, eps, norm)
    assert 0.2 < exact.float().mean() < 0.8
    robust = aa.autoattack_correct(model, x, y, eps=eps, norm=norm, backend="torchattacks", batch_size=32)
    # no attack can break an exactly robust point; AutoAttack's targeted APGD breaks every other one
    assert torch.equal(robust, exact)
    # synthmodel's PGD-20 (untargeted CE) is bounded by the same certificate (and here misses a few)
    x_pgd = pgd(model, x, y, eps=eps, norm=norm, steps=20, clamp=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pgd_robust = model(x_pgd).argmax(1) == y
    assert bool((pgd_robust | ~exact).all())


def test_same_seed_same_result_and_global_rng_untouched():
    pytest.importorskip("torchattacks")
    model, _, x, y = _linear_problem(seed=1, n=24)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = aa.autoattack_correct(model, x, y, eps=0.004, backend="torchattacks", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the package's reseeding does not leak
    assert torch.equal(aa.autoattack_correct(model, x, y, eps=0.004, backend="torchattacks", seed=5), first)


_FAKE = '''
import torch
calls = []
shift = 0.0

class AutoAttack:
    """Stands in for the authors' package: records its arguments, moves every pixel by ``shift``."""

    def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(), version="standard",
                 is_tf_model=False, device="cuda", log_path=None):
        calls.append({"norm": norm, "eps": eps, "seed": seed, "version": version, "device": device})
        print("setting parameters for", version, "version")

    def run_standard_evaluation(self, x_orig, y_orig, bs=250):
        calls.append({"bs": bs})
        return (x_orig + shift).clamp(0.0, 1.0)
'''


@pytest.fixture()
def fake_official(tmp_path, monkeypatch):
    (tmp_path / "autoattack.py").write_text(textwrap.dedent(_FAKE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import autoattack

    yield autoattack
    monkeypatch.delitem(sys.modules, "autoattack")


def test_official_package_is_called_as_documented_and_its_points_are_checked(fake_official, capsys):
    assert aa.find_backend("auto") == "autoattack"  # the authors' package first
    model, _, x, y = _linear_problem(n=16)
    fake_official.shift = 0.002  # inside the 0.004 ball
    robust = aa.autoattack_correct(model, x, y, eps=0.004, version="plus", seed=3, batch_size=10)
    assert fake_official.calls[0] == {"norm": "Linf", "eps": 0.004, "seed": 3, "version": "plus", "device": "cpu"}
    assert [c["bs"] for c in fake_official.calls[1:]] == [10, 6]
    with torch.no_grad():
        expected = (model(x).argmax(1) == y) & (model((x + 0.002).clamp(0, 1)).argmax(1) == y)
    assert torch.equal(robust, expected)
    assert capsys.readouterr().out == ""  # the package's prints go to stderr
    fake_official.shift = 0.01  # outside the ball: an error, not an accuracy
    with pytest.raises(ValueError, match="outside the threat model"):
        aa.autoattack_correct(model, x, y, eps=0.004)


def test_missing_package_is_one_clear_error(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("autoattack", "torchattacks") else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps torchattacks"):
        aa.find_backend()
    # the CLI stops before loading anything
    assert cas.main(["--checkpoint", str(tmp_path / "none.pt"), "--dataset", f"npz:{tmp_path / 'none.npz'}",
                     "--autoattack"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: AutoAttack needs the package")


def test_cas_cli_reports_autoattack(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchattacks")
    data = write_npz(tmp_path / "d.npz", n_train=32, n_test=16, shape=(16, 16, 3))
    run = tmp_path / "run"
    assert train_cli.main(["--dataset", f"npz:{data}", "--out", str(run), "--arch", "small-cnn", "--width", "4",
                           "--epochs", "1", "--batch-size", "16", "--steps", "2", "--eval-steps", "2",
                           "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()  # the training summary
    args = ["--checkpoint", str(run / "last.pt"), "--dataset", f"npz:{data}", "--steps", "2", "--quiet",
            "--autoattack", "--autoattack-backend", "torchattacks", "--eps", "2"]
    assert cas.main([*args, "--json", "--out", str(tmp_path / "cas")]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert set(record) == {"checkpoint", "clean_acc", "robust_acc", "autoattack_acc", "cas", "matrix"}
    assert 0 <= record["autoattack_acc"] <= record["clean_acc"]
    table = pd.read_csv(tmp_path / "cas" / "cas.csv")
    assert table["autoattack_acc"].tolist() == [record["autoattack_acc"]]
    assert table["autoattack"].tolist() == ["torchattacks:standard"]
    # a package that fails (torchattacks' Square attack divides by zero on 4x4 images): one error line,
    # exit 2, and the PGD results already computed are in --out with autoattack_acc empty

    def broken(*args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(aa, "_run", broken)
    assert cas.main([*args, "--out", str(tmp_path / "failed")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchattacks failed" in err[0] and "ZeroDivisionError" in err[0]
    partial = pd.read_csv(tmp_path / "failed" / "cas.csv")
    assert partial["robust_acc"].tolist() == table["robust_acc"].tolist() and partial["autoattack_acc"].isna().all()
