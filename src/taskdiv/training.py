"""`taskdiv train`: supervised finetuning with TRL's SFTTrainer and PEFT LoRA.

    taskdiv train runs/sel/selection.jsonl --model smollm2-135m-instruct --out runs/ft
    python -c "from taskdiv.training import train, TrainConfig; train(TrainConfig(data=..., out=...))"

DATA is a prompt/response dataset: JSONL (or any pool source `taskdiv.pool` reads)
with `prompt`, `response` (required, non-empty) and optionally `task`, `id`.
Each example is tokenized exactly as `models.encode_prompt` + `models.encode_response`
do it (raw text plus EOS for base models, the chat template for instruct models), and
handed to SFTTrainer pre-tokenized with a `completion_mask`, so the loss falls on the
response tokens only and the model sees the very tokens evaluation uses.

RUN/ holds:
    config.yaml       the resolved options (model, data hash, dtype, chat, ...)
    train_log.jsonl   one line per optimizer step: step, epoch, loss, learning_rate, and
                      seconds (training time up to that step, counted across resumes)
    train_metrics.json  examples, tokens, runtime (this session's and, across resumes,
                      train_seconds), tokens/s, seconds per example-epoch
    checkpoints/      Trainer checkpoints while training (removed when done)
    adapter/          the LoRA adapter (plain `peft.PeftModel.from_pretrained`)
    merged/           merged full weights (with --merge, and always for --method full)
    done              marker: a rerun with the same options does nothing

An interrupted run resumes from its last complete checkpoint; a rerun with different
options (another model, other data, another learning rate ...) is refused.

Several GPUs (DDP): `torchrun --nproc_per_node N -m taskdiv.cli train ...` or
`accelerate launch -m taskdiv.cli train ...`. The Trainer shards the batches across the
processes (the effective batch is N x --batch-size x --grad-accum); only rank 0 writes
RUN/ (config, log, metrics, adapter, done) and prunes checkpoints, every rank resumes
from the same checkpoint. Tested on CPU with gloo (tests/test_training_ddp.py).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common.atomic import atomic_dir
from .common.config import to_dict
from .common.errors import DataError, TaskdivError, errno_in
from .common.inputs import file_sha256, read_yaml
from .common.outputs import check_output_dir
from .common.progress import quiet_inner_progress
from .common.version import __version__
from .common.writers import write_json, write_text, write_yaml
from .engines.models import DEFAULT_MODEL, EMBEDDED

log = logging.getLogger(__name__)

DEFAULT_LR = {"lora": 3e-4, "full": 2e-5}
# Options whose change makes an existing run directory a different run.
RUN_IDENTITY = ("model", "data_sha256", "method", "epochs", "lr", "batch_size", "grad_accum", "max_length",
                "lora_r", "lora_alpha", "lora_dropout", "target_modules", "seed", "dtype", "chat",
                "warmup", "scheduler", "weight_decay", "activation_checkpointing", "group_by_length")


@dataclass
class TrainConfig:
    data: str | None = field(default=None, metadata={
        "positional": True, "required": True,
        "help": "SFT data: JSONL with prompt and response (task, id optional), e.g. a selection.jsonl "
                "with responses or an annotation import; any pool source taskdiv reads works."})
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": f"Base model: {', '.join(EMBEDDED)}, a local HF directory, a .gguf file or a hub id."})
    out: str | None = field(default=None, metadata={"required": True, "help": "Run directory (RUN/)."})
    method: str = field(default="lora", metadata={"choices": ["lora", "full"],
                                                  "help": "LoRA adapter or full finetuning."})
    epochs: float = field(default=2.0, metadata={"help": "Passes over the data."})
    lr: float | None = field(default=None, metadata={
        "help": "Peak learning rate (default: 3e-4 for LoRA, 2e-5 for full finetuning)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per device batch."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps (effective batch = "
                                                         "batch-size x grad-accum)."})
    max_length: int = field(default=512, metadata={
        "help": "Longest example in tokens; longer ones are cut at the end, and those left without any "
                "response token are dropped (a warning says how many)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    target_modules: str = field(default="all-linear", metadata={
        "help": "LoRA target modules: all-linear, or comma-separated names (q_proj,v_proj)."})
    warmup: float = field(default=0.03, metadata={"help": "Warmup: a fraction of the steps (<1) or a step count."})
    scheduler: str = field(default="linear", metadata={"choices": ["linear", "cosine", "constant_with_warmup"],
                                                       "help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    seed: int = field(default=0, metadata={"help": "Seed for adapter init, dropout and data order."})
    dtype: str = field(default="auto", metadata={
        "choices": ["auto", "bfloat16", "float32"],
        "help": "Mixed precision: auto = bf16 autocast where the CPU/GPU supports it, else float32."})
    chat_template: bool | None = field(default=None, metadata={
        "help": "Format prompts with the chat template (default: yes for instruct models)."})
    merge: bool = field(default=False, metadata={"help": "Also write merged full weights to RUN/merged."})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass: less memory, about 20-30% slower "
                "(for large models on a GPU)."})
    group_by_length: bool = field(default=False, metadata={
        "help": "Batch examples of similar length together (transformers' LengthGroupedSampler): far less "
                "padding when lengths vary, as in a many-task pool (on bench:many random batches of 8 "
                "computed 2.46x the real tokens, grouped ones 1.2-1.3x), but batches are no longer a "
                "uniform random draw."})
    save_steps: int = field(default=20, metadata={
        "help": "Checkpoint every N optimizer steps (an interrupted run resumes from the last one)."})


# ----------------------------------------------------------------------------- data


def load_examples(spec: str):
    """The SFT rows (id, prompt, response, task?) of DATA; every row needs a response."""
    from .pool.fields import FieldMap
    from .pool.load import load_pool, parse_spec

    if parse_spec(str(spec))[0] == "path" and Path(spec).is_file() and Path(spec).stat().st_size == 0:
        raise DataError("the dataset is empty", file=spec)
    return check_examples(load_pool(spec, FieldMap(), require_tasks=False).frame, spec)


def check_examples(frame, spec: str):
    """`frame` (a pool's rows) as SFT rows: every row needs a response; errors name `spec`."""
    if "response" not in frame.columns:
        raise DataError("no 'response' field: training needs a response for every prompt "
                        "(annotate the selection first, see `taskdiv annotate`)", file=spec)
    missing = frame["response"].isna() | (frame["response"].astype(str).str.strip() == "")
    if missing.any():
        rows = [f"{i} (row {r + 1})" for r, i in zip(frame.index[missing][:10], frame["id"][missing][:10])]
        more = f" and {int(missing.sum()) - 10} more" if missing.sum() > 10 else ""
        raise DataError(f"{int(missing.sum())} row(s) have no response: ids {', '.join(rows)}{more}",
                        file=spec, field="response")
    return frame


def tokenize(frame, tokenizer, chat: bool, max_length: int, *, source=None):
    """input_ids and completion_mask per example, from the shared prompt formatting.

    Examples longer than `max_length` are cut at the end; those whose response is cut
    entirely (nothing left to learn from) are dropped, with a warning that says how many,
    and an error when none is left."""
    from .engines import models

    input_ids, masks, cut, dropped = [], [], 0, []
    for pid, prompt, response in zip(frame["id"], frame["prompt"], frame["response"]):
        p = models.encode_prompt(tokenizer, prompt, chat)
        r = models.encode_response(tokenizer, prompt, str(response), chat)
        ids, mask = p + r, [0] * len(p) + [1] * len(r)
        if len(ids) > max_length:
            cut += 1
            ids, mask = ids[:max_length], mask[:max_length]
            if not any(mask):
                dropped.append(pid)
                continue
        input_ids.append(ids)
        masks.append(mask)
    if not input_ids:
        raise DataError(f"every one of the {len(frame)} example(s) has a prompt of --max-length {max_length} "
                        f"tokens or more, so no response token is left to train on; raise --max-length",
                        file=source)
    if cut:
        log.warning("%d of %d example(s) are longer than --max-length %d tokens and were cut at the end; "
                    "%d of them lost their whole response and were dropped%s", cut, len(frame), max_length,
                    len(dropped), f" (ids {', '.join(map(str, dropped[:5]))}{' ...' if len(dropped) > 5 else ''})"
                    if dropped else "")
    return {"input_ids": input_ids, "completion_mask": masks}


# ----------------------------------------------------------------------------- run directory


def resolved_config(cfg: TrainConfig, chat: bool, data_sha256: str | None = None) -> dict:
    """The options as config.yaml records them; `data_sha256`: the examples' hash when they came
    in memory (`examples_sha256`), else cfg.data's file's."""
    from .engines import models

    out = {"command": "train", **to_dict(cfg)}
    out["lr"] = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.method]
    out["dtype"] = models.dtype_name(cfg.dtype)
    out["chat"] = chat
    out["data_sha256"] = data_sha256 or file_sha256(cfg.data)
    out["taskdiv_version"] = __version__
    return out


