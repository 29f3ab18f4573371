"""The annotation round-trip through a real Label Studio server (`make test-integration`).

Starts Label Studio 1.23 (installed into .venv-ls by the Makefile, or the binary named
by $TASKDIV_LABEL_STUDIO) on 127.0.0.1 with SQLite in a temporary data directory,
creates a project with taskdiv's labeling configuration through the HTTP API, imports
the exported tasks file, submits annotations through the API, exports the project
(JSON), and imports the export back with taskdiv.

Authentication follows Label Studio's access-token documentation: legacy tokens are
off for a new organization, so the server starts with --enable-legacy-api-token; the
legacy token then creates a personal access token (a JWT refresh token), which is
exchanged at /api/token/refresh/ for the short-lived access token that every later
request sends as 'Authorization: Bearer'.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from taskdiv import cli

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 240  # seconds; a fresh SQLite database is migrated on first start (~50 s here)


def _label_studio_binary() -> str:
    path = os.environ.get("TASKDIV_LABEL_STUDIO") or str(REPO / ".venv-ls" / "bin" / "label-studio")
    if not Path(path).exists():
        pytest.fail(f"Label Studio not found at {path}: run `make test-integration` (it creates .venv-ls) "
                    f"or set TASKDIV_LABEL_STUDIO")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base url, legacy token) of a Label Studio server that lives for this module."""
    httpx = pytest.importorskip("httpx")
    data_dir = tmp_path_factory.mktemp("label-studio-data")
    port, token = _free_port(), "taskdiv-legacy-token-0123456789"
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), DJANGO_DB="sqlite",
               LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
               COLLECT_ANALYTICS="false")
    log_path = data_dir / "server.log"
    log = open(log_path, "w")
    started = time.monotonic()
    proc = subprocess.Popen(
        [_label_studio_binary(), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--username", "annotator@example.com", "--password", "taskdiv-test-pw",
         "--user-token", token, "--enable-legacy-api-token"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"Label Studio did not answer within {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        print(f"Label Studio up after {time.monotonic() - started:.1f} s")
        yield base, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def api(server):
    """An httpx client authenticated with a personal access token (JWT)."""
    import httpx

    base, legacy = server
    legacy_headers = {"Authorization": f"Token {legacy}"}
    refresh = httpx.post(f"{base}/api/token/", headers=legacy_headers, timeout=30)
    assert refresh.status_code == 201, f"creating a personal access token failed: {refresh.text}"
    access = httpx.post(f"{base}/api/token/refresh/", json={"refresh": refresh.json()["token"]}, timeout=30)
    assert access.status_code == 200, f"refreshing the personal access token failed: {access.text}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {access.json()['access']}"},
                      timeout=60) as client:
        yield client


def _ok(response, what: str):
    assert response.status_code < 300, f"{what}: HTTP {response.status_code} {response.text[:500]}"
    return response.json()


def _answer(text: str) -> dict:
    return {"result": [{"from_name": "response", "to_name": "prompt", "type": "textarea",
                        "value": {"text": [text]}}], "was_cancelled": False}


