"""taskdiv score: the batched generator, the task table, sampling, cache and resume, bad input.

Unit tests use the tiny random model (conftest.tiny_model_dir); the slow tests run
the real embedded models on real BIG-bench prompts.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_jsonl

from taskdiv import cli
from taskdiv.common.config import build
from taskdiv.engines import local as generation
from taskdiv.engines import models
from taskdiv.pool import load as data
from taskdiv.scoring import commands as scoring
from taskdiv.selection.scores import read_scores


def make_cfg(pool, out, model, **kw) -> scoring.ScoreConfig:
    return build(scoring.ScoreConfig, {"pool": str(pool), "out": str(out), "model": str(model), **kw})


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    ref = models.resolve(str(tiny_model_dir))
    model, tok = generation.load_model(ref, "float32")
    return ref, model, tok


def test_score_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["score", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--per-task", "--target-ci", "--metric", "--chat-template", "--dtype", "--max-new-tokens"):
        assert flag in text


# ----------------------------------------------------------------------------- the generator


def _reference(model, ids, tokens):
    """Per-step chosen-token log-prob and entropy from one uncached forward pass over
    prompt + response (no padding): what the batched, cached generator must reproduce."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1].float()
    logp = torch.log_softmax(logits, -1)
    assert logits.argmax(-1).tolist() == tokens, "the generator did not pick the argmax of the raw logits"
    return (logp[torch.arange(len(tokens)), torch.tensor(tokens)].numpy(),
            torch.special.entr(logp.exp()).sum(-1).numpy())


def test_generator_matches_uncached_forward(tiny):
    ref, model, tok = tiny
    prompts = ["Hi", "What is the capital of France? Answer in one word.", "2 + 2 =", "Tell me a story about a cat."]
    batch = [models.encode_prompt(tok, p, chat=False) for p in prompts]
    assert len({len(b) for b in batch}) > 1, "the prompts must differ in length to exercise left padding"
    gens = generation.generate_greedy(model, batch, max_new_tokens=7, eos_ids={tok.eos_token_id},
                                      pad_id=tok.pad_token_id)
    for ids, g in zip(batch, gens):
        assert len(g.token_ids) == 7 == len(g.logprobs) == len(g.entropies)
        lp, ent = _reference(model, ids, g.token_ids)
        np.testing.assert_allclose(g.logprobs, lp, atol=1e-4)
        np.testing.assert_allclose(g.entropies, ent, atol=1e-3)


def test_eos_stops_its_row_only(tiny):
    ref, model, tok = tiny
    prompts = ["Hi", "What is the capital of France?", "2 + 2 ="]
    batch = [models.encode_prompt(tok, p, chat=False) for p in prompts]
    free = generation.generate_greedy(model, batch, max_new_tokens=6, eos_ids=set(), pad_id=tok.pad_token_id)
    # Declare row 0's first token an EOS: row 0 must stop there (the EOS counted), and
    # the other rows, which go on in the shrunken batch, must be unchanged.
    stop = free[0].token_ids[0]
    gens = generation.generate_greedy(model, batch, max_new_tokens=6, eos_ids={stop}, pad_id=tok.pad_token_id)
    assert gens[0].token_ids == [stop]
    np.testing.assert_allclose(gens[0].logprobs, free[0].logprobs[:1], atol=1e-5)
    assert any(len(g.token_ids) == 6 for g in gens[1:]), "no row outlived the EOS row"
    for g, f in zip(gens[1:], free[1:]):
        cut = f.token_ids.index(stop) + 1 if stop in f.token_ids else len(f.token_ids)
        assert g.token_ids == f.token_ids[:cut]
        np.testing.assert_allclose(g.logprobs, f.logprobs[:cut], atol=1e-5)
        np.testing.assert_allclose(g.entropies, f.entropies[:cut], atol=1e-4)


# ----------------------------------------------------------------------------- task statistics


