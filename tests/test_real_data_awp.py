"""AWP (adversarial weight perturbation) and validation-based selection in real_data.train, on CPU.

AWP: the step with gamma 0 is the plain step bit for bit; a perturbation has relative size gamma in every
layer, raises the loss by its first-order prediction, leaves batch norm's statistics alone and is undone
exactly. ``--val``: the held-out images are disjoint from the trained ones, stratified, seeded; best.pt
follows them, not the test set; a run with both resumes bit for bit.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from real_data import train as train_cli
from real_data.checkpoints import read_checkpoint
from real_data.data import hold_out, load_dataset, stratified_counts, train_subset
from real_data.fixtures import fake_images, write_npz
from real_data.models import build_arch
from real_data.train import TrainConfig, Trainer
from synthmodel.attacks import pgd
from synthmodel.objectives import (
    Adversarial,
    Learner,
    Trades,
    WeightPerturbed,
    preserved_buffers,
    target_loss,
)
from synthmodel.sample import derive_seed

FAST = ["--arch", "small-cnn", "--width", "4", "--batch-size", "8", "--steps", "2", "--eval-steps", "2",
        "--schedule", "constant", "--lr", "0.05", "--quiet"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "set.npz", n_train=48, n_test=12, n_classes=3, shape=(8, 8, 1))


def _config(path, **settings) -> TrainConfig:
    base = dict(dataset=f"npz:{path}", arch="small-cnn", width=4, batch_size=8, steps=2, eval_steps=2,
                schedule="constant", lr=0.05, epochs=2, save_every=0)
    return TrainConfig(**{**base, **settings}).validate()


def _run(trainer: Trainer, epochs: int) -> Trainer:
    for _ in range(epochs):
        trainer.train_epoch()
    return trainer


def _same_state(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if not all(torch.equal(sa[k], sb[k]) for k in sa):
        return False
    ma = [s["momentum_buffer"] for s in a.optimizer.state_dict()["state"].values()]
    mb = [s["momentum_buffer"] for s in b.optimizer.state_dict()["state"].values()]
    return all(torch.equal(x, y) for x, y in zip(ma, mb, strict=True))


# -- AWP ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["at", "trades"])
def test_awp_with_gamma_zero_is_the_plain_step_bit_for_bit(npz, mode):
    """The whole AWP path (ascent pass with buffers restored, perturbation by 0, exact restore) run with gamma 0
    changes nothing: weights, batch-norm statistics, momentum and the logged history equal plain training."""
    data = load_dataset(f"npz:{npz}")
    config = _config(npz, mode=mode)
    plain = _run(Trainer(config, data, torch.device("cpu")), 2)
    zero = Trainer(config, data, torch.device("cpu"))
    zero.awp = WeightPerturbed(zero.objective, 0.0)  # forced on: the default gamma 0 never builds the wrapper
    _run(zero, 2)
    assert _same_state(plain, zero)
    assert zero.history == plain.history
    # and the path does act when gamma > 0 (so the equality above is not vacuous)
    moved = _run(Trainer(_config(npz, mode=mode, awp_gamma=0.01), data, torch.device("cpu")), 2)
    assert not _same_state(plain, moved)


def _learner(model, generator, mode: str) -> Learner:
    def attack(x, y, loss_fn=None):
        return pgd(model, x, y, eps=8 / 255, steps=3, step_size=2 / 255, clamp=(0.0, 1.0), generator=generator,
                   mode="eval" if mode == "trades" else "train", loss_fn=loss_fn)

    return Learner(forward=model, attack=attack, loss=target_loss(), model=model, natural_mode="eval")


def _float64_learner(mode: str, seed: int = 3):
    model = build_arch("small-cnn", n_classes=3, in_channels=1, mean=(0.5,), std=(0.25,), seed=seed, width=4).double()
    model.train()
    generator = torch.Generator().manual_seed(seed)
    inner = Trades(beta=6.0) if mode == "trades" else Adversarial()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(16, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.arange(16) % 3
    return model, _learner(model, generator, mode), inner, x, y, generator


@pytest.mark.parametrize("mode", ["at", "trades"])
def test_perturbation_has_relative_size_gamma_and_raises_the_loss_to_first_order(mode):
    """v_l = gamma ||w_l|| d_l / ||d_l|| with d = dL/dw: ||v_l|| / ||w_l|| = gamma in every conv/linear layer, and
    L(w + v) - L(w) equals the directional derivative sum_l <d_l, v_l> = gamma sum_l ||w_l|| ||d_l|| up to the
    second-order term (float64; gamma = 1e-6 makes it ~1e-6 relative, so 1e-3 is a safe bound)."""
    model, learner, inner, x, y, _ = _float64_learner(mode)
    gamma = 1e-6
    awp = WeightPerturbed(inner, gamma)
    crafted = awp.craft(learner, x, y)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    pairs = awp.perturbation(learner, x, y, crafted)
    # batch norm's running statistics are untouched by the ascent pass
    assert buffers and all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(w)] for w, _ in pairs) == sorted(
        n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)  # conv + linear, no BN
    for weight, delta in pairs:
        ratio = (torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(weight)).item()
        assert ratio == pytest.approx(gamma, rel=1e-12)

    def loss_now() -> float:
        with preserved_buffers(model), torch.no_grad():
            return inner.loss_at(learner, x, y, crafted)[0].item()

    with preserved_buffers(model):
        base = inner.loss_at(learner, x, y, crafted)[0]
        grads = torch.autograd.grad(base, [w for w, _ in pairs])
    predicted = sum((g * d).sum() for g, (_, d) in zip(grads, pairs, strict=True)).item()
    assert predicted == pytest.approx(gamma * sum(
        (torch.linalg.vector_norm(w) * torch.linalg.vector_norm(g)).item() for g, (w, _) in zip(grads, pairs)))
    before = loss_now()
    with torch.no_grad():
        for weight, delta in pairs:
            weight.add_(delta)
    after = loss_now()
    assert after > before
    assert (after - before) == pytest.approx(predicted, rel=1e-3)


@pytest.mark.parametrize("mode", ["at", "trades"])
def test_awp_step_takes_the_gradient_at_the_perturbed_weights_and_restores_exactly(mode):
    """With lr 0 the step leaves every parameter exactly as it was (restored from a copy: w + v - v would not be
    exact in floats), and the gradient it used, like batch norm's statistics after it, equals those of an
    independent computation on a copy of the model moved by the same v at the same adversarial inputs."""
    model, learner, inner, x, y, generator = _float64_learner(mode)
    before = copy.deepcopy(model)
    rng = generator.get_state()
    WeightPerturbed(inner, 0.05).step(learner, x, y, torch.optim.SGD(model.parameters(), lr=0.0))
    for (name, param), old in zip(model.named_parameters(), before.parameters(), strict=True):
        assert torch.equal(param, old), name

    generator.set_state(rng)  # the same random start
    reference = _learner(before, generator, mode)
    crafted = inner.craft(reference, x, y)
    moves = WeightPerturbed(inner, 0.05).perturbation(reference, x, y, crafted)
    with torch.no_grad():
        for weight, delta in moves:
            weight.add_(delta)
    inner.loss_at(reference, x, y, crafted)[0].backward()
    for (name, param), ref in zip(model.named_parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(param.grad, ref.grad, rtol=1e-12, atol=0, msg=name)
    for (name, buffer), ref in zip(model.named_buffers(), before.buffers(), strict=True):
        assert torch.equal(buffer, ref), name


def test_awp_warmup_starts_the_perturbation_after_that_many_epochs(npz):
    data = load_dataset(f"npz:{npz}")
    plain = Trainer(_config(npz, epochs=3), data, torch.device("cpu"))
    warm = Trainer(_config(npz, epochs=3, awp_gamma=0.02, awp_warmup=2), data, torch.device("cpu"))
    for epoch in range(3):
        plain.train_epoch()
        warm.train_epoch()
        assert _same_state(plain, warm) == (epoch < 2), epoch


# -- validation-based selection -------------------------------------------------------------------------------
def _indexed_npz(path, n_train=60, n_classes=3, seed=0, test_shift=0):
    """Learnable images whose first two pixels spell their index (so a subset's members can be named)."""
    rng = np.random.default_rng(seed)
    y_train = rng.permutation(np.arange(n_train) % n_classes)
    y_test = np.arange(24) % n_classes
    palette = rng.uniform(30, 225, size=(n_classes, 1))
    x_train = fake_images(y_train, palette, (8, 8), rng, noise=60.0)
    x_train[:, 0, 0, 0], x_train[:, 0, 1, 0] = np.arange(n_train) // 256, np.arange(n_train) % 256
    x_test = fake_images(y_test, palette, (8, 8), rng, noise=60.0)
    np.savez(path, x_train=x_train, y_train=y_train.astype(np.int64), x_test=x_test,
             y_test=((y_test + test_shift) % n_classes).astype(np.int64))
    return path


def _ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 1, 0].long()).tolist()


