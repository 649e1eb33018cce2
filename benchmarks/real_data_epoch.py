"""One PGD-10 AT epoch of PreActResNet-18 on CIFAR-10-shaped data: real_data's trainer vs an official-style loop.

Measured on one NVIDIA H200 (torch 2.11.0+cu130, via `bash benchmarks/gpu_check.sh OUT`):

    defaults (n=50000, batch 128, bf16, channels_last, CUDA-graph attacks): 12.78 s, 3912 img/s,
    9.89x the compute floor; baseline 874 img/s (n=5000) in the same run: 4.48x.
    --no-cuda-graphs (n=20000): 1515 img/s (25.6x the floor). --batch-size 512: 5150 img/s (7.5x).
    --compile (n=5000, compilations included, with one compile cache for attacks and training steps; see
    CHANGELOG.md): 123 img/s.

    CPU, 2 cores shared with other jobs, torch 2.13.0 CPU, fp32, n=32, batch 16, one run:
    `OMP_NUM_THREADS=2 python benchmarks/real_data_epoch.py --device cpu --n 32 --batch-size 16`
    real_data 21.5 s (1.5 img/s), baseline 60.8 s (0.5 img/s): 2.8x. On CPU the gain is the skipped
    weight gradients of the 10 attack steps; the shared cores make this number noisy, and it says
    nothing about the GPU targets below.

GPU targets, measured on a CUDA card with the default settings
(`python benchmarks/real_data_epoch.py --device cuda`, n = 50000): >= 4x the baseline's images/s,
and within 3x of the compute floor, i.e. achieved FLOP/s >= peak / 3, where one epoch costs
n * F * (2 * steps + 3) FLOP: F = forward FLOP per image (counted here by hooks: 1.11 GFLOP for
PreActResNet-18 at 32x32), each attack step a forward and an input-gradient backward (~2F, no
weight gradients), the training step forward + full backward (~3F): ~1.3 PFLOP for 50k images.

real_data side: `real_data.train.Trainer.fit_epoch` with its defaults on CUDA (bf16 autocast,
channels_last, data as one uint8 tensor on the device, batched on-device crop/flip, attack
gradients w.r.t. the perturbation only with the weights frozen, each attack replayed from a CUDA
graph), optionally `--no-cuda-graphs` (eager attacks) or `--compile`.
Baseline, written in the official code's style for comparison only (not a library attack): a
torch DataLoader over a Dataset doing per-image numpy reflect-pad/crop/flip (num_workers=0 as in
the official code), fp32, contiguous memory, PGD whose steps call ``loss.backward()`` and so also
compute weight gradients. The baseline can be timed on a subset (``--baseline-n``): images/s are
comparable because an epoch's cost is linear in n.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_data.data import CIFAR10_MEAN, CIFAR10_STD, Augmentation, ImageData  # noqa: E402
from real_data.device import resolve_device  # noqa: E402
from real_data.forwards import model_forwards  # noqa: E402
from real_data.models import build_arch  # noqa: E402
from real_data.train import TrainConfig, Trainer  # noqa: E402


def forward_flops(model: torch.nn.Module, shape: tuple[int, int, int]) -> float:
    """FLOP (2 x multiply-adds) of one image's forward pass through conv and linear layers."""
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Linear):
            macs += output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return 2.0 * macs


