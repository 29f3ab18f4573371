"""MMLU and BBH through lm-evaluation-harness from the local files (../shared/data)."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import BBH_DIR, MMLU_DIR

from taskdiv.common.errors import DataError, TaskdivError
from taskdiv.evaluation import harness
from taskdiv.evaluation.commands import EvalConfig, evaluate

needs_data = pytest.mark.skipif(not (MMLU_DIR.is_dir() and BBH_DIR.is_dir()), reason="needs ../shared/data")


@needs_data
def test_cot_prompts_parse_to_the_harness_own_few_shot_samples():
    """The 3-shot CoT prompts read from cot-prompts/*.txt are exactly the samples and
    descriptions of the harness's bbh_cot_fewshot configs, for all 27 tasks."""
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = sorted(p.stem for p in BBH_DIR.glob("*.json"))
    assert len(tasks) == 27
    for task in tasks:
        ours = harness.parse_cot_prompt(BBH_DIR / "cot-prompts" / f"{task}.txt")
        theirs = load_yaml(harness._lm_eval_tasks_dir() / "bbh" / "cot_fewshot" / f"{task}.yaml")
        assert ours["samples"] == theirs["fewshot_config"]["samples"], task
        assert ours["description"] == theirs["description"], task


@needs_data
def test_mmlu_end_to_end_through_the_harness(tiny_model_dir, tmp_path):
    out = tmp_path / "mmlu"
    cfg = EvalConfig(model=str(tiny_model_dir), suite="mmlu", mmlu_dir=str(MMLU_DIR), limit=3,
                     tasks=["abstract_algebra", "virology"], out=str(out))
    results = evaluate(cfg)
    assert {k: v["n"] for k, v in results["tasks"].items()} == {"abstract_algebra": 3, "virology": 3}
    assert results["harness"]["n-samples"]["taskdiv_mmlu_virology"] == {"original": 166, "effective": 3}
    # The harness's own accuracy and ours agree.
    for name, subject in (("taskdiv_mmlu_abstract_algebra", "abstract_algebra"), ("taskdiv_mmlu_virology", "virology")):
        assert results["harness"]["results"][name]["acc,none"] == pytest.approx(results["tasks"][subject]["accuracy"])
    dev = [json.loads(x) for x in (out / "harness/data/mmlu/virology_dev.jsonl").read_text().splitlines()]
    assert len(dev) == 5 and set(dev[0]) == {"question", "subject", "choices", "answer"}
    assert dev[0]["answer"] in range(4) and len(dev[0]["choices"]) == 4
    assert pd.read_csv(out / "per_task.csv")["task"].tolist() == ["abstract_algebra", "virology", "macro"]


@needs_data
def test_bbh_cot_and_zeroshot_end_to_end(tiny_model_dir, tmp_path):
    cfg = EvalConfig(model=str(tiny_model_dir), suite="bbh", bbh_dir=str(BBH_DIR), limit=2, max_gen_toks=8,
                     tasks=["boolean_expressions", "date_understanding"], out=str(tmp_path / "bbh"))
    results = evaluate(cfg)
    assert set(results["tasks"]) == {"boolean_expressions:cot", "boolean_expressions:zeroshot",
                                     "date_understanding:cot", "date_understanding:zeroshot"}
    assert all(v["n"] == 2 for v in results["tasks"].values())
    items = [json.loads(x) for x in (tmp_path / "bbh" / "items.jsonl").read_text().splitlines()]
    filters = {it["task"].split(":")[1]: it["filter"] for it in items}
    assert filters == {"cot": "get-answer", "zeroshot": "flexible-extract"}


@needs_data
@pytest.mark.slow
def test_mmlu_and_bbh_with_a_real_model(tmp_path):
    """smollm2-135m-instruct through the harness with its chat template (5-shot as turns)."""
    mmlu = evaluate(EvalConfig(model="smollm2-135m-instruct", suite="mmlu", limit=8, out=str(tmp_path / "m"),
                               tasks=["high_school_geography", "marketing"], mmlu_dir=str(MMLU_DIR)))
    assert mmlu["chat"] is True and {v["n"] for v in mmlu["tasks"].values()} == {8}
    bbh = evaluate(EvalConfig(model="smollm2-135m-instruct", suite="bbh", limit=3, bbh_variant="zeroshot",
                              tasks=["sports_understanding"], bbh_dir=str(BBH_DIR), max_gen_toks=16,
                              out=str(tmp_path / "b")))
    assert bbh["tasks"]["sports_understanding:zeroshot"]["n"] == 3


def _copy_mmlu(tmp_path, subjects=("anatomy",)):
    root = tmp_path / "mmlu"
    for split in ("dev", "test"):
        (root / split).mkdir(parents=True)
        for s in subjects:
            shutil.copy(MMLU_DIR / split / f"{s}_{split}.csv", root / split)
    return root


@needs_data
def test_mmlu_in_the_wrong_layout_is_refused_and_nothing_written(tiny_model_dir, tmp_path):
    def run(mmlu_dir, **kw):
        out = tmp_path / "out"
        try:
            evaluate(EvalConfig(model=str(tiny_model_dir), suite="mmlu", mmlu_dir=str(mmlu_dir), out=str(out), **kw))
        finally:
            assert not out.exists(), "nothing is written when the input is bad"

    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(MMLU_DIR / "test" / "anatomy_test.csv", flat)
    with pytest.raises(TaskdivError, match="not in the MMLU layout"):
        run(flat)

    root = _copy_mmlu(tmp_path)
    (root / "dev" / "anatomy_dev.csv").unlink()
    with pytest.raises(TaskdivError, match="anatomy_dev.csv: missing"):
        run(root)

    shutil.rmtree(root)
    root = _copy_mmlu(tmp_path, ("anatomy", "virology"))
    bad = root / "test" / "virology_test.csv"
    lines = bad.read_text().splitlines(True)
    bad.write_text("".join(lines[:3]) + lines[3].rstrip("\n").rsplit(",", 1)[0] + ",E\n" + "".join(lines[4:]))
    with pytest.raises(DataError, match=r"virology_test.csv, row 4, field 'answer': answer must be one of"):
        run(root)
    pd.read_csv(MMLU_DIR / "test" / "virology_test.csv", header=None).iloc[:, :4].to_csv(bad, header=False, index=False)
    with pytest.raises(DataError, match="expected 6 columns"):
        run(root)
    with pytest.raises(TaskdivError, match="unknown MMLU subject 'anatomi'.*Did you mean 'anatomy'"):
        run(root, tasks=["anatomi"])


def test_bbh_bad_files(tmp_path):
    root = tmp_path / "bbh"
    (root / "cot-prompts").mkdir(parents=True)
    (root / "t.json").write_text(json.dumps({"examples": [{"input": "x"}]}))
    with pytest.raises(DataError, match="t.json, row 1, field 'target'"):
        harness.read_bbh(root, None, cot=False)
    (root / "t.json").write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}))
    with pytest.raises(TaskdivError, match="cot-prompts/t.txt: missing"):
        harness.read_bbh(root, None, cot=True)
    (root / "cot-prompts" / "t.txt").write_text("Describe.\n\nQ: a\nA: b\n")
    with pytest.raises(DataError, match="does not start with"):
        harness.read_bbh(root, None, cot=True)


def test_bbh_task_subset(tmp_path):
    root = tmp_path / "bbh"
    root.mkdir()
    for name in ("navigate", "snarks"):
        (root / f"{name}.json").write_text(json.dumps({"examples": [{"input": name, "target": "Yes"}]}))
    assert list(harness.read_bbh(root, ["snarks"], cot=False)) == ["snarks"]
    assert list(harness.read_bbh(root, None, cot=False)) == ["navigate", "snarks"]
    with pytest.raises(TaskdivError, match="unknown BBH task 'snark'.*Did you mean 'snarks'"):
        harness.read_bbh(root, ["snark"], cot=False)


def test_unreadable_mmlu_csv_is_a_data_error(tmp_path):
    empty = tmp_path / "anatomy_dev.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"anatomy_dev.csv: the file is empty"):
        harness._read_mmlu_csv(empty, "anatomy")
    latin = tmp_path / "anatomy_test.csv"
    latin.write_bytes(b"q,a,b,c,d,A\nq\xe9,a,b,c,d,B\n")
    with pytest.raises(DataError, match=r"anatomy_test.csv, line 2: not UTF-8"):
        harness._read_mmlu_csv(latin, "anatomy")