def test_held_out_images_are_disjoint_stratified_and_depend_on_the_seed_alone(tmp_path):
    path = _indexed_npz(tmp_path / "ids.npz")
    data = load_dataset(f"npz:{path}")
    counts = np.bincount(data.y_train.numpy(), minlength=3)
    runs = {}
    for train_n in (0, 30):
        trainer = Trainer(_config(path, val=12, train_n=train_n), data, torch.device("cpu"))
        trained, held = _ids(trainer.data.x_train), _ids(trainer.val_images)
        assert len(held) == len(set(held)) == 12 and not set(trained) & set(held)
        assert len(trained) == (train_n or 48)
        np.testing.assert_array_equal(np.bincount(trainer.val_labels.numpy(), minlength=3),
                                      stratified_counts(counts, 12))
        rest = np.bincount(data.y_train.numpy()[sorted(set(range(60)) - set(held))], minlength=3)
        np.testing.assert_array_equal(np.bincount(trainer.data.y_train.numpy(), minlength=3),
                                      stratified_counts(rest, train_n) if train_n else rest)
        assert torch.equal(trainer.val_labels, data.y_train[held])  # labels travel with their images
        runs[train_n] = held
    assert runs[0] == runs[30]  # the validation set does not depend on --train-n
    # the split is hold_out's, seeded from --seed; another seed holds out other images
    rest, images, labels = hold_out(data, 12, derive_seed(0, "val"))
    assert _ids(images) == runs[0] and rest.x_train.shape[0] == 48
    assert _ids(hold_out(data, 12, derive_seed(1, "val"))[1]) != runs[0]
    # without --val the training subset is train_subset's, as before
    trainer = Trainer(_config(path, train_n=30), data, torch.device("cpu"))
    assert torch.equal(trainer.data.x_train, train_subset(data, 30, derive_seed(0, "train-n")).x_train)
    assert trainer.val_images is None


