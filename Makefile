# ddpm-book: two commands on a fresh machine (see README.md).
#
#   make book   create or reuse .venv, then build the HTML book into _build/html, executing
#               every notebook during the build (_config.yml: execute_notebooks: force).
#   make test   create or reuse .venv, install Debian's chromium if /usr/bin/chromium is
#               missing, then run every check, stopping at the first that fails:
#                 1. lint            ruff check .
#                 2. check-notebooks tools/check_notebooks.py: every code cell stored executed
#                                    (1, 2, 3, ... in order), no stored errors, toc <-> files
#                 3. book-stored     build _build/html from the outputs STORED in the notebooks
#                                    (no execution), -W -n --keep-going: zero Sphinx warnings
#                 4. unit            pytest tests -m "not slow" with DDPM_BOOK_CHECK=1, which
#                                    includes tests/test_book.py's headless-chromium check of
#                                    every built page (math typeset, images loaded)
#                 5. nbval           pytest --nbval (strict) over notebooks/: re-executes every
#                                    notebook and compares every output with the stored one,
#                                    through the one sanitize file nbval_sanitize.cfg
#
# Why `make test` builds from stored outputs: nbval (step 5) already executes each notebook
# once and fails on any difference from its stored outputs, so the stored outputs that step 3
# renders are the ones a fresh run produces. Executing every notebook a second time inside the
# book build would double the longest part of CI (about a minute per notebook on 2 CPU cores,
# see README) for no extra check; `make book` is the build that executes.
#
# Other targets: venv, chromium, lint, check-notebooks, book-stored, unit, nbval, browser-check,
# test-slow, lab, clean.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ddpm-book-installed
CHROMIUM := /usr/bin/chromium
BUILD_FLAGS := -W -n --keep-going --all
STORED_CONFIG := _build/_config.stored-outputs.yml

# Notebooks, tests and the book never reach the Hugging Face hub (no network here).
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv chromium lint check-notebooks book book-stored unit browser-check nbval \
        nbval-portable test test-slow lab clean

help:
	@echo "make book   set up .venv and build the HTML book (executes every notebook) -> _build/html"
	@echo "make test   set up .venv (+ chromium) and run every check (lint, notebooks, unit, nbval, browser)"

# ---- environment ---------------------------------------------------------------------------
venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements.txt
	$(BIN)/python -c "import setuptools" 2>/dev/null || $(BIN)/python -m pip install "setuptools>=61"
	$(BIN)/python -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "$(CHROMIUM) is missing: install Debian's chromium (sudo apt-get install -y chromium)"; \
	    exit 1; \
	  fi; \
	fi
	@$(CHROMIUM) --version 2>/dev/null | grep -i chromium

# ---- the book ------------------------------------------------------------------------------
book: $(STAMP)
	$(BIN)/jupyter-book build . $(BUILD_FLAGS)

book-stored: $(STAMP)
	$(BIN)/python tools/book_config.py _config.yml $(STORED_CONFIG)
	$(BIN)/jupyter-book build . $(BUILD_FLAGS) --config $(STORED_CONFIG)

# ---- checks --------------------------------------------------------------------------------
lint: $(STAMP)
	$(BIN)/ruff check .

check-notebooks: $(STAMP)
	$(BIN)/python tools/check_notebooks.py --toc _toc.yml notebooks

unit: $(STAMP)
	DDPM_BOOK_CHECK=1 $(BIN)/python -m pytest tests -m "not slow"

browser-check: $(STAMP) chromium
	$(BIN)/python tools/check_book_html.py --html-dir _build/html --toc _toc.yml

nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-cell-timeout=600 \
	  --nbval-sanitize-with nbval_sanitize.cfg notebooks

# The same strict nbval with the CPU's vector kernels switched off (torch's ATen, NumPy, MKL,
# oneDNN). Every printed number must be the same on any x86-64 CPU: a cell that passes `make nbval`
# but fails here prints a rounding-level value that depends on the machine (print the asserted
# bound instead). Not part of `make test` (it re-executes every notebook); run it before storing
# outputs.
PORTABLE_CPU_ENV := ATEN_CPU_CAPABILITY=default NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR" \
  MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
nbval-portable: $(STAMP)
	$(PORTABLE_CPU_ENV) $(BIN)/python -m pytest --nbval --nbval-current-env --nbval-cell-timeout=600 \
	  --nbval-sanitize-with nbval_sanitize.cfg $(or $(NB),notebooks)

# each step is timed (bash `time`), so CI logs show where the minutes go
test: $(STAMP) chromium
	time $(MAKE) --no-print-directory lint
	time $(MAKE) --no-print-directory check-notebooks
	time $(MAKE) --no-print-directory book-stored
	time $(MAKE) --no-print-directory unit
	time $(MAKE) --no-print-directory nbval

test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -m slow

# JupyterLab on this machine's .venv (as root it needs --allow-root; headless: see README)
lab: $(STAMP)
	$(BIN)/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean:
	rm -rf _build
