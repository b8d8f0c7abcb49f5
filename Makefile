# Two entry points that need no set-up: `make demo` and `make test` (run as root).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all bootstrap demo test unit fuzz vm-test bench clean

all: test

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@$(PY) -m tracer.demo

test: bootstrap
	@bash scripts/bootstrap-browser.sh
	@bash scripts/bootstrap-phoenix.sh >/dev/null
	@$(PY) -m pytest -q $(PYTEST_ARGS)

# Property tests at 100,000 examples per property (make test runs a few hundred each).
fuzz: bootstrap
	@TRACER_FUZZ_PROFILE=fuzz $(PY) -m pytest -q --timeout=0 tests/unit/test_fuzz_protocols.py $(PYTEST_ARGS)

# Benchmarks (minutes; untraced vs traced in the same run; results in BENCHMARKS.md).
bench: bootstrap
	@for b in latency throughput concurrency large_stream cpu attach_time per_call bpf_loader redaction \
	          process_tree live_feed; do \
	  echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done
	@for c in python curl; do \
	  echo "== bench/large_stream.py --client $$c (60 KB deltas at loopback speed, 5 runs)"; \
	  $(PY) bench/large_stream.py --client $$c --delta-size 60000 --runs 5 --skip-untraced || exit 1; done

unit: bootstrap
	@$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# eBPF tests inside QEMU guests on several Debian kernels (see vm-tests/README.md).
# KERNELS="bookworm-6.1 trixie-6.12 arm64-bookworm-6.1" picks a subset (arm64-: qemu-system-aarch64);
# PAYLOAD=smoke runs vm-tests/smoke.py instead; VM_CLAUDE="arm64:VERSION ..." the Claude Code releases
# copied into those guests (PAYLOAD=verify: uprobe check of their located SSL_read/SSL_write).
vm-test:
	@KERNELS="$(KERNELS)" PAYLOAD="$(PAYLOAD)" VM_CLAUDE="$(VM_CLAUDE)" python3 vm-tests/vmtest.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
