"""write_selection writes its three files as one unit; select from a loaded pool."""
import pytest

from taskdiv.selection import commands as selection
from taskdiv.selection.commands import SelectConfig, select, write_selection


def _snapshot(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _second_selection_over_a_first(small_pool, tmp_path):
    """OUT holding a first selection (and its snapshot), and a second one ready to write over it."""
    out = tmp_path / "sel"
    first = SelectConfig(pool=str(small_pool), budget="4", strategy="task-diversity", out=str(out))
    write_selection(out, *select(first), first)
    second = SelectConfig(pool=str(small_pool), budget="6", strategy="random", seed=5, out=str(out))
    return (out, _snapshot(out), second, *select(second))


@pytest.mark.parametrize("killed_in", ["dump_table", "dump_yaml", "dump_jsonl"])
def test_a_kill_while_writing_leaves_the_previous_selection_whole(small_pool, tmp_path, monkeypatch, killed_in):
    out, before, second, rows, allocation = _second_selection_over_a_first(small_pool, tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(selection, killed_in, killed)
    with pytest.raises(KeyboardInterrupt):
        write_selection(out, rows, allocation, second)
    assert _snapshot(out) == before, "OUT mixes two runs"
    assert sorted(p.name for p in out.iterdir()) == ["allocation.csv", "config.yaml", "selection.jsonl"]
    monkeypatch.undo()
    write_selection(out, rows, allocation, second)
    assert len((out / "selection.jsonl").read_text().splitlines()) == 6


def test_a_failed_rename_puts_back_the_files_already_replaced(small_pool, tmp_path, monkeypatch):
    """Issue 12, case 5: the set is replaced as one unit, also when the last rename fails."""
    import os

    from taskdiv.common import atomic as fileio

    out, before, second, rows, allocation = _second_selection_over_a_first(small_pool, tmp_path)
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("selection.jsonl") and str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError):
        write_selection(out, rows, allocation, second)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["allocation.csv", "config.yaml", "selection.jsonl"]


def test_select_from_a_loaded_pool_equals_select_from_the_spec(small_pool, tmp_path):
    from taskdiv.pool.load import load_pool

    cfg = SelectConfig(pool=str(small_pool), budget="7", strategy="task-diversity", seed=2, out=str(tmp_path))
    pool = load_pool(cfg.pool, cfg.field_map())
    before = pool.frame.copy()
    rows, allocation = select(cfg, pool=pool)
    expected_rows, expected_allocation = select(cfg)
    assert rows.equals(expected_rows) and allocation.equals(expected_allocation)
    assert pool.frame.equals(before)