def test_best_checkpoint_follows_the_validation_set_not_the_test_set(tmp_path):
    """Test labels shifted by one class: the better the model, the worse its test score, so the two selections
    part; best.pt is the first epoch of highest validation robust accuracy."""
    path = _indexed_npz(tmp_path / "shifted.npz", test_shift=1)
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", f"npz:{path}", "--val", "15", "--epochs", "4", "--eps", "2",
                           "--out", str(out), *FAST]) == 0
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns[:6]) == ["epoch", "lr", "train_loss", "train_robust_acc", "val_clean_acc",
                                     "val_robust_acc"]
    by_val = int(log["epoch"][log["val_robust_acc"].idxmax()])
    by_test = int(log["epoch"][log["test_robust_acc"].idxmax()])
    assert by_val != by_test, log  # the construction's premise
    assert int(read_checkpoint(out / "best.pt")["epoch"]) == by_val
    assert int(read_checkpoint(out / "last.pt")["best_epoch"]) == by_val
    # without --val: no val columns, the test set chooses
    plain = tmp_path / "plain"
    assert train_cli.main(["--dataset", f"npz:{path}", "--epochs", "2", "--out", str(plain), *FAST]) == 0
    plain_log = pd.read_csv(plain / "log.csv")
    assert not any(c.startswith("val_") for c in plain_log.columns)
    assert int(read_checkpoint(plain / "best.pt")["epoch"]) == int(
        plain_log["epoch"][plain_log["test_robust_acc"].idxmax()])


