# The two commands: `make demo` and `make test`. Both create .venv if missing and install samr1 into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := .tiny
# The demo policy's warm-up: 1,500 one-shape steps (where), then 700 mixed-scene steps (which) with a falling
# learning rate; batch 8 because a 0.85M policy from scratch needs steps more than samples (README: demo).
DEMO_WARMUP_STEPS ?= 2200
DEMO_WARMUP_SINGLE_SHAPE_STEPS ?= 1500
DEMO_WARMUP_DECAY_STEPS ?= 700
DEMO_WARMUP_BATCH_SIZE ?= 8
DEMO_WARMUP_LR ?= 2e-3
DEMO_SAM_STEPS ?= 600

.PHONY: demo test lint install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The tiny policy (warmed up to the answer format and part of the task) and the tiny SAM, trained on shapes.
$(TINY)/manifest.json: | $(STAMP)
	$(BIN)/samr1 tiny $(TINY) --size demo --warmup-prompt "Find {query}." --warmup-steps $(DEMO_WARMUP_STEPS) \
		--warmup-single-shape-steps $(DEMO_WARMUP_SINGLE_SHAPE_STEPS) --warmup-decay-steps $(DEMO_WARMUP_DECAY_STEPS) \
		--warmup-batch-size $(DEMO_WARMUP_BATCH_SIZE) --warmup-lr $(DEMO_WARMUP_LR) --sam-steps $(DEMO_SAM_STEPS)

# Test the warm-up policy (before), train it with GRPO on synthetic shapes (SAM-R1's rewards and loss, the
# trained tiny SAM), test the checkpoint this fit wrote (after), then print the before/after table and draw
# runs/demo/curves.png and runs/demo/overlays.png.
demo: $(STAMP) $(TINY)/manifest.json
	rm -rf runs/demo  # the demo owns runs/demo: each run tests the checkpoint its own fit wrote
	$(BIN)/samr1 test --config configs/demo.yaml --model.predictions_path runs/demo/baseline.jsonl
	$(BIN)/samr1 fit --config configs/demo.yaml
	$(BIN)/samr1 test --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
	$(BIN)/samr1 report runs/demo --config configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check samr1 tests benchmarks
	$(BIN)/ruff format --check samr1 tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs $(TINY) wandb lightning_logs
