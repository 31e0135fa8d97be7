# Two entry points for a fresh machine: `make demo` and `make test`.
# Each installs what it needs (Debian packages, a virtualenv, the lab's Go builds)
# and caches it, so the second run starts at once.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml lab/python/pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test deps venv lab-build lint unit lab-up lab-down clean bench bench-operator bench-rate soak images lab-images

deps:
	@scripts/install-deps.sh

# The system interpreter, so that Debian's libnbd bindings (python3-libnbd) are visible.
# The product and the lab (lab/python, its own distribution: never in the product's wheel
# or images) are both installed editable.
$(STAMP): pyproject.toml lab/python/pyproject.toml | deps
	@echo "[venv] creating $(VENV) and installing Python dependencies"
	@/usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' -e lab/python
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: deps $(STAMP)

lab-build: venv
	@$(BIN)/vmguard-lab build

lint: venv
	@echo "[lint] ruff, mypy, import-linter"
	@$(BIN)/ruff check operator lab/python tests bench
	@$(BIN)/ruff format --check operator lab/python tests bench
	@$(BIN)/mypy
	@$(BIN)/lint-imports --no-cache

# The tests run on a lab of their own (.lab-test), started and stopped by the session,
# so that what the demo's operator did to its lab (CBT on every VM, backups) cannot
# change what a test finds. VMGUARD_LAB_DIR=... points them at another one.
# TEST_WORKERS pytest-xdist workers share the tests out by file, each on a lab of its own
# (.lab-test-gw0, ...); the tests that judge the whole session run last (tests/distribute.py).
# Three on the 2-core machine: most lab tests wait on an operator, a Job or a schedule
# (fresh clones, 1322 tests: 812 s on two workers, 652 s on three).
TEST_WORKERS ?= 3
test: venv lab-build lint
	@echo "[test] pytest (unit and lab), $(TEST_WORKERS) workers"
	@VMGUARD_LAB_DIR=$${VMGUARD_LAB_DIR:-$(CURDIR)/.lab-test} $(BIN)/pytest -p no:cacheprovider \
		-n $(TEST_WORKERS)

# The randomized store schedules (GC, prune, readers and backups over slow, failed and
# ambiguous writes), the CLI backup and the copy Job killed at random points, and a copy
# into an erasure-coded MinIO losing a drive's data (larger, at a seeded point), at their full count;
# `make test` runs a fixed-seed subset of them.
soak: venv
	@echo "[soak] randomized schedules, full count"
	@$(BIN)/pytest -p no:cacheprovider -q tests/store/test_gc_races.py tests/store/test_gc_races_s3.py \
		tests/engine/test_cli_minio.py::test_backup_killed_at_random_points_leaves_nothing_or_a_whole_archive \
		tests/proxy/test_copy_kills.py tests/store/test_copy_erasure.py --soak

demo: venv lab-build
	@$(BIN)/vmguard-lab demo

lab-up: venv lab-build
	@$(BIN)/vmguard-lab up

lab-down: venv
	@$(BIN)/vmguard-lab down

clean: lab-down
	rm -rf .lab

# The data mover against nbdcopy/zstd ceilings and restic on the lab's MinIO, then
# discovery of 5,000 simulated VMs (BRIEF §8); docs/benchmarks.md records runs of both.
# Not part of `make test`. BENCH_ARGS="--size-gib 2" goes to the data-mover benchmark.
bench: venv lab-build
	@PYTHONPATH=operator $(BIN)/python bench/mover.py $(BENCH_ARGS)
	@$(MAKE) --no-print-directory bench-operator
	@PYTHONPATH=operator $(BIN)/python bench/discovery.py --vms 5000 --rounds 3

# A VMGuardRestore of a 2-disk VM through the operator, split into its parts (it borrows
# the test suite's lab fixtures; it asserts nothing about time).
bench-operator: venv lab-build
	@PYTHONPATH=operator $(BIN)/python -m pytest -p tests.conftest -p tests.controller.conftest \
		bench/operator_restore.py -q -s -o addopts= -p no:cacheprovider

# Backups per hour through real proxy Jobs at N slots on a simulator of RATE_VMS VMs, split
# into snapshot, Job start, transfer and finalize, and a night of 5,000 VMs projected
# (issue 13; docs/scale.md). RATE_VMS=200 RATE_SLOTS=2,4,8 by default. Asserts nothing
# about time.
bench-rate: venv lab-build
	@PYTHONPATH=operator $(BIN)/python -m pytest -p tests.conftest -p tests.controller.conftest \
		bench/backup_rate.py -q -s -o addopts= -p no:cacheprovider

# The operator and proxy images from Debian packages (mmdebstrap + podman, as root; no
# registry): images/build.py, cached by a hash of the inputs. lab-images adds the lab's
# layer (vmguard-proxy:lab) for the container-mode tests.
images: venv
	@$(BIN)/python images/build.py

lab-images: venv
	@$(BIN)/python images/build.py --lab
