# The two commands that matter: `make demo` and `make test`. Both build the virtualenv first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install demo test lint format messages clean image base-image

# Container images (deploy/): podman, or docker when podman is missing.
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' watcher/__init__.py)
# Empty: the Dockerfiles' defaults (python:3.11-slim-bookworm, debian:bookworm-slim).
BASE_IMAGE ?=
BUILD_ARGS = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	$(if $(findstring podman,$(ENGINE)),--format docker)

# The demo needs the package alone; the tests and linters add the test extras.
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-run
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

# The receipts' message catalogs: extract the marked messages, merge them into each language's
# .po (translate what is new there), and compile the .mo that the package ships. A unit test
# fails while a message lacks a translation or a .mo differs from its .po.
messages: install
	mkdir -p build
	$(VENV)/bin/pybabel extract --no-location --omit-header --sort-output -o build/watcher.pot watcher
	$(VENV)/bin/pybabel update --no-fuzzy-matching --ignore-obsolete --ignore-pot-creation-date --width 100 \
		-i build/watcher.pot -d watcher/locale -D watcher
	$(VENV)/bin/pybabel compile --statistics -d watcher/locale -D watcher

# The wheels are built here, on the host: the watcher's build needs no network at all. The SFTP
# server's may (apt-get, on a stock Debian base): the host's network, no bridge, no NAT rules.
image: install
	rm -rf build/wheels
	$(PY) -m pip wheel -q --disable-pip-version-check -w build/wheels .
	$(ENGINE) build $(BUILD_ARGS) --network=none -f deploy/Dockerfile \
		-t localhost/isales-watcher:$(VERSION) -t localhost/isales-watcher:latest build/wheels
	$(ENGINE) build $(BUILD_ARGS) --network=host \
		-t localhost/isales-sftp-server:$(VERSION) -t localhost/isales-sftp-server:latest \
		deploy/sftp-server

# No registry reachable: a base made from Debian packages (make image BASE_IMAGE=...).
base-image:
	ENGINE=$(ENGINE) deploy/debian-base.sh localhost/debian-python:bookworm

clean:
	rm -rf $(VENV) demo-data build *.egg-info
