# Two commands on a fresh clone: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The PyTorch build to install (override, e.g. TORCH="torch torchvision" for the newest).
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: serve test test-slow lint install image-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,download]'
	touch $@

install: $(VENV)/.installed

serve: $(VENV)/.installed  ## serve weights/ on http://127.0.0.1:8000
	$(PY) -m service

test: $(VENV)/.installed  ## lint, then the suite without the tests marked slow
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

# The tests marked slow: real training runs, server processes, browsers, compose, nginx, Redis.
# CI (.ci/run) runs them after `make test`.
test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

lint: $(VENV)/.installed
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# Build the Docker image with buildah and run it as docker-compose.yml does (serve, health check,
# predictions, train into a mounted folder, SIGTERM); writes deploy/IMAGE_CHECK.md. Root, 11-35
# minutes and 20 GB of disk: not part of `make test` or CI. See docs/deployment.md.
image-check:
	deploy/check_image.sh
