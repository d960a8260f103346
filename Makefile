# kanin: every command CI runs is a target here.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install services specs test matrix offline lint audit bench fuzz demo clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "python3 -m venv failed: installing python3-venv"; \
		  apt-get update -q && apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

services:
	@bash tests/services.sh

# The official AsyncAPI JSON Schemas (npm: @asyncapi/specs), for the test of kanin asyncapi.
specs:
	@bash tests/asyncapi_specs.sh

test: install services specs
	$(BIN)/kanin events check workers --against config/events.lock.json --mode full
	$(BIN)/python -m pytest tests
	@bash tests/matrix.sh lowest newest
	@$(MAKE) -s offline

# The tests not marked `integration`, where no server answers (a network namespace of
# their own, where this machine allows one): they must need none.
offline: install specs
	@if unshare -n true 2>/dev/null; then \
		echo "== offline: pytest -m 'not integration', no network"; \
		unshare -n sh -c 'ip link set lo up 2>/dev/null; $(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration" tests'; \
	else echo "== offline: skipped (unshare -n is not allowed here)"; fi

# The unit, conformance and fast-path tests on the lowest and the newest dependencies.
matrix: install services specs
	@bash tests/matrix.sh lowest newest

lint: install
	$(BIN)/ruff check framework workers tests
	$(BIN)/ruff format --check framework workers tests
	$(BIN)/mypy

# pip-audit (from an environment of its own) over the installed packages: exit 1 on a
# known vulnerability, 3 when packages could not be audited (AUDIT_FLAGS=--allow-incomplete:
# said, and exit 0).
AUDIT_VENV = .venv-audit
audit: install
	@test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && \
		$(AUDIT_VENV)/bin/python -m pip install -q 'pip-audit>=2.7'; }
	$(BIN)/python tests/audit.py --pip-audit $(AUDIT_VENV)/bin/pip-audit \
		--path "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		$(AUDIT_FLAGS)

# The property-based tests with fresh random data and many more examples than make test's
# fixed ones (KANIN_FUZZ_EXAMPLES, default 2000 here).
fuzz: install
	KANIN_FUZZ_RANDOM=1 KANIN_FUZZ_EXAMPLES=$${KANIN_FUZZ_EXAMPLES:-2000} \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_fuzz.py

# The benchmarks (their helpers, tests/bench/peer_*.py and importmem.py, are not run alone).
BENCHES = consume dlq_replay stream_replay outbox peers

bench: install services
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@set -e; for b in $(BENCHES); do echo "== tests/bench/$$b.py"; $(BIN)/python tests/bench/$$b.py; done

demo: install
	@$(BIN)/kanin demo

clean:
	rm -rf $(VENV) .venv-lowest .venv-newest .pytest_cache .mypy_cache .ruff_cache
