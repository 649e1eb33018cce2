"""Compute, memory and per-operator roofline floors of one PGD-k AT epoch (the GPU speed target in context).

The real-data speed target (README, Speed) asks for an AT epoch within 3x of the *compute* floor (FLOPs /
peak FLOP/s). A network run operator by operator also has a *memory* floor: every operator reads its inputs
from and writes its outputs to GPU memory. This script counts both, exactly, for the real model code: it
runs one attack step (forward + input-gradient backward, weights frozen, batch-norm in train mode) and one
training step (forward + full backward) on the CPU under bf16 autocast and channels_last, and intercepts
every ATen operator (``TorchDispatchMode``): FLOPs from ``torch.utils.flop_counter``'s formulas, bytes =
sizes of the operator's tensor inputs and outputs (views move nothing). Floors:

* compute: all FLOPs at the peak rate;
* memory: all bytes at the memory bandwidth (the traffic of unfused, operator-by-operator
  execution, counting each operand once: a lower bound for eager PyTorch/cuDNN, which makes
  extra passes, e.g. batch-norm statistics);
* roofline: the sum over operators of max(FLOPs / peak, bytes / bandwidth), the least time of an
  unfused execution where every operator runs at its roofline.

Counts are taken at the recipe's batch of 128 and divided by it: weights (and their bf16 casts and
gradients) are read and written once per batch, activations once per image.

Output for PreActResNet-18, CIFAR-10 shapes, PGD-10, 50k images, H200 figures (989 TFLOP/s dense
bf16, 4.8 TB/s), `python benchmarks/roofline.py --measured-img-s 3912` (CPU, 5 s):

    attack step: 2.222 GFLOP, 0.022 GB per image; training step: 3.329 GFLOP, 0.023 GB per image
    epoch: 1.277 PFLOP, 12.1 TB
    compute floor 1.29 s, memory floor 2.52 s, per-operator roofline floor 3.18 s
    measured 3912 img/s = 12.78 s: 9.9x the compute floor, 5.1x the memory floor, 4.0x the roofline floor

(`--batch 512 --measured-img-s 5150`: roofline floor 3.13 s, measured 9.71 s = 3.1x it.) Bytes by
operator (`--top 8`): convolution backward 2.25 TB, batch-norm backward 1.84, ReLU backward 1.84,
adds (residuals, gradient accumulation) 1.81, convolution 1.51, batch-norm 1.23, ReLU 1.23, casts 0.33.

So the second target, within 3x of the compute floor (3.87 s), asks an operator-by-operator
execution to run at 82% of this roofline on every operator. A caveat on the memory side: the
count sends every operand through HBM, while an H100/H200 has a 50 MB L2 cache that can hold a whole
batch's largest activation (128 x 64 x 32 x 32 bf16 = 16.8 MB), so some traffic is served from L2 and
the true floor is lower: the memory and roofline floors are estimates, not proofs. The measured
3912 img/s (CUDA-graph attacks, `benchmarks/real_data_epoch.py` on an H200) is 4.0x the estimate.
Going further means moving fewer bytes: fusing batch-norm, ReLU and the residual adds into the
convolutions (train-mode batch-norm statistics, which the official recipe uses during the attack,
make that hard), not removing launch overhead, which the CUDA graphs already did.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from real_data.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from real_data.models import ARCHS, build_arch  # noqa: E402
from synthmodel.attacks import frozen_parameters  # noqa: E402


@dataclass
class Tally:
    """FLOPs and bytes of every operator seen, and the per-operator roofline time at given rates."""

    peak_flops: float
    bandwidth: float
    flops: float = 0.0
    bytes: float = 0.0
    roofline_s: float = 0.0
    by_op: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, flops: float, nbytes: float) -> None:
        self.flops += flops
        self.bytes += nbytes
        self.roofline_s += max(flops / self.peak_flops, nbytes / self.bandwidth)
        entry = self.by_op.setdefault(name, [0.0, 0.0])
        entry[0] += flops
        entry[1] += nbytes

    def merge(self, other: Tally) -> None:
        """Add another tally's counts (the same rates) to this one."""
        self.flops += other.flops
        self.bytes += other.bytes
        self.roofline_s += other.roofline_s
        for name, (flops, nbytes) in other.by_op.items():
            entry = self.by_op.setdefault(name, [0.0, 0.0])
            entry[0] += flops
            entry[1] += nbytes

    def scaled(self, factor: float) -> Tally:
        return Tally(self.peak_flops, self.bandwidth, self.flops * factor, self.bytes * factor,
                     self.roofline_s * factor, {k: [v[0] * factor, v[1] * factor] for k, v in self.by_op.items()})