def check_existing(run: Path, resolved: dict) -> bool:
    """True when RUN holds this finished run; error when it holds a different one."""
    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        if run.exists() and any(p for p in run.iterdir() if not p.name.startswith(".")):
            raise TaskdivError(f"{run}: exists and is not a taskdiv train run; choose another --out")
        return False
    old = read_yaml(cfg_path) or {}
    if not isinstance(old, dict):
        raise TaskdivError(f"{cfg_path}: holds no mapping of options; not a taskdiv train run")
    if old.get("command") != "train":
        raise TaskdivError(f"{run}: holds a {old.get('command', 'non-train')!r} output, not a training run")
    if old.get("model") != resolved["model"]:
        raise TaskdivError(f"{run}: is a run of model {old.get('model')!r}, but --model is "
                           f"{resolved['model']!r}; choose another --out (or the same --model to resume)")
    diff = [k for k in RUN_IDENTITY if old.get(k) != resolved.get(k)]
    if diff and not (run / "done").exists() and not (run / "adapter").exists() \
            and last_checkpoint(run / "checkpoints") is None:
        # An attempt that failed before its first checkpoint (a bad option the Trainer or PEFT
        # refused): nothing of it is kept, so this run starts afresh with its own options.
        log.info("%s: an earlier attempt with other options left no checkpoint; starting afresh", run)
        return False
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {resolved.get(k)!r}" for k in diff)
        raise TaskdivError(f"{run}: was trained with different options ({detail}); choose another --out")
    return (run / "done").exists()


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (DDP), or a single process: the one that writes RUN/."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint (`complete_checkpoint`); incomplete ones, cut off while
    being written (a full disk, a kill), are removed."""
    if not ckpt_dir.is_dir():
        return None
    done = []
    for d in ckpt_dir.glob("checkpoint-*"):
        step = d.name.split("-", 1)[1]
        if step.isdigit() and complete_checkpoint(d):
            done.append((int(step), d))
        elif step.isdigit() and is_main_process():
            shutil.rmtree(d, ignore_errors=True)
    return str(max(done)[1]) if done else None


def complete_checkpoint(d: Path) -> bool:
    """Whether checkpoint `d` holds everything resuming reads, whole: trainer_state.json (the
    Trainer writes it last) readable with its step; the weights (adapter_model.safetensors or
    model.safetensors, or every shard its index names), each as long as its header says; and
    every torch file (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin) a whole zip
    archive. A full disk left checkpoint-N/ with a README only; a lost write after a crash can
    leave any file short."""
    import zipfile

    try:
        state = json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "global_step" not in state:
            return False
        weights = [d / n for n in ("adapter_model.safetensors", "model.safetensors") if (d / n).exists()]
        index = d / "model.safetensors.index.json"
        if index.exists():
            weights += [d / n for n in set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())]
        if not weights or not all(_whole_safetensors(w) for w in weights):
            return False
        return all(zipfile.is_zipfile(f) for f in d.iterdir() if f.suffix in (".pt", ".pth", ".bin"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _whole_safetensors(path: Path) -> bool:
    """A safetensors file as long as its header says (8 bytes of header length, the JSON header,
    then the tensors' bytes up to the largest end offset)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        n = int.from_bytes(head, "little")
        if n > 100_000_000:
            return False
        header = json.loads(f.read(n))
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    return path.stat().st_size == 8 + n + max(ends, default=0)


def _write_error(e: Exception, where: Path) -> OSError | None:
    """The operating system's error behind a library's failure to write into `where`, naming it:
    safetensors says 'I/O error: No space left on device (os error 28)' in a SafetensorError,
    torch.save 'file write failed' in a RuntimeError; an OSError of the Trainer's own (a JSON
    file) names no file. None for anything else."""
    text = str(e)
    code = (e.errno if isinstance(e, OSError) else None) or errno_in(text)  # Arrow's OSErrors: in the text
    if code is None and isinstance(e, RuntimeError) and "write" in text.lower() \
            and shutil.disk_usage(where).free < 1 << 20:
        code = errno.ENOSPC  # torch says no more than that a write failed: the disk it wrote to is full
    if code is None:
        return None
    name = e.filename if isinstance(e, OSError) and e.filename else where
    return OSError(code, os.strerror(code), str(name))


# ----------------------------------------------------------------------------- training


def _callbacks(log_path: Path, resume_step: int):
    from transformers import TrainerCallback

    from .common.progress import bar

    class LogAndProgress(TrainerCallback):
        """Loss per step into train_log.jsonl, and a progress bar with loss and time left.
        `before`: the training seconds up to the checkpoint resumed from (its log line's), which
        each line's `seconds` and the metrics' train_seconds carry on from."""

        def __init__(self):
            self.bar = None
            self.before = 0.0
            self.start = time.monotonic()
            # Steps after the checkpoint we resume from will be trained again: drop their lines.
            if log_path.exists() and is_main_process():
                lines = [json.loads(ln) for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
                lines = [rec for rec in lines if rec["step"] <= resume_step]
                write_text(log_path, "".join(json.dumps(rec) + "\n" for rec in lines))
                self.before = float(lines[-1].get("seconds") or 0.0) if lines else 0.0

        def seconds(self) -> float:
            return self.before + time.monotonic() - self.start

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.monotonic()
            self.bar = bar(total=state.max_steps, initial=state.global_step, desc="train", unit="step")

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            rec = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
                   "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                   "seconds": round(self.seconds(), 1)}
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    return LogAndProgress()


def _sft_trainer(trl):
    """TRL's SFTTrainer, whose loss on a CPU projects through the LM head only the positions
    whose next token is a response token.

    TRL's fused LM head scores only those positions on Triton devices (GPUs); elsewhere it
    scores every position, so a CPU computes and holds logits of the whole batch over the
    whole vocabulary: for Gemma 3 (262,144 tokens) at 4 x 1,024 tokens, 4.3 GB in float32
    per copy, and more than half of the step's arithmetic, spent on prompt positions whose
    loss is zero. Here the model's own forward keeps those positions only
    (`logits_to_keep`, a transformers argument every causal LM takes), and the loss is the
    same sum over response tokens divided by the same token count as TRL's. `make bench`
    (bench_training) measures the two side by side. GPUs, evaluation, models without
    `logits_to_keep`, label smoothing, a custom loss and MoE auxiliary losses keep TRL's path."""
    import inspect

    import torch

    class SFTTrainer(trl.SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._compact_head(model, inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            targets = inputs["labels"][:, 1:]  # the label of each position's next token
            keep = (targets != -100).any(dim=0).nonzero().squeeze(1)  # positions some row has a label after
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False,
                            logits_to_keep=keep)
            logits, targets = outputs.logits.float(), targets[:, keep]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            count = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL's: DDP averages
            return (loss, outputs) if return_outputs else loss

        def _compact_head(self, model, inputs) -> bool:
            if not COMPACT_HEAD or not model.training or "labels" not in inputs \
                    or inputs["labels"].device.type != "cpu":
                return False  # evaluation keeps TRL's path: its metrics may want every position's logits
            if self.compute_loss_func is not None or self.label_smoother is not None or self.aux_loss_enabled:
                return False
            base = self.accelerator.unwrap_model(model)
            base = base.get_base_model() if hasattr(base, "get_base_model") else base
            return "logits_to_keep" in inspect.signature(type(base).forward).parameters

    return SFTTrainer


# Whether training on a CPU projects only the response positions through the LM head
# (_sft_trainer); bench_training sets it False in a child process to measure TRL's own path.
COMPACT_HEAD = True


def check_options(cfg: TrainConfig) -> None:
    """The options alone make sense (the data and model are checked by `train`)."""
    if cfg.out is None or cfg.data is None:
        raise TaskdivError("train needs DATA and --out")
    if cfg.epochs <= 0 or cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.max_length < 2 or cfg.save_steps < 1:
        raise TaskdivError("--epochs, --batch-size, --grad-accum, --save-steps must be positive, --max-length >= 2")
    checks = [(cfg.lr is None or cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
              (cfg.warmup >= 0, f"--warmup must be 0 or more (a fraction below 1, or steps), got {cfg.warmup}"),
              (cfg.weight_decay >= 0, f"--weight-decay must be 0 or more, got {cfg.weight_decay}")]
    if cfg.method == "lora":
        names = target_module_names(cfg.target_modules, keep_empty=True)
        checks += [(cfg.lora_r >= 1, f"--lora-r must be at least 1, got {cfg.lora_r}"),
                   (cfg.lora_alpha > 0, f"--lora-alpha must be positive, got {cfg.lora_alpha}"),
                   (0 <= cfg.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {cfg.lora_dropout}"),
                   (all(names), f"--target-modules {cfg.target_modules!r}: an empty name")]
    for ok, message in checks:
        if not ok:
            raise TaskdivError(message)


def target_module_names(target_modules: str, *, keep_empty: bool = False) -> list[str]:
    """The names of a comma-separated --target-modules (empty ones too with `keep_empty`,
    for the check that refuses them)."""
    names = [t.strip() for t in target_modules.split(",")]
    return names if keep_empty else [t for t in names if t]


def check_target_modules(model, target_modules: str) -> None:
    """Every name in --target-modules names a module of the model, as PEFT matches them (the
    module's own name or a dotted suffix of its path): PEFT fails only when none matches,
    so a typo in one of two names would train the other alone without a word."""
    if target_modules == "all-linear":
        return
    paths = [name for name, _ in model.named_modules()]
    missing = [t for t in target_module_names(target_modules) if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        import torch

        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise TaskdivError(f"--target-modules: {', '.join(map(repr, missing))} is not a module of this model; "
                           f"its linear layers are {', '.join(linear)} (or use all-linear)")


def examples_sha256(frame) -> str:
    """The hash that names in-memory examples in config.yaml (as a file's sha256 names a file's):
    of their id, prompt, response and task, in order, so that the same rows resume the same run."""
    import hashlib

    digest = hashlib.sha256()
    columns = [c for c in ("id", "prompt", "response", "task") if c in frame.columns]
    for row in frame[columns].itertuples(index=False):
        digest.update(json.dumps([str(v) for v in row], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def train(cfg: TrainConfig, examples=None) -> Path:
    """Finetune cfg.model on cfg.data into cfg.out; returns the run directory. `examples`: the
    rows themselves (a pool's frame, the Python API's data in memory) in place of cfg.data's
    file, which then only labels them."""
    from .common.packages import require
    from .engines import models

    check_options(cfg)
    run = Path(cfg.out)
    check_output_dir(run)
    # validate the data before touching RUN/
    frame = check_examples(examples, cfg.data) if examples is not None else load_examples(cfg.data)
    ref = models.resolve(cfg.model)
    if ref.adapter:
        raise TaskdivError(f"--model {cfg.model}: an adapter cannot be the base of a new run; train that run "
                           f"with --merge and pass its directory (its merged/ weights are used)")
    tokenizer = models.load_tokenizer(ref)
    chat = models.choose_chat(ref, tokenizer, cfg.chat_template)
    resolved = resolved_config(cfg, chat, examples_sha256(frame) if examples is not None else None)
    if check_existing(run, resolved):
        if cfg.merge and cfg.method == "lora" and not (run / "merged").exists() and is_main_process():
            _merge_finished(run, ref, tokenizer)
        else:
            log.info("%s: already trained (done); nothing to do", run)
        return run

    datasets = require("datasets", "hf")
    trl = require("trl", "train")
    peft = require("peft", "train")
    import torch
    import transformers

    encoded = tokenize(frame, tokenizer, chat, cfg.max_length, source=cfg.data)  # before RUN/ is made
    examples = len(encoded["input_ids"])  # those left after --max-length
    dataset = datasets.Dataset.from_dict(encoded)
    main = is_main_process()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_yaml(run / "config.yaml", resolved)
    ckpt_dir = run / "checkpoints"
    resume = last_checkpoint(ckpt_dir)
    resume_step = int(Path(resume).name.split("-")[1]) if resume else 0
    if resume:
        log.info("resuming %s from %s", run, resume)

    bf16 = resolved["dtype"] == "bfloat16"
    transformers.set_seed(cfg.seed)  # before the model exists: LoRA init is random
    # float32 master weights; bf16 enters through autocast (args.bf16), as mixed precision should.
    model = transformers.AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    peft_config = None
    if cfg.method == "lora":
        check_target_modules(model, cfg.target_modules)
        targets = cfg.target_modules if cfg.target_modules == "all-linear" else target_module_names(cfg.target_modules)
        peft_config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                      target_modules=targets, task_type="CAUSAL_LM")
    args = trl.SFTConfig(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, learning_rate=resolved["lr"],
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
        seed=cfg.seed, data_seed=cfg.seed, bf16=bf16, max_length=cfg.max_length, completion_only_loss=True,
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=cfg.activation_checkpointing, remove_unused_columns=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        include_num_input_tokens_seen="all")  # the tokens computed, padding included
    trainer = None
    callback = _callbacks(run / "train_log.jsonl", resume_step)
    try:
        with quiet_inner_progress(ours=False, ignore=(FutureWarning,)):  # dataset preparation, deprecations
            trainer = _sft_trainer(trl)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                        peft_config=peft_config, callbacks=[callback])
            trainer.remove_callback(transformers.PrinterCallback)
            try:
                result = trainer.train(resume_from_checkpoint=resume)
            except Exception as e:  # a full disk while checkpointing: one line, not the library's traceback
                if (error := _write_error(e, ckpt_dir)) is not None:
                    last_checkpoint(ckpt_dir)  # removes the checkpoint the failure cut off
                    raise error from None
                raise
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        seconds = result.metrics.get("train_runtime", float("nan"))
        done_epochs = cfg.epochs * (1 - resume_step / max(1, trainer.state.max_steps))  # this session's share
        if not main:
            return run  # rank 0 writes the outputs
        write_json(run / "train_metrics.json", {
            "examples": examples, "tokens_per_epoch": tokens, "epochs": cfg.epochs, "steps": trainer.state.max_steps,
            "resumed_from_step": resume_step, "train_runtime": seconds,
            # the whole training time: the sessions before the resume (to its checkpoint) and this one
            "train_seconds": round(callback.before + seconds, 1),
            "tokens_per_second": tokens * done_epochs / seconds if seconds else None,
            # tokens computed (padding included) over real ones, for the whole run (the state resumes)
            "padding_ratio": trainer.state.num_input_tokens_seen / (tokens * cfg.epochs) if tokens else None,
            "seconds_per_example_epoch": seconds / (examples * done_epochs) if done_epochs else None,
            "final_loss": result.training_loss})
        _save(trainer.model, tokenizer, run, merge=cfg.merge or cfg.method == "full", lora=cfg.method == "lora")
    finally:
        del trainer, model  # ~30 runs share one process in an experiment: free each one's memory
        models.free_memory()
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    write_text(run / "done", "")
    return run


def _merge_finished(run: Path, ref, tokenizer) -> None:
    """--merge on a run trained without it: merged/ from the base model and the saved adapter."""
    import torch
    import transformers

    from .common.packages import require
    from .engines import models

    peft = require("peft", "train")
    log.info("%s: already trained; writing merged/ from its adapter", run)
    model = transformers.AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    try:
        merged = peft.PeftModel.from_pretrained(model, str(run / "adapter")).merge_and_unload()
        _save(merged, tokenizer, run, merge=True, lora=False)
    finally:
        del model
        models.free_memory()


def _save(model, tokenizer, run: Path, *, merge: bool, lora: bool) -> None:
    """adapter/ (and merged/) written to staging directories, then renamed into place
    (a failed save leaves neither a half-written output nor its staging directory)."""
    outputs = []
    if lora:
        outputs.append(("adapter", lambda d: model.save_pretrained(d)))
    if merge:
        def merged(d):
            full = model.merge_and_unload() if lora else model
            full.save_pretrained(d, safe_serialization=True)
        outputs.append(("merged", merged))  # after the adapter: merging changes the model
    for name, save in outputs:
        with atomic_dir(run / name) as staging:
            try:
                save(staging)
                tokenizer.save_pretrained(staging)
            except Exception as e:
                if (error := _write_error(e, run / name)) is not None:
                    raise error from None
                raise


def run_train(cfg: TrainConfig) -> None:
    run = train(cfg)
    if not is_main_process():
        return
    log_path = run / "train_log.jsonl"
    losses = [json.loads(ln)["loss"] for ln in log_path.read_text().splitlines() if ln.strip()] \
        if log_path.exists() else []
    if losses:
        k = max(1, len(losses) // 10)
        print(f"loss: first {sum(losses[:k]) / k:.4f}, last {sum(losses[-k:]) / k:.4f} ({len(losses)} steps)")
    merged = f", merged: {run / 'merged'}" if (run / "merged").exists() else ""
    print(f"run: {run} (adapter: {run / 'adapter'}{merged})")
