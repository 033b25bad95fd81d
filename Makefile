# Two entry points for a fresh machine: `make demo` (install + the main pipeline on the
# embedded defaults) and `make test` (install the test extra + the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install install-test clean-runs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip

# The stamp files make a second `make` skip the install unless the pins changed.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(PY) jobs/pipeline.py

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install-test
	$(PY) -m pytest -q -ra --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean-runs:
	rm -rf runs