@pytest.mark.parametrize("mode", ["at", "trades"])
def test_resumed_run_with_val_and_awp_equals_the_uninterrupted_one(tmp_path, mode):
    path = _indexed_npz(tmp_path / "ids.npz")
    common = ["--dataset", f"npz:{path}", "--mode", mode, "--val", "9", "--train-n", "30", "--awp-gamma", "0.01",
              "--awp-warmup", "1", "--epochs", "3", "--save-every", "1", *FAST]
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert train_cli.main([*common, "--out", str(straight)]) == 0
    assert train_cli.main([*common, "--out", str(pieces), "--stop-after", "1"]) == 0
    assert train_cli.main([*common, "--out", str(pieces), "--resume", "--stop-after", "1"]) == 0
    assert train_cli.main([*common, "--out", str(pieces), "--resume"]) == 0
    for name in ("last.pt", "best.pt", "epoch_003.pt"):
        a, b = read_checkpoint(straight / name), read_checkpoint(pieces / name)
        assert a["epoch"] == b["epoch"]
        for key, value in a["model"].items():
            assert torch.equal(b["model"][key], value), (name, key)
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(pieces / "last.pt")
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["history"] == b["history"]
    pd.testing.assert_frame_equal(pd.read_csv(pieces / "log.csv"), pd.read_csv(straight / "log.csv"))


def test_a_run_written_before_these_settings_resumes(tmp_path, npz):
    """last.pt files of earlier versions have no val / awp keys in their config: they resume as runs without."""
    common = ["--dataset", f"npz:{npz}", "--epochs", "2", *FAST]
    assert train_cli.main([*common, "--out", str(tmp_path), "--stop-after", "1"]) == 0
    blob = read_checkpoint(tmp_path / "last.pt")
    for key in ("val", "awp_gamma", "awp_warmup"):
        del blob["config"][key]
    torch.save(blob, tmp_path / "last.pt")
    assert train_cli.main([*common, "--out", str(tmp_path), "--resume"]) == 0
    assert len(pd.read_csv(tmp_path / "log.csv")) == 2


def test_bad_val_and_awp_settings_give_one_line_and_status_2_before_any_work(tmp_path, capsys):
    path = _indexed_npz(tmp_path / "ids.npz")  # 60 training images, 20 per class
    lopsided = tmp_path / "lopsided.npz"
    blob = dict(np.load(path))
    blob["y_train"] = np.where(np.arange(60) == 0, 2, blob["y_train"] % 2)  # class 2: one image
    np.savez(lopsided, **blob)
    cases = [
        ([f"npz:{path}", "--val", "2"], "val must be at least the number of classes (3)"),
        ([f"npz:{path}", "--val", "60"], "below the 60 training images"),
        ([f"npz:{path}", "--val", "61"], "below the 60 training images"),
        ([f"npz:{path}", "--val", "20", "--train-n", "41"], "ask for 61 of the 60 training images"),
        ([f"npz:{lopsided}", "--val", "3"], "every training image of class 2"),
        ([f"npz:{path}", "--mode", "standard", "--awp-gamma", "0.01"], "not standard"),
        ([f"npz:{path}", "--awp-gamma", "0.01", "--awp-warmup", "2"], "awp_warmup 2 leaves none of the 2 epochs"),
        ([f"npz:{path}", "--awp-gamma", "-0.1"], "awp_gamma=-0.1 is not allowed"),
        ([f"npz:{path}", "--val", "-1"], "val=-1 is not allowed"),
    ]
    for i, (args, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert train_cli.main(["--dataset", *args, "--epochs", "2", "--out", str(out), *FAST]) == 2, args
        assert words in _one_error_line(capsys), args
        assert not out.exists()


def test_awp_cost_benchmark_runs_with_a_tiny_size():
    proc = subprocess.run([sys.executable, "benchmarks/real_data_awp_epoch.py", "--train-n", "20", "--batch-size",
                           "10", "--steps", "1", "--repeats", "1"], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("AWP / plain") == 2


def test_awp_composes_with_a_teachers_targets(tmp_path, npz):
    """Mode kd: the ascent and the step use the teacher's soft labels at x_adv, as the plain kd step does."""
    teacher = tmp_path / "teacher"
    assert train_cli.main(["--dataset", f"npz:{npz}", "--epochs", "1", "--out", str(teacher), *FAST]) == 0
    logs = {}
    for gamma in ("0", "0.02"):
        out = tmp_path / f"kd{gamma}"
        assert train_cli.main(["--dataset", f"npz:{npz}", "--mode", "kd", "--teacher", str(teacher / "last.pt"),
                               "--temperature", "2", "--awp-gamma", gamma, "--epochs", "2", "--out", str(out),
                               *FAST]) == 0
        logs[gamma] = pd.read_csv(out / "log.csv")
        assert np.isfinite(logs[gamma]["train_loss"]).all()
    assert not logs["0"]["train_loss"].equals(logs["0.02"]["train_loss"])
