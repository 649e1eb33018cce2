"""AutoAttack through an installed package: exact on linear models, resumable, checked, optional.

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


@pytest.mark.parametrize("norm, eps", [("linf", 0.004), pytest.param("l2", 0.15, marks=pytest.mark.slow)])
# each leaves 30-50% exactly robust; l2 (about 30 s) runs with the slow tests
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


@pytest.fixture(autouse=True)
def one_thread():
    # these models are tiny: intra-op threads only add synchronisation (and stall on a loaded machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_authors_package_attains_the_exact_robust_set_of_a_linear_model_l2():
    pytest.importorskip("pyautoattack")
    model, linear, x, y = _linear_problem()
    exact = linear_robust_correct(linear, x.flatten(1), y, 0.15, "l2")
    robust = aa.autoattack_correct(model, x, y, eps=0.15, norm="l2", backend="pyautoattack", batch_size=64)
    assert torch.equal(robust, exact)


def test_interrupted_after_one_attack_then_resumed_equals_uninterrupted_and_exact(tmp_path, monkeypatch):
    pytest.importorskip("pyautoattack")
    assert aa.find_backend("auto") == "pyautoattack"  # the authors' package, preferred over torchattacks
    model, linear, x, y = _linear_problem(seed=2)
    eps, options = 0.004, {"backend": "pyautoattack", "batch_size": 40, "seed": 1}
    exact = linear_robust_correct(linear, x.flatten(1), y, eps, "linf")
    straight = aa.autoattack_correct(model, x, y, eps=eps, **options)
    assert torch.equal(straight, exact)  # the authors' AutoAttack finds the exact robust set
    run, calls = aa._run, []

    def interrupted(backend, attacker, stage, xb, yb):
        if stage != "apgd-ce":
            raise KeyboardInterrupt  # the job is killed as the second attack starts
        calls.append(stage)
        return run(backend, attacker, stage, xb, yb)

    monkeypatch.setattr(aa, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        aa.autoattack_correct(model, x, y, eps=eps, state_dir=tmp_path, **options)
    (state_file,) = tmp_path.glob("autoattack-*.json")
    state = json.loads(state_file.read_text())
    assert state["stage"] == 1 and state["settings"]["stages"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    with torch.no_grad():
        n_clean = int((model(x).argmax(1) == y).sum())
    assert calls == ["apgd-ce"] * len(range(0, n_clean, 40))  # every chunk of the first attack, then the kill
    assert state["robust"] == state["members"] and state["robust"].count("1") < n_clean

    def resumed(backend, attacker, stage, xb, yb):
        calls.append(stage)
        return run(backend, attacker, stage, xb, yb)

    calls.clear()
    monkeypatch.setattr(aa, "_run", resumed)
    again = aa.autoattack_correct(model, x, y, eps=eps, state_dir=tmp_path, **options)
    assert "apgd-ce" not in calls and calls  # the first attack is not run again
    assert torch.equal(again, straight)
    calls.clear()  # a finished state answers without calling the package
    assert torch.equal(aa.autoattack_correct(model, x, y, eps=eps, state_dir=tmp_path, **options), straight)
    assert not calls


@pytest.mark.slow
def test_attack_by_attack_driver_equals_one_call_of_the_package():
    # a non-linear model, where the robust set depends on the batches and random starts: ours must be the
    # package's own, image for image
    pyautoattack = pytest.importorskip("pyautoattack")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    x = torch.rand(40, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 5
    eps = 0.03
    ours = aa.autoattack_correct(model, x, y, eps=eps, backend="pyautoattack", batch_size=16, seed=4)
    attacker = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", seed=4)
    attacker.apgd_targeted.n_target_classes = attacker.fab.n_target_classes = 4
    _, y_adv = attacker.run_standard_evaluation(x, y, batch_size=16)
    theirs = y_adv == y
    assert 0 < int(theirs.sum()) < int((model(x).argmax(1) == y).sum())  # some broken, some not
    assert torch.equal(ours, theirs)


def test_the_packages_own_state_path_does_not_resume(tmp_path):
    # why real_data.autoattack keeps its own state: pyautoattack stores the attack set as str({...}), so a
    # restore always fails its own check. If this test fails, the package's resume works now.
    pyautoattack = pytest.importorskip("pyautoattack")
    model, _, x, y = _linear_problem(n=8)
    attacker = pyautoattack.AutoAttack(model, norm="Linf", eps=0.004, version="standard", device="cpu", seed=0)
    attacker.apgd_targeted.n_target_classes = attacker.fab.n_target_classes = 3
    attacker.attacks_to_run = ["apgd-ce"]
    path = tmp_path / "state.json"
    attacker.run_standard_evaluation(x, y, batch_size=8, state_path=path)
    with pytest.raises(ValueError, match="different set of attacks"):
        attacker.run_standard_evaluation(x, y, batch_size=8, state_path=path)


def test_a_state_file_of_another_evaluation_is_refused(tmp_path):
    pytest.importorskip("pyautoattack")
    model, _, x, y = _linear_problem(n=8)
    aa.autoattack_correct(model, x, y, eps=0.004, backend="pyautoattack", state_dir=tmp_path)
    aa.autoattack_correct(model, x, y, eps=0.003, backend="pyautoattack", state_dir=tmp_path)
    assert len(list(tmp_path.glob("autoattack-*.json"))) == 2  # another setting: a file of its own
    state_file = next(tmp_path.glob("autoattack-*.json"))
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "fingerprint": "0" * 64}))
    with pytest.raises(ValueError, match="belongs to another model"):
        aa.autoattack_correct(model, x, y, eps=0.004, backend="pyautoattack", state_dir=tmp_path)
    state_file.write_text("{not json")
    with pytest.raises(ValueError, match="is not readable"):
        aa.autoattack_correct(model, x, y, eps=0.004, backend="pyautoattack", state_dir=tmp_path)


_FAKE = '''
import torch
calls = []
shift = 0.0


class _Targets:
    n_target_classes = 9


class AutoAttack:
    """Stands in for the authors' git install (module autoattack): records its arguments, moves every pixel."""

    def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(), version="standard",
                 is_tf_model=False, device="cuda", log_path=None):
        calls.append({"norm": norm, "eps": eps, "seed": seed, "version": version, "device": device})
        self.attacks_to_run = ["apgd-ce", "apgd-t", "fab-t", "square"]
        self.apgd_targeted, self.fab = _Targets(), _Targets()
        print("setting parameters for", version, "version")

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None):
        calls.append({"bs": bs, "attacks": list(self.attacks_to_run)})
        return (x_orig + shift).clamp(0.0, 1.0)
