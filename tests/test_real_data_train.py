"""real_data.train / cas / saliency end to end on CPU with a tiny CIFAR-10-format folder and a small CNN."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from figures import Sources, render
from real_data import cas, saliency
from real_data import train as train_cli
from real_data.checkpoints import model_from_checkpoint, read_checkpoint
from real_data.data import load_dataset, to_float
from real_data.evaluate import ThreatModel, evaluate
from real_data.fixtures import write_cifar10, write_npz
from synthmodel.attacks import pgd
from synthmodel.attribution import attribution
from synthmodel.sample import derive_seed

# a tiny but real AT run: small CNN, 2-step PGD, constant lr so the epochs are comparable
FAST = ["--arch", "small-cnn", "--width", "4", "--batch-size", "20", "--steps", "2", "--eval-steps", "2",
        "--schedule", "constant", "--lr", "0.05", "--quiet"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("data") / "c10", per_class=4)


@pytest.fixture(scope="module")
def at_run(cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "at"
    assert train_cli.main(["--dataset", f"cifar10:{cifar}", "--mode", "at", "--epochs", "2", "--save-every", "1",
                           "--out", str(out), *FAST]) == 0
    return out


def test_at_run_end_to_end_loss_falls_and_files(at_run):
    log = pd.read_csv(at_run / "log.csv")
    assert log["epoch"].tolist() == [1, 2]
    # two epochs of AT on separable colour classes lower the training robust loss (seeded, deterministic)
    assert log["train_loss"].iloc[1] < log["train_loss"].iloc[0]
    assert {"test_clean_acc", "test_robust_acc", "train_robust_acc"} <= set(log.columns)
    assert (log["test_robust_acc"] <= log["test_clean_acc"] + 0.25).all()
    for name in ("best.pt", "last.pt", "epoch_001.pt", "epoch_002.pt", "config.json"):
        assert (at_run / name).is_file(), name
    assert json.loads((at_run / "config.json").read_text())["mode"] == "at"


def test_checkpoints_reload_to_the_same_function(at_run, cifar):
    data = load_dataset(f"cifar10:{cifar}")
    last, blob = model_from_checkpoint(at_run / "last.pt", data)
    epoch2, _ = model_from_checkpoint(at_run / "epoch_002.pt", data)
    x = to_float(data.x_test[:8]).contiguous()
    with torch.no_grad():
        assert torch.equal(last(x), epoch2(x))
    best_epoch = int(read_checkpoint(at_run / "best.pt")["epoch"])
    log = pd.read_csv(at_run / "log.csv")
    assert best_epoch == int(log["epoch"][log["test_robust_acc"].idxmax()])
    assert blob["epoch"] == 2 and "optimizer" in blob and set(blob["rng"]) == {"shuffle", "augment", "attack"}


def test_per_epoch_cas_is_the_checkpoints_cas_on_the_same_attack(at_run, cifar):
    """The history's CAS (accumulated during the per-epoch test attack) equals CAS computed afresh from that
    epoch's checkpoint with the same random starts: two computations of one quantity, same float64 sums."""
    data = load_dataset(f"cifar10:{cifar}")
    history = read_checkpoint(at_run / "last.pt")["history"]
    log = pd.read_csv(at_run / "log.csv")
    assert "class_matrix" not in log and log["cas"].tolist() == [r["cas"] for r in history]
    for record in history:
        model, _ = model_from_checkpoint(at_run / f"epoch_{record['epoch']:03d}.pt", data)
        model.to(memory_format=torch.channels_last)  # the trainer's layout on CPU too (memory format auto)
        generator = torch.Generator().manual_seed(derive_seed(0, "eval", record["epoch"]))
        fresh = evaluate(model, data.x_test, data.y_test, ThreatModel(eps=8 / 255, steps=2), generator=generator,
                         channels_last=True, with_attribution=True)
        assert fresh.robust_acc == record["test_robust_acc"]
        assert fresh.attribution.cas == record["cas"]
        np.testing.assert_array_equal(fresh.attribution.matrix, np.array(record["class_matrix"]))