def test_task_table_t_interval_with_finite_population_correction(small_pool):
    pool = data.load_pool(small_pool)  # tasks a (2 prompts), b (5), c (9)
    scores = pd.DataFrame({"id": ["a0", "b0", "b1", "b2", "c0"], "task": ["a", "b", "b", "b", "c"],
                           "confidence": [0.5, 0.2, 0.4, 0.6, 0.7]})
    # a: one of two scored -> no interval; add a1 to fully score a instead.
    scores = pd.concat([scores, pd.DataFrame({"id": ["a1"], "task": ["a"], "confidence": [0.3]})])
    table = scoring.task_table(scores, pool).set_index("task")
    assert table.loc["a", "scored"] == 2 and table.loc["a", "ci_low"] == table.loc["a", "ci_high"] == 0.4
    # b: n=3 of N=5, mean 0.4, sd 0.2, t(0.975, 2) = 4.303, fpc = sqrt(2/4).
    half = 4.302652729911275 * 0.2 / math.sqrt(3) * math.sqrt(2 / 4)
    assert table.loc["b", "confidence"] == pytest.approx(0.4)
    assert table.loc["b", "sd"] == pytest.approx(0.2)
    assert table.loc["b", "ci_low"] == pytest.approx(max(0.0, 0.4 - half))
    assert table.loc["b", "ci_high"] == pytest.approx(min(1.0, 0.4 + half))
    assert np.isnan(table.loc["c", "ci_low"]) and table.loc["c", "available"] == 9
    grow = scoring._next_sizes(table.reset_index(), width=0.1)
    assert "a" not in grow                            # exhausted (and exact)
    assert grow["c"] == 1 + scoring.CI_MIN_STEP or grow["c"] == 9
    assert 3 < grow["b"] <= 5


# ----------------------------------------------------------------------------- runs on the tiny model


def test_score_tiny_outputs_sampling_and_cache(small_pool, tiny_model_dir, tmp_path):
    out = tmp_path / "s"
    cfg = make_cfg(small_pool, out, tiny_model_dir, per_task=3, max_new_tokens=5, batch_size=4, seed=1)
    scores = scoring.score(cfg)
    assert scores.attrs["computed"] == 8 and scores.attrs["reused"] == 0   # a: 2 (all), b: 3, c: 3
    assert scores.groupby("task").size().to_dict() == {"a": 2, "b": 3, "c": 3}
    for name in ("scores.csv", "scores.parquet", "tasks.csv", "config.yaml", "cache.sqlite"):
        assert (out / name).exists(), name
    csv = pd.read_csv(out / "scores.csv")
    assert list(csv.columns[:3]) == ["id", "task", "confidence"]
    for col in ("mean_prob", "geo_mean_prob", "min_prob", "mean_entropy", "generated", "tokens", "truncated"):
        assert col in csv.columns
    assert (csv["confidence"] == csv["mean_prob"]).all() and csv["confidence"].between(0, 1).all()
    assert (csv["tokens"] <= 5).all() and (csv["tokens"] >= 1).all()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), scores)
    tasks = pd.read_csv(out / "tasks.csv")
    assert list(tasks.columns) == ["task", "available", "scored", "confidence", "sd", "ci_low", "ci_high"]
    assert tasks.set_index("task")["available"].to_dict() == {"a": 2, "b": 5, "c": 9}
    # `taskdiv select --scores` accepts the file as is.
    pool = data.load_pool(small_pool)
    assert np.isfinite(read_scores(out / "scores.csv", pool)).sum() == 8

    # Same seed, same sample; a rerun reuses every row.
    again = scoring.score(cfg)
    assert again.attrs["computed"] == 0 and again.attrs["reused"] == 8
    assert again["id"].tolist() == scores["id"].tolist()
    # Another seed picks other prompts; only the new ones are generated.
    other = scoring.score(make_cfg(small_pool, out, tiny_model_dir, per_task=3, max_new_tokens=5, seed=2))
    assert other["id"].tolist() != scores["id"].tolist()
    assert other.attrs["computed"] == len(set(other["id"]) - set(scores["id"]))
    # Other generation settings never reuse stored rows.
    longer = scoring.score(make_cfg(small_pool, out, tiny_model_dir, per_task=3, max_new_tokens=6, seed=1))
    assert longer.attrs["reused"] == 0 and longer.attrs["computed"] == 8
    # The metric choice is applied at output time and needs no rescoring.
    ent = scoring.score(make_cfg(small_pool, out, tiny_model_dir, per_task=3, max_new_tokens=5, seed=1,
                                 metric="mean_entropy"))
    assert ent.attrs["computed"] == 0
    np.testing.assert_allclose(ent["confidence"], np.exp(-ent["mean_entropy"]))