def _tensor_bytes(tree) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class _Counting(TorchDispatchMode):
    def __init__(self, tally: Tally):
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        packet = func.overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        self.tally.add(packet.__name__, float(flops), float(_tensor_bytes((args, kwargs)) + _tensor_bytes(out)))
        return out


def step_tally(model: torch.nn.Module, batch: int, shape: tuple[int, int, int], *, attack: bool,
               peak_flops: float, bandwidth: float, amp: bool = True) -> Tally:
    """Per-image tally of one attack step (attack=True) or one training step, batch-norm in train mode."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=generator)
    model.train()
    tally = Tally(peak_flops, bandwidth)
    x.requires_grad_(attack)
    frozen = frozen_parameters(model) if attack else torch.enable_grad()
    with frozen, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), _Counting(tally):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return tally.scaled(1.0 / batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=list(ARCHS), default="preact-resnet18")
    p.add_argument("--steps", type=int, default=10, help="PGD steps per training step")
    p.add_argument("--n", type=int, default=50000, help="images per epoch")
    p.add_argument("--batch", type=int, default=128,
                   help="images per step (the recipe's 128): weight traffic is shared by a batch, activations are not")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--bandwidth-tbs", type=float, default=4.8, help="memory bandwidth (H200 4.8, H100 SXM 3.35)")
    p.add_argument("--measured-img-s", type=float, default=None, help="a measured epoch throughput to place")
    p.add_argument("--fp32", action="store_true", help="count without bf16 autocast")
    p.add_argument("--top", type=int, default=0, help="also list the N operators moving the most bytes")
    args = p.parse_args(argv)
    if min(args.steps, args.n, args.batch) < 1 or args.peak_tflops <= 0 or args.bandwidth_tbs <= 0:
        print("error: steps, n and batch must be >= 1, peak and bandwidth > 0", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = build_arch(args.arch, n_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=0)
    model = model.to(memory_format=torch.channels_last)
    rates = {"peak_flops": args.peak_tflops * 1e12, "bandwidth": args.bandwidth_tbs * 1e12}
    attack = step_tally(model, args.batch, (3, 32, 32), attack=True, amp=not args.fp32, **rates)
    train = step_tally(model, args.batch, (3, 32, 32), attack=False, amp=not args.fp32, **rates)
    epoch = Tally(**rates)
    for tally, count in ((attack, args.steps * args.n), (train, args.n)):
        epoch.merge(tally.scaled(count))
    compute_s, memory_s = epoch.flops / rates["peak_flops"], epoch.bytes / rates["bandwidth"]
    print(f"{args.arch}, PGD-{args.steps}, n={args.n}, {'fp32' if args.fp32 else 'bf16 autocast'}, channels_last; "
          f"{args.peak_tflops:g} TFLOP/s, {args.bandwidth_tbs:g} TB/s")
    print(f"attack step: {attack.flops / 1e9:.3f} GFLOP, {attack.bytes / 1e9:.3f} GB per image; "
          f"training step: {train.flops / 1e9:.3f} GFLOP, {train.bytes / 1e9:.3f} GB per image")
    print(f"epoch: {epoch.flops / 1e15:.3f} PFLOP, {epoch.bytes / 1e12:.1f} TB")
    print(f"compute floor {compute_s:.2f} s, memory floor {memory_s:.2f} s, per-operator roofline floor "
          f"{epoch.roofline_s:.2f} s")
    if args.measured_img_s:
        measured = args.n / args.measured_img_s
        print(f"measured {args.measured_img_s:g} img/s = {measured:.2f} s: {measured / compute_s:.1f}x the compute "
              f"floor, {measured / memory_s:.1f}x the memory floor, {measured / epoch.roofline_s:.1f}x the roofline "
              "floor")
    if args.top:
        ranked = sorted(epoch.by_op.items(), key=lambda item: -item[1][1])[:args.top]
        for name, (flops, nbytes) in ranked:
            print(f"  {name:40s} {nbytes / 1e12:8.2f} TB  {flops / 1e15:8.3f} PFLOP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