class _PerImageDataset(torch.utils.data.Dataset):
    """Official-style data path: one image at a time, numpy pad + random crop (+ flip), to CHW float.

    ``augmentation``: the data set's (real_data.data.AUGMENTATIONS): CIFAR's 4-px reflect padding and flip by
    default, Fashion-MNIST's 2-px zero padding without flip.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, augmentation: Augmentation = Augmentation()):
        self.images, self.labels, self.augmentation = images, labels, augmentation
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, pad = self.images[index], self.augmentation.padding
        height, width = image.shape[:2]
        mode = "reflect" if self.augmentation.fill == "reflect" else "constant"
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
        i, j = self.rng.integers(0, 2 * pad + 1, size=2)
        image = image[i:i + height, j:j + width]
        if self.augmentation.flip and self.rng.random() < 0.5:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255, int(self.labels[index])


def baseline_epoch(model, images: np.ndarray, labels: np.ndarray, device: torch.device, batch_size: int,
                   steps: int, eps: float, step: float, augmentation: Augmentation = Augmentation(),
                   lr: float = 0.1) -> int:
    """Official-style AT epoch: fp32, attack in train mode with loss.backward() (weight gradients too)."""
    loader = torch.utils.data.DataLoader(_PerImageDataset(images, labels, 0, augmentation), batch_size=batch_size,
                                         shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    seen = 0
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = torch.clamp(delta, -x, 1 - x).requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(model(x + delta), y)
            loss.backward()
            grad = delta.grad.detach()
            delta.data = torch.clamp(torch.clamp(delta + step * grad.sign(), -eps, eps), -x, 1 - x)
            delta.grad.zero_()
        loss = F.cross_entropy(model(x + delta.detach()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += x.shape[0]
    return seen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--n", type=int, default=None, help="training images (default 50000 on CUDA, 32 on CPU)")
    p.add_argument("--baseline-n", type=int, default=None, help="images for the baseline (default min(n, 10000))")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 16 on CPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="torch.compile real_data's forward")
    p.add_argument("--compile-mode", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (implies --compile; reduce-overhead = CUDA graphs); an experiment, "
                        "not a real_data.train option")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="real_data with its attacks launched kernel by kernel (eager) instead of from CUDA graphs")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak of the card for the floor ratio (H100/H200 SXM: 989)")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--warmup-batches", type=int, default=None, help="untimed batches first (default 4 on CUDA, 0 CPU)")
    args = p.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    n = args.n or (50000 if cuda else 32)
    batch = args.batch_size or (128 if cuda else 16)
    baseline_n = args.baseline_n or min(n, 10000)
    if cuda:
        torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    data = ImageData(name="random", x_train=torch.from_numpy(images), y_train=torch.from_numpy(labels),
                     x_test=torch.from_numpy(images[:batch]), y_test=torch.from_numpy(labels[:batch]),
                     class_names=tuple(str(i) for i in range(10)), mean=CIFAR10_MEAN, std=CIFAR10_STD)
    config = TrainConfig(dataset="random", batch_size=batch, steps=args.steps, epochs=1,
                         compile=args.compile and not args.compile_mode,
                         cuda_graphs=args.cuda_graphs and not args.compile_mode)
    trainer = Trainer(config, data, device)
    if args.compile_mode:
        trainer.forwards = model_forwards(trainer.model, mode=args.compile_mode)
    flops_image = forward_flops(build_arch("preact-resnet18", n_classes=10, in_channels=3, mean=CIFAR10_MEAN,
                                           std=CIFAR10_STD), (3, 32, 32))
    epoch_flops = n * flops_image * (2 * args.steps + 3)
    warmup = (4 if cuda else 0) if args.warmup_batches is None else args.warmup_batches
    if warmup:  # cudnn autotuning, compilation: train the same trainer on a few batches first, ending in a
        # batch as short as the epoch's last one, so that its shape is compiled / autotuned before timing too
        full = trainer.data
        seen = warmup * batch + n % batch
        trainer.data = replace(full, x_train=full.x_train[:seen], y_train=full.y_train[:seen])
        trainer.fit_epoch()
        trainer.data = full
    _sync(device)
    start = time.perf_counter()
    trainer.fit_epoch()
    _sync(device)
    ours = time.perf_counter() - start
    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), torch {torch.__version__}, "
          f"n={n}, batch={batch}, PGD-{args.steps}, compile={args.compile_mode or args.compile}, "
          f"cuda_graphs={args.cuda_graphs and not (args.compile or args.compile_mode) and cuda}")
    print(f"forward {flops_image / 1e9:.3f} GFLOP/image; epoch {epoch_flops / 1e15:.3f} PFLOP")
    print(f"real_data: {ours:.2f} s, {n / ours:.1f} img/s, {epoch_flops / ours / 1e12:.2f} TFLOP/s, "
          f"{ours / (epoch_flops / (args.peak_tflops * 1e12)):.2f}x the compute floor at {args.peak_tflops:g} TFLOP/s")
    if not args.skip_baseline:
        model = build_arch("preact-resnet18", n_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                           seed=0).to(device)
        if cuda:
            baseline_epoch(model, images[:2 * batch], labels[:2 * batch], device, batch, args.steps, 8 / 255, 2 / 255)
        _sync(device)
        start = time.perf_counter()
        seen = baseline_epoch(model, images[:baseline_n], labels[:baseline_n], device, batch, args.steps, 8 / 255,
                              2 / 255)
        _sync(device)
        base = time.perf_counter() - start
        print(f"baseline (official style, n={seen}): {base:.2f} s, {seen / base:.1f} img/s")
        print(f"speed-up: {(n / ours) / (seen / base):.2f}x (target >= 4x on GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
