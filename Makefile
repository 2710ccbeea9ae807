# caef: `make help` lists every target. Every target installs what it needs (.venv) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= demo
PYTEST_WORKERS ?= 2
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format demo fashion voc-full coco-full sweep-masking-depth bench gpu-check data-check-voc data-check-coco clean clean-runs lock

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c .ci/constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -c .ci/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## build .venv from nothing with the pinned set (.ci/constraints.txt)

test: $(STAMP)  ## run the fast test suite (what CI runs)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

test-all: $(STAMP)  ## run every test, the slow ones too
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q -m ""

lint: $(STAMP)  ## ruff check + ruff format --check (what CI runs before the tests)
	$(BIN)/ruff check caef tests benchmarks examples
	$(BIN)/ruff format --check caef tests benchmarks examples

format: $(STAMP)  ## ruff format
	$(BIN)/ruff format caef tests benchmarks examples

demo: $(STAMP)  ## the whole pipeline on the generated dataset (2-core CPU, 14 min: docs/performance.md): runs/$(RUN)/summary.json + report.md
	$(BIN)/caef pipeline experiments/demo.yaml --name $(RUN) $(ARGS)

fashion: $(STAMP)  ## the pipeline on scenes of Fashion-MNIST objects (CPU): writes the trees, pretrains, runs/fashion/
	test -f data/fashion/caef_scenes.json || $(BIN)/caef data scenes --out data/fashion --objects-to 50000
	test -f data/fashion-objects/caef_scenes.json || $(BIN)/caef data scenes --out data/fashion-objects \
	  --max-objects 1 --num-images 6000 --background plain --texture-contrast 0 --objects-from 50000 \
	  --val-fraction 0.02 --score-fraction 0.05
	$(BIN)/caef pipeline experiments/fashion_objects.yaml
	$(BIN)/caef pipeline experiments/fashion.yaml $(ARGS)

voc-full: $(STAMP)  ## the paper's VOC 2012 protocol, ResNet-38 (needs data/VOCdevkit + SBD, or VOC_ROOT=...)
	$(BIN)/caef pipeline experiments/voc_full.yaml --data_root $${VOC_ROOT:-data} $(ARGS)

coco-full: $(STAMP)  ## the same on MS-COCO 2014 (needs data/coco, or COCO_ROOT=...)
	$(BIN)/caef pipeline experiments/coco_full.yaml --data_root $${COCO_ROOT:-data/coco} $(ARGS)

sweep-masking-depth: $(STAMP)  ## d_m = 0..7 on the demo, offline (caef sweep --local): table + plot in runs/sweeps/
	$(BIN)/caef sweep experiments/sweeps/masking_depth.yaml --local --base experiments/demo.yaml $(ARGS)

bench: $(STAMP)  ## caef vs the reference recipe side by side (train step, MSF CAMs, CRF, random walk); BENCH_ARGS="--config small"
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

gpu-check: $(STAMP)  ## one GPU in < 8 min: bench, bf16 vs fp32 CAMs, projected voc-full/coco-full time -> benchmarks/results/cuda-<gpu>.json
	$(BIN)/python -m benchmarks.gpu_check

data-check-voc: $(STAMP)  ## validate data/VOCdevkit (or VOC_ROOT=...) before a long run
	$(BIN)/caef data check --dataset voc --root $${VOC_ROOT:-data}

data-check-coco: $(STAMP)  ## validate data/coco (or COCO_ROOT=...)
	$(BIN)/caef data check --dataset coco --root $${COCO_ROOT:-data/coco}

lock: $(STAMP)  ## rewrite .ci/constraints.txt from the current .venv
	(echo "# Exact versions 'make install' resolves to (pip constraints). Regenerate with 'make lock'."; $(BIN)/pip freeze | grep -v '^-e') > .ci/constraints.txt

clean-runs:  ## delete runs/ and wandb/ outputs
	rm -rf runs wandb lightning_logs

clean: clean-runs  ## delete the virtualenv and caches too
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
