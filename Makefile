# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m prvr.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --preset charades --batch-videos 128 --steps 3 --json
	$(BIN)/python bench/evaluate.py --preset charades --videos 1334 --queries 3720 --json

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
