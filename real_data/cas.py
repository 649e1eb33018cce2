"""Per-checkpoint clean accuracy, PGD-20 robust accuracy, class matrix C and CAS on a test split.

``python -m real_data.cas --checkpoint best.pt last.pt --dataset cifar10:DIR [--out DIR] [--json]``

The metric is the paper's attribution metric, computed by synthmodel's attribution code on the
features ``g(x_adv)`` of PGD adversarial test images (default: l_inf, eps 8/255, 20 steps of eps/4,
random start, model in eval mode, pixels in [0, 1] normalised inside the model). Unlike the
official script it uses *every* test image (it drops the last ``n mod 100`` of each class) and
runs on CPU as well as CUDA. Every checkpoint is attacked with the same random-start stream
(seeded by ``--seed``), so differences between checkpoints are not differences of luck.

Checkpoints: this package's files, the official code's bare PreActResNet-18 state_dicts
(``model_best.pth``, ``model_last.pth``), and the containers of the common AT codebases
(robust_overfitting, adversarial_robustness_pytorch, MadryLab robustness, TRADES, RobustBench;
``--arch wrn-D-W`` for their WideResNets), all read with ``torch.load(weights_only=True)``
(:mod:`real_data.checkpoints`). ``--input-normalization`` says how a foreign network expects its
inputs (RobustBench and TRADES models: ``none``); the default is the paper's, the data set's
statistics inside the model.

Output: a table printed (and ``DIR/cas.csv``, which also has the checkpoint's ``epoch``, empty for
bare state_dicts: ``python -m figures --real DIR`` draws CAS against it), per checkpoint
``DIR/matrix_<i>_<name>.csv`` (K x K, class names as index and header) and one figure of heatmaps
``DIR/heatmaps.png``; ``--json`` prints ``[{"checkpoint", "clean_acc", "robust_acc", "cas", "matrix"}, ...]``
instead of the table.

``--autoattack`` adds ``autoattack_acc``, AutoAttack's robust accuracy on the same images (through
the authors' package, ``pyautoattack`` on PyPI, or ``torchattacks`` when installed; see
:mod:`real_data.autoattack`), to the table and the JSON. C and CAS stay those of the PGD points.
With ``--out``, AutoAttack's progress is kept in ``DIR/autoattack_state/`` after every batch: the
same command run again after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synthmodel.atomic import atomic_path, check_output_dir, check_output_file, save_figure
from synthmodel.attacks import Norm, pgd
from synthmodel.cli import ArgumentParser
from synthmodel.sample import derive_seed

from .autoattack import BACKENDS, VERSIONS, autoattack_correct, backend_label, find_backend
from .checkpoints import NORMALIZATIONS, input_normalization_arg, model_from_checkpoint
from .cpu import tune_allocator
from .data import DATASET_SPECS, ImageData, load_dataset
from .device import MEMORY_FORMATS, PRECISIONS, precision_dtype, resolve_device, use_channels_last
from .evaluate import Evaluation, ThreatModel, evaluate
from .graphs import GraphedPGD
from .models import ARCH_NAMES, ImageClassifier, arch_name

__all__ = ["checkpoint_cas", "plot_heatmaps", "build_parser", "main"]

_DEFAULT_EPS = {"linf": 8.0, "l2": 128.0}  # 1/255 units


def checkpoint_cas(model: ImageClassifier, data: ImageData, threat: ThreatModel, *, seed: int = 0,
                   n: int = 0, batch_size: int = 256, device: torch.device | None = None,
                   amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                   progress: bool = False, desc: str = "cas", pgd_fn: Callable = pgd) -> Evaluation:
    """Clean/robust accuracy and attribution (C, CAS) of ``model`` on the first ``n`` test images (0 = all).

    The attack's random start is drawn from a generator seeded by ``derive_seed(seed, "cas")``,
    consumed batch by batch: the same for every model evaluated with the same arguments. ``pgd_fn``
    runs the attack (a :class:`~real_data.graphs.GraphedPGD` replays CUDA graphs on a GPU).
    """
    device = device or torch.device("cpu")
    if device.type == "cpu":
        tune_allocator()  # fewer page faults (real_data.cpu); results unchanged
    n = n or data.x_test.shape[0]
    images, labels = data.x_test[:n].to(device), data.y_test[:n].to(device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "cas"))
    return evaluate(model, images, labels, threat, generator=generator, batch_size=batch_size, amp_dtype=amp_dtype,
                    channels_last=channels_last, with_attribution=True, progress=progress, desc=desc,
                    pgd_fn=pgd_fn)


def plot_heatmaps(matrices: list[np.ndarray], titles: list[str], path: Path) -> None:
    """One row of C heatmaps (colour scale [-1, 1]) written to ``path`` (temp file, then rename)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    image = None
    for ax, matrix, title in zip(axes[0], matrices, titles, strict=True):
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("class j")
        ax.set_ylabel("class i")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="C[i, j]")
    save_figure(fig, path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m real_data.cas",
                       description="Clean accuracy, PGD robust accuracy, class matrix C and CAS of each "
                                   "checkpoint on the full test split.")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="FILE",
                   help="real_data checkpoints, the official code's state_dicts, or the checkpoints of the common "
                        "AT codebases (see real_data/README.md)")
    p.add_argument("--dataset", required=True, help=DATASET_SPECS)
    p.add_argument("--arch", type=arch_name, default="preact-resnet18", metavar="ARCH",
                   help=f"architecture of foreign checkpoints: {ARCH_NAMES} (default %(default)s, the official "
                        "code's)")
    p.add_argument("--width", type=int, default=32, help="small-cnn width of foreign checkpoints")
    p.add_argument("--input-normalization", type=input_normalization_arg, default=None, metavar="NORM",
                   help=f"{NORMALIZATIONS}: the statistics a foreign network normalises its [0, 1] inputs with "
                        "(RobustBench and TRADES models: none). Default: those stored in the file (real_data, "
                        "MadryLab robustness), else dataset (the paper's); given, it overrides")
    p.add_argument("--norm", choices=[n.value for n in Norm], default="linf", help="threat-model norm of the attack")
    p.add_argument("--eps", type=float, default=None, help="1/255 units (default 8 linf, 128 l2)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--step-size", type=float, default=None, help="1/255 units (default eps/4)")
    p.add_argument("--n", type=int, default=0, help="first n test images (0 = all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's random starts")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="of the attack; features are float32")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="auto = channels_last (faster on CUDA and on CPU)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="launch the attack's kernels one by one instead of replaying CUDA graphs")
    p.add_argument("--autoattack", action="store_true",
                   help="also report AutoAttack's robust accuracy (needs the pyautoattack, autoattack or torchattacks "
                        "package); resumable with --out")
    p.add_argument("--autoattack-version", choices=VERSIONS, default="standard", help="AutoAttack's attack set")
    p.add_argument("--autoattack-backend", choices=BACKENDS, default="auto",
                   help="auto: the first installed of pyautoattack (the authors' package), autoattack (the "
                        "authors' git install), torchattacks")
    p.add_argument("--out", metavar="DIR", help="write cas.csv, matrix_*.csv and heatmaps.png here")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no line per checkpoint loaded")
    return p


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        eps = _DEFAULT_EPS[args.norm] if args.eps is None else args.eps
        if not math.isfinite(eps) or eps < 0 or args.steps < 1 or args.n < 0 or args.batch_size < 1:
            raise ValueError("eps must be >= 0, steps and batch size >= 1, n >= 0")
        threat = ThreatModel(eps=eps / 255.0, norm=args.norm, steps=args.steps,
                             step_size=None if args.step_size is None else args.step_size / 255.0)
        backend = find_backend(args.autoattack_backend) if args.autoattack else None
        if backend is not None and eps == 0:
            raise ValueError("--autoattack needs eps > 0")
        out = Path(args.out) if args.out else None
        if out is not None:  # before anything is read or computed
            check_output_dir(out, "--out")
            for name in ("cas.csv", "heatmaps.png") if out.is_dir() else ():
                check_output_file(out / name, "--out")
        data = load_dataset(args.dataset)
        if args.n > data.x_test.shape[0]:
            raise ValueError(f"--n {args.n} exceeds the {data.x_test.shape[0]} test images of {args.dataset}")
        options = {"width": args.width} if args.arch == "small-cnn" else {}
        # load every checkpoint first: a bad file fails before any long computation
        loaded = [model_from_checkpoint(path, data, arch=args.arch, arch_options=options,
                                        normalization=args.input_normalization) for path in args.checkpoint]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for path, (_, blob) in zip(args.checkpoint, loaded, strict=True):
            print(f"{path}: {blob['container']}; input normalisation {blob['input_normalization']}", file=sys.stderr)
    amp_dtype = precision_dtype(args.precision, device)
    channels_last = use_channels_last(args.memory_format, device)
    results: list[dict[str, Any]] = []
    matrices: list[np.ndarray] = []
    failure: str | None = None
    for index, (path, (model, blob)) in enumerate(zip(args.checkpoint, loaded, strict=True)):
        ev = checkpoint_cas(model, data, threat, seed=args.seed, n=args.n, batch_size=args.batch_size, device=device,
                            amp_dtype=amp_dtype, channels_last=channels_last, progress=not args.quiet,
                            desc=Path(path).name, pgd_fn=GraphedPGD() if args.cuda_graphs else pgd)
        row = {"checkpoint": str(path), "epoch": blob.get("epoch"), "clean_acc": ev.clean_acc,
               "robust_acc": ev.robust_acc, "cas": _finite(ev.attribution.cas), "n": ev.n, "norm": args.norm,
               "eps": eps, "steps": args.steps, "container": blob["container"],
               "input_normalization": blob["input_normalization"]}
        if backend is not None:
            n = ev.n  # the images PGD evaluated
            row.update(autoattack_acc=math.nan, autoattack=f"{backend_label(backend)}:{args.autoattack_version}")
            try:
                correct = autoattack_correct(model, data.x_test[:n].to(device), data.y_test[:n].to(device),
                                             eps=threat.eps, norm=args.norm, version=args.autoattack_version,
                                             backend=backend, seed=args.seed, batch_size=args.batch_size,
                                             progress=not args.quiet, desc=f"autoattack {Path(path).name}",
                                             state_dir=None if out is None else out / "autoattack_state")
                row["autoattack_acc"] = correct.float().mean().item()
            except ValueError as exc:  # the package failed or returned points outside the threat model
                failure = f"{path}: {exc}"
        model.cpu()
        matrix = ev.attribution.matrix
        matrices.append(matrix)
        results.append(row)
        if out is not None:
            frame = pd.DataFrame(matrix, index=list(data.class_names), columns=list(data.class_names))
            target = out / f"matrix_{index}_{Path(path).stem}.csv"
            with atomic_path(target) as tmp:
                frame.to_csv(tmp)
        if failure is not None:
            break
    table = pd.DataFrame(results)
    if out is not None:
        with atomic_path(out / "cas.csv") as tmp:
            table.to_csv(tmp, index=False)
        titles = [f"{Path(r['checkpoint']).name}: CAS " + ("nan" if r["cas"] is None else f"{r['cas']:.2f}")
                  for r in results]
        plot_heatmaps(matrices, titles, out / "heatmaps.png")
    if failure is not None:  # what was computed is in --out (autoattack_acc NaN for this checkpoint)
        print(f"error: AutoAttack failed on {failure}", file=sys.stderr)
        return 2
    shown = ["checkpoint", "clean_acc", "robust_acc", *(["autoattack_acc"] if backend else []), "cas"]
    if args.json:
        payload = [{**{k: r[k] for k in shown}, "matrix": [[_finite(float(v)) for v in row] for row in m]}
                   for r, m in zip(results, matrices, strict=True)]
        print(json.dumps(payload))
    else:
        print(table[shown].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
