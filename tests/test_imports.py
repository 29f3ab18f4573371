"""Imports run one way, down the pipeline: a module imports only modules of lower layers.

The layers are written here, lowest first. Every import of `src/taskdiv` counts, also
those inside functions or under TYPE_CHECKING (a lazy import is still a dependency), so
no cycle can come back and no stage can reach up into a later one. A new module must be
placed in a layer before this test passes.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "taskdiv"

LAYERS: list[set[str]] = [
    {"_version", "errors", "redact"},                           # the package's version; error types; secrets masked
    {"fileio"},                                                 # reading and writing files (config reads YAML)
    {"packages", "progress", "config", "metrics", "allocation", "kcenter", "analysis",
     "splits"},                                                 # plumbing; the split rule of every source
    {"models", "registry", "benchmarks", "vllm_server"},        # embedded models; package index; MMLU, BBH,
                                                                # gauntlet; a vLLM server and its client
    {"generation"},                                             # the local scoring engine
    {"vllm_engine"},                                            # the vLLM runner behind the same interface
    {"distributed"},                                            # the Ray engine (scoring, embeddings)
    {"embeddings", "bigbench", "harness"},                      # prompt vectors, BIG-bench, lm-eval
    {"data"},                                                   # the pool
    {"strategies"},                                             # selection strategies over a pool
    {"annotate.answers"},                                       # what annotators return, the selection
    {"annotate.store", "annotate.jsonl", "annotate.label_studio", "annotate.argilla"},  # the store, the formats
    {"annotate"},                                               # the FORMATS registry
    {"answers"},                                                # long-form answers (local or vLLM)
    {"judge"},                                                  # an LLM judge's win rate (the judge suite)
    # the stages a user runs
    {"selection", "scoring", "training", "evaluation", "annotate.commands", "caches"},
    {"rounds"},                                                 # annotation in rounds: select, train, re-score
    {"experiments"},                                            # every stage, end to end
    {"report"},                                                 # reads an experiment
    {"api"},                                                    # the Python API: load_pool, score, select, allocate
    {"cli", "taskdiv"},                                         # names every command; `import taskdiv` (the API)
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "taskdiv"


def imports_of(path: Path) -> set[str]:
    """The taskdiv modules that `path` imports (relative or absolute, at any depth)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "taskdiv" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "taskdiv" or alias.name.startswith("taskdiv."):
                    found.add(alias.name.removeprefix("taskdiv.") if alias.name != "taskdiv" else "taskdiv")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and (node.module == "taskdiv" or node.module.startswith("taskdiv.")):
                target = node.module.removeprefix("taskdiv").lstrip(".")
            else:
                continue
            # `from . import x` / `from .pkg import mod` may name submodules rather than objects.
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if (SRC / (sub.replace(".", "/") + ".py")).exists()
                          or (SRC / sub.replace(".", "/")).is_dir() else (target or "taskdiv"))
    found.discard(name)
    return found


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"{name} is in no layer of tests/test_imports.py: place it where it belongs")


def test_every_module_has_a_layer():
    placed = set().union(*LAYERS)
    assert set(MODULES) <= placed, f"modules without a layer: {sorted(set(MODULES) - placed)}"
    assert placed <= set(MODULES), f"layers name modules that do not exist: {sorted(placed - set(MODULES))}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_layers(name):
    mine = layer_of(name)
    upward = sorted(dep for dep in imports_of(MODULES[name]) if layer_of(dep) >= mine)
    assert not upward, (f"{name} (layer {mine}) imports {', '.join(f'{d} (layer {layer_of(d)})' for d in upward)}: "
                        f"imports must run down the pipeline")


def test_the_check_sees_lazy_and_type_checking_imports(tmp_path):
    # The parser itself: imports inside functions and TYPE_CHECKING blocks count.
    probe = SRC / "strategies.py"
    assert {"allocation", "data", "errors", "kcenter"} <= imports_of(probe)


def test_the_module_map_in_the_docs_is_the_layering():
    """docs/development.md's module map lists every module in the layer this test puts it in."""
    import re

    text = (SRC.parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    table = text.split("**Module map**", 1)[1]
    documented = {}
    for layer, modules in re.findall(r"^\| (\d+) \| ([^|]+) \|", table, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", modules):
            documented[name] = int(layer)
    expected = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    assert documented == expected