'''


@pytest.fixture()
def fake_official(tmp_path, monkeypatch):
    (tmp_path / "autoattack.py").write_text(textwrap.dedent(_FAKE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import autoattack

    yield autoattack
    monkeypatch.delitem(sys.modules, "autoattack")


def test_git_install_of_the_authors_package_is_called_as_documented(fake_official, capsys):
    model, _, x, y = _linear_problem(n=16)
    fake_official.shift = 0.002  # inside the 0.004 ball
    robust = aa.autoattack_correct(model, x, y, eps=0.004, version="plus", seed=3, batch_size=10,
                                   backend="autoattack")
    assert fake_official.calls[0] == {"norm": "Linf", "eps": 0.004, "seed": 3, "version": "plus", "device": "cpu"}
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        expected = clean & (model((x + 0.002).clamp(0, 1)).argmax(1) == y)
    # one attack at a time, on the images still robust, in chunks of batch_size
    first = [c for c in fake_official.calls[1:] if c["attacks"] == ["apgd-ce"]]
    n_clean = int(clean.sum())
    assert [c["bs"] for c in first] == [min(10, n_clean - s) for s in range(0, n_clean, 10)]
    assert [c["attacks"][0] for c in fake_official.calls[1:]][-1] == "square"
    assert torch.equal(robust, expected)
    assert capsys.readouterr().out == ""  # the package's prints go to stderr
    fake_official.shift = 0.01  # outside the ball: an error, not an accuracy
    with pytest.raises(ValueError, match="outside the threat model"):
        aa.autoattack_correct(model, x, y, eps=0.004, backend="autoattack")


def test_missing_package_is_one_clear_error(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in aa.BACKENDS else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps pyautoattack .*pip install --no-deps torchattacks"):
        aa.find_backend()
    # the CLI stops before loading anything
    assert cas.main(["--checkpoint", str(tmp_path / "none.pt"), "--dataset", f"npz:{tmp_path / 'none.npz'}",
                     "--autoattack"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: AutoAttack needs the package")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A one-epoch small-CNN run on a 4-class 16 x 16 npz set: (data file, run folder)."""
    folder = tmp_path_factory.mktemp("aa_run")
    data = write_npz(folder / "d.npz", n_train=32, n_test=16, shape=(16, 16, 3))
    run = folder / "run"
    assert train_cli.main(["--dataset", f"npz:{data}", "--out", str(run), "--arch", "small-cnn", "--width", "4",
                           "--epochs", "1", "--batch-size", "16", "--steps", "2", "--eval-steps", "2",
                           "--device", "cpu", "--quiet"]) == 0
    return data, run


@pytest.mark.slow  # about 40 s; the resume itself is tested in-process above
def test_cas_cli_resumes_autoattack_from_its_state(small_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("pyautoattack")
    data, run = small_run
    args = ["--checkpoint", str(run / "last.pt"), "--dataset", f"npz:{data}", "--steps", "2", "--quiet",
            "--autoattack", "--eps", "4", "--n", "8", "--json", "--out", str(tmp_path)]
    capsys.readouterr()
    assert cas.main(args) == 0
    (first,) = json.loads(capsys.readouterr().out)
    assert len(list((tmp_path / "autoattack_state").glob("autoattack-*.json"))) == 1
    assert pd.read_csv(tmp_path / "cas.csv")["autoattack"].tolist() == [f"{aa.backend_label('pyautoattack')}:standard"]

    def never(*args, **kwargs):
        raise AssertionError("the finished evaluation was recomputed")

    monkeypatch.setattr(aa, "_run", never)
    assert cas.main(args) == 0  # the same command again: AutoAttack answers from its state
    (again,) = json.loads(capsys.readouterr().out)
    assert again["autoattack_acc"] == first["autoattack_acc"] <= first["clean_acc"]


@pytest.mark.slow  # about 20 s
def test_cas_cli_reports_autoattack(small_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchattacks")
    data, run = small_run
    capsys.readouterr()
    args = ["--checkpoint", str(run / "last.pt"), "--dataset", f"npz:{data}", "--steps", "2", "--quiet",
            "--autoattack", "--autoattack-backend", "torchattacks", "--eps", "2"]
    assert cas.main([*args, "--json", "--out", str(tmp_path / "cas")]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert set(record) == {"checkpoint", "clean_acc", "robust_acc", "autoattack_acc", "cas", "matrix"}
    assert 0 <= record["autoattack_acc"] <= record["clean_acc"]
    table = pd.read_csv(tmp_path / "cas" / "cas.csv")
    assert table["autoattack_acc"].tolist() == [record["autoattack_acc"]]
    assert table["autoattack"].tolist() == [f"{aa.backend_label('torchattacks')}:standard"]
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


def test_the_fingerprint_sees_the_input_normalisation():
    # the input statistics are non-persistent buffers (not in the state_dict), yet they change the function
    from real_data.models import build_arch

    def fingerprint(mean):
        model = build_arch("small-cnn", n_classes=4, in_channels=3, mean=mean, std=(0.25,) * 3, width=2, seed=0)
        return aa.autoattack_fingerprint(model, torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.zeros(2),
                                         {"eps": 0.03})

    assert fingerprint((0.5,) * 3) == fingerprint((0.5,) * 3) != fingerprint((0.4,) * 3)