def test_target_ci_scores_until_narrow_or_exhausted(small_pool, tiny_model_dir, tmp_path):
    wide = scoring.score(make_cfg(small_pool, tmp_path / "w", tiny_model_dir, per_task=2, target_ci=1e-6,
                                  max_new_tokens=3))
    # An unreachable width: every task is scored in full.
    assert wide.groupby("task").size().to_dict() == {"a": 2, "b": 5, "c": 9}
    table = pd.read_csv(tmp_path / "w" / "tasks.csv")
    assert (table["ci_high"] - table["ci_low"]).max() == 0
    loose = scoring.score(make_cfg(small_pool, tmp_path / "w", tiny_model_dir, per_task=2, target_ci=1.0,
                                   max_new_tokens=3))
    # Any interval (clipped to [0, 1]) is narrow enough: nothing beyond the sample.
    assert loose.groupby("task").size().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert loose.attrs["computed"] == 0


def test_work_is_done_once(small_pool, tiny_model_dir, tmp_path, monkeypatch):
    """The tokenizer is loaded once per run (the model comes with the same one), and with
    --target-ci each round builds the scores table once, the last round included."""
    loads, tables, rounds = [], [], []
    load_tokenizer, scores_table, run = models.load_tokenizer, scoring._scores_table, generation.Scorer.run
    monkeypatch.setattr(models, "load_tokenizer", lambda ref: (loads.append(ref), load_tokenizer(ref))[1])
    monkeypatch.setattr(scoring, "_scores_table", lambda *a: (tables.append(1), scores_table(*a))[1])
    monkeypatch.setattr(generation.Scorer, "run",
                        lambda self, todo, desc: (rounds.append(desc), run(self, todo, desc))[1])
    scores = scoring.score(make_cfg(small_pool, tmp_path / "w", tiny_model_dir, per_task=2, target_ci=1e-6,
                                    max_new_tokens=3))
    assert scores.attrs["computed"] == 16 and len(loads) == 1
    assert len(tables) == len(rounds) > 1


def test_the_model_lives_as_long_as_its_caller_wants(small_pool, tiny_model_dir, tmp_path, monkeypatch):
    """score loads the model once for all its rounds and drops it when it returns; a caller
    that passes `loaded=` keeps its own model and nothing is loaded."""
    import gc
    import weakref

    loaded, load = [], models.load
    monkeypatch.setattr(models, "load", lambda *a, **k: (lambda m: (loaded.append(weakref.ref(m[0])), m)[1])(
        load(*a, **k)))
    cfg = make_cfg(small_pool, tmp_path / "w", tiny_model_dir, per_task=2, target_ci=1e-6, max_new_tokens=3)
    assert scoring.score(cfg).attrs["computed"] == 16
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None, "the model outlived the call that needed it"
    mine = generation.load_model(models.resolve(str(tiny_model_dir)), "float32")
    again = scoring.score(make_cfg(small_pool, tmp_path / "v", tiny_model_dir, per_task=2, max_new_tokens=3,
                                   dtype="float32"), loaded=mine)
    assert again.attrs["computed"] == 6 and len(loaded) == 2  # only the caller's own load_model
    assert loaded[1]() is mine[0]


