# The two commands that matter: `make demo` and `make test`. Both build the virtualenv first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install demo test lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/isales-watcher demo

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check watcher tests $(wildcard bench)
	$(PY) -m ruff format --check watcher
	$(PY) -m mypy watcher

format: install
	$(PY) -m ruff check --fix watcher tests $(wildcard bench)
	$(PY) -m ruff format watcher

clean:
	rm -rf $(VENV) demo-data build *.egg-info
