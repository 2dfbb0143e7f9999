# ddpm-book: two commands on a fresh machine (see README.md).
#
#   make book   create or reuse .venv, then build the HTML book into _build/html, executing
#               the notebooks through Jupyter Book's cache (_config.yml: execute_notebooks:
#               cache; the cache is _build/.jupyter_cache): the first build executes every
#               notebook, later ones only the notebooks whose code changed.
#   make test   create or reuse .venv, install Debian's chromium if /usr/bin/chromium is
#               missing and axe-core from package-lock.json (npm ci; Debian's npm if npm is
#               missing), then run every check, stopping at the first that fails:
#                 1. lint            ruff check .
#                 2. check-notebooks tools/check_notebooks.py: every code cell stored executed
#                                    (1, 2, 3, ... in order), no stored errors, toc <-> files
#                 3. book-stored     build _build/html from the outputs STORED in the notebooks
#                                    (no execution), -W -n --keep-going: zero Sphinx warnings
#                 4. unit            pytest tests -m "not slow" with DDPM_BOOK_CHECK=1, which
#                                    includes tests/test_book.py's headless-chromium check of
#                                    every built page (math typeset, images loaded, widths at
#                                    1280 and 390 px, dark-mode figures, axe-core: see
#                                    tools/check_book_html.py)
#                 5. nbval           pytest --nbval (strict) over notebooks/: re-executes every
#                                    notebook and compares every output with the stored one,
#                                    through the one sanitize file nbval_sanitize.cfg; two
#                                    notebooks at a time (pytest-xdist, one notebook per worker)
#
# Why `make test` builds from stored outputs: nbval (step 5) already executes each notebook
# once and fails on any difference from its stored outputs, so the stored outputs that step 3
# renders are the ones a fresh run produces. Executing every notebook a second time inside the
# book build would double the longest part of CI (about a minute per notebook on 2 CPU cores,
# see README) for no extra check; `make book` is the build that executes.
#
# The width rules of the browser check (no equation, code cell or output wider than the column
# at 1280 x 800; nothing clipped at 390 px) fail the pages named by DDPM_BOOK_ENFORCE_WIDTH
# (comma-separated globs over toc names, or all/none; default: all, every page), e.g.
# `make test DDPM_BOOK_ENFORCE_WIDTH="book/*,search,notebooks/0[1-4]_*"` while chapters are refitted.
# `make width-report` lists every offender of every page in _build/width_report.json.
#
# Other targets: venv, chromium, node-deps, lint, check-notebooks, book-stored, unit, nbval,
# browser-check, width-report, pdf, test-slow, lab, clean.

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
# nbval workers (pytest-xdist): the machines have 2 cores and every notebook uses one thread
NBVAL_WORKERS ?= 2
AXE := node_modules/axe-core/axe.min.js
# TeX Live from Debian for `make pdf` (xelatex, latexmk, the fonts Sphinx's LaTeX uses)
TEX_PACKAGES := latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended \
  texlive-xetex texlive-plain-generic fonts-freefont-otf fonts-dejavu-core lmodern poppler-utils

# Notebooks, tests and the book never reach the Hugging Face hub (no network here).
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv chromium node-deps tex lint check-notebooks book book-stored unit browser-check \
        width-report nbval nbval-portable test test-slow pdf lab clean

help:
	@echo "make book   set up .venv and build the HTML book (executes every notebook) -> _build/html"
	@echo "make test   set up .venv (+ chromium) and run every check (lint, notebooks, unit, nbval, browser)"
	@echo "make pdf    the whole book as one PDF (installs Debian's TeX Live) -> _build/latex/book.pdf"

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

# axe-core, the accessibility engine the browser check injects, exactly as package-lock.json
# pins it (npm ci). Debian's nodejs/npm are installed when npm is missing (as root).
node-deps: $(AXE)

$(AXE): package.json package-lock.json
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else \
	    echo "npm is missing: install Node.js and npm (sudo apt-get install -y nodejs npm)"; exit 1; \
	  fi; }
	npm ci --no-audit --no-fund --loglevel=error
	@test -f $(AXE) && touch $(AXE)

tex:
	@if ! command -v latexmk >/dev/null || ! command -v xelatex >/dev/null || ! command -v pdftotext >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o DPkg::Lock::Timeout=600 --no-install-recommends $(TEX_PACKAGES); \
	  else \
	    echo "TeX Live is missing: sudo apt-get install -y --no-install-recommends $(TEX_PACKAGES)"; \
	    exit 1; \
	  fi; \
	fi
	@xelatex --version | head -1

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

unit: $(STAMP) node-deps
	DDPM_BOOK_CHECK=1 $(BIN)/python -m pytest tests -m "not slow"

browser-check: $(STAMP) chromium node-deps
	$(BIN)/python tools/check_book_html.py --html-dir _build/html --toc _toc.yml

# every width offender of every page (enforced or not) -> _build/width_report.json, for the
# notebooks' final pass (tools/format_notebook_code.py, aligned/split equations)
width-report: $(STAMP) chromium node-deps
	$(BIN)/python tools/check_book_html.py --html-dir _build/html --toc _toc.yml \
	  --width-report _build/width_report.json --enforce-width none

# Strict nbval, one notebook per pytest-xdist worker (--dist loadfile keeps a notebook's cells
# together, in order, in one kernel), so both cores work; the comparison is the same.
nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-cell-timeout=600 \
	  --nbval-sanitize-with nbval_sanitize.cfg -n $(NBVAL_WORKERS) --dist loadfile \
	  notebooks

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
test: $(STAMP) chromium node-deps
	time $(MAKE) --no-print-directory lint
	time $(MAKE) --no-print-directory check-notebooks
	time $(MAKE) --no-print-directory book-stored
	time $(MAKE) --no-print-directory unit
	time $(MAKE) --no-print-directory nbval

test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -m slow

# The whole book as one PDF: Jupyter Book's LaTeX builder (xelatex through latexmk) on the
# stored outputs, with Debian's TeX Live installed by `make tex`. --all: every page is read
# afresh for LaTeX. Jupyter Book keeps ONE Sphinx environment (_build/.doctrees) for all its
# builders, so without it a PDF built right after an HTML build (`make book-stored`, which
# `make test` runs) reused the pages as the HTML build had read them: whether the PDF came out
# right depended on which build ran last.
pdf: $(STAMP) tex
	$(BIN)/python tools/book_config.py _config.yml $(STORED_CONFIG)
	rm -rf _build/latex   # Sphinx's LaTeX Makefile builds every .tex it finds there
	$(BIN)/jupyter-book build . --builder pdflatex --all --config $(STORED_CONFIG)
	@ls -l _build/latex/*.pdf

# JupyterLab on this machine's .venv (as root it needs --allow-root; headless: see README)
lab: $(STAMP)
	$(BIN)/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean:
	rm -rf _build
