"""benchmarks/roofline.py: its operator-level FLOP count agrees with the layer-hook count of the epoch benchmark."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from real_data.data import CIFAR10_MEAN, CIFAR10_STD
from real_data.models import build_arch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["small-cnn", "preact-resnet18"])
def test_step_flops_equal_two_and_three_forward_passes(arch):
    roofline, epoch = _load("roofline"), _load("real_data_epoch")
    options = {"width": 8} if arch == "small-cnn" else {}
    model = build_arch(arch, n_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=0, **options)
    forward = epoch.forward_flops(model, (3, 32, 32))  # hooks on conv / linear layers, 2 x multiply-adds
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_flops = 2.0 * first.out_channels * 32 * 32 * first.in_channels * first.kernel_size[0] * first.kernel_size[1]
    first_flops /= first.stride[0] * first.stride[1]
    rates = {"peak_flops": 1e15, "bandwidth": 1e12}
    attack = roofline.step_tally(model, 2, (3, 32, 32), attack=True, amp=False, **rates)
    train = roofline.step_tally(model, 2, (3, 32, 32), attack=False, amp=False, **rates)
    # attack step: forward + input gradient of every layer (the image requires grad), no weight gradients
    assert attack.flops == pytest.approx(2 * forward, rel=1e-12)
    # training step: forward + input gradients (none for the first layer: the image does not require
    # grad) + weight gradients
    assert train.flops == pytest.approx(3 * forward - first_flops, rel=1e-12)
    for tally in (attack, train):  # sum of per-operator maxima lies between the max and the sum of the floors
        compute, memory = tally.flops / rates["peak_flops"], tally.bytes / rates["bandwidth"]
        assert max(compute, memory) <= tally.roofline_s * (1 + 1e-12) <= (compute + memory) * (1 + 1e-12)


def test_cli_runs_and_places_a_measurement():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "roofline.py"), "--arch", "small-cnn", "--batch", "2",
                           "--n", "100", "--measured-img-s", "50"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "roofline floor" in proc.stdout and "x the compute floor" in proc.stdout
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "roofline.py"), "--batch", "0"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
