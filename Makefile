# The two commands: `make demo` and `make test`. Both create .venv if missing and install samr1 into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := .tiny

.PHONY: demo test lint install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(TINY)/manifest.json: | $(STAMP)
	$(BIN)/samr1 tiny $(TINY) --warmup-steps 100

# Train the tiny policy with GRPO on synthetic shapes (SAM-R1 rewards, tiny SAM), then test the checkpoint
# this fit wrote (a fit refuses a run directory that already holds another run).
demo: $(STAMP) $(TINY)/manifest.json
	rm -rf runs/demo  # the demo owns runs/demo: each run tests the checkpoint its own fit wrote
	$(BIN)/samr1 fit --config configs/demo.yaml
	$(BIN)/samr1 test --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt

lint: $(STAMP)
	$(BIN)/ruff check samr1 tests benchmarks
	$(BIN)/ruff format --check samr1 tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs $(TINY) wandb lightning_logs
