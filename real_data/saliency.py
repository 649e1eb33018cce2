"""Grad-CAM saliency maps of chosen test images under several checkpoints, saved as one PNG grid.

``python -m real_data.saliency --checkpoint best.pt last.pt --dataset cifar10:DIR --indices 0 7 42 --out grid.png``

Grad-CAM (Selvaraju et al. 2017) on the last activation map ``A = feature_map(x)`` (N, n, h, w):
``alpha_c = mean_{h,w} d score / d A_c``, map ``= ReLU(sum_c alpha_c A_c)``, bilinearly upsampled
to the image and scaled to [0, 1] per image. For these networks the score is
``W[t] . mean_{h,w} A + b[t]``, so ``alpha_c = W[t, c] / (h w)`` and Grad-CAM equals CAM
(Zhou et al. 2016) up to that positive factor; the test checks the autograd map against this.
The paper's reading: the best checkpoint looks at whole objects, the overfitted one at small parts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from synthmodel.atomic import check_figure_suffix, check_output_file, save_figure
from synthmodel.attacks import preserve_mode
from synthmodel.cli import ArgumentParser

from .checkpoints import NORMALIZATIONS, input_normalization_arg, model_from_checkpoint
from .data import DATASET_SPECS, ImageData, load_dataset, to_float
from .device import resolve_device
from .models import ARCH_NAMES, ImageClassifier, arch_name

__all__ = ["grad_cam", "saliency_figure", "saliency_grid", "build_parser", "main"]


def grad_cam(model: ImageClassifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps for target classes.

    Args:
        model: exposes ``feature_map`` and ``head``.
        x: images (N, C, H, W) in [0, 1].
        target: class per image (N,).

    Returns:
        maps (N, H, W) in [0, 1] (all zeros where the map is zero everywhere), float32, detached.
    """
    with preserve_mode(model, "eval"), torch.enable_grad():
        fmap = model.feature_map(x).detach().float().requires_grad_(True)
        logits = model.head(fmap.mean(dim=(2, 3)))
        score = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, fmap)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).clamp(0, 1)


def saliency_grid(models: list[ImageClassifier], names: list[str], data: ImageData, indices: list[int],
                  path: Path, target: str = "label") -> None:
    """:func:`saliency_figure` written to ``path`` atomically."""
    save_figure(saliency_figure(models, names, data, indices, target), path, dpi=120)


def saliency_figure(models: list[ImageClassifier], names: list[str], data: ImageData, indices: list[int],
                    target: str = "label"):
    """Rows: test images; columns: the image, then one Grad-CAM overlay per model (a matplotlib figure).
    ``target``: 'label' (the map of the true class) or 'predicted'."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = to_float(data.x_test[indices]).contiguous()
    y = data.y_test[indices]
    columns = []
    for model in models:
        with torch.no_grad(), preserve_mode(model, "eval"):
            predicted = model(x).argmax(1)
        maps = grad_cam(model, x, y if target == "label" else predicted)
        columns.append((maps.numpy(), predicted.numpy()))
    pixels = x.permute(0, 2, 3, 1).numpy()
    gray = pixels.shape[-1] == 1
    fig, axes = plt.subplots(len(indices), 1 + len(models), figsize=(2.0 * (1 + len(models)), 2.0 * len(indices)),
                             squeeze=False)
    for row, index in enumerate(indices):
        image = pixels[row, ..., 0] if gray else pixels[row]
        axes[row, 0].imshow(image, cmap="gray" if gray else None)
        axes[row, 0].set_title(f"#{index} {data.class_names[int(y[row])]}", fontsize=8)
        for col, ((maps, predicted), name) in enumerate(zip(columns, names, strict=True), start=1):
            axes[row, col].imshow(image, cmap="gray" if gray else None)
            axes[row, col].imshow(maps[row], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[row, col].set_title(f"{name}: pred {data.class_names[int(predicted[row])]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m real_data.saliency",
                       description="Grad-CAM maps of chosen test images under each checkpoint (e.g. best "
                                   "vs last), as one PNG grid.")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="FILE")
    p.add_argument("--dataset", required=True, help=DATASET_SPECS)
    p.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2, 3], help="test image indices")
    p.add_argument("--target", choices=("label", "predicted"), default="label", help="class the map explains")
    p.add_argument("--arch", type=arch_name, default="preact-resnet18", metavar="ARCH",
                   help=f"architecture of foreign checkpoints: {ARCH_NAMES} (default %(default)s)")
    p.add_argument("--width", type=int, default=32, help="small-cnn width of foreign checkpoints")
    p.add_argument("--input-normalization", type=input_normalization_arg, default=None, metavar="NORM",
                   help=f"{NORMALIZATIONS}: how a foreign network normalises its inputs (as in real_data.cas; "
                        "default: stored in the file, else dataset)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (a handful of images: cpu is fine)")
    p.add_argument("--out", required=True, metavar="PNG")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = check_figure_suffix(check_output_file(args.out, "--out"), "--out")  # before anything is read
        device = resolve_device(args.device)
        data = load_dataset(args.dataset)
        n_test = data.x_test.shape[0]
        bad = [i for i in args.indices if not 0 <= i < n_test]
        if bad:
            raise ValueError(f"test indices {bad} outside [0, {n_test})")
        options = {"width": args.width} if args.arch == "small-cnn" else {}
        models = [model_from_checkpoint(p, data, arch=args.arch, arch_options=options,
                                        normalization=args.input_normalization)[0].to(device)
                  for p in args.checkpoint]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if device.type != "cpu":
        models = [m.cpu() for m in models]  # a few images: the grid is drawn from CPU tensors
    saliency_grid(models, [Path(p).stem for p in args.checkpoint], data, list(args.indices), out, args.target)
    print(f"wrote {out} ({len(args.indices)} images x {len(models)} checkpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
