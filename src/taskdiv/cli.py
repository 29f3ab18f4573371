"""The `taskdiv` command.

    taskdiv pool info POOL                  prompts, tasks and per-task counts
    taskdiv pool export POOL --out F        write a pool (e.g. a benchmark preset) to a file
    taskdiv pool split POOL --out DIR       a pool part and a held-out part per task
    taskdiv select POOL --budget B ...      choose prompts to annotate
    taskdiv annotate export|import|oracle   the annotation round-trip
    taskdiv score POOL --out DIR            the model's confidence per prompt and per task
    taskdiv train DATA --model M --out RUN  finetune (LoRA by default)
    taskdiv evaluate RUN --suite S --out D  held-out accuracy, MMLU, BBH
    taskdiv experiment CONFIG.yaml --out EXP strategies x budgets x seeds, end to end
    taskdiv report EXP                      tables and plots of an experiment
    taskdiv cache info|clear                what the cache holds; free it
    taskdiv env                             versions, for bug reports

Every command takes --config FILE.yaml (flags override it), -v/-q, --no-progress and
--data-dir, before or after the command's name. Stage modules are imported only when their command runs, so that
`--help` is instant and selection never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .common.errors import TaskdivError
from .common.redact import RedactingFilter, redact
from .common.version import __version__

# Set before torch (and its OpenMP runtime) loads: spinning OpenMP threads stall each
# other whenever the cores are shared with other work; measured 10-20x slower forward
# passes on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# (command words) -> (module, config class, function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    ("pool", "info"): ("taskdiv.selection.commands", "PoolInfoConfig", "run_pool_info",
                       "Print the number of prompts and tasks and the per-task counts of a pool."),
    ("pool", "export"): ("taskdiv.selection.commands", "PoolExportConfig", "run_pool_export",
                         "Write a pool (any source) to a .jsonl or .parquet file."),
    ("pool", "split"): ("taskdiv.selection.commands", "PoolSplitConfig", "run_pool_split",
                        "Split a pool into a part to select from and a held-out part per task (for evaluate)."),
    ("score",): ("taskdiv.scoring.commands", "ScoreConfig", "run_score",
                 "Score the base model's confidence on each prompt (and per task), cached and resumable."),
    ("select",): ("taskdiv.selection.commands", "SelectConfig", "run_select",
                  "Choose which prompts to annotate under a budget."),
    ("annotate", "export"): ("taskdiv.annotate.commands", "ExportConfig", "run_export",
                             "Write selected prompts for Label Studio, Argilla or as plain JSONL."),
    ("annotate", "import"): ("taskdiv.annotate.commands", "ImportConfig", "run_import",
                             "Read annotators' answers from a tool's export into the SFT dataset."),
    ("annotate", "oracle"): ("taskdiv.annotate.commands", "OracleConfig", "run_oracle",
                             "Answer selected prompts with the pool's reference responses (experiments)."),
    ("train",): ("taskdiv.training", "TrainConfig", "run_train",
                 "Finetune a model on prompt/response data (TRL SFTTrainer, PEFT LoRA)."),
    ("evaluate",): ("taskdiv.evaluation.commands", "EvalConfig", "run_evaluate",
                    "Evaluate a model or run: held-out accuracy per task, MMLU, BBH (lm-evaluation-harness)."),
    ("experiment",): ("taskdiv.experiments.commands", "ExperimentCommand", "run_experiment",
                      "Compare strategies across budgets and seeds: select, annotate, train, evaluate."),
    ("cache", "info"): ("taskdiv.caches", "CacheInfoConfig", "run_cache_info",
                        "Show what taskdiv keeps in its cache ($TASKDIV_CACHE) and how large it is."),
    ("cache", "clear"): ("taskdiv.caches", "CacheClearConfig", "run_cache_clear",
                         "Free the cache: scores, embeddings, models, bigbench-1.0.0, or all."),
    ("report",): ("taskdiv.report.commands", "ReportConfig", "run_report",
                  "Write report.md and plots (accuracy vs budget, allocation, per-task gains) for an experiment."),
}

GROUP_HELP = {"pool": "Inspect, export and split prompt pools.",
              "cache": "Show and free taskdiv's cache (shared scores, embeddings, converted models).",
              "annotate": "Send selected prompts to annotators (Label Studio, Argilla) and import their answers."}


def build_parser() -> argparse.ArgumentParser:
    from .common import config

    parser = argparse.ArgumentParser(
        prog="taskdiv",
        description="Label-efficient SFT: choose which prompts to annotate by task diversity and "
                    "model confidence (WeightedTaskDiversity, arXiv 2507.21482).")
    parser.add_argument("--version", action="version", version=f"taskdiv {__version__}")
    # The shared flags work before the command (`taskdiv -q score ...`) and after it: the
    # command's copies default to SUPPRESS, so that one given before it stands.
    add_shared_flags(parser, defaults=True)
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file with the command's options as keys; command-line flags override it.")
    common = argparse.ArgumentParser(add_help=False)
    add_shared_flags(common, defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (module, cls_name, _, help_text) in COMMANDS.items():
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                gp = sub.add_parser(words[0], help=GROUP_HELP.get(words[0], ""),
                                    description=GROUP_HELP.get(words[0], ""))
                groups[words[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=help_text, description=help_text, parents=[common])
        config.add_arguments(p, getattr(importlib.import_module(module), cls_name))
        p.set_defaults(_words=words)
    env = sub.add_parser("env", help="Print versions of taskdiv, Python and key libraries (for bug reports).",
                         parents=[common])
    env.set_defaults(_words=("env",))
    return parser


def add_shared_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="More log output (-vv: debug).")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="Only warnings and errors.")
    parser.add_argument("--no-progress", action="store_true", default=default(False),
                        help="Turn every progress bar off, the libraries' (transformers, datasets, "
                             "sentence-transformers) included.")
    parser.add_argument("--data-dir", metavar="DIR", default=default(None),
                        help="Where the local benchmark collections are (mmlu/, bbh/, gauntlet/, alpaca_eval/): "
                             "sets TASKDIV_DATA; default ../shared/data beside the repository.")


def quiet_progress() -> None:
    """No progress bar anywhere: taskdiv's (TASKDIV_NO_PROGRESS), tqdm's in every library
    (TQDM_DISABLE, read by tqdm >= 4.66 as the default of `disable`), the hub client's, and
    transformers' and datasets' own switches where they are loaded."""
    os.environ["TASKDIV_NO_PROGRESS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for module, name in (("transformers.utils.logging", "disable_progress_bar"),
                         ("datasets.utils.logging", "disable_progress_bar")):
        if module in sys.modules:
            getattr(sys.modules[module], name)()


def run_env() -> None:
    import platform
    from importlib import metadata

    print(f"taskdiv {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"platform {platform.platform()}")
    for pkg in ("numpy", "pandas", "pyarrow", "torch", "transformers", "accelerate", "gguf", "peft", "trl",
                "datasets", "lm_eval", "sentence-transformers", "scikit-learn", "argilla", "matplotlib", "alpaca-eval",
                "openai"):
        try:
            version = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{pkg} {version}")
    from .engines.vllm_server import vllm_version

    print(f"vllm {vllm_version()}")
    try:
        import torch

        print(f"torch threads {torch.get_num_threads()}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
              f"cuda {torch.cuda.is_available()}")
    except ImportError:
        pass


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # no password reaches a log line (taskdiv's, Ray's, pyarrow's)
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    if verbose < 2:
        for noisy in ("httpx", "httpx2", "openai", "urllib3", "datasets", "transformers", "sentence_transformers",
                      "filelock", "accelerate", "argilla"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def os_error_message(e: OSError) -> str:
    """'PATH: reason' for an OSError (both paths of a failed rename)."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    reason = e.strerror or str(e)
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _redacted_traceback(kind, value, tb) -> None:
    """sys.excepthook for a bug's traceback: printed as Python does, with any password masked."""
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def main(argv: list[str] | None = None) -> int:
    from .common import config

    sys.excepthook = _redacted_traceback
    parser = build_parser()
    args = parser.parse_args(argv)
    words = getattr(args, "_words", None)
    if words is None:
        # `taskdiv` or `taskdiv pool` alone: show the relevant help.
        if args.command in GROUP_HELP:
            parser.parse_args([args.command, "--help"])
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    if args.no_progress:
        quiet_progress()
    if args.data_dir:
        os.environ["TASKDIV_DATA"] = os.path.abspath(args.data_dir)
    try:
        if words == ("env",):
            run_env()
            return 0
        module, cls_name, func, _ = COMMANDS[words]
        mod = importlib.import_module(module)
        cfg = config.build(getattr(mod, cls_name), args, args.config)
        getattr(mod, func)(cfg)
        return 0
    except TaskdivError as e:
        print(f"taskdiv: error: {redact(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:
        # The operating system refused something (a read-only directory, a full disk, a file
        # where a directory should be): the user's environment, not a bug, so no traceback.
        print(f"taskdiv: error: {redact(os_error_message(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("taskdiv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
