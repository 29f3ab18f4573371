"""`taskdiv evaluate --suite heldout`: choice scoring, bootstrap, outputs, resume, bad
input, and the real-model check that finetuning raises held-out accuracy."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import BBH_DIR, MMLU_DIR, write_jsonl
from test_models import base_copy

from taskdiv.common.errors import DataError, TaskdivError
from taskdiv.engines import models
from taskdiv.evaluation import commands as evaluation
from taskdiv.evaluation import heldout
from taskdiv.evaluation.commands import EvalConfig, evaluate


def _pool_rows():
    rows = []
    colours = ["red", "green", "deep blue sea"]
    for i in range(6):
        rows.append({"id": f"mc{i}", "task": "colors", "prompt": f"Q: Which colour is item {i}?\nA:",
                     "choices": colours, "targets": [colours[i % 3]]})
        rows.append({"id": f"yn{i}", "task": "yesno", "prompt": f"Q: Is {i} even?\nA:",
                     "choices": ["yes", "no"], "targets": ["yes" if i % 2 == 0 else "no"]})
        rows.append({"id": f"g{i}", "task": "sum", "prompt": f"Q: {i} + 1 =\nA:", "targets": [str(i + 1)]})
    return rows


def _check_choice_scores(model, tok, chat):
    import torch

    prompts = ["Q: Is the sky blue?\nA:", "Q: What is two plus two? Answer with a number.\nA:", "x"]
    choices = [["yes", "no"], ["4", "five", "twenty two or so"], ["a", "b", "c", "d"]]
    pids = [models.encode_prompt(tok, p, chat) for p in prompts]
    cids = [[models.encode_response(tok, p, c, chat) for c in cs] for p, cs in zip(prompts, choices)]
    fast = heldout.choice_scores(model, pids, cids, tok.pad_token_id, max_rows=2)
    for p, cs, got in zip(pids, cids, fast):
        for c, value in zip(cs, got):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
            expected = np.mean([lp[len(p) - 1 + j, t].item() for j, t in enumerate(c)])
            assert value == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("chat", [True, False])
def test_choice_scores_equal_full_sequence_scoring(tiny_model_dir, chat):
    """Sharing the prompt's KV cache across choices gives the log-probabilities of scoring
    each prompt + choice sequence on its own (left padding, chunked choices)."""
    _check_choice_scores(*evaluation.load_model(models.resolve(str(tiny_model_dir)), "float32"), chat)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_choice_scores_on_the_real_models(name):
    """The same check on both embedded architectures (Gemma 3 has sliding-window layers)."""
    ref = models.resolve(name)
    _check_choice_scores(*evaluation.load_model(ref, "float32"), ref.chat)


def test_summarise_bootstrap_intervals():
    items = pd.DataFrame({"task": ["a"] * 50 + ["b"] * 20,
                          "correct": [True] * 40 + [False] * 10 + [True] * 5 + [False] * 15})
    table, macro = evaluation.summarise(items, n_boot=4000, seed=0)
    a, b = table.set_index("task").loc["a"], table.set_index("task").loc["b"]
    assert (a["n"], a["accuracy"], b["accuracy"]) == (50, 0.8, 0.25)
    for row in (a, b):
        assert row["ci_low"] < row["accuracy"] < row["ci_high"]
    # Normal approximation of the binomial interval, for scale.
    assert a["ci_high"] - a["ci_low"] == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 50), rel=0.2)
    assert macro["accuracy"] == pytest.approx(0.525) and macro["micro_accuracy"] == pytest.approx(45 / 70)
    assert macro["ci_low"] < 0.525 < macro["ci_high"]
    assert evaluation.summarise(items, n_boot=4000, seed=0)[1] == macro
    assert evaluation.summarise(items, n_boot=4000, seed=1)[1] != macro


def test_heldout_end_to_end_and_rerun(tiny_model_dir, tmp_path, capsys, monkeypatch):
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    out = tmp_path / "eval"
    cfg = EvalConfig(model=str(tiny_model_dir), heldout=str(pool), out=str(out), limit=4, batch_size=3)
    evaluation.run_evaluate(cfg)
    printed = capsys.readouterr().out
    assert "macro accuracy" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"colors", "yesno", "sum"}
    assert all(t["n"] == 4 for t in results["tasks"].values()), "--limit caps items per task"
    table = pd.read_csv(out / "per_task.csv")
    assert list(table.columns) == ["task", "n", "accuracy", "ci_low", "ci_high"]
    assert table["task"].iloc[-1] == "macro"
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 12 and not (out / ".items.partial.jsonl").exists()
    by_id = {r["id"]: r for r in _pool_rows()}
    for it in items:
        row = by_id[it["id"]]
        if "choices" in row:
            assert it["prediction"] in row["choices"] and len(it["scores"]) == len(row["choices"])
            assert it["correct"] == (it["prediction"] in row["targets"])
        else:
            assert it["kind"] == "generative" and "\n" not in it["prediction"]
    stamp = (out / "results.json").stat().st_mtime_ns
    again = evaluate(cfg)
    assert again["macro"] == results["macro"]
    assert (out / "results.json").stat().st_mtime_ns == stamp, "a finished evaluation is reused"

    def no_input_work(*a, **kw):
        raise AssertionError("the inputs are read although the results can be reused")

    monkeypatch.setattr(evaluation, "load_heldout", no_input_work)
    monkeypatch.setattr(evaluation, "load_model", no_input_work)
    assert evaluate(cfg)["macro"] == results["macro"]


def test_heldout_resumes_after_interruption(tiny_model_dir, tmp_path, monkeypatch):
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    cfg = dict(model=str(tiny_model_dir), heldout=str(pool), batch_size=2)
    full = evaluate(EvalConfig(out=str(tmp_path / "full"), **cfg))

    real = heldout.choice_scores
    calls = []

    def interrupted(model, prompt_ids, *a, **kw):
        calls.append(len(prompt_ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, prompt_ids, *a, **kw)

    monkeypatch.setattr(heldout, "choice_scores", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalConfig(out=str(out), **cfg))
    partial = (out / ".items.partial.jsonl").read_text().splitlines()
    assert len(partial) == 1 + 4 and not (out / "results.json").exists()

    calls.clear()
    monkeypatch.setattr(heldout, "choice_scores", lambda *a, **kw: (calls.append(len(a[1])), real(*a, **kw))[1])
    resumed = evaluate(EvalConfig(out=str(out), **cfg))
    assert sum(calls) == 12 - 4, "only the items not yet in the partial file are scored"
    assert resumed["tasks"] == full["tasks"]


_CHOICE_SCORES = heldout.choice_scores  # the real one, whatever a test patches in


def _interrupt_at(monkeypatch, n_call):
    """Make the n-th call of choice_scores raise KeyboardInterrupt; returns the list of
    prompt counts of the calls that ran."""
    real, calls = _CHOICE_SCORES, []

    def interrupted(model, prompt_ids, *a, **kw):
        if len(calls) + 1 == n_call:
            raise KeyboardInterrupt
        calls.append(len(prompt_ids))
        return real(model, prompt_ids, *a, **kw)

    monkeypatch.setattr(heldout, "choice_scores", interrupted)
    return calls


def test_resume_after_a_line_cut_off_loses_nothing(tiny_model_dir, tmp_path, monkeypatch):
    """The last line of the partial file was cut off mid-write. Resuming (twice) keeps
    every complete record, scores each item exactly once, and the file stays readable."""
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    cfg = dict(model=str(tiny_model_dir), heldout=str(pool), batch_size=2)
    full = evaluate(EvalConfig(out=str(tmp_path / "full"), **cfg))
    out = tmp_path / "resumed"
    partial = out / ".items.partial.jsonl"

    first = _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalConfig(out=str(out), **cfg))
    text = partial.read_text()
    assert len(text.splitlines()) == 1 + 4
    partial.write_text(text[:len(text) - 20])  # the 4th record loses its end (and its newline)

    second = _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalConfig(out=str(out), **cfg))
    records = [json.loads(ln) for ln in partial.read_text().splitlines()]  # every line is whole
    ids = [r["id"] for r in records[1:]]
    assert len(ids) == 3 + 4 and len(set(ids)) == len(ids)

    third = _interrupt_at(monkeypatch, 0)
    resumed = evaluate(EvalConfig(out=str(out), **cfg))
    assert sum(first + second + third) == 12 + 1, "each multiple-choice item once, plus the one whose line was cut off"
    items = [json.loads(ln)["id"] for ln in (out / "items.jsonl").read_text().splitlines()]
    assert sorted(items) == sorted(r["id"] for r in _pool_rows())
    assert resumed["tasks"] == full["tasks"]


@pytest.mark.parametrize("header", [b'{"key": "abc', b'{"key": "abc\xff', b'[1, 2]'])
def test_resume_with_a_damaged_header_starts_afresh(tiny_model_dir, tmp_path, header):
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    cfg = dict(model=str(tiny_model_dir), heldout=str(pool), batch_size=4)
    full = evaluate(EvalConfig(out=str(tmp_path / "full"), **cfg))
    out = tmp_path / "damaged"
    out.mkdir()
    (out / ".items.partial.jsonl").write_bytes(header + b'\n{"id": "mc0", "task": "colors"}\n')
    assert evaluate(EvalConfig(out=str(out), **cfg))["tasks"] == full["tasks"]


def test_tokenizer_is_loaded_once(tiny_model_dir, tmp_path, monkeypatch):
    loads, load_tokenizer = [], models.load_tokenizer
    monkeypatch.setattr(models, "load_tokenizer", lambda ref: (loads.append(ref), load_tokenizer(ref))[1])
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows()[:3])
    evaluate(EvalConfig(model=str(tiny_model_dir), heldout=str(pool), out=str(tmp_path / "e")))
    assert len(loads) == 1


def test_bad_heldout_input_writes_nothing(tiny_model_dir, tmp_path):
    no_targets = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "task": "t", "prompt": "hi"}])
    with pytest.raises(DataError, match="no 'targets' field"):
        evaluate(EvalConfig(model=str(tiny_model_dir), heldout=str(no_targets), out=str(tmp_path / "o1")))
    stray = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "task": "t", "prompt": "hi", "choices": ["x", "y"],
                                                 "targets": ["z"]}])
    with pytest.raises(DataError, match="not among the choices: ids a"):
        evaluate(EvalConfig(model=str(tiny_model_dir), heldout=str(stray), out=str(tmp_path / "o2")))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.skipif(not MMLU_DIR.is_dir(), reason="needs the MMLU CSVs")
def test_chat_template_on_a_base_model_is_refused_before_any_work(tiny_model_dir, tmp_path):
    """--chat-template with a tokenizer that has none: a TaskdivError before the inputs are
    prepared or the model loads (it was a ValueError traceback from inside lm_eval)."""
    base = str(base_copy(tiny_model_dir, tmp_path / "base"))
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    for suite in ("heldout", "mmlu", "bbh"):
        out = tmp_path / suite
        cfg = EvalConfig(model=base, suite=suite, heldout=str(pool), mmlu_dir=str(MMLU_DIR), bbh_dir=str(BBH_DIR),
                         tasks={"heldout": None, "mmlu": ["virology"], "bbh": ["navigate"]}[suite], limit=1,
                         chat_template=True, out=str(out))
        with pytest.raises(TaskdivError, match="the tokenizer of .*base has no chat template"):
            evaluate(cfg)
        assert not out.exists()


def test_run_dir_with_adapter_of_another_model(tiny_model_dir, tmp_path):
    """A run directory whose adapter does not fit the base model its config names."""
    import shutil

    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from taskdiv.training import TrainConfig, train

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(4)])
    run = train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run"), epochs=1))
    other = tmp_path / "wider"
    cfg = LlamaConfig.from_pretrained(tiny_model_dir)
    cfg.hidden_size, cfg.intermediate_size = 96, 192
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(other)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special")):
            shutil.copy(f, other / f.name)
    conf = yaml.safe_load((run / "config.yaml").read_text())
    conf["model"] = str(other)
    (run / "config.yaml").write_text(yaml.safe_dump(conf))
    pool = write_jsonl(tmp_path / "t.jsonl", _pool_rows()[:3])
    with pytest.raises(TaskdivError, match="cannot load the model with its adapter"):
        evaluate(EvalConfig(model=str(run), heldout=str(pool), out=str(tmp_path / "e")))
    assert not (tmp_path / "e" / "results.json").exists()


@pytest.mark.slow
def test_finetuning_raises_heldout_accuracy(tmp_path):
    """smollm2-135m-instruct on the gauntlet's BIG-bench qa_wikidata ("The native language of
    Daniel Schneidermann is" -> "French"): the untrained model answers in sentences of its
    own and never matches exactly (0 of 40 measured); 16 pool examples for 2 epochs in batches
    of 2 (16 steps) teach it the answer format (12 of 40; 64 examples in batches of 8, the
    same 16 steps at twice the time, gave 14; 32 in batches of 8, 8 steps, gave 0). The
    held-out items are paired, so the gain is tested with an exact McNemar test (all
    discordant pairs favour the finetuned model)."""
    from taskdiv.pool.load import load_pool
    from taskdiv.training import TrainConfig, train

    task = "gauntlet:bigbench_qa_wikidata"
    pool = load_pool(f"{task}?max_pool=16").frame
    data = write_jsonl(tmp_path / "train.jsonl", pool[["id", "task", "prompt", "response"]].to_dict("records"))
    test_ids = set(load_pool(f"{task}?split=test").frame["id"])
    assert not test_ids & set(pool["id"]), "held-out items are never trained on"
    run = train(TrainConfig(data=str(data), model="smollm2-135m-instruct", batch_size=2, out=str(tmp_path / "run")))
    spec = f"{task}?split=test"
    base = evaluate(EvalConfig(model="smollm2-135m-instruct", heldout=spec, limit=40, out=str(tmp_path / "base")))
    tuned = evaluate(EvalConfig(model=str(run), heldout=spec, limit=40, out=str(tmp_path / "tuned")))
    lines = {name: (tmp_path / name / "items.jsonl").read_text().splitlines() for name in ("base", "tuned")}
    b, t = ({rec["id"]: rec["correct"] for rec in map(json.loads, lines[name])} for name in ("base", "tuned"))
    assert b.keys() == t.keys() and len(b) == 40
    gained = sum(t[i] and not b[i] for i in b)
    lost = sum(b[i] and not t[i] for i in b)
    n = gained + lost  # one-sided exact McNemar: P(X >= gained), X ~ Binomial(n, 1/2)
    p = sum(math.comb(n, k) for k in range(gained, n + 1)) / 2 ** n if n else 1.0
    assert tuned["macro"]["accuracy"] >= base["macro"]["accuracy"] + 0.15, (base["macro"], tuned["macro"])
    assert p < 0.01, (gained, lost, p)


@pytest.mark.parametrize("field, value, row", [("targets", 2, 2), ("choices", 5, 2), ("choices", "yes", 2),
                                               ("choices", [], 2), ("targets", {"a": 1}, 2)])
def test_bad_targets_or_choices_name_file_row_and_field(tmp_path, field, value, row):
    """A number, a bare string of choices (it would split into characters) or an empty
    list is a DataError naming the file, row, id and field, not a TypeError."""
    rows = _pool_rows()[:3]
    rows[1][field] = value
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as err:
        evaluation.load_heldout(str(pool), None)
    assert (err.value.file, err.value.row, err.value.field) == (str(pool), row, field)
    assert "'yn0'" in str(err.value)


def test_heldout_targets_and_choices_become_string_lists(tmp_path):
    rows = [{"id": "a", "task": "t", "prompt": "p", "targets": "7"},
            {"id": "b", "task": "t", "prompt": "p", "targets": [3], "choices": [3, 4]}]
    frame = evaluation.load_heldout(str(write_jsonl(tmp_path / "p.jsonl", rows)), None)
    assert frame["targets"].tolist() == [["7"], ["3"]]
    assert frame["choices"].tolist() == [None, ["3", "4"]]


def _varied_model(directory, context=512):
    """A tiny random Llama whose greedy text runs on (large initial weights: the default small
    ones make it repeat one token), with the SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.load_tokenizer(models.resolve("smollm2-135m-instruct"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                                 initializer_range=0.3)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_generative_answers_do_not_depend_on_batch_neighbours(tmp_path):
    # Targets of very different lengths: a batch's longest target must not lengthen the others' answers.
    model = _varied_model(tmp_path / "model")
    rows = [{"id": f"g{i}", "task": "t", "prompt": f"Q: say {i}\nA:",
             "targets": ["x" if i % 2 else "a much longer target answer with many tokens in it " * 2]}
            for i in range(8)]
    pool = write_jsonl(tmp_path / "gen.jsonl", rows)
    answers = []
    for batch in (1, 8):
        evaluate(EvalConfig(model=str(model), heldout=str(pool), out=str(tmp_path / f"b{batch}"),
                            batch_size=batch, dtype="float32"))
        items = [json.loads(x) for x in (tmp_path / f"b{batch}" / "items.jsonl").read_text().splitlines()]
        answers.append({it["id"]: it["prediction"] for it in items})
    assert answers[0] == answers[1]
    assert max(len(a) for a in answers[0].values()) > 20, "the model's answers are too short to test the caps"


def test_other_bootstrap_options_reuse_the_answers(tiny_model_dir, tmp_path, monkeypatch):
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    cfg = EvalConfig(model=str(tiny_model_dir), heldout=str(pool), out=str(tmp_path / "eval"), limit=2)
    first = evaluate(cfg)

    def no_model(*a, **kw):
        raise AssertionError("the model is loaded although only the bootstrap changed")

    monkeypatch.setattr(evaluation, "load_model", no_model)
    items = tmp_path / "eval" / "items.jsonl"
    before = items.stat()
    again = evaluate(EvalConfig(**{**cfg.__dict__, "n_boot": 500, "seed": 3}))
    assert again["macro"]["accuracy"] == first["macro"]["accuracy"] and again["config"]["n_boot"] == 500
    after = items.stat()  # the same answers: items.jsonl is left as it is, not written again
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["config"]["seed"] == 3


def test_prompts_longer_than_the_context_are_cut_from_the_left(tmp_path, caplog):
    short = _varied_model(tmp_path / "short-model", context=48)
    long = "word " * 200
    pool = write_jsonl(tmp_path / "long.jsonl", [
        {"id": "mc", "task": "t", "prompt": long + "Q: yes?\nA:", "choices": ["yes", "no"], "targets": ["yes"]},
        {"id": "g", "task": "t", "prompt": long + "Q: 1+1=\nA:", "targets": ["2"]}])
    with caplog.at_level("WARNING"):
        results = evaluate(EvalConfig(model=str(short), heldout=str(pool), out=str(tmp_path / "e"),
                                      chat_template=False))
    assert results["macro"]["n"] == 2
    assert "2 held-out prompt(s) are longer than the model's context of 48 tokens" in caplog.text


def test_max_new_tokens_is_checked_before_any_work(tiny_model_dir, tmp_path):
    pool = write_jsonl(tmp_path / "test.jsonl", _pool_rows())
    with pytest.raises(TaskdivError, match="--max-new-tokens and --max-gen-toks must be positive"):
        evaluate(EvalConfig(model=str(tiny_model_dir), heldout=str(pool), out=str(tmp_path / "e"), max_new_tokens=0))
    assert not (tmp_path / "e").exists()


def test_mmlu_and_bbh_results_are_keyed_by_their_data(tmp_path):
    data = tmp_path / "mmlu" / "test"
    data.mkdir(parents=True)
    (data / "x_test.csv").write_text('"Q?",1,2,3,4,A\n')
    cfg = EvalConfig(model="m", suite="mmlu", mmlu_dir=str(tmp_path / "mmlu"), out=str(tmp_path / "e"))
    before = evaluation._config_key(cfg, "fp", False, "float32")
    (data / "x_test.csv").write_text('"Q?",1,2,3,4,A\n"New question?",1,2,3,4,B\n')
    assert evaluation._config_key(cfg, "fp", False, "float32")["data_sha256"] != before["data_sha256"]
