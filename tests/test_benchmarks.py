"""The local benchmark collections as pool sources (`bench:`, `mmlu:`, `bbh:`, `gauntlet:`),
on the real files of ../shared/data, and on small copies of them for bad input."""
import json
import shutil

import pandas as pd
import pytest
from conftest import BBH_DIR, GAUNTLET_DIR, MMLU_DIR, SHARED

from taskdiv.cli import main
from taskdiv.common.errors import DataError, TaskdivError
from taskdiv.pool import benchmarks
from taskdiv.pool.load import load_pool
from taskdiv.report import statistics as analysis

pytestmark = pytest.mark.skipif(not (SHARED / "data" / "gauntlet").is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def many():
    return load_pool("bench:many?split=all").frame


def test_the_many_task_preset_is_the_papers_regime(many):
    pool = load_pool("bench:many")
    sizes = pool.task_sizes()
    collections = sizes.index.str.split("/").str[0].value_counts().to_dict()
    assert collections == {"mmlu": 57, "bbh": 27, "gauntlet": 43}
    assert sizes.max() / sizes.min() >= 1000 and 50 <= sizes.median() <= 300
    kinds = analysis.task_kinds(load_pool("bench:many?split=test").frame)["kind"].value_counts()
    assert set(kinds.index) == {"yes/no", "multiple choice", "generative"} and kinds.min() >= 15
    # No code task, no file that repeats another's items, none of the gauntlet's BBH tasks.
    gauntlet = sizes.index[sizes.index.str.startswith("gauntlet/")]
    assert not gauntlet.str.contains("human_eval|_small|8shot|_soln|withspaces|dyck|logical_ded|movie").any()
    assert sorted(t for t in sizes.index if t.startswith("gauntlet/jeopardy/")) == [
        "gauntlet/jeopardy/american_history", "gauntlet/jeopardy/literature", "gauntlet/jeopardy/science",
        "gauntlet/jeopardy/word_origins", "gauntlet/jeopardy/world_history"]


def test_split_is_deterministic_disjoint_and_complete():
    spec = "bench:demo?test=10&max_pool=30"
    pool, test = load_pool(spec), load_pool(spec + "&split=test")
    assert list(test.ids) == list(load_pool(spec + "&split=test").ids)
    assert not set(pool.ids) & set(test.ids)
    # 10 held out per task, or half of a task of fewer than 20 (mmlu/global_facts: 15)
    assert test.task_sizes().between(7, 10).all() and test.task_sizes().median() == 10
    assert pool.task_sizes().max() == 30 and test.frame["task"].nunique() == 30
    keys = set(zip(pool.frame["prompt"], pool.frame["response"]))
    assert not [k for k in zip(test.frame["prompt"], test.frame["response"]) if k in keys]
    assert set(load_pool(spec + "&split=test&seed=1").ids) != set(test.ids)
    full = load_pool("bench:demo?test=10&split=all")
    assert len(full) == len(load_pool("bench:demo?test=10")) + len(test)


def test_what_the_evaluation_suites_score_is_never_in_a_pool(many):
    """MMLU's test rows (the `mmlu` suite) and the BBH suite's fifth are in no split of any
    source, also where another subject or collection repeats them."""
    assert benchmarks.suite_overlap(many).empty
    assert many["id"].str.contains(r"^mmlu/[^:]+:(?:dev|val)-", regex=True).sum() == (
        many["task"].str.startswith("mmlu/")).sum()
    bbh = many[many["task"].str.startswith("bbh/")]
    for task in ("navigate", "word_sorting"):
        examples = json.loads((BBH_DIR / f"{task}.json").read_text())["examples"]
        suite = benchmarks.bbh_suite_examples(examples)
        assert len(suite) == 50
        prompts = set(bbh.loc[bbh["task"] == f"bbh/{task}", "prompt"])
        assert len(prompts) == 200 and not prompts & {f"Q: {ex['input']}\nA:" for ex in suite}
    # The check can fail: an MMLU test question in another format, and the gauntlet's copy
    # of BBH's movie recommendation, are found.
    question = pd.read_csv(MMLU_DIR / "test" / "virology_test.csv", header=None)[0][3]
    planted = pd.DataFrame({"prompt": ["unrelated", f"Question: {question}\nAnswer:"]})
    assert benchmarks.suite_overlap(planted)["suite_item"].tolist() == ["MMLU test virology_test.csv row 4"]
    movies = [json.loads(line) for line in (GAUNTLET_DIR / "world_knowledge" /
                                            "bigbench_movie_recommendation.jsonl").read_text().splitlines()]
    frame = pd.DataFrame({"prompt": [m["query"] for m in movies]})
    assert len(benchmarks.suite_overlap(frame)) >= 20
    loaded = load_pool("gauntlet:bigbench_movie_recommendation?split=all")
    assert len(loaded) == len(movies) - len(benchmarks.suite_overlap(frame))


def test_row_formats_of_each_collection(many):
    rows = many.set_index("id")
    mmlu = rows.loc["mmlu/anatomy:val-00000"]
    assert mmlu["prompt"].startswith("Which of the following terms describes the body's ability")
    assert mmlu["prompt"].endswith("\nD. Homeostasis\nAnswer:") and list(mmlu["choices"]) == list("ABCD")
    assert mmlu["response"] == "D" and list(mmlu["targets"]) == ["D"]
    nav = many[many["task"] == "bbh/navigate"].iloc[0]
    assert nav["prompt"].startswith("Q: If you follow these instructions") and nav["prompt"].endswith("\nA:")
    assert list(nav["choices"]) == ["No", "Yes"]
    date = many[many["task"] == "bbh/date_understanding"].iloc[0]
    assert list(date["choices"]) == ["(A)", "(B)", "(C)", "(D)", "(E)", "(F)"][:len(date["choices"])]
    assert date["response"] in date["choices"]
    assert many.loc[many["task"] == "bbh/word_sorting", "choices"].isna().all()  # generative
    wino = many[many["task"] == "gauntlet/winogrande"].iloc[0]
    assert wino["prompt"].startswith("Which sentence makes more sense?\n- ") and wino["response"] in wino["choices"]
    trivia = many[many["task"] == "gauntlet/triviaqa_sm_sub"].iloc[0]
    assert trivia["prompt"].endswith("\nAnswer:") and trivia["response"] == trivia["targets"][0]
    assert len(trivia["targets"]) > 1  # the aliases are accepted answers
    gsm = many[many["task"] == "gauntlet/gsm8k"].iloc[0]
    assert gsm["prompt"].endswith("?\nAnswer:") and gsm["response"].lstrip("-").isdigit()


def test_pool_info_prints_the_preset_without_network(capsys):
    assert main(["pool", "info", "bench:many"]) == 0
    out = capsys.readouterr().out
    assert "127" in out and "gauntlet/bigbench_qa_wikidata" in out and "mmlu/abstract_algebra" in out


def test_short_names_of_one_collection_and_unknown_names():
    assert load_pool("mmlu:anatomy,virology").frame["task"].unique().tolist() == ["mmlu/anatomy", "mmlu/virology"]
    assert load_pool("gauntlet:jeopardy?max_pool=5").frame["task"].nunique() == 5
    assert load_pool("bbh:?max_pool=2").frame["task"].nunique() == 27
    with pytest.raises(TaskdivError, match="Did you mean 'anatomy'"):
        load_pool("mmlu:anatomi")
    with pytest.raises(TaskdivError, match="unknown option"):
        load_pool("bench:demo?splits=test")
    with pytest.raises(TaskdivError, match=r"bench:demo: test=-1.0 must be"):
        load_pool("bench:demo?test=-1")


def _copy_data(tmp_path):
    root = tmp_path / "data"
    (root / "gauntlet" / "world_knowledge").mkdir(parents=True)
    shutil.copy(GAUNTLET_DIR / "world_knowledge" / "arc_easy.jsonl", root / "gauntlet" / "world_knowledge")
    (root / "mmlu").mkdir()
    for split in ("dev", "val", "test"):
        (root / "mmlu" / split).mkdir()
        shutil.copy(MMLU_DIR / split / f"anatomy_{split}.csv", root / "mmlu" / split)
    return root


def test_the_data_directory_comes_from_data_option_env_or_flag(tmp_path, monkeypatch, capsys):
    root = _copy_data(tmp_path)
    assert load_pool(f"gauntlet:?data={root}").frame["task"].unique().tolist() == ["gauntlet/arc_easy"]
    monkeypatch.setenv("TASKDIV_DATA", str(root))
    assert load_pool("mmlu:").frame["task"].unique().tolist() == ["mmlu/anatomy"]
    monkeypatch.delenv("TASKDIV_DATA")
    assert main(["pool", "info", "gauntlet:", "--data-dir", str(root)]) == 0
    assert "gauntlet/arc_easy" in capsys.readouterr().out
    with pytest.raises(TaskdivError, match=r"data=.*: no gauntlet/ collection there"):
        load_pool(f"gauntlet:?data={tmp_path / 'nowhere'}")
    (root / "gauntlet").rename(tmp_path / "moved")
    monkeypatch.setenv("TASKDIV_DATA", str(root))
    with pytest.raises(TaskdivError, match="gauntlet: no local copy.*llm-foundry"):
        load_pool("gauntlet:")


def test_a_bad_line_names_the_file_line_and_field(tmp_path, monkeypatch):
    root = _copy_data(tmp_path)
    path = root / "gauntlet" / "world_knowledge" / "arc_easy.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({"query": "q", "gold": 0})  # no choices
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("TASKDIV_DATA", str(root))
    with pytest.raises(DataError) as err:
        load_pool("gauntlet:arc_easy")
    assert (err.value.file, err.value.line, err.value.field) == (path, 7, "choices")
    csv = root / "mmlu" / "val" / "anatomy_val.csv"
    csv.write_text(csv.read_text().replace(",D\n", ",E\n", 1))
    with pytest.raises(DataError, match=r"anatomy_val.csv, row 1, field 'answer': answer must be one of"):
        load_pool("mmlu:anatomy")


def test_the_bbh_suite_scores_only_the_held_out_fifth(tmp_path):
    pytest.importorskip("lm_eval")
    from taskdiv.evaluation import harness

    prepared = harness.prepare_bbh(BBH_DIR, ["navigate"], "zeroshot", tmp_path / "h")
    assert prepared.tasks == ["taskdiv_bbh_zeroshot_navigate"]
    held = [json.loads(x) for x in (tmp_path / "h" / "data" / "bbh" / "navigate.jsonl").read_text().splitlines()]
    assert len(held) == 50
    pool = load_pool("bbh:navigate?split=all").frame
    assert not set(pool["prompt"]) & {f"Q: {ex['input']}\nA:" for ex in held}
    harness.prepare_bbh(BBH_DIR, ["navigate"], "zeroshot", tmp_path / "all", items="all")
    assert len((tmp_path / "all" / "data" / "bbh" / "navigate.jsonl").read_text().splitlines()) == 250


def _hub_copy(root, collection, tables):
    """A dataset repository in the hub's layout, as `cais/mmlu` and `lukaemon/bbh` are: one
    config per task, a Parquet file per split, the configs declared in README.md."""
    lines = ["---", "configs:"]
    for config, splits in tables.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, frame in splits.items():
            (root / collection / config).mkdir(parents=True, exist_ok=True)
            frame.to_parquet(root / collection / config / f"{split}-00000-of-00001.parquet", index=False)
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (root / collection / "README.md").write_text("\n".join(lines + ["---", ""]))
    return str(root / collection)


def test_without_local_files_mmlu_and_bbh_come_from_their_hub_copies(tmp_path, monkeypatch):
    """The users' path (no ../shared/data): `mmlu:` and `bbh:` read the hub datasets through
    `datasets`. Here the hub copies are local repositories in the hub's layout and schema,
    written from the local files: the pool read through them is the one the files give."""
    pytest.importorskip("datasets")
    mmlu = {}
    for subject in ("anatomy", "virology"):
        splits = {}
        for split, name in (("dev", "dev"), ("validation", "val"), ("test", "test")):
            frame = benchmarks.read_mmlu_csv(MMLU_DIR / name / f"{subject}_{name}.csv")
            splits[split] = pd.DataFrame({"question": frame["question"], "subject": subject,
                                          "choices": [list(c) for c in frame["choices"]],
                                          "answer": frame["answer"].map("ABCD".index)})
        mmlu[subject] = splits
    bbh = {task: {"test": pd.DataFrame(benchmarks.read_bbh_examples(BBH_DIR / f"{task}.json"))}
           for task in ("navigate", "word_sorting")}
    hub = {"mmlu": _hub_copy(tmp_path / "hub", "mmlu", mmlu), "bbh": _hub_copy(tmp_path / "hub", "bbh", bbh)}
    specs = ["mmlu:?split=all", "bbh:?split=all"]
    local = {spec: load_pool(spec).frame for spec in ("mmlu:anatomy,virology?split=all",
                                                      "bbh:navigate,word_sorting?split=all")}
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TASKDIV_DATA", str(tmp_path / "empty"))  # no local collection
    monkeypatch.setattr(benchmarks, "HUB", hub)
    benchmarks.catalogue.cache_clear()
    try:
        for spec, files in zip(specs, local.values()):
            from_hub = load_pool(spec).frame
            assert sorted(from_hub["task"].unique()) == sorted(files["task"].unique()), spec
            pd.testing.assert_frame_equal(from_hub.sort_values("id").reset_index(drop=True),
                                          files.sort_values("id").reset_index(drop=True))
        with pytest.raises(TaskdivError, match="no local copy of mmlu and the hub copy .* cannot be read"):
            monkeypatch.setattr(benchmarks, "HUB", {**hub, "mmlu": str(tmp_path / "no-such-dataset")})
            benchmarks.catalogue.cache_clear()
            load_pool("mmlu:")
    finally:
        benchmarks.catalogue.cache_clear()
