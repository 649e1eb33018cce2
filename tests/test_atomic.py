"""synthmodel.atomic: a target is replaced whole or not at all."""

from __future__ import annotations

import os

import pytest

from synthmodel.atomic import atomic_path, write_text


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".table.csv.") and tmp.suffix == ".csv"
        assert not tmp.exists()  # the writer creates it
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the permissions of any new file


def test_failure_keeps_the_old_content_and_removes_the_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_write_text_and_a_missing_folder(tmp_path):
    write_text(tmp_path / "a.json", "{}\n")
    assert (tmp_path / "a.json").read_text() == "{}\n"
    with pytest.raises(FileNotFoundError):
        write_text(tmp_path / "absent" / "a.json", "{}")