def test_long_prompts_are_truncated_from_the_left(tiny_model_dir, tmp_path):
    long = "word " * 300 + "the question at the end?"
    pool = write_jsonl(tmp_path / "p.jsonl", [{"id": "long", "prompt": long, "task": "t"},
                                              {"id": "short", "prompt": "short?", "task": "t"}])
    cfg = make_cfg(pool, tmp_path / "o", tiny_model_dir, max_prompt_tokens=40, max_new_tokens=2,
                   chat_template=False)
    scores = scoring.score(cfg).set_index("id")
    assert scores.loc["long", "truncated"] and scores.loc["long", "prompt_tokens"] == 40
    assert not scores.loc["short", "truncated"]
    ref = models.resolve(str(tiny_model_dir))
    tok = models.load_tokenizer(ref)
    scorer = generation.Scorer(cfg, ref, tok, False, 40, cache=None)
    ids, truncated = scorer.encode(long)
    assert truncated and len(ids) == 40
    assert ids == models.encode_prompt(tok, long, False)[-40:], "the end of the prompt must be kept"


# ----------------------------------------------------------------------------- bad input


def _cli_error(capsys, argv) -> str:
    assert cli.main(argv) == 1
    return capsys.readouterr().err


def test_bad_input(capsys, small_pool, tmp_path):
    err = _cli_error(capsys, ["score", str(small_pool), "--model", "gemma-270m", "--out", str(tmp_path / "o1")])
    assert "unknown model 'gemma-270m'" in err and "gemma-3-270m" in err and "smollm2-135m-instruct" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = _cli_error(capsys, ["score", str(empty), "--out", str(tmp_path / "o2")])
    assert str(empty) in err and "empty" in err
    no_prompt = write_jsonl(tmp_path / "np.jsonl", [{"id": "1", "text": "hello", "task": "t"}])
    err = _cli_error(capsys, ["score", str(no_prompt), "--out", str(tmp_path / "o3")])
    assert str(no_prompt) in err and "no prompt field 'prompt'" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _cli_error(capsys, ["score", str(small_pool), "--out", str(blocker / "sub")])
    assert "cannot write to the output directory" in err and str(blocker / "sub") in err
    err = _cli_error(capsys, ["score", str(small_pool), "--per-task", "0", "--out", str(tmp_path / "o4")])
    assert "--per-task must be at least 1" in err
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3", "o4"))
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "cache.sqlite").write_text("not a database")
    err = _cli_error(capsys, ["score", str(small_pool), "--out", str(tmp_path / "o5")])
    assert "cache.sqlite: not a usable score cache" in err


def test_lengths_beyond_the_models_context_are_refused(capsys, small_pool, tiny_model_dir, tmp_path):
    # The tiny model has 512 positions: no room for a prompt, or a prompt cap that cannot fit.
    for extra in (["--max-new-tokens", "512"], ["--max-new-tokens", "16", "--max-prompt-tokens", "500"]):
        err = _cli_error(capsys, ["score", str(small_pool), "--model", str(tiny_model_dir), *extra,
                                  "--out", str(tmp_path / "o")])
        assert "do not fit the model's context of 512 tokens" in err, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- kill and resume


def test_sigkill_then_resume(tiny_model_dir, tmp_path):
    n = 300
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"p{i}", "prompt": f"Prompt number {i}: " + "la " * (i % 17), "task": f"t{i % 3}"} for i in range(n)])
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "taskdiv.cli", "score", str(pool), "--model", str(tiny_model_dir), "--out",
            str(out), "--batch-size", "2", "--max-new-tokens", "24", "--no-progress", "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / "cache.sqlite"
    stored = 0
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        stored = conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
                except sqlite3.OperationalError:  # the table is not created yet
                    stored = 0
                if stored >= 10:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    with sqlite3.connect(db) as conn:
        killed = conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        first_run = dict(conn.execute("SELECT prompt_sha, run FROM scores").fetchall())
    assert 10 <= killed < n, killed
    assert not (out / "scores.csv").exists(), "a killed run must not leave outputs behind"

    scores = scoring.score(make_cfg(pool, out, tiny_model_dir, batch_size=8, max_new_tokens=24))
    assert scores.attrs["reused"] == killed and scores.attrs["computed"] == n - killed
    assert sorted(scores["id"]) == sorted(f"p{i}" for i in range(n)) and scores["id"].is_unique
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT prompt_sha, run FROM scores").fetchall()
    assert len(rows) == n
    # Every row stored before the kill is still the one from the killed run.
    assert {sha: run for sha, run in rows if sha in first_run} == first_run


