"""Training: determinism, limits, the paper's basic AT behaviour, CLI contract, checkpoints."""

import json
import subprocess
import sys

import pytest
import torch

from synthmodel.train import TrainConfig, load_checkpoint, main, save_checkpoint, train

FAST = dict(epochs=3, n_train=300, n_test=300, batch_size=64, attack_steps=3, eval_steps=3)


def test_same_seed_bit_identical_history_different_seed_differs():
    config = TrainConfig(model="mlp", hidden=(8,), **FAST)
    first, second = train(config).history, train(config).history
    assert first == second  # floats compared exactly
    other = train(TrainConfig(model="mlp", hidden=(8,), seed=1, **FAST)).history
    assert other != first


@pytest.mark.parametrize("model", ["tied", "linear", "mlp"])
def test_eps_zero_at_equals_standard(model):
    at = train(TrainConfig(model=model, mode="at", eps=0.0, hidden=(8,), **FAST))
    standard = train(TrainConfig(model=model, mode="standard", eps=0.0, hidden=(8,), **FAST))
    assert at.history == standard.history
    for key in at.last_state:
        assert torch.equal(at.last_state[key], standard.last_state[key])


def test_at_learns_exclusive_weight_and_beats_standard_robustness():
    # paper3, mu = 1, sigma = 0.5; robust accuracy of the tied model is exact (closed-form worst margins)
    # and depends only on w2 / w1, so the comparison is between the two learned ratios
    common = dict(preset="paper3", mu=1.0, sigma=0.5, eps=0.4, epochs=10, n_train=1000, n_test=10000, eval_steps=5)
    at = train(TrainConfig(mode="at", **common))
    standard = train(TrainConfig(mode="standard", **common))
    assert at.final["w1"] > 0
    assert at.final["robust_acc"] > standard.final["robust_acc"]
    assert at.final["w2"] / at.final["w1"] < standard.final["w2"] / standard.final["w1"]


def test_history_fields_and_best_epoch():
    result = train(TrainConfig(**FAST))
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for record in result.history:
        assert {"train_loss", "train_clean_acc", "train_robust_acc", "test_clean_acc", "test_robust_acc",
                "test_robust_loss", "cas", "class_matrix", "w1", "w2", "lr"} <= set(record)
        assert record["test_robust_acc"] <= record["test_clean_acc"]
    best = max(result.history, key=lambda r: r["test_robust_acc"])
    assert result.best_epoch == best["epoch"]
    assert set(result.final) == {"clean_acc", "robust_acc", "cas", "w1", "w2"}


@pytest.mark.parametrize("extra", [dict(mode="trades"), dict(label_smoothing=0.2), dict(attack="fgsm"),
                                   dict(attack="logitwise", label_smoothing=0.1), dict(norm="l2", model="linear"),
                                   dict(optimizer="adam", lr=0.01, schedule="cosine"), dict(dtype="float64")])
def test_modes_run(extra):
    result = train(TrainConfig(**{**FAST, **extra}))
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


def test_distillation_with_teacher_checkpoint(tmp_path):
    teacher = train(TrainConfig(**FAST))
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher.model, teacher.config)
    loaded, config = load_checkpoint(path)
    x = torch.randn(5, 6)
    assert torch.equal(loaded(x), teacher.model.eval()(x))
    student = train(TrainConfig(teacher=str(path), temperature=2.0, **FAST))
    assert student.history[-1]["train_loss"] > 0


@pytest.mark.parametrize("bad", [dict(eps=-0.1), dict(sigma=0.0), dict(mu=float("nan")), dict(preset="paper9"),
                                 dict(mode="adv"), dict(label_smoothing=1.0), dict(model="cnn"),
                                 dict(attack="logitwise", model="mlp"), dict(epochs=0), dict(k=2, preset="ring-K")])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        train(TrainConfig(**{**FAST, **bad}))


def test_cli_json_contract(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(["--epochs", "2", "--n-train", "200", "--n-test", "200", "--attack-steps", "2", "--eval-steps", "2",
                 "--json", "--quiet", "--out", str(out), "--save", str(tmp_path / "ckpt")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert set(printed) >= {"config", "final", "history"}
    assert set(printed["final"]) == {"clean_acc", "robust_acc", "cas", "w1", "w2"}
    assert len(printed["history"]) == 2
    assert (tmp_path / "ckpt" / "best.pt").is_file() and (tmp_path / "ckpt" / "last.pt").is_file()


@pytest.mark.parametrize("args", [["--eps", "-1"], ["--preset", "nope"], ["--sigma", "0"], ["--k", "1", "--preset",
                                  "pairs-K"], ["--label-smoothing", "1.5"], ["--teacher", "/nonexistent.pt"]])
def test_cli_bad_input_one_line_exit_2(args):
    proc = subprocess.run([sys.executable, "-m", "synthmodel.train", "--quiet", "--epochs", "1", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_checkpoint(path)
    torch.save({"format": "other"}, path)
    with pytest.raises(ValueError, match="not written by synthmodel"):
        load_checkpoint(path)


def test_cli_flags_are_the_config_fields():
    from synthmodel.schema import fields_of, from_namespace
    from synthmodel.train import TrainConfig, build_parser

    parser = build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert {f"--{f.name.replace('_', '-')}" for f in fields_of(TrainConfig)} <= flags
    config = from_namespace(TrainConfig, parser.parse_args(["--no-bias", "--hidden", "8", "4", "--k", "5",
                                                            "--preset", "ring-K", "--schedule", "cosine"]))
    assert config == TrainConfig(bias=False, hidden=(8, 4), k=5, preset="ring-K", schedule="cosine")
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert "(default: 0.25 input units)" in text and "PGD step in training (input units) (default: eps / 4)" in text
