"""Grad-CAM of a real-data sweep point's best and last checkpoints on a few test images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .data import FMNIST_COMMAND, MissingData, Sources

# Fashion-MNIST classes whose look is shared: sleeves (T-shirt/top, pullover, coat, shirt) and soles
# (sandal, sneaker, ankle boot); one test image of each
SHARED_PART_CLASSES = {"fashion-mnist": (0, 2, 4, 6, 5, 7, 9)}
DEFAULT_CLASSES = tuple(range(6))


def _chosen_point(points: pd.DataFrame) -> pd.Series:
    """The plain-AT point of the lowest seed at the eps most variants were trained at (the soft-label
    comparison's; the median eps when there is only AT)."""
    from .dynamics import training_variant

    variants = points.apply(training_variant, axis=1)
    at = points[variants == "AT"]
    if at.empty:
        raise MissingData("no plain-AT real-data point", FMNIST_COMMAND)
    counts = points.groupby("eps")["hash"].size()
    eps = counts.idxmax() if counts.max() > counts.min() else sorted(at["eps"])[len(at) // 2]
    chosen = at[at["eps"] == eps] if (at["eps"] == eps).any() else at
    return chosen.sort_values("seed").iloc[0]


def best_last(sources: Sources, out: Path) -> list[Path]:
    """Rows: test images (for Fashion-MNIST one per sleeve and sole class); columns: the image, Grad-CAM of
    the best checkpoint, of the last (``real_data.saliency``), for one ``real-train`` point of the stores."""
    points = sources.kind("real-train")
    if points.empty:
        raise MissingData("no real-data training points in the stores", FMNIST_COMMAND)
    point = _chosen_point(points)
    folder = Path(point["store"]) / "points" / point["hash"]
    files = [folder / "best.pt", folder / "last.pt"]
    if not all(f.is_file() for f in files):
        raise MissingData(f"the checkpoints of point {point['hash']} are not in {folder}", FMNIST_COMMAND)
    from real_data.checkpoints import model_from_checkpoint
    from real_data.data import load_dataset
    from real_data.saliency import saliency_figure

    from . import style

    try:
        data = load_dataset(point["dataset"])
    except ValueError as exc:
        raise MissingData(f"Grad-CAM needs the test images of {point['dataset']}: {exc}") from None
    classes = SHARED_PART_CLASSES.get(str(point["dataset"]).split(":")[0], DEFAULT_CLASSES)
    labels = data.y_test.tolist()
    indices = [labels.index(c) for c in classes if c < data.n_classes and c in labels]
    models, names = [], []
    for which, path in zip(("best", "last"), files, strict=True):
        model, blob = model_from_checkpoint(path, data)
        models.append(model)
        epoch = blob.get("epoch")
        names.append(f"{which}" + (f" (ep. {epoch})" if epoch is not None else ""))
    fig = saliency_figure(models, names, data, indices)
    fig.suptitle(f"Grad-CAM, {point['dataset'].split(':')[0]} eps {point['eps']:g}/255 seed {point['seed']}: "
                 "best vs last checkpoint", fontsize=8)
    fig.tight_layout()
    return style.save(fig, out, "real_gradcam")