# ----------------------------------------------------------------------------- real models, real prompts

REAL_PROMPTS = "bench:bbh/sports_understanding,bbh/date_understanding,gauntlet/bigbench_simple_arithmetic?max_pool=20"


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_mean_prob_agrees_with_transformers_generate(model_name, tmp_path):
    """mean_prob from `taskdiv score` (float32, batched) equals an independent
    computation: `generate(output_logits=True)` one prompt at a time, softmax of the
    raw logits. For the base model (raw text) and the instruct one (chat template)."""
    import torch

    out = tmp_path / "s"
    assert cli.main(["score", REAL_PROMPTS, "--model", model_name, "--dtype", "float32", "--per-task", "1",
                     "--max-new-tokens", "12", "--out", str(out), "--no-progress"]) == 0
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert len(scores) == 3
    pool = data.load_pool(REAL_PROMPTS).frame.set_index("id")
    ref = models.resolve(model_name)
    model, tok = generation.load_model(ref, "float32")  # the same weights; generation is independent
    for row in scores.itertuples():
        ids = models.encode_prompt(tok, pool.at[row.id, "prompt"], ref.chat)
        with torch.inference_mode():
            res = model.generate(input_ids=torch.tensor([ids]),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id)
        new = res.sequences[0, len(ids):].tolist()
        probs = [torch.softmax(step[0].float(), -1)[t].item() for step, t in zip(res.logits, new)]
        assert row.tokens == len(new)
        assert row.generated == tok.decode(new, skip_special_tokens=True)
        assert abs(row.mean_prob - float(np.mean(probs))) < 1e-3, (row.id, row.mean_prob, np.mean(probs))
        assert abs(row.min_prob - min(probs)) < 1e-3


@pytest.mark.slow
def test_integration_smollm2_on_benchmark_tasks(tmp_path):
    """The instruct model on real BBH and gauntlet prompts of four tasks with the default dtype
    (bf16 where supported): chat template on by default, sensible outputs, task table.
    (bf16 against float32 is measured on 64 prompts in bench/bench_scoring.py.)"""
    pool_spec = "bench:bbh/sports_understanding,gauntlet/bigbench_simple_arithmetic,bbh/formal_fallacies," \
                "bbh/ruin_names?max_pool=40"
    out = tmp_path / "s"
    assert cli.main(["score", pool_spec, "--model", "smollm2-135m-instruct", "--per-task", "6",
                     "--max-new-tokens", "16", "--out", str(out), "--no-progress"]) == 0
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["resolved"]["chat"] is True
    assert len(scores) == 24 and scores.groupby("task").size().eq(6).all()
    assert scores["confidence"].between(0, 1).all() and (scores["tokens"] >= 1).all()
    assert (scores["generated"].str.strip() != "").mean() > 0.9
    tasks = pd.read_csv(out / "tasks.csv").set_index("task")
    assert tasks["available"].eq(40).all() and tasks["scored"].eq(6).all()
    assert tasks["confidence"].max() - tasks["confidence"].min() > 0.05, "confidence should differ across tasks"
    assert (tasks["ci_low"] <= tasks["confidence"]).all() and (tasks["confidence"] <= tasks["ci_high"]).all()
    # The two arithmetic answers are short numbers: the instruct model should end them with EOS
    # well before the 16-token limit at least sometimes, and those rows count the EOS.
    assert (scores["tokens"] < 16).any()


