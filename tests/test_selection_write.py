"""write_selection's order (selection.jsonl, the resume marker, last) and select from a loaded pool."""
import pytest

from taskdiv import selection
from taskdiv.selection import SelectConfig, select, write_selection


@pytest.mark.parametrize("killed_in", ["write_table", "write_yaml"])
def test_kill_before_the_last_file_leaves_no_selection_marker(small_pool, tmp_path, monkeypatch, killed_in):
    out = tmp_path / "sel"
    cfg = SelectConfig(pool=str(small_pool), budget="4", strategy="task-diversity", out=str(out))
    rows, allocation = select(cfg)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(selection, killed_in, killed)
    with pytest.raises(KeyboardInterrupt):
        write_selection(out, rows, allocation, cfg)
    assert not (out / "selection.jsonl").exists(), "selection.jsonl written before the files it marks"
    monkeypatch.undo()
    write_selection(out, rows, allocation, cfg)
    assert sorted(p.name for p in out.iterdir()) == ["allocation.csv", "config.yaml", "selection.jsonl"]


def test_select_from_a_loaded_pool_equals_select_from_the_spec(small_pool, tmp_path):
    from taskdiv.data import load_pool

    cfg = SelectConfig(pool=str(small_pool), budget="7", strategy="task-diversity", seed=2, out=str(tmp_path))
    pool = load_pool(cfg.pool, cfg.field_map())
    before = pool.frame.copy()
    rows, allocation = select(cfg, pool=pool)
    expected_rows, expected_allocation = select(cfg)
    assert rows.equals(expected_rows) and allocation.equals(expected_allocation)
    assert pool.frame.equals(before)
