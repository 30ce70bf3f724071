.PHONY: run test lint bench bench-rust bench-sdk fmt

# The Python that runs the benchmark scripts (bench-sdk); e.g. PYTHON=/work/venv/bin/python
PYTHON ?= .venv-test/bin/python

run:  ## the main job on the embedded default
	bash scripts/run.sh $(ARGS)

test:  ## build the wheel, install it in a fresh venv, run cargo test, linters and pytest
	bash scripts/test.sh

lint:  ## rustfmt, clippy, ruff, mypy --strict, stubtest (needs ruff/mypy on PATH)
	bash scripts/lint.sh

fmt:  ## format Rust and Python
	cargo fmt --all
	ruff format python tests benches examples

bench-rust:  ## criterion benches (codec, registry)
	cargo bench -p fnmesh-benches

bench:  ## criterion benches, then the pytest-benchmark comparisons against the installed wheel
	cargo bench -p fnmesh-benches
	.venv-test/bin/python -m pytest benches --benchmark-only -p no:cacheprovider

bench-sdk:  ## E3 embedded call, E2 Python worker, E4 HTTP trigger benchmark scripts (ARGS=--quick for a smoke run)
	cargo build --release -p fnmesh-benches --bin fnmesh-loadgen
	$(PYTHON) benches/sdk_calls.py $(ARGS)
	$(PYTHON) benches/python_worker.py $(ARGS)
	$(PYTHON) benches/http_trigger.py $(ARGS)
