# Set-up commands: `make serve` and `make test` (see README.md).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install serve test test-gpu lint clean

install: $(STAMP)

# Re-installs only when the project's metadata changes; the package itself is editable.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

serve: install
	$(VENV)/bin/rtserve serve $(ARGS)

test: install
	$(VENV)/bin/python -m pytest $(ARGS)

# For a GPU host whose image already has torch: no .venv, the machine's own interpreter.
test-gpu:
	$(PY) -m pytest -m gpu -p no:cacheprovider tests/gpu $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
