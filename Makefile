# Two commands do everything on a fresh machine: `make book` and `make test`.
# Two editions: the English book at the root, the Japanese one in ja/ (the same code, page for page).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOOK_FLAGS := -W -n --keep-going
# In the book's own runs a solution that fails its checker is an error, not a printed hint.
STRICT := QFORMER_LITE_STRICT_CHECKS=1
# The unit tests run in this many processes, the threads shared out among them (tests/conftest.py).
TEST_JOBS ?= 2

# make test executes each chapter once, under nbmake, in a copy of the book (not under _build/,
# which nbmake skips), and renders both editions from those runs with execution off. The
# chapters run TEST_JOBS at a time, each with its share of the cores: a chapter that needs a
# model another is training waits for it (miniature/cache.py), then reads it. Work stealing
# gives the first worker the first half of the list and the second the rest, and never takes a
# worker's last queued chapter: the two longest chapters open the first half, so that neither
# waits at the end behind the other. Two kernels started at the same moment can draw the same
# port, and one dies before it replies: that chapter, and only that failure, is run again.
EXECUTED := _test_book
SOURCES  := _config.yml _toc.yml references.bib _vendor book notebooks
LONGEST  := 09_why_a_qformer.ipynb 12_video_qformer.ipynb
CHAPTERS := $(LONGEST) $(filter-out $(LONGEST),$(sort $(notdir $(wildcard notebooks/*.ipynb))))
NOTEBOOKS = OMP_NUM_THREADS=$(shell $(PYTHON) -c "import os; print(max(1, (os.cpu_count() or 1) // $(TEST_JOBS)))") \
	$(STRICT) $(BIN)/python -m pytest -n $(TEST_JOBS) --dist worksteal --nbmake --nbmake-timeout=600 --overwrite \
	--reruns 2 --only-rerun "Kernel died before replying"
NO_EXECUTION := $(BIN)/python -c "import sys, yaml; p = sys.argv[1]; c = yaml.safe_load(open(p)); \
	c['execute']['execute_notebooks'] = 'off'; yaml.safe_dump(c, open(p, 'w'), allow_unicode=True)"

.PHONY: install test unit notebooks book book-ja book-strict book-ja-strict clean test-lavis test-colab

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Unit and parity tests, every chapter of both editions under nbmake, then the strict build of both.
test: install
	$(BIN)/python -m pytest -n $(TEST_JOBS) tests
	rm -rf _build ja/_build $(EXECUTED) && mkdir -p $(EXECUTED) && cp -r $(SOURCES) ja $(EXECUTED)/
	$(NOTEBOOKS) $(addprefix $(EXECUTED)/notebooks/,$(CHAPTERS))
	$(NOTEBOOKS) $(addprefix $(EXECUTED)/ja/notebooks/,$(CHAPTERS))
	for book in $(EXECUTED) $(EXECUTED)/ja; do \
	  $(NO_EXECUTION) $$book/_config.yml && $(BIN)/jupyter-book build $$book $(BOOK_FLAGS) \
	  || { cat $$book/_build/html/reports/*.err.log 2>/dev/null; exit 1; }; \
	done

unit: install
	$(BIN)/python -m pytest -n $(TEST_JOBS) tests

notebooks: install
	$(STRICT) $(BIN)/python -m pytest --nbmake --nbmake-timeout=600 notebooks ja/notebooks

# Both editions, each executing every chapter: the English one in _build/html, the Japanese one
# in ja/_build/html, copied to _build/html/ja so that the pages' links between editions work.
book-strict: install
	rm -rf _build ja/_build  # a fresh build: Sphinx would otherwise reuse cached notebook outputs
	$(STRICT) $(BIN)/jupyter-book build . $(BOOK_FLAGS) || { cat _build/html/reports/*.err.log 2>/dev/null; exit 1; }
	$(MAKE) --no-print-directory book-ja-strict
	cp -r ja/_build/html _build/html/ja

book-ja-strict: install
	rm -rf ja/_build
	$(STRICT) $(BIN)/jupyter-book build ja $(BOOK_FLAGS) || { cat ja/_build/html/reports/*.err.log 2>/dev/null; exit 1; }

book: book-strict
	@echo
	@echo "Both editions are built. Open them in a browser:"
	@echo "  file://$(CURDIR)/_build/html/index.html     (English)"
	@echo "  file://$(CURDIR)/_build/html/ja/index.html  (日本語)"

book-ja: book-ja-strict
	@echo
	@echo "The Japanese edition is built. Open it in a browser:"
	@echo "  file://$(CURDIR)/ja/_build/html/index.html"

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

# Optional: the tests and every chapter on Colab's versions (tests/colab/README.md).
COLAB_VENV   := .venv-colab
COLAB_BOOK   := _test_colab
PYTHON_COLAB ?= python3.13
# the chapters whose first cell installs transformers; the others run on Colab's own
WITH_HF := $(notdir $(shell grep -l 'transformers>=' notebooks/*.ipynb))
NO_HF   := $(filter-out $(WITH_HF),$(notdir $(wildcard notebooks/*.ipynb)))

$(COLAB_VENV)/.installed: tests/colab/requirements.txt pyproject.toml
	test -x $(COLAB_VENV)/bin/python || $(PYTHON_COLAB) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install -q --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install -q -r tests/colab/requirements.txt
	$(COLAB_VENV)/bin/python -m pip install -q --no-deps -e .
	$(COLAB_VENV)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $@

test-colab: $(COLAB_VENV)/.installed
	$(COLAB_VENV)/bin/python -m pip install -q -r tests/colab/requirements.txt  # back to Colab's transformers
	$(OFFLINE) $(COLAB_VENV)/bin/python -m pytest -n $(TEST_JOBS) -p no:cacheprovider tests
	rm -rf $(COLAB_BOOK) && mkdir -p $(COLAB_BOOK) && cp -r $(SOURCES) $(COLAB_BOOK)/
	QFORMER_LITE_CACHE=$(CURDIR)/$(COLAB_BOOK)/cache $(STRICT) $(COLAB_VENV)/bin/python -m pytest \
	  -p no:cacheprovider --nbmake --nbmake-timeout=600 $(addprefix $(COLAB_BOOK)/notebooks/,$(NO_HF))
	$(COLAB_VENV)/bin/python -m pip install -q "transformers>=5.20"
	QFORMER_LITE_CACHE=$(CURDIR)/$(COLAB_BOOK)/cache $(STRICT) $(COLAB_VENV)/bin/python -m pytest \
	  -p no:cacheprovider --nbmake --nbmake-timeout=600 $(addprefix $(COLAB_BOOK)/notebooks/,$(WITH_HF))
	$(COLAB_VENV)/bin/python -m pip list 2>/dev/null | grep -E -i '^(torch|transformers|timm|numpy|ipywidgets) '

clean:
	rm -rf _build ja/_build $(EXECUTED) $(COLAB_BOOK) .pytest_cache