def test_run_score_prints_the_task_table_and_the_metric_mapping(small_pool, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    scoring.run_score(make_cfg(small_pool, out, tiny_model_dir, per_task=2, max_new_tokens=2, metric="mean_entropy"))
    printed = capsys.readouterr().out
    assert "confidence = mean_entropy as exp(-mean_entropy);" in printed
    assert scoring.format_tasks(pd.read_csv(out / "tasks.csv")) in printed
    scoring.run_score(make_cfg(small_pool, out, tiny_model_dir, per_task=2, max_new_tokens=2))
    assert "confidence = mean_prob; wrote" in capsys.readouterr().out


def test_per_task_samples_do_not_depend_on_the_order_of_the_rows():
    from taskdiv.pool.container import Pool
    from taskdiv.scoring.commands import _sample_orders

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(60)], "prompt": [f"q{i}" for i in range(60)],
                          "task": rng.choice(["a", "b", "c"], size=60)})
    shuffled = frame.sample(frac=1, random_state=3).reset_index(drop=True)

    def samples(f):
        ids = f["id"].to_numpy()
        return {t: list(ids[o]) for t, o in _sample_orders(Pool(f), seed=7).items()}

    assert samples(frame) == samples(shuffled)
    assert samples(frame) != {t: list(frame["id"].to_numpy()[o])
                              for t, o in _sample_orders(Pool(frame), seed=8).items()}


def test_exclude_scores_only_the_rest(small_pool, tiny_model_dir, tmp_path):
    """`--exclude` (an earlier round's selection): those prompts are neither sampled nor
    counted; naming the whole pool is an error."""
    sel = write_jsonl(tmp_path / "sel.jsonl", [{"id": f"c{i}"} for i in range(7)] + [{"id": "a0"}])
    out = tmp_path / "s"
    assert cli.main(["score", str(small_pool), "--model", str(tiny_model_dir), "--max-new-tokens", "2",
                     "--exclude", str(sel), "--out", str(out), "--no-progress"]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 16 - 8 and not set(scores["id"]) & ({f"c{i}" for i in range(7)} | {"a0"})
    assert pd.read_csv(out / "tasks.csv").set_index("task")["available"].to_dict() == {"a": 1, "b": 5, "c": 2}
    every = write_jsonl(tmp_path / "all.jsonl", [{"id": i} for i in pd.read_json(small_pool, lines=True)["id"]])
    assert cli.main(["score", str(small_pool), "--model", str(tiny_model_dir), "--exclude", str(every),
                     "--out", str(tmp_path / "none")]) == 1


def test_score_and_select_read_and_apply_one_exclude_file_alike(small_pool, tiny_model_dir, tmp_path, caplog, capsys):
    """One --exclude file for both commands, naming two prompts of the pool and one id that is not
    in it: each leaves out the same two prompts and warns, naming the file and the unknown id, and
    says so in --help. Before: select warned and score said nothing; a file naming nobody in the
    pool, or every prompt, was an error in score only."""
    import logging

    exclude = write_jsonl(tmp_path / "exclude.jsonl", [{"id": "c0"}, {"id": "b1"}, {"id": "nope"}])
    commands = {"score": ["score", str(small_pool), "--model", str(tiny_model_dir), "--max-new-tokens", "1",
                          "--no-progress"],
                "select": ["select", str(small_pool), "--strategy", "full", "-q"]}
    for name, args in commands.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert cli.main([*args, "--exclude", str(exclude), "--out", str(tmp_path / name)]) == 0
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"{exclude}: 1 of 3 excluded id(s) not in the pool, ignored: 'nope'" in m for m in warned), warned
    chosen = pd.read_json(tmp_path / "select" / "selection.jsonl", lines=True)["id"]
    scored = pd.read_csv(tmp_path / "score" / "scores.csv")["id"]
    assert set(chosen) == set(scored) and len(chosen) == 14 and not {"c0", "b1"} & set(chosen)

    strangers = write_jsonl(tmp_path / "strangers.jsonl", [{"id": "x1"}, {"id": "x2"}])
    every = write_jsonl(tmp_path / "all.jsonl", [{"id": i} for i in pd.read_json(small_pool, lines=True)["id"]])
    for name, args in commands.items():
        capsys.readouterr()
        assert cli.main([*args, "--exclude", str(strangers), "--out", str(tmp_path / "x")]) == 1
        assert f"--exclude {strangers}: none of its 2 id(s) is in the pool (e.g. 'x1', 'x2')" in capsys.readouterr().err
        assert cli.main([*args, "--exclude", str(every), "--out", str(tmp_path / "x")]) == 1
        assert f"--exclude {every} names every prompt of the pool (16): none is left" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            cli.main([args[0], "--help"])
        assert "ids not in the pool are ignored with a warning" in " ".join(capsys.readouterr().out.split())


