"""Atomic outputs: files and directories appear whole, with the usual permissions."""
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskdiv.common.atomic import atomic_dir
from taskdiv.common.writers import write_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"


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


def _read_lines(path):
    import json

    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _plain(value):
    import math

    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


# Text the Arrow path writes (no control characters but newline, tab and return).
_CONTROL = [chr(c) for c in [*range(9), 11, 12, *range(14, 32), 127]]
_PLAIN_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters=_CONTROL))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(), _PLAIN_TEXT, _PLAIN_TEXT), st.integers(-2**62, 2**62),
                          st.one_of(st.floats(allow_infinity=False), st.just(float("nan"))), st.booleans()),
                min_size=1, max_size=30),
       st.booleans())
def test_dump_jsonl_frames_read_back_to_their_values(tmp_path_factory, rows, arrow_strings):
    # Selections are written through the Arrow fast path; every text (quotes, backslashes,
    # newlines, any Unicode, control characters through the pandas fallback), number,
    # NaN (null) and bool must read back exactly.
    import pandas as pd

    from taskdiv.common.writers import dump_jsonl

    frame = pd.DataFrame(rows, columns=["text", "n", "x", "flag"])
    if arrow_strings and frame["text"].notna().all():
        frame["text"] = frame["text"].astype("str")
    path = tmp_path_factory.mktemp("jsonl") / "out.jsonl"
    assert dump_jsonl(path, frame) == len(rows)
    got = _read_lines(path)
    want = [{k: _plain(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    assert got == want


def test_dump_jsonl_uses_arrow_for_plain_columns_and_pandas_for_the_rest(tmp_path):
    import pandas as pd

    from taskdiv.common.writers import _dump_jsonl_arrow

    assert _dump_jsonl_arrow(tmp_path / "a.jsonl", pd.DataFrame({"t": ["a\n\"b\"\\"], "n": [1], "x": [0.1]}))
    assert open(tmp_path / "a.jsonl").read() == '{"t":"a\\n\\"b\\"\\\\","n":1,"x":0.1}\n'
    assert not _dump_jsonl_arrow(tmp_path / "b.jsonl", pd.DataFrame({"t": ["bell \x07"]}))
    assert not _dump_jsonl_arrow(tmp_path / "c.jsonl", pd.DataFrame({"choices": [["a", "b"]]}))
    assert not (tmp_path / "b.jsonl").exists() and not (tmp_path / "c.jsonl").exists()


# ----------------------------------------------------------------------------- leftovers of a killed run

_KILLED = """
import os, signal, sys
from taskdiv import cli
import {module} as where
write = where.dump_jsonl
def write_then_die(path, *args, **kwargs):
    write(path, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the temporary written, not yet renamed
where.dump_jsonl = write_then_die
cli.main(sys.argv[1:])
"""

_COMMANDS = {  # command: (the module whose dump_jsonl it writes with, the files it leaves in OUT's folder)
    "select": ("taskdiv.selection.commands", ["allocation.csv", "config.yaml", "pool.jsonl", "selection.jsonl"]),
    "pool export": ("taskdiv.common.writers", ["out.jsonl", "pool.jsonl"]),
}


def _command(name, pool, folder):
    if name == "select":
        return ["select", str(pool), "--budget", "4", "--strategy", "random", "--out", str(folder), "-q"]
    return ["pool", "export", str(pool), "--out", str(folder / "out.jsonl"), "-q"]


@pytest.mark.parametrize("name", list(_COMMANDS))
def test_a_killed_run_leaves_temporaries_that_the_next_run_of_the_command_removes(tmp_path, small_pool, name):
    """SIGKILL between writing an output's temporary and renaming it. Before: the next select or
    export wrote its outputs and left the .NAME.XXXXXXXX.tmp beside them for good."""
    import signal
    import subprocess
    import sys

    from taskdiv import cli

    module, files = _COMMANDS[name]
    folder = small_pool.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", _KILLED.format(module=module), *_command(name, small_pool, folder)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert any(n.endswith(".tmp") for n in os.listdir(folder)), os.listdir(folder)
    assert cli.main(_command(name, small_pool, folder)) == 0
    assert sorted(os.listdir(folder)) == files


def test_planted_leftovers_of_the_same_output_go_and_the_others_stay(tmp_path, small_pool):
    """Temporaries and rename backups named as atomic.py names them (.NAME.XXXXXXXX.tmp,
    .NAME.PID.N.old), held by no process: the next write of NAME removes them, and only them."""
    from taskdiv import cli

    out = tmp_path / "sel"
    out.mkdir()
    stale = [".selection.jsonl.k3x_9q2a.tmp", ".allocation.csv.abcdefgh.tmp", ".selection.jsonl.4242.2.old"]
    others = [".scores.csv.abcdefgh.tmp", ".selection.jsonl.gz.abcdefgh.tmp", ".selection.jsonl.keep",
              "selection.jsonl.abcdefgh.tmp"]
    for name in stale + others:
        (out / name).write_text("left over")
    assert cli.main(_command("select", small_pool, out)) == 0
    assert sorted(os.listdir(out)) == sorted(["allocation.csv", "config.yaml", "selection.jsonl", *others])


def test_a_temporary_a_live_writer_holds_is_left_alone(tmp_path):
    """Only provably stale temporaries go: one a live writer holds (here this process, through
    another open file) stays, and that writer's rename still lands."""
    from taskdiv.common.atomic import atomic_path
    from taskdiv.common.writers import write_text

    target = tmp_path / "out.txt"
    with atomic_path(target) as live:
        live.write_text("first")
        write_text(target, "second")  # another run writing the same output meanwhile
        assert live.exists() and target.read_text() == "second"
    assert target.read_text() == "first" and os.listdir(tmp_path) == ["out.txt"]



def test_a_killed_directory_writers_staging_goes_with_the_next_write_and_only_it(tmp_path):
    """atomic_dir's staging directory (.NAME-XXXXXXXX/, e.g. a killed `train`'s adapter/ or a
    model conversion's ~1 GB) left by a SIGKILLed writer: the next write of NAME removes it.
    One a live writer holds, and anything else named like it, stays."""
    import fcntl
    import signal
    import subprocess
    import sys

    target = tmp_path / "adapter"
    script = ("import os, signal, sys\nfrom taskdiv.common.atomic import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as staging:\n"
              "    (staging / 'weights.bin').write_bytes(b'x' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (left,) = [p.name for p in tmp_path.iterdir()]
    assert left.startswith(".adapter-") and len(left) == len(".adapter-") + 8, left
    # Planted beside it: a live writer's staging (held), and names that are not this output's staging.
    live = tmp_path / ".adapter-live_123"
    live.mkdir()
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    others = [".adapter-abc", ".merged-abcd1234", ".adapter-abcd12345"]
    for name in others:
        (tmp_path / name).mkdir()
    (tmp_path / ".adapter-file1234").write_text("a file, not a staging directory")
    try:
        with atomic_dir(target) as staging:
            (staging / "weights.bin").write_text("new")
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["adapter", ".adapter-live_123", ".adapter-file1234", *others])
    assert [p.name for p in target.iterdir()] == ["weights.bin"]
    with atomic_dir(target) as staging:  # no one holds the live one now
        (staging / "weights.bin").write_text("newer")
    assert ".adapter-live_123" not in os.listdir(tmp_path)

# ----------------------------------------------------------------------------- a library's errno


@pytest.mark.parametrize("message, code", [
    ("Error writing bytes to file. Detail: [errno 28] No space left on device", 28),  # Arrow
    ("I/O error: No space left on device (os error 28)", 28),  # safetensors (Rust)
    ("IOError: [Errno 13] Permission denied", 13),
    ("file write failed", None), ("errno 28 without brackets", None)])
def test_the_errno_a_library_gives_in_its_message(message, code):
    from taskdiv.common.errors import errno_in

    assert errno_in(message) == code


def test_an_oserror_with_its_errno_only_in_the_text_is_said_in_the_systems_words(tmp_path):
    """Before: only Arrow's '[errno N]' was read; safetensors' '(os error 28)' came out in its own words."""
    from taskdiv.common.atomic import atomic_path

    target = tmp_path / "out.bin"
    with pytest.raises(OSError) as raised:
        with atomic_path(target):
            raise OSError("I/O error: No space left on device (os error 28)")
    assert (raised.value.errno, raised.value.filename, raised.value.strerror) == \
        (28, str(target), "No space left on device")
