"""Files written whole or not at all (`contrastive_jax.files.atomic_write`), and the export of a
model on a full disk leaving the old file as it was."""

import os
import stat

import pytest

from contrastive_jax import files


def test_a_write_replaces_the_file_with_plain_permissions(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    old_umask = os.umask(0o022)
    try:
        with files.atomic_write(str(path)) as f:
            f.write("new")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old contents")
    with pytest.raises(OSError, match=f"cannot write {path}: No space left"):
        with files.atomic_write(str(path), "wb") as f:
            f.write(b"half of the new")
            raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["model.npz"]
