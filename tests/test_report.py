"""`taskdiv report` from fixture experiment tables."""
import json
import re
import time

import numpy as np
import pandas as pd
import pytest

from taskdiv.cli import main
from taskdiv.common.errors import DataError
from taskdiv.report.commands import build_report
from taskdiv.report.plots import plot_accuracy
from taskdiv.report.sections import _fmt_match
from taskdiv.report.tables import summary_table

STRATEGIES = ["random", "task-diversity", "weighted-task-diversity", "k-center", "uncertainty"]
TASKS = ["t1", "t2", "t3"]


@pytest.fixture
def exp(tmp_path):
    rng = np.random.default_rng(0)
    rows, per_task, allocs = [], [], []
    conf = {"t1": 0.3, "t2": 0.5, "t3": 0.8}

    def add(run, strategy, budget, budget_n, seed, acc):
        rows.append({"run": run, "strategy": strategy, "budget": budget, "budget_n": budget_n, "seed": seed,
                     "accuracy": acc, "ci_low": acc - 0.03, "ci_high": acc + 0.03, "n_test": 300})
        per_task.extend({"run": run, "task": t, "n": 100, "accuracy": acc + rng.normal(0, 0.02)} for t in TASKS)

    for strategy in STRATEGIES:
        for budget, n in (("10%", 30), ("20%", 60)):
            for seed in range(3):
                run = f"{strategy}-{n}-s{seed}"
                add(run, strategy, budget, n, seed, 0.5 + n / 600 + rng.normal(0, 0.01)
                    + (0.05 if strategy == "weighted-task-diversity" else 0))
                for t in TASKS:
                    allocs.append({"run": run, "strategy": strategy, "budget": budget, "budget_n": n, "seed": seed,
                                   "task": t, "allocated": n // 3, "confidence": conf[t]})
    add("full", "full", "100%", 300, 0, 0.62)
    add("base", "base", "0", 0, 0, 0.40)
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    pd.DataFrame(per_task).to_csv(tmp_path / "per_task.csv", index=False)
    pd.DataFrame(allocs).to_csv(tmp_path / "allocations.csv", index=False)
    return tmp_path


def test_report_table_has_every_cell(exp):
    text = build_report(exp)
    for strategy in STRATEGIES:
        line = next(l for l in text.splitlines() if l.startswith(f"| {strategy} |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert len(cells) == 2 and all(c != "n/a" and "(n=3)" in c for c in cells), line
    assert "| full data (300 prompts) |" in text and "| base model (no finetuning) |" in text
    # weighted reaches the full-data accuracy at 20%; random does not reach it.
    assert "- weighted-task-diversity: 20% (60 prompts)" in text
    assert "- random: none up to 60 prompts" in text
    assert "Paired difference against random" in text
    for png in ("accuracy_vs_budget.png", "allocation.png", "task_gains.png"):
        assert (exp / png).stat().st_size > 5000
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_plot_has_one_series_per_strategy(exp, tmp_path):
    results = pd.read_csv(exp / "results.csv")
    fig = plot_accuracy(results, summary_table(results), tmp_path / "p.png")
    ax = fig.axes[0]
    labels = [l.get_label() for l in ax.get_lines()]
    assert [l for l in labels if l in STRATEGIES] == STRATEGIES
    assert sum(l.startswith("full data") for l in labels) == 1
    assert len(ax.collections) == len(STRATEGIES)  # one interval band per strategy
    assert ax.get_xscale() == "linear"  # budgets 30 and 60
    # Doubling budgets (1x to 8x the tasks) sit evenly on a log axis, ticked at the budgets; the
    # base model's budget 0 is no tick.
    rows = [{"run": f"random-b{n}-s{s}", "strategy": "random", "budget": str(n), "budget_n": n, "seed": s,
             "accuracy": 0.3 + n / 1e4 + s / 100} for n in (127, 254, 508, 1016) for s in (0, 1)]
    rows.append({"run": "base", "strategy": "base", "budget": "0", "budget_n": 0, "seed": 0, "accuracy": 0.25})
    doubling = pd.DataFrame(rows)
    ax = plot_accuracy(doubling, summary_table(doubling)).axes[0]
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [127, 254, 508, 1016]


def test_report_cli_and_missing_results(exp, tmp_path, capsys):
    assert main(["report", str(exp)]) == 0
    assert (exp / "report.md").exists()
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_paired_difference_counts_only_runs_with_an_accuracy(exp):
    from taskdiv.report.tables import paired_vs_random

    results = pd.read_csv(exp / "results.csv")
    lost = (results["strategy"] == "k-center") & (results["budget_n"] == 30) & (results["seed"] == 1)
    results.loc[lost, "accuracy"] = np.nan
    row = paired_vs_random(results).set_index(["strategy", "budget_n"]).loc[("k-center", 30)]
    assert row["pairs"] == 2 and not np.isnan(row["diff"])
    kept = results[(results["budget_n"] == 30) & (results["seed"] != 1)].set_index(["strategy", "seed"])["accuracy"]
    assert np.isclose(row["diff"], (kept["k-center"] - kept["random"]).mean())


def test_report_measures_the_saving_against_random_and_coverage_and_kinds(tmp_path):
    rng = np.random.default_rng(1)
    rows, per_task, allocs = [], [], []
    kinds = {"t1": "yes/no", "t2": "multiple choice", "t3": "generative"}
    curve = {30: 0.40, 60: 0.44, 120: 0.48}   # random's accuracy by budget
    cells = [("random", n, curve[n]) for n in curve] + [("task-diversity", 30, 0.44)]
    for strategy, n, acc in cells:
        for seed in range(5):
            run = f"{strategy}-{n}-s{seed}"
            value = acc + rng.normal(0, 0.004)
            rows.append({"run": run, "strategy": strategy, "budget": str(n), "budget_n": n, "seed": seed,
                         "accuracy": value})
            per_task += [{"run": run, "task": t, "n": 10, "accuracy": value + d}
                         for t, d in (("t1", 0.1), ("t2", 0.0), ("t3", -0.1))]
            given = [0, n // 2, n - n // 2] if strategy == "random" else [n // 3, n // 3, n - 2 * (n // 3)]
            allocs += [{"run": run, "strategy": strategy, "budget": str(n), "budget_n": n, "seed": seed, "task": t,
                        "allocated": a, "confidence": 0.5} for t, a in zip(kinds, given)]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    pd.DataFrame(per_task).to_csv(tmp_path / "per_task.csv", index=False)
    pd.DataFrame(allocs).to_csv(tmp_path / "allocations.csv", index=False)
    pd.DataFrame({"task": list(kinds), "kind": list(kinds.values())}).to_csv(tmp_path / "task_kinds.csv",
                                                                             index=False)
    text = build_report(tmp_path)
    # task-diversity at 30 is as good as random at 60: about half the annotations.
    line = next(l for l in text.splitlines() if l.startswith("| task-diversity | 30 |") and "fewer" in l)
    need = float(line.split("random needs ")[1].split(" ")[0])
    assert 50 <= need <= 72, line
    assert "p (sign)" in text and "| task-diversity | 30 | " in text
    assert "## Coverage" in text and "| random | 30 | 1.0 | 1.0 |" in text
    assert "| task-diversity | 30 | 0.0 | 0.0 |" in text
    assert "## Accuracy by kind of task" in text and "yes/no (1) | multiple choice (1) | generative (1)" in text
    # Beside each kind's accuracy, the examples the strategy gave it: random gave t1 (yes/no) none
    # at 30 and t2, t3 15 each; task-diversity 10 each.
    kind_rows = text.split("## Accuracy by kind of task")[1].splitlines()
    assert re.search(r"^\| random \| 30 \| [0-9.]+ \(0\) \| [0-9.]+ \(15\) \| [0-9.]+ \(15\) \|$", "\n".join(kind_rows),
                     re.M), kind_rows
    assert re.search(r"^\| task-diversity \| 30 \|( [0-9.]+ \(10\) \|){3}$", "\n".join(kind_rows), re.M), kind_rows
    assert "not run" in text   # task-diversity at 60 and 120
    assert "no interval" not in text and "fewer annotations [" in line
    # Random at 120 with seed 0 only (as a 4x cell run on one seed) does not void the interval
    # of a match between 30 and 60.
    results = pd.read_csv(tmp_path / "results.csv")
    results[(results["strategy"] != "random") | (results["budget_n"] < 120) | (results["seed"] == 0)].to_csv(
        tmp_path / "results.csv", index=False)
    line = next(l for l in build_report(tmp_path).splitlines() if l.startswith("| task-diversity | 30 |")
                and "fewer" in l)
    assert "fewer annotations [" in line, line
    # A strategy run below random's smallest budget that random there beats: not measured,
    # rather than a saving of 1 - 15/30.
    low = pd.DataFrame([{"run": f"task-diversity-15-s{s}", "strategy": "task-diversity", "budget": "15",
                         "budget_n": 15, "seed": s, "accuracy": 0.30} for s in range(5)])
    pd.concat([results, low]).to_csv(tmp_path / "results.csv", index=False)
    line = next(l for l in build_report(tmp_path).splitlines() if l.startswith("| task-diversity | 15 |")
                and "random" in l)
    assert "not measured: random already matches it at its smallest budget, 30" in line, line
    # With one seed in a cell there is nothing to resample: the saving comes without an interval.
    results[results["seed"] == 0].to_csv(tmp_path / "results.csv", index=False)
    line = next(l for l in build_report(tmp_path).splitlines() if l.startswith("| task-diversity | 30 |")
                and "fewer" in l)
    assert line.endswith("fewer annotations (one seed in a cell: no interval) |"), line


def test_report_and_plots_are_written_as_one_set(exp):
    build_report(exp)
    before = {p: (exp / p).read_bytes() for p in ("report.md", "accuracy_vs_budget.png", "allocation.png")}
    (exp / "task_gains.png").unlink()
    (exp / "task_gains.png").mkdir()  # the last plot cannot be written
    results = pd.read_csv(exp / "results.csv")
    results.loc[results["strategy"] == "random", "accuracy"] += 0.1  # a report that would differ
    results.to_csv(exp / "results.csv", index=False)
    with pytest.raises(Exception, match="task_gains.png"):
        build_report(exp)
    assert {p: (exp / p).read_bytes() for p in before} == before  # nothing half-replaced


def test_headline_puts_experiments_side_by_side(exp, tmp_path, capsys):
    import shutil

    from taskdiv.report.sections import headline

    other = tmp_path / "other"
    other.mkdir()
    results = pd.read_csv(exp / "results.csv")
    results = results[results["strategy"].isin(["random", "task-diversity", "base"])].copy()
    td = results["strategy"] == "task-diversity"
    results.loc[td & (results["budget_n"] == 30), "accuracy"] += 0.025  # half way to random at 60
    results.loc[td & (results["budget_n"] == 60), "accuracy"] += 0.2  # far above random at 60
    two_round = results[td & (results["budget_n"] == 30)].assign(strategy="two-round")
    two_round["run"] = two_round["run"].str.replace("task-diversity", "two-round")
    results = pd.concat([results, two_round])
    results.to_csv(other / "results.csv", index=False)
    text = headline([exp, other])
    header = text.splitlines()[0]
    assert header == (f"| strategy | {exp.name}, 30 prompts | {exp.name}, 60 prompts | other, 30 prompts | "
                      f"other, 60 prompts |")
    td = next(line for line in text.splitlines() if line.startswith("| task-diversity |"))
    cells = [c.strip() for c in td.strip("|").split("|")]
    assert re.fullmatch(r"0\.\d{3} \(\+20\.\d, p=0\.25; 3 seeds\)", cells[4])  # 3 of 3 won: the smallest exact p
    k_center = next(line for line in text.splitlines() if line.startswith("| k-center |"))
    assert k_center.rstrip().endswith("|  |  |")  # not run in `other`
    assert "| full data | 0.620 | 0.620 |  |  |" in text
    # Random gains 5 points from 30 to 60 prompts: 2.5 points above it at 30 is matched at about
    # 30 * sqrt(2) = 42 prompts (log interpolation), with a bootstrap interval.
    saving = re.search(r"- other, task-diversity at 30: random needs (\d+) \[(\d+), (\d+)\]: (\d+)% fewer", text)
    assert saving and 36 <= int(saving[1]) <= 50 and int(saving[2]) <= int(saving[1]) <= int(saving[3])
    assert "- other, task-diversity at 60: not matched by random up to 60" in text
    assert f"- other, two-round at 30: random needs {saving[1]} [" in text  # an experiment's task strategy
    assert "k-center at" not in text  # savings are given for the task strategies
    assert main(["report", str(exp), "--compare", str(other)]) == 0
    assert "other, 60 prompts" in capsys.readouterr().out
    shutil.rmtree(other)
    assert main(["report", str(exp), "--compare", str(other)]) == 1
    assert "results.csv: no such file" in capsys.readouterr().err


def test_report_compares_taskdivs_variant_with_the_paper_strategy_it_extends(exp):
    results = pd.read_csv(exp / "results.csv")
    assert "sharp-weighted-task-diversity against" not in build_report(exp)  # no variant run: no section
    wtd = results[(results["strategy"] == "weighted-task-diversity") & (results["budget_n"] == 60)]
    sharp = wtd.assign(strategy="sharp-weighted-task-diversity", run=wtd["run"].str.replace("weighted", "sharp"),
                       accuracy=wtd["accuracy"] + np.array([0.01, 0.02, -0.006]))
    pd.concat([results, sharp]).to_csv(exp / "results.csv", index=False)
    text = build_report(exp)
    section = text.split("## sharp-weighted-task-diversity against weighted-task-diversity")[1].split("\n## ")[0]
    rows = [l for l in section.splitlines() if l.startswith("| 20% |")]
    assert len(rows) == 1 and "| 10% |" not in section  # only where both ran
    assert rows[0].startswith("| 20% | 0.008 [") and "| 2 / 3 |" in rows[0]
    # the 8 sign flips of (0.01, 0.02, -0.006) sum to +-0.036, +-0.024, +-0.016, +-0.004: 4 reach 0.024
    assert rows[0].endswith("| 1.000 | 0.500 |")


def test_a_saving_interval_beyond_the_largest_random_budget_is_a_bound():
    # Random at 58 and 115; the strategy at 58 is matched at 112, and some resamples need more
    # than random's largest budget: the interval's top is "more than 115", so the saving's top
    # is "more than 1 - 58/115", not a measured 100%.
    r = {"match": 112.0, "budget_n": 58, "seeds": 3, "saving": 1 - 58 / 112, "low": 81.0,
         "saving_low": 1 - 58 / 81, "high": np.inf, "saving_high": 1.0}
    assert _fmt_match(r, 58, 115) == "random needs 112 [81, > 115]: 48% fewer annotations [28%, > 50%]"
    both = {**r, "low": -np.inf, "saving_low": 0.0, "match": 70.0, "saving": 1 - 40 / 70, "budget_n": 40}
    assert _fmt_match(both, 58, 115) == "random needs 70 [<= 58, > 115]: 43% fewer annotations [<= 31%, > 65%]"


def test_report_gains_the_judge_win_rate_and_its_paired_differences(exp):
    results = pd.read_csv(exp / "results.csv")
    assert "Judge win rate" not in build_report(exp)  # no judge suite: no section
    # The judge suite's win rate (percent): weighted beats random by 4 points on every seed.
    results["judge_win_rate"] = 20 + results["seed"] + np.where(results["strategy"] == "weighted-task-diversity", 4, 0)
    results.to_csv(exp / "results.csv", index=False)
    text = build_report(exp)
    section = text.split("## Judge win rate", 1)[1].split("\n## ", 1)[0]
    assert "| weighted-task-diversity | 25.000 [" in section and "| base | 20.000 |" in section
    row = next(l for l in section.splitlines() if l.startswith("| weighted-task-diversity | 10% |"))
    assert "4.000" in row and "3 / 3" in row


def test_the_answer_position_each_strategy_favours(exp):
    """From the runs' eval/items.jsonl: the position each run's model chose most often on the
    four-option items (one letter per seed), its share and the accuracy there; other items
    (two options, generative) do not count. Bad items name file, line and field."""
    def items(run, favourite, n_right):
        d = exp / "runs" / run / "eval"
        d.mkdir(parents=True, exist_ok=True)
        recs = [{"id": f"q{i}", "task": "t1", "kind": "mc", "prediction": "x", "correct": i < n_right,
                 "scores": [0.0 if j == (favourite if i < 8 else 0) else -1.0 for j in range(4)]} for i in range(10)]
        recs += [{"id": "yn", "task": "t2", "kind": "mc", "correct": True, "scores": [0.0, -1.0]},
                 {"id": "gen", "task": "t3", "kind": "generative", "correct": False}]
        (d / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    build_report(exp)
    assert not (exp / "answer_positions.csv").exists()  # no run's items: nothing to keep
    items("base", 2, 2)
    for seed, favourite in enumerate((3, 3, 1)):
        items(f"random-30-s{seed}", favourite, 3 + seed)
    text = build_report(exp)
    assert "## Answer position on four-option multiple choice" in text and "On the 10 held-out items" in text
    assert "| base | 0 | C | 0.80 | 0.200 |" in text
    assert "| random | 30 | D, D, B | 0.80 | 0.400 |" in text
    assert "| task-diversity |" not in text.split("## Answer position")[1].split("## Plots")[0]  # no items: no row
    # A clone has no items.jsonl (not committed): the same section from EXP/answer_positions.csv.
    kept = pd.read_csv(exp / "answer_positions.csv")
    assert sorted(kept["run"]) == ["base", "random-30-s0", "random-30-s1", "random-30-s2"]
    # Written when the table differs from it, not on every report: a changed accuracy (same
    # favourite and count) is written; the same table again leaves the file as it is.
    written = (exp / "answer_positions.csv").stat().st_mtime_ns
    time.sleep(0.01)
    assert build_report(exp) == text and (exp / "answer_positions.csv").stat().st_mtime_ns == written
    items("random-30-s0", 3, 4)
    build_report(exp)
    assert pd.read_csv(exp / "answer_positions.csv").set_index("run").loc["random-30-s0", "accuracy"] == 0.4
    items("random-30-s0", 3, 3)
    assert build_report(exp) == text
    for run in kept["run"]:
        (exp / "runs" / run / "eval" / "items.jsonl").unlink()
    assert build_report(exp) == text
    (exp / "answer_positions.csv").write_text("run,n,favourite,share,accuracy\nbase,10,2,1.5,0.2\n")
    with pytest.raises(DataError, match=r"answer_positions.csv, row 1, field 'share'"):
        build_report(exp)
    items("base", 2, 2)
    (exp / "runs" / "base" / "eval" / "items.jsonl").write_text('{"kind": "mc", "correct": true, "scores": "high"}\n')
    (exp / "answer_positions.csv").unlink()
    with pytest.raises(DataError, match=r"items.jsonl, line 1, field 'scores'"):
        build_report(exp)


def test_a_tasks_examples_move_its_answers_toward_theirs(exp):
    """From the runs' data.jsonl and eval/items.jsonl: how much more often a tuned model gives
    the majority answer of a task's training examples than the base model does, against the
    same in runs that gave the task no example; tied examples have no majority. A clone, with
    no items.jsonl, gets the same section from EXP/answer_shift.csv; bad lines are named."""
    pd.DataFrame({"task": ["t1", "t2", "t3"], "kind": ["yes/no", "multiple choice", "generative"]}).to_csv(
        exp / "task_kinds.csv", index=False)

    def run(name, said, given=None):
        d = exp / "runs" / name
        (d / "eval").mkdir(parents=True, exist_ok=True)
        (d / "eval" / "items.jsonl").write_text("".join(
            json.dumps({"id": f"{task}-{i}", "task": task, "kind": "mc", "prediction": p, "correct": False,
                        "scores": [0.0, -1.0]}) + "\n" for task, ps in said.items() for i, p in enumerate(ps))
            + json.dumps({"id": "g", "task": "t3", "kind": "generative", "prediction": "x", "correct": False}) + "\n")
        if given is not None:
            (d / "data.jsonl").write_text("".join(json.dumps({"id": f"{task}-{i}", "task": task, "prompt": "q",
                                                              "response": r}) + "\n"
                                                  for task, rs in given.items() for i, r in enumerate(rs)))

    assert "## Do a task's examples teach it" not in build_report(exp)  # no files: no section
    run("base", {"t1": ["No"] * 4, "t2": ["A"] * 4})
    # s0: t1's examples say "yes" (case aside); its model says Yes on 3 of 4 (base: 0), where s1,
    # which gave t1 none, says it on 1 of 4. s1: t2's example says B, its model on 2 of 4, the
    # runs without t2 examples (s0, s2) on none. s2: t1's examples tie, so no majority.
    run("random-30-s0", {"t1": ["Yes", "Yes", "Yes", "No"], "t2": ["A"] * 4}, {"t1": ["Yes", "yes", "No"]})
    run("random-30-s1", {"t1": ["Yes", "No", "No", "No"], "t2": ["B", "B", "A", "A"]}, {"t2": ["B"], "t3": ["x"]})
    run("random-30-s2", {"t1": ["Yes"] * 4, "t2": ["A"] * 4}, {"t1": ["Yes", "No"]})
    text = build_report(exp)
    section = text.split("## Do a task's examples teach it, or only their answer?")[1].split("\n## ")[0]
    assert "| yes/no | 1 | 1.0 | +0.750 | +0.250 | 0.500 | 1 / 1 |" in section, section
    assert "| multiple choice | 1 | 1.0 | +0.500 | +0.000 | 0.500 | 1 / 1 |" in section, section
    assert "generative" not in section.split("|---|")[-1]
    kept = pd.read_csv(exp / "answer_shift.csv")
    assert sorted(kept["run"]) == ["random-30-s0", "random-30-s1"]
    for name in ("base", "random-30-s0", "random-30-s1", "random-30-s2"):
        (exp / "runs" / name / "eval" / "items.jsonl").unlink()
    assert build_report(exp) == text
    run("base", {"t1": ["No"] * 4, "t2": ["A"] * 4})
    for name in ("random-30-s0", "random-30-s1"):
        run(name, {"t1": ["No"] * 4})
    (exp / "runs" / "random-30-s1" / "data.jsonl").write_text('{"task": "t2", "response": "B"}\n{"task": "t2"}\n')
    with pytest.raises(DataError, match=r"random-30-s1/data.jsonl, line 2, field 'response'"):
        build_report(exp)