def test_interrupted_then_resumed_run_equals_uninterrupted(cifar, tmp_path, at_run):
    common = ["--dataset", f"cifar10:{cifar}", "--mode", "at", "--epochs", "2", "--save-every", "1", *FAST]
    assert train_cli.main([*common, "--out", str(tmp_path), "--stop-after", "1"]) == 0
    assert len(pd.read_csv(tmp_path / "log.csv")) == 1
    assert train_cli.main([*common, "--out", str(tmp_path), "--resume"]) == 0
    resumed, straight = read_checkpoint(tmp_path / "last.pt"), read_checkpoint(at_run / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for a, b in zip(resumed["optimizer"]["state"].values(), straight["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "log.csv"), pd.read_csv(at_run / "log.csv"))


def test_cas_equals_synthmodel_attribution_on_the_same_features(at_run, cifar):
    data = load_dataset(f"cifar10:{cifar}")
    model, _ = model_from_checkpoint(at_run / "last.pt", data)
    threat = ThreatModel(eps=8 / 255, steps=3)
    ours = cas.checkpoint_cas(model, data, threat, seed=5, batch_size=6)
    # synthmodel's attribution with the same attack and the same random-start stream, batch by batch
    gen = torch.Generator().manual_seed(derive_seed(5, "cas"))

    def attack(m, xb, yb):
        return pgd(m, xb, yb, eps=8 / 255, steps=3, clamp=(0.0, 1.0), generator=gen, mode="eval")

    x = to_float(data.x_test).contiguous()
    reference = attribution(model, x, data.y_test, attack=attack, batch_size=6)
    np.testing.assert_allclose(ours.attribution.matrix, reference.matrix, rtol=0, atol=1e-12)  # same float64 sums
    assert ours.attribution.cas == pytest.approx(reference.cas, abs=1e-10)
    assert 0 <= ours.robust_acc <= 1 and 0 <= ours.clean_acc <= 1


def test_cas_cli_table_json_and_files(at_run, cifar, tmp_path, capsys):
    args = ["--checkpoint", str(at_run / "best.pt"), str(at_run / "last.pt"), "--dataset", f"cifar10:{cifar}",
            "--steps", "2", "--quiet"]
    assert cas.main([*args, "--json", "--out", str(tmp_path)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [set(r) for r in payload] == [{"checkpoint", "clean_acc", "robust_acc", "cas", "matrix"}] * 2
    for record in payload:
        matrix = np.array(record["matrix"])
        assert matrix.shape == (10, 10) and np.allclose(np.diag(matrix), 1)
        off = ~np.eye(10, dtype=bool)
        assert record["cas"] == pytest.approx(np.clip(matrix[off], 0, 1).sum())
    table = pd.read_csv(tmp_path / "cas.csv")
    assert table["cas"].tolist() == pytest.approx([r["cas"] for r in payload])
    assert (tmp_path / "heatmaps.png").stat().st_size > 0
    assert (tmp_path / "matrix_1_last.csv").is_file()


def test_cas_over_epochs_table_and_figure(at_run, cifar, tmp_path):
    checkpoints = [at_run / "epoch_001.pt", at_run / "epoch_002.pt", at_run / "last.pt"]
    assert cas.main(["--checkpoint", *map(str, checkpoints), "--dataset", f"cifar10:{cifar}", "--steps", "2",
                     "--quiet", "--out", str(tmp_path / "cas")]) == 0
    table = pd.read_csv(tmp_path / "cas" / "cas.csv")
    assert table["epoch"].tolist() == [1, 2, 2]
    # epoch_002.pt and last.pt hold the same weights and are attacked with the same random starts
    same = ["clean_acc", "robust_acc", "cas"]
    assert table.loc[1, same].tolist() == table.loc[2, same].tolist()
    made = render(Sources(real=[tmp_path / "cas"]), tmp_path / "figs", only=["real_curves"], log=lambda _: None)
    assert [f.name for f in made["real_curves"]] == ["real_curves.png", "real_curves.pdf"]


def test_saliency_grid(at_run, cifar, tmp_path):
    out = tmp_path / "grid.png"
    assert saliency.main(["--checkpoint", str(at_run / "best.pt"), str(at_run / "last.pt"), "--dataset",
                          f"cifar10:{cifar}", "--indices", "0", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode, extra", [("trades", []), ("standard", []), ("at", ["--label-smoothing", "0.2"]),
                                         ("at", ["--norm", "l2", "--attack-bn", "eval"])])
def test_other_modes_on_an_npz_set(tmp_path, mode, extra):
    path = write_npz(tmp_path / "set.npz", n_train=24, n_test=8, n_classes=3, shape=(8, 8, 1))
    assert train_cli.main(["--dataset", f"npz:{path}", "--mode", mode, "--epochs", "1", "--out",
                           str(tmp_path / "run"), *FAST, *extra]) == 0
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert np.isfinite(log["train_loss"]).all()


def test_distillation_from_a_teacher_checkpoint(at_run, cifar, tmp_path):
    assert train_cli.main(["--dataset", f"cifar10:{cifar}", "--mode", "kd", "--teacher", str(at_run / "last.pt"),
                           "--epochs", "1", "--out", str(tmp_path), *FAST]) == 0
    assert train_cli.main(["--dataset", f"cifar10:{cifar}", "--mode", "kd", "--epochs", "1",
                           "--out", str(tmp_path / "x"), *FAST]) == 2


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_inputs_give_one_line_and_status_2(tmp_path, at_run, cifar, capsys):
    assert train_cli.main(["--dataset", f"cifar10:{tmp_path / 'missing'}", "--out", str(tmp_path / "o"),
                           *FAST]) == 2
    assert "data_batch_1" in _one_error_line(capsys)
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, np.int64))
    assert cas.main(["--checkpoint", str(at_run / "last.pt"), "--dataset", f"npz:{tmp_path / 'bad.npz'}"]) == 2
    assert "(N, H, W, C)" in _one_error_line(capsys)
    # a small-CNN checkpoint read as the official PreActResNet-18 (a bare state_dict)
    torch.save(read_checkpoint(at_run / "last.pt")["model"], tmp_path / "cnn.pth")
    assert cas.main(["--checkpoint", str(tmp_path / "cnn.pth"), "--dataset", f"cifar10:{cifar}", "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "missing keys" in line and "unexpected keys body.0.weight" in line
    # more test images asked for than the split holds: an error, not a silent truncation
    assert cas.main(["--checkpoint", str(at_run / "last.pt"), "--dataset", f"cifar10:{cifar}", "--n", "41"]) == 2
    assert "--n 41 exceeds the 40 test images" in _one_error_line(capsys)
    assert train_cli.main(["--dataset", f"cifar10:{cifar}", "--out", str(tmp_path / "big"), *FAST,
                           "--eval-n", "41"]) == 2
    assert "eval_n 41 exceeds the 40 test images" in _one_error_line(capsys)
    # an existing run is never overwritten without --resume
    assert train_cli.main(["--dataset", f"cifar10:{cifar}", "--out", str(at_run), *FAST]) == 2
    assert "--resume" in _one_error_line(capsys)
    assert (at_run / "last.pt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_gpu_exits_2():
    proc = subprocess.run([sys.executable, "-m", "real_data.train", "--dataset", "cifar10:/nonexistent", "--out",
                           "/tmp/never", "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no CUDA GPU" in proc.stderr


def test_epoch_benchmark_runs_on_cpu_with_a_tiny_size():
    proc = subprocess.run([sys.executable, "benchmarks/real_data_epoch.py", "--device", "cpu", "--n", "4",
                           "--batch-size", "4", "--steps", "1", "--baseline-n", "4"], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "1.111 GFLOP/image" in proc.stdout and "speed-up" in proc.stdout  # PreActResNet-18 at 32x32


def test_the_training_config_is_the_cli_and_refuses_bad_values_in_one_line(capsys):
    from synthmodel.schema import fields_of

    parser = train_cli.build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert {f"--{f.name.replace('_', '-')}" for f in fields_of(train_cli.TrainConfig)} <= flags
    args = parser.parse_args(["--dataset", "npz:x.npz", "--out", "o", "--no-random-start", "--milestones", "3", "5",
                              "--no-augment"])
    config = train_cli.TrainConfig.from_dict({k: v for k, v in vars(args).items()
                                              if k in {f.name for f in fields_of(train_cli.TrainConfig)}})
    assert (config.random_start, config.augment, config.milestones) == (False, False, (3, 5))
    assert config.lr_schedule.step_milestones == (3, 5)
    assert "radius (1/255 pixel units) (default: 8 (linf) / 128 (l2))" in " ".join(parser.format_help().split())
    for bad, words in ((["--momentum", "1"], "momentum=1.0 is not allowed"),
                       (["--mode", "kd"], "mode kd needs --teacher"),
                       (["--milestones", "0"], "milestones=[0] is not allowed")):
        assert train_cli.main(["--dataset", "npz:/nonexistent.npz", "--out", "/tmp/never", "--quiet", *bad]) == 2
        assert words in _one_error_line(capsys)


def test_cpu_epoch_benchmark_runs_with_a_tiny_size():
    proc = subprocess.run([sys.executable, "benchmarks/real_data_cpu_epoch.py", "--train-n", "20", "--batch-size",
                           "10", "--steps", "1", "--skip-settings"], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "official style" in proc.stdout and "speed-up against the official-style loop" in proc.stdout


@pytest.mark.slow
def test_cpu_epoch_benchmark_every_setting_and_the_batched_networks():
    """All measurements, including the grouped-convolution network of 2 seeds (checked equal to its members)."""
    proc = subprocess.run([sys.executable, "benchmarks/real_data_cpu_epoch.py", "--train-n", "20", "--batch-size",
                           "10", "--steps", "1", "--members", "2"], capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "2 threads" in proc.stdout and "grouped convolutions" in proc.stdout and "torch.func.vmap" in proc.stdout
