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

A command line checks every place it will write *before* it computes anything (:func:`check_output_file`,
:func:`check_output_dir`) and every file it will read (:func:`check_input_file`), so a wrong path costs one
line ``error: ...`` and nothing else, never a finished run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text", "save_figure", "check_output_file", "check_output_dir", "check_input_file",
           "check_figure_suffix"]


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
        _remove_quietly(tmp)  # the writer's error is the one to report, not a failed clean-up
        raise


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


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


# -- checks before work ----------------------------------------------------------------------------------------
def _kind(path: Path) -> str:
    """What a file system entry is, in words."""
    mode = path.stat().st_mode
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _probe_folder(folder: Path, what: str) -> None:
    """ValueError unless a new file can be created in ``folder`` (tried, then removed: permission bits do not
    tell for root, read-only mounts or full quotas)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".write-check-")
    except OSError as exc:
        raise ValueError(f"cannot write {what}: folder {folder} refuses new files ({exc.strerror or exc})") from None
    os.close(fd)
    _remove_quietly(Path(name))


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file (atomically, by :func:`atomic_path`), creating nothing.

    The target must be absent or a regular file (a directory, a device such as ``/dev/null`` or a pipe is
    refused: the atomic rename would replace it), and its folder must exist and accept new files.

    Raises:
        ValueError: one line naming the path and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} is {_kind(path)}, not a file: give a file name")
    folder = path.resolve().parent
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is {_kind(existing)}, not a folder")
    if existing != folder:
        raise ValueError(f"{what} {path}: folder {path.parent} does not exist")
    _probe_folder(folder, f"{what} {path}")
    return path


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Check that ``path`` is a folder that accepts new files, or can be created as one; creates nothing.

    Raises:
        ValueError: one line naming the path and the reason (a file in the way, a folder refusing files).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is {_kind(path)}, not a folder")
    existing = _nearest_existing(path.resolve())  # where the folders would be created
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {existing} is {_kind(existing)}, not a folder")
    _probe_folder(existing, f"{what} {path}")
    return path


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """Check that ``path`` is a regular file that can be opened for reading.

    Raises:
        ValueError: one line saying what is wrong: absent, a directory, a device or another non-regular entry,
        unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is {_kind(path)}, not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    return path


def check_figure_suffix(path: str | Path, what: str = "figure") -> Path:
    """Check that matplotlib can write a figure in the format ``path``'s suffix names (.png, .pdf, .svg, ...).

    Raises:
        ValueError: no suffix, or one matplotlib does not write (the formats it does are listed).
    """
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(f"{what} {path}: the suffix must name an image format ({', '.join(sorted(formats))})")
    return path
