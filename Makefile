# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test psql venv clean bench screenshots

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) devserver.py

# psql on the database `make run` uses (the packaged psql; the local server starts if needed).
psql: venv
	$(PY) devserver.py psql

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# PNGs of the main pages for the README (docs/screenshots/); needs /usr/bin/chromium.
screenshots: venv
	$(PY) tools/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache
