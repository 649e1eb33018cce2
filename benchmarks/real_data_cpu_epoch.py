"""One CPU AT epoch of the paper-fmnist model: real_data's trainer against an official-style loop, same run.

    OMP_NUM_THREADS=1 python benchmarks/real_data_cpu_epoch.py            # the preset's set-up, 1 thread

Both sides train the same network (the preset's small CNN, Fashion-MNIST 28 x 28 x 1 from the installed
data set, else random images of that shape) for one epoch of PGD-10 AT on the same number of images.
Times are CPU seconds of this process (``time.process_time``; on a shared machine wall time measures the
neighbours) and wall seconds beside them; the ratios are of CPU seconds.

* **real_data**: ``real_data.train.Trainer.fit_epoch`` with its defaults on CPU: the uint8 split as one
  tensor, batched crop on it, attack gradients with respect to the perturbation only (weights frozen),
  channels_last memory.
* **official style** (for comparison only; written here, not the official code): a DataLoader over a
  Dataset doing per-image numpy padding and cropping (host tensors per batch, as torchvision's
  transforms), fp32, contiguous NCHW, PGD whose steps call ``loss.backward()`` and so also build weight
  gradients, then the SGD step (``benchmarks/real_data_epoch.py``'s loop with this data set's augmentation).

Then what the settings are worth, each against real_data's default in the same run: contiguous memory
instead of channels_last; 2 threads instead of 1 (``torch.set_num_threads``); and whether training E seeds
as one batched network pays: E small CNNs as one network with grouped convolutions (each model its own
channel block, batch norm per channel, so the E trainings are separate in the mathematics) and with
``torch.func.vmap`` over stacked parameters (whose convolution batching rule is itself a grouped
convolution), one AT batch each (the attack's steps with input gradients, the training step with weight
gradients), against E single-model batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_data_epoch import baseline_epoch  # noqa: E402

from real_data.data import AUGMENTATIONS, ImageData, load_dataset, train_subset  # noqa: E402
from real_data.models import SmallCNN, build_arch  # noqa: E402
from real_data.train import TrainConfig, Trainer  # noqa: E402
from synthmodel.sample import derive_seed  # noqa: E402

# the preset's training set-up (experiments.paper_fmnist.SETUP once it is registered there)
SETUP = {"arch": "small-cnn", "width": 16, "train_n": 500, "batch_size": 32, "steps": 10, "eps": 8.0,
         "step_size": 2.0, "augment": False, "eval_n": 500, "eval_steps": 10}


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    cpu, wall = _clock()
    return cpu - start[0], wall - start[1]


def fashion_mnist_or_random(n: int) -> tuple[ImageData, str]:
    """The installed Fashion-MNIST (training split cut to n by the trainer), else n random 28 x 28 images."""
    try:
        return load_dataset("fashion-mnist"), "Fashion-MNIST"
    except ValueError:
        rng = np.random.default_rng(0)
        images = torch.from_numpy(rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8))
        labels = torch.from_numpy(rng.integers(0, 10, size=n))
        return ImageData(name="fashion-mnist", x_train=images, y_train=labels, x_test=images[:100],
                         y_test=labels[:100], class_names=tuple(map(str, range(10))), mean=(0.286,), std=(0.353,),
                         augmentation=AUGMENTATIONS["fashion-mnist"]), "random 28x28 images"


def trainer_epoch(config: TrainConfig, data: ImageData) -> tuple[float, float]:
    """CPU and wall seconds of one ``Trainer.fit_epoch``."""
    trainer = Trainer(config, data, torch.device("cpu"))
    full = trainer.data  # warm-up (oneDNN primitives, allocator): two batches of the same shapes, untimed
    trainer.data = dataclasses.replace(full, x_train=full.x_train[:2 * config.batch_size],
                                       y_train=full.y_train[:2 * config.batch_size])
    trainer.fit_epoch()
    trainer.data = full
    start = _clock()
    trainer.fit_epoch()
    return _since(start)


def official_epoch(config: TrainConfig, data: ImageData) -> tuple[float, float]:
    """CPU and wall seconds of one official-style epoch on the same stratified subset."""
    subset = train_subset(data, config.train_n, derive_seed(config.seed, "train-n"))
    model = build_arch(config.arch, n_classes=data.n_classes, in_channels=1, mean=data.mean, std=data.std, seed=0,
                       width=config.width)
    augmentation = data.augmentation if config.augment else dataclasses.replace(data.augmentation, padding=0)
    images, labels = subset.x_train.numpy(), subset.y_train.numpy()
    for n in (2 * config.batch_size, len(images)):  # warm-up on two batches (untimed), then the epoch
        start = _clock()
        baseline_epoch(model, images[:n], labels[:n], torch.device("cpu"), config.batch_size, config.steps,
                       config.eps_pixels, config.step_pixels, augmentation, lr=config.lr)
    return _since(start)


class GroupedSmallCNN(nn.Module):
    """E SmallCNNs as one network: model e owns channel block e of every layer (grouped convolutions, batch
    norm per channel); input (N, E, H, W) holds model e's images in channel e; logits (E, N, K)."""

    def __init__(self, models: list[SmallCNN]):
        super().__init__()
        self.members = len(models)
        layers = []
        for index, layer in enumerate(models[0].body):
            if isinstance(layer, nn.Conv2d):
                grouped = nn.Conv2d(self.members * layer.in_channels, self.members * layer.out_channels, 3,
                                    padding=1, bias=False, groups=self.members)
                grouped.weight.data = torch.cat([m.body[index].weight.data for m in models])
                layers.append(grouped)
            elif isinstance(layer, nn.BatchNorm2d):
                norm = nn.BatchNorm2d(self.members * layer.num_features)
                norm.weight.data = torch.cat([m.body[index].weight.data for m in models])
                norm.bias.data = torch.cat([m.body[index].bias.data for m in models])
                layers.append(norm)
            else:
                layers.append(layer)
        self.body = nn.Sequential(*layers)
        self.head_weight = nn.Parameter(torch.stack([m.head.weight.data for m in models]))   # (E, K, n)
        self.head_bias = nn.Parameter(torch.stack([m.head.bias.data for m in models]))       # (E, K)
        self.register_buffer("mean", models[0].input_mean.clone())
        self.register_buffer("std", models[0].input_std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body((x - self.mean) / self.std).mean(dim=(2, 3))          # (N, E n)
        features = features.view(x.shape[0], self.members, -1)
        return torch.einsum("nef,ekf->enk", features, self.head_weight) + self.head_bias[:, None, :]


def batched_at_batch(config: TrainConfig, members: int, repeats: int = 3) -> dict[str, float]:
    """ms per model of one AT batch (``config.steps`` PGD steps with input gradients, then the training step's
    weight gradients; batch norm in train mode) for E single models, E models as one grouped network, and E
    models through torch.func.vmap. The grouped network is checked equal to its members first."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    n, generator = config.batch_size, torch.Generator().manual_seed(0)
    eps, step = config.eps_pixels, config.step_pixels
    models = [build_arch("small-cnn", n_classes=10, in_channels=1, mean=(0.286,), std=(0.353,), seed=s,
                         width=config.width).to(memory_format=torch.channels_last) for s in range(members)]
    x = torch.rand(members, n, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (members, n), generator=generator)
    grouped = GroupedSmallCNN(models).to(memory_format=torch.channels_last)
    x_grouped = x[:, :, 0].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)    # (N, E, H, W)
    with torch.no_grad():
        reference = torch.stack([m(x[e].contiguous(memory_format=torch.channels_last)) for e, m in enumerate(models)])
        assert torch.allclose(grouped(x_grouped), reference, atol=1e-4), "grouped network differs from its members"

    def at_batch(model, inputs, labels):
        model.train()
        delta = torch.zeros_like(inputs)
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in range(config.steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(inputs + delta).reshape(-1, 10), labels.reshape(-1), reduction="sum")
            (gradient,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * gradient.sign()).clamp(-eps, eps)
        for p in model.parameters():
            p.requires_grad_(True)
        F.cross_entropy(model(inputs + delta).reshape(-1, 10), labels.reshape(-1)).backward()

    def singles():
        for e, m in enumerate(models):
            at_batch(m, x[e].contiguous(memory_format=torch.channels_last), y[e])

    def as_one():
        at_batch(grouped, x_grouped, y)

    params, buffers = stack_module_state(models)
    skeleton = build_arch("small-cnn", n_classes=10, in_channels=1, mean=(0.286,), std=(0.353,),
                          width=config.width).to("meta")

    def member_loss(p, b, xe, ye):
        return F.cross_entropy(functional_call(skeleton, (p, b), (xe,)), ye, reduction="sum")

    input_grad, weight_grad = vmap(grad(member_loss, argnums=2)), vmap(grad(member_loss, argnums=0))

    def vmapped():
        delta = torch.zeros_like(x)
        for _ in range(config.steps):
            delta = (delta + step * input_grad(params, buffers, x + delta, y).sign()).clamp(-eps, eps)
        weight_grad(params, buffers, x + delta, y)

    out = {}
    for name, fn in (("single", singles), ("grouped", as_one), ("vmap", vmapped)):
        fn()
        start = time.process_time()
        for _ in range(repeats):
            fn()
        out[name] = (time.process_time() - start) / repeats / members * 1e3
    return out


MEASUREMENTS = ("official", "real_data", "contiguous", "default-allocator", "two-threads", "evaluation",
                "evaluation-default-allocator")


def evaluation_epoch(config: TrainConfig, data: ImageData) -> tuple[float, float]:
    """CPU and wall seconds of one per-epoch test evaluation (PGD, CAS) as the preset runs it, after a warm-up."""
    trainer = Trainer(config, data, torch.device("cpu"))
    trainer.evaluate_test()
    start = _clock()
    trainer.evaluate_test()
    return _since(start)


def measure(name: str, config: TrainConfig, data: ImageData) -> tuple[float, float]:
    """One measurement, in a process of its own (the allocator setting and thread pool are process-wide)."""
    import real_data.train as trainer_module

    torch.set_num_threads(2 if name == "two-threads" else 1)
    if name == "official":
        return official_epoch(config, data)
    if name.endswith("default-allocator"):
        trainer_module.tune_allocator = lambda: False
    if name == "contiguous":
        config = dataclasses.replace(config, memory_format="contiguous")
    return evaluation_epoch(config, data) if name.startswith("evaluation") else trainer_epoch(config, data)


def _run_measurement(name: str, argv: list[str]) -> tuple[float, float]:
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, *argv, "--measure", name], check=True, capture_output=True,
                         text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-n", type=int, default=SETUP["train_n"], help="images per epoch (default %(default)s)")
    p.add_argument("--width", type=int, default=SETUP["width"])
    p.add_argument("--batch-size", type=int, default=SETUP["batch_size"])
    p.add_argument("--steps", type=int, default=SETUP["steps"])
    p.add_argument("--members", type=int, default=3, help="seeds trained as one batched network (default 3)")
    p.add_argument("--skip-settings", action="store_true", help="only real_data against the official-style loop")
    p.add_argument("--measure", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    settings = {**SETUP, "train_n": args.train_n, "width": args.width, "batch_size": args.batch_size,
                "steps": args.steps}
    data, source = fashion_mnist_or_random(args.train_n)
    config = TrainConfig(dataset="fashion-mnist", epochs=1, **settings)
    if args.measure:
        import json

        print(json.dumps(measure(args.measure, config, data)))
        return 0
    argv = ["--train-n", str(args.train_n), "--width", str(args.width), "--batch-size", str(args.batch_size),
            "--steps", str(args.steps)]
    print(f"torch {torch.__version__}, {source}, small-cnn width {args.width}, n={args.train_n}, batch "
          f"{args.batch_size}, PGD-{args.steps}, eps {config.eps:g}/255, augment {config.augment}; each measurement "
          "in a fresh process, 1 thread unless said")
    names = MEASUREMENTS[:2] if args.skip_settings else MEASUREMENTS
    times = {name: _run_measurement(name, argv) for name in names}
    ours = times["real_data"][0]
    labels = {"official": "official style", "real_data": "real_data (defaults)",
              "contiguous": "real_data, contiguous memory", "default-allocator": "real_data, glibc's default malloc",
              "two-threads": "real_data, 2 threads", "evaluation": "its test evaluation (defaults)",
              "evaluation-default-allocator": "its test evaluation, default malloc"}
    for name, (cpu, wall) in times.items():
        evaluation = name.startswith("evaluation")
        if name == "evaluation":
            print(f"per-epoch test evaluation: {config.eval_n} images, PGD-{config.eval_steps}, batch "
                  f"{config.eval_batch_size}, CAS on its inputs")
        images, reference = (config.eval_n, times["evaluation"][0]) if evaluation else (args.train_n, ours)
        print(f"{labels[name]:<36} {cpu:7.2f} CPU s {wall:7.2f} s wall  {images / cpu:6.0f} img/CPU s  "
              f"CPU s / default's {cpu / reference:5.2f}")
    print(f"speed-up against the official-style loop: {times['official'][0] / ours:.2f}x in CPU seconds, "
          f"{times['official'][1] / times['real_data'][1]:.2f}x in wall time (target >= 1.5x)")
    if not args.skip_settings:
        torch.set_num_threads(1)
        step = batched_at_batch(config, args.members)
        print(f"{args.members} seeds as one network, one AT batch ({args.steps} attack steps + training step), ms "
              f"per model: single {step['single']:.1f}, grouped convolutions {step['grouped']:.1f} "
              f"({step['single'] / step['grouped']:.2f}x), torch.func.vmap {step['vmap']:.1f} "
              f"({step['single'] / step['vmap']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