def test_the_shared_cache_outlives_its_folder(small_pool, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Scoring the same pool with the same model into a second --out generates nothing: the
    scores come from $TASKDIV_CACHE/scores, and the output says how many."""
    monkeypatch.setenv("TASKDIV_SHARED_SCORES", "1")
    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "cache"))
    args = ["score", str(small_pool), "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--no-progress"]
    first = scoring.score(make_cfg(small_pool, tmp_path / "one", tiny_model_dir, max_new_tokens=3))
    assert first.attrs["computed"] == 16 and first.attrs["from_shared"] == 0
    capsys.readouterr()
    assert cli.main([*args, "--out", str(tmp_path / "two")]) == 0
    assert "16 reused from the cache (16 from the shared cache" in capsys.readouterr().out
    again = pd.read_csv(tmp_path / "two" / "scores.csv")
    assert again.equals(pd.read_csv(tmp_path / "one" / "scores.csv"))
    # Other settings do not see them; the per-out cache of the second run holds them too.
    other = scoring.score(make_cfg(small_pool, tmp_path / "three", tiny_model_dir, max_new_tokens=2))
    assert other.attrs["computed"] == 16
    shutil.rmtree(tmp_path / "cache")
    assert scoring.score(make_cfg(small_pool, tmp_path / "two", tiny_model_dir, max_new_tokens=3)).attrs[
        "computed"] == 0


def test_cache_info_and_clear(small_pool, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TASKDIV_SHARED_SCORES", "1")
    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "cache"))
    scoring.score(make_cfg(small_pool, tmp_path / "one", tiny_model_dir, max_new_tokens=2))
    capsys.readouterr()
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path / 'cache'}" in out and "scores/" in out and "scores: 16 prompt(s) for model" in out
    assert cli.main(["cache", "clear", "scores"]) == 0
    assert "removed" in capsys.readouterr().out and not (tmp_path / "cache" / "scores").exists()
    assert cli.main(["cache", "clear", "scores"]) == 0  # nothing left: nothing to do
    with pytest.raises(SystemExit):
        cli.main(["cache", "clear", "everything"])


@pytest.mark.parametrize("where", ["before", "after"])
def test_shared_flags_before_or_after_the_command_and_no_progress_silences_every_bar(small_pool, tiny_model_dir,
                                                                                      tmp_path, where):
    """-q, --no-progress and --config work on either side of the command; --no-progress turns
    off transformers' own bars too (its "Loading weights" bar), not only taskdiv's."""
    config = tmp_path / "c.yaml"
    config.write_text("max_new_tokens: 2\nper_task: 1\n")
    shared = ["-q", "--no-progress", "--config", str(config)]
    command = ["score", str(small_pool), "--model", str(tiny_model_dir), "--out", str(tmp_path / "s")]
    argv = shared + command if where == "before" else command + shared
    env = {k: v for k, v in os.environ.items() if k not in ("TASKDIV_NO_PROGRESS", "TQDM_DISABLE")}
    run = subprocess.run([sys.executable, "-m", "taskdiv.cli", *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stderr and "it/s" not in run.stderr and "INFO" not in run.stderr
    assert yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())["per_task"] == 1
    assert len(pd.read_csv(tmp_path / "s" / "scores.csv")) == 3
