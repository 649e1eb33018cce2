"""real_data on a CUDA GPU: attacks replayed from CUDA graphs are the eager attacks, bit for bit.

Skipped where there is no GPU (CI has none); ``bash benchmarks/gpu_check.sh`` runs this file on a lent
card. Bitwise comparisons need the same kernels in the same order on both sides, so cuDNN is made
deterministic here (without that, cuDNN may pick atomics-based algorithms whose sums vary run to run
even between two eager calls).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch

from real_data.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset
from real_data.fixtures import write_npz
from real_data.graphs import GraphedPGD
from real_data.models import build_arch
from real_data.train import TrainConfig, Trainer
from synthmodel.attacks import pgd

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def deterministic():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("norm, mode, amp", [("linf", "train", torch.bfloat16), ("l2", "eval", None)])
def test_graphed_pgd_equals_eager_pgd_batch_after_batch(deterministic, norm, mode, amp):
    """Five batches through GraphedPGD (2 eager warm-ups, capture, 2 replays) equal eager pgd on a twin model,
    with the weights moved in place between batches (as SGD does) and batch-norm statistics updated in train mode."""
    torch.manual_seed(0)
    model = build_arch("preact-resnet18", n_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                       seed=0).cuda().to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    graphed = GraphedPGD()
    eps = 8 / 255 if norm == "linf" else 0.5
    kwargs = {"eps": eps, "norm": norm, "steps": 5, "clamp": (0.0, 1.0), "mode": mode}
    g_graph, g_eager = (torch.Generator(device="cuda").manual_seed(3) for _ in range(2))
    data = torch.Generator(device="cuda").manual_seed(1)
    for batch in range(5):
        x = torch.rand(32, 3, 32, 32, device="cuda", generator=data).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (32,), device="cuda", generator=data)
        with torch.autocast("cuda", dtype=amp) if amp else contextlib.nullcontext():
            got = graphed(model, x, y, generator=g_graph, **kwargs)
            want = pgd(twin, x, y, generator=g_eager, **kwargs)
        assert torch.equal(got, want), f"batch {batch}: max |diff| {_max_diff(got, want):.3g}"
        with torch.no_grad():  # an in-place weight update, the same on both models
            step = torch.Generator(device="cuda").manual_seed(100 + batch)
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                noise = 1e-2 * torch.randn(p.shape, device="cuda", generator=step)
                p.add_(noise)
                q.add_(noise)
    assert graphed.n_graphs == 1
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after the attacks: {_max_diff(a, b):.3g}"
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode", ["at", "trades"])
def test_training_epoch_with_and_without_graphs_is_the_same(deterministic, tmp_path, mode):
    """One epoch (4 training, 4 test batches) of Trainer with cuda_graphs on and off: same log row, same weights."""
    path = write_npz(tmp_path / "d.npz", n_train=256, n_test=256, n_classes=10, shape=(32, 32, 3))
    data = load_dataset(f"npz:{path}")
    base = TrainConfig(dataset="npz", arch="preact-resnet18", mode=mode, batch_size=64, steps=3, eval_steps=4,
                       eval_batch_size=64, epochs=2)
    rows, states = [], []
    for graphs in (True, False):
        trainer = Trainer(dataclasses.replace(base, cuda_graphs=graphs), data, torch.device("cuda"))
        assert isinstance(trainer.pgd, GraphedPGD) == graphs
        rows.append(trainer.train_epoch())
        states.append(trainer.model_state())
        if graphs:
            assert trainer.pgd.n_graphs == 2  # one training attack, one test attack
    assert rows[0] == rows[1]
    for name, a in states[0].items():
        assert torch.equal(a, states[1][name]), f"{name}: max |diff| {_max_diff(a, states[1][name]):.3g}"