def _export(api, project: int, path: Path) -> Path:
    resp = api.get(f"/api/projects/{project}/export", params={"exportType": "JSON", "download_all_tasks": "true"})
    assert resp.status_code == 200, f"export: HTTP {resp.status_code} {resp.text[:500]}"
    path.write_bytes(resp.content)
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_label_studio_round_trip(api, tmp_path, capsys):
    # A scored selection of 12 prompts from 4 tasks.
    pool = [{"id": f"{t}-{i}", "task": t, "prompt": f"Task {t}, question {i}: what is {i} + {len(t)}?",
             "response": str(i + len(t))} for t in ("add", "bool", "chess", "dates") for i in range(6)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    (tmp_path / "scores.csv").write_text("id,confidence\n" + "".join(
        f"{r['id']},{0.2 + 0.03 * k:.2f}\n" for k, r in enumerate(pool)))
    assert cli.main([
        "select", str(tmp_path / "pool.jsonl"), "--budget", "12", "--scores", str(tmp_path / "scores.csv"),
        "--strategy", "weighted-task-diversity", "--seed", "0", "--out", str(tmp_path / "sel"), "-q"]) == 0
    selection = tmp_path / "sel" / "selection.jsonl"
    selected = [r["id"] for r in _jsonl(selection)]
    assert cli.main(["annotate", "export", str(selection), "--format", "label-studio",
                     "--out", str(tmp_path / "ls")]) == 0

    # Label Studio: a project with taskdiv's labeling config, the tasks file imported as is.
    project = _ok(api.post("/api/projects", json={
        "title": "taskdiv round trip", "label_config": (tmp_path / "ls" / "config.xml").read_text()}),
        "create project")["id"]
    with open(tmp_path / "ls" / "tasks.json", "rb") as f:
        imported = _ok(api.post(f"/api/projects/{project}/import",
                                files={"file": ("tasks.json", f, "application/json")}), "import tasks")
    assert imported["task_count"] == len(selected)
    tasks = _ok(api.get("/api/tasks", params={"project": project, "page_size": 100}), "list tasks")["tasks"]
    ls_id = {t["data"]["id"]: t["id"] for t in tasks}
    assert sorted(ls_id) == sorted(selected), "every selected prompt became one Label Studio task"
    assert {t["data"]["prompt"] for t in tasks} == {r["prompt"] for r in _jsonl(selection)}

    # Annotate: one skipped, one left alone, one answered twice (the later answer must win),
    # every other one answered once.
    skipped, untouched, twice = selected[0], selected[1], selected[2]
    expected = {}
    for pid in selected:
        if pid == untouched:
            continue
        if pid == skipped:
            _ok(api.post(f"/api/tasks/{ls_id[pid]}/annotations", json={"result": [], "was_cancelled": True}),
                "skip")
            continue
        _ok(api.post(f"/api/tasks/{ls_id[pid]}/annotations", json=_answer(f"first answer to {pid}")), "annotate")
        expected[pid] = f"first answer to {pid}"
        if pid == twice:
            time.sleep(1.1)  # a later submission time than the first answer
            _ok(api.post(f"/api/tasks/{ls_id[pid]}/annotations", json=_answer(f"second answer to {pid}\n")),
                "annotate again")
            expected[pid] = f"second answer to {pid}"

    export = _export(api, project, tmp_path / "export-1.json")
    out = tmp_path / "ann" / "sft.jsonl"
    capsys.readouterr()
    assert cli.main(["annotate", "import", str(export), "--format", "label-studio",
                     "--selection", str(selection), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _jsonl(out)
    assert [r["id"] for r in rows] == [i for i in selected if i in expected], "every answer arrives, once, in order"
    assert {r["id"]: r["response"] for r in rows} == expected
    assert all(set(r) == {"id", "task", "prompt", "response"} for r in rows)
    report = json.loads((tmp_path / "ann" / "import-round-1.json").read_text())
    assert report["skipped"] == [skipped] and report["not_annotated"] == [untouched]
    assert list(report["superseded"]) == [twice]
    assert repr(skipped) in printed and repr(untouched) in printed

    # Importing the same export again adds nothing.
    assert cli.main(["annotate", "import", str(export), "--format", "label-studio",
                     "--selection", str(selection), "--out", str(out)]) == 0
    assert _jsonl(out) == rows
    assert len(_jsonl(tmp_path / "ann" / "annotations.jsonl")) == len(expected)

    # An annotator corrects one answer in Label Studio; the next export replaces it.
    fixed = selected[3]
    ann_id = _ok(api.get(f"/api/tasks/{ls_id[fixed]}/annotations"), "list annotations")[0]["id"]
    time.sleep(1.1)
    _ok(api.patch(f"/api/annotations/{ann_id}", json=_answer(f"corrected answer to {fixed}")), "update")
    export2 = _export(api, project, tmp_path / "export-2.json")
    assert cli.main(["annotate", "import", str(export2), "--format", "label-studio",
                     "--selection", str(selection), "--out", str(out)]) == 0
    final = {r["id"]: r["response"] for r in _jsonl(out)}
    assert final == {**expected, fixed: f"corrected answer to {fixed}"}
    assert len(_jsonl(out)) == len(expected), "no duplicates after a correction"
    report2 = json.loads((tmp_path / "ann" / "import-round-2.json").read_text())
    assert report2["replaced"] == [fixed]

    # The store excludes the annotated prompts from the next round's selection.
    assert cli.main(["select", str(tmp_path / "pool.jsonl"), "--budget", "6", "--strategy", "random",
                     "--exclude", str(tmp_path / "ann" / "annotations.jsonl"),
                     "--out", str(tmp_path / "sel2"), "-q"]) == 0
    assert not {r["id"] for r in _jsonl(tmp_path / "sel2" / "selection.jsonl")} & set(expected)
