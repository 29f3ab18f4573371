"""Imports run one way, down the pipeline: the packages are its stages, and a module imports
only modules of lower packages, or lower layers of its own package.

The packages are written here, lowest first, each with its layers, lowest first. Packages on
one row are stages side by side: none of them imports another. Every import of
`src/taskdiv` counts, also those inside functions or under TYPE_CHECKING (a lazy import is
still a dependency), so no cycle can come back and no stage can reach up into a later one.
A new module must be placed in a layer before this test passes. A package's `__init__` is
named by the package (`pool`); a top-level module (`training`, `api`) is a package of one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "taskdiv"

PACKAGES: list[dict[str, list[set[str]]]] = [
    # plumbing that knows no stage
    {"common": [
        {"common", "common.version", "common.errors", "common.redact",  # version; error types; secrets masked
         "common.progress", "common.paths", "common.formulas",         # progress bars; the cache dir; CSV escapes
         "common.partial"},                                            # resumable record files
        {"common.atomic", "common.inputs", "common.outputs",            # atomic output; bounded readers; checks
         "common.locks", "common.packages", "common.pip_index"},       # locks; optional packages; pip's index
        {"common.writers", "common.config"},                           # serialisers; configs (read YAML)
    ]},
    # the pool: the container, its sources and their normalisation
    {"pool": [
        {"pool", "pool.container", "pool.fields", "pool.splits"},      # the table; field map; the split rule
        {"pool.checks", "pool.jsonl", "pool.benchmarks", "pool.bigbench"},  # value checks; mmap JSONL; sources
        {"pool.readers", "pool.normalise"},                            # files to raw tables; to pool columns
        {"pool.load"},                                                 # load_pool: every source
    ]},
    # where generation runs; every stage that generates sits above
    {"engines": [
        {"engines", "engines.models", "engines.vllm_server"},          # models; a vLLM server and its client
        {"engines.local"},                                             # the local engine
        {"engines.vllm"},                                              # the vLLM runner behind the same interface
        {"engines.ray"},                                               # the Ray engine (scoring, embeddings)
    ]},
    # the stages a user runs
    {"scoring": [
        {"scoring", "scoring.metrics"},                                # confidence metrics
        {"scoring.cache"},                                             # the score cache
        {"scoring.commands"},                                          # taskdiv score
    ], "selection": [
        {"selection", "selection.allocation", "selection.kcenter",     # water-filling; k-center
         "selection.embeddings", "selection.scores"},                  # prompt vectors; the scores file
        {"selection.strategies"},                                      # the strategy registry
        {"selection.commands"},                                        # taskdiv select, taskdiv pool
    ], "annotate": [
        {"annotate.answers"},                                          # what annotators return, the selection
        {"annotate.store", "annotate.jsonl", "annotate.label_studio", "annotate.argilla"},  # the store, formats
        {"annotate"},                                                  # the FORMATS registry
        {"annotate.commands"},                                         # taskdiv annotate
    ], "training": [{"training"}],                                     # taskdiv train
       "evaluation": [
        {"evaluation", "evaluation.heldout", "evaluation.harness",     # held-out; MMLU and BBH;
         "evaluation.answers"},                                        # long-form answers (local or vLLM)
        {"evaluation.judge"},                                          # an LLM judge's win rate
        {"evaluation.commands"},                                       # taskdiv evaluate
    ], "caches": [{"caches"}]},                                        # taskdiv cache
    # every stage, end to end
    {"experiments": [
        {"experiments", "experiments.grid",                            # the grid;
         "experiments.provenance", "experiments.rounds"},              # the code's commit; two rounds
        {"experiments.collate"},                                       # EXP's tables from its runs
        {"experiments.runner"},                                        # runs the grid, resumes, reuses twins
        {"experiments.commands"},                                      # taskdiv experiment
    ]},
    # reads an experiment
    {"report": [
        {"report", "report.statistics"},                               # the statistics
        {"report.tables"},                                             # the experiment's tables, summarised
        {"report.plots"},                                              # the plots
        {"report.sections"},                                           # the markdown sections
        {"report.commands"},                                           # taskdiv report
    ]},
    {"api": [{"api"}]},                                                # load_pool, score, select, allocate
    {"cli": [{"cli"}], "taskdiv": [{"taskdiv"}]},                      # every command; `import taskdiv`
]

# module -> (row of its package, its layer in the package)
LAYERS: dict[str, tuple[int, int]] = {
    module: (row, layer)
    for row, packages in enumerate(PACKAGES)
    for layers in packages.values()
    for layer, modules in enumerate(layers)
    for module in modules
}


def package_of(name: str) -> str:
    return name.split(".")[0]


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


def layer_of(name: str) -> tuple[int, int]:
    if name in LAYERS:
        return LAYERS[name]
    raise AssertionError(f"{name} is in no layer of tests/test_imports.py: place it where it belongs")


def test_every_module_has_a_layer():
    placed = set(LAYERS)
    assert set(MODULES) <= placed, f"modules without a layer: {sorted(set(MODULES) - placed)}"
    assert placed <= set(MODULES), f"layers name modules that do not exist: {sorted(placed - set(MODULES))}"
    for packages in PACKAGES:  # a package's modules are its own
        for package, layers in packages.items():
            assert all(package_of(m) == package for layer in layers for m in layer), package


def upward(name: str, dep: str) -> bool:
    """Whether importing `dep` from `name` goes back up: into a later package (or one side by side),
    or into the same or a later layer of its own package."""
    (row, layer), (dep_row, dep_layer) = layer_of(name), layer_of(dep)
    if package_of(dep) == package_of(name):
        return dep_layer >= layer
    return dep_row >= row


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_layers(name):
    mine = layer_of(name)
    upward_deps = sorted(dep for dep in imports_of(MODULES[name]) if upward(name, dep))
    found = ", ".join(f"{d} (package row {layer_of(d)[0]}, layer {layer_of(d)[1]})" for d in upward_deps)
    assert not upward_deps, (f"{name} (package row {mine[0]}, layer {mine[1]}) imports {found}: "
                             f"imports must run down the pipeline")


def test_the_check_sees_lazy_and_type_checking_imports(tmp_path):
    # The parser itself: imports inside functions and TYPE_CHECKING blocks count.
    probe = SRC / "selection" / "strategies.py"
    assert {"selection.allocation", "pool.container", "common.errors", "selection.kcenter"} <= imports_of(probe)


def test_the_module_map_in_the_docs_is_the_layering():
    """docs/development.md's module map lists every module in the package row and layer this test puts it in."""
    import re

    text = (SRC.parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    table = text.split("**Module map**", 1)[1]
    documented = {}
    for row, layer, modules in re.findall(r"^\| (\d+)\.(\d+) \| ([^|]+) \|", table, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", modules):
            documented[name] = (int(row), int(layer))
    expected = dict(LAYERS)
    assert documented == expected
