# segflow — two entry points that work on a fresh machine:
#   make quickstart   install everything into .venv, then run the whole cycle on the bundled sample
#   make test         install everything into .venv, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install browser quickstart test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# torch first: pip resolves it to the local wheels on our machines, the normal wheels elsewhere.
	$(BIN)/python -m pip install --quiet torch torchvision
	$(BIN)/python -m pip install --quiet -e '.[dev,serve,ray]'
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/segflow quickstart --overwrite

# The web-page test drives Chromium headless: on Debian/Ubuntu install it when missing (the test
# skips, saying why, where no Chromium can be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && \
	    { [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	      $$SUDO apt-get install -y -q chromium || echo "chromium not installed: browser test will skip"; }; } || true

test: install browser
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/import_speed.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache quickstart
