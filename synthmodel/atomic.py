"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every output of the project (JSON, CSV, checkpoints, figures) is written through :func:`atomic_path`: the
writer fills a temporary file in the target's own folder (so the final rename stays on one file system,
where ``os.replace`` is atomic), which replaces the target only when the writer returned; if it raised,
the temporary file is removed and the target keeps its previous content. Usage::

    with atomic_path(out / "points.csv") as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(out / "last.pt") as tmp:
        torch.save(state, tmp)
    with atomic_path(out / "curves.pdf") as tmp:
        fig.savefig(tmp, format="pdf")
    write_text(out / "config.json", text)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text", "save_figure"]


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target``; on success rename it over ``target``, on failure remove it.

    The temporary name is hidden (leading dot), unique (process id and a random part: two writers never
    share it) and ends in the target's suffix, so tools that choose a format by the extension (matplotlib,
    pandas) write the intended one. The writer creates the file, so it gets the permissions of any new file.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """``fig.savefig(path, **savefig_kwargs)`` atomically (the format from the suffix), then close the figure."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
