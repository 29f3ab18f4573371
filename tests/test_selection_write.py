"""write_selection's order: selection.jsonl, the resume marker, is written last."""
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
