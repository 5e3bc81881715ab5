# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test psql venv clean bench soak screenshots

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

# The soak of tests/test_faults.py for 5 minutes instead of 30 s (not part of `make test`);
# figures in bench/README.md.
soak: venv
	SOAK_SECONDS=300 $(PY) -m pytest -p no:cacheprovider -s --timeout=900 tests/test_faults.py -k soak $(PYTEST_ARGS)

# Every scenario of bench/README.md against gunicorn (2 sync workers) at 1,000,000 orders, with the
# /healthz floor: one table. The data set is built once in bench/out/ (BENCH_ARGS="--orders 100000").
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# PNGs of the main pages for the README (docs/screenshots/); needs /usr/bin/chromium.
screenshots: venv
	$(PY) tools/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache
