# Two commands do everything on a fresh machine: `make book` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOOK_FLAGS := -W -n --keep-going

.PHONY: install test unit notebooks book book-strict clean

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
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=600 notebooks
	$(MAKE) --no-print-directory book-strict

unit: install
	$(BIN)/python -m pytest tests

notebooks: install
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=600 notebooks

book-strict: install
	rm -rf _build  # a fresh build: Sphinx would otherwise reuse cached notebook outputs
	$(BIN)/jupyter-book build . $(BOOK_FLAGS) || { cat _build/html/reports/*.err.log 2>/dev/null; exit 1; }

book: book-strict
	@echo
	@echo "The book is built. Open it in a browser:"
	@echo "  file://$(CURDIR)/_build/html/index.html"

clean:
	rm -rf _build .pytest_cache
