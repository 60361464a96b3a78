# Two commands do everything on a fresh machine: `make book` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOOK_FLAGS := -W -n --keep-going
# In the book's own runs a solution that fails its checker is an error, not a printed hint.
STRICT := QFORMER_LITE_STRICT_CHECKS=1
# The unit tests run in this many processes, the threads shared out among them (tests/conftest.py).
TEST_JOBS ?= 2

.PHONY: install test unit notebooks book book-strict clean test-lavis

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Unit and parity tests, every notebook under nbmake, then the strict book build.
test: install
	$(BIN)/python -m pytest -n $(TEST_JOBS) tests
	$(STRICT) $(BIN)/python -m pytest --nbmake --nbmake-timeout=600 notebooks
	$(MAKE) --no-print-directory book-strict

unit: install
	$(BIN)/python -m pytest -n $(TEST_JOBS) tests

notebooks: install
	$(STRICT) $(BIN)/python -m pytest --nbmake --nbmake-timeout=600 notebooks

book-strict: install
	rm -rf _build  # a fresh build: Sphinx would otherwise reuse cached notebook outputs
	$(STRICT) $(BIN)/jupyter-book build . $(BOOK_FLAGS) || { cat _build/html/reports/*.err.log 2>/dev/null; exit 1; }

book: book-strict
	@echo
	@echo "The book is built. Open it in a browser:"
	@echo "  file://$(CURDIR)/_build/html/index.html"

# Optional: stage 1 against LAVIS 1.0.2's own Blip2Qformer.forward, in a venv of its own
# (LAVIS needs transformers 4.x); see tests/lavis/README.md.
LAVIS_VENV := .venv-lavis
LAVIS_REF  := $(LAVIS_VENV)/reference.pt
OFFLINE    := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

$(LAVIS_VENV)/.installed: tests/lavis/requirements.txt
	test -x $(LAVIS_VENV)/bin/python || $(PYTHON) -m venv $(LAVIS_VENV)
	$(LAVIS_VENV)/bin/python -m pip install -q -r tests/lavis/requirements.txt
	$(LAVIS_VENV)/bin/python -m pip install -q --no-deps salesforce-lavis==1.0.2
	touch $@

test-lavis: install $(LAVIS_VENV)/.installed
	$(OFFLINE) $(LAVIS_VENV)/bin/python tests/lavis/reference.py $(LAVIS_REF)
	$(OFFLINE) LAVIS_REFERENCE=$(CURDIR)/$(LAVIS_REF) $(BIN)/python -m pytest tests/test_lavis_parity.py -v -s -rs

clean:
	rm -rf _build .pytest_cache
