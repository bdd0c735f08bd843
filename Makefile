# The two commands: `make demo` and `make test`. Both create .venv if missing and install samr1 into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := .tiny
DEMO_WARMUP_STEPS ?= 300
DEMO_SAM_STEPS ?= 600

.PHONY: demo test lint install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The tiny policy (warmed up to the answer format, not to the task) and the tiny SAM, trained on shapes.
$(TINY)/manifest.json: | $(STAMP)
	$(BIN)/samr1 tiny $(TINY) --size demo --warmup-steps $(DEMO_WARMUP_STEPS) --warmup-prompt "Find {query}." \
		--sam-steps $(DEMO_SAM_STEPS)

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
