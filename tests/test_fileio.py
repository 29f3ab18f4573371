"""Atomic outputs: files and directories appear whole, with the usual permissions."""
import os
import stat

import pytest

from taskdiv.fileio import atomic_dir, write_jsonl


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_dir_replaces_on_success_only(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging directory left behind"


def test_outputs_get_the_umask_mode_not_the_private_temp_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as staging:
            (staging / "x").write_text("x")
        write_jsonl(tmp_path / "f.jsonl", [{"a": 1}])
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "d") == 0o755
    assert _mode(tmp_path / "f.jsonl") == 0o644
