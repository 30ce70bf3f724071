.PHONY: run test test-all-pythons wheels lint typecheck bench bench-quick bench-rust fmt fuzz soak

# The Python that runs the benchmarks (with fnmesh[bench] installed); e.g. PYTHON=/work/venv/bin/python
PYTHON ?= .venv-test/bin/python

run:  ## the main job on the embedded default
	bash scripts/run.sh $(ARGS)

test:  ## build the wheel, install it in a fresh venv, run cargo test, linters and pytest
	bash scripts/test.sh

test-all-pythons:  ## the same abi3 wheel in a fresh venv per CPython 3.10-3.13 (pyenv), pytest in each
	bash scripts/test_pythons.sh $(ARGS)

wheels:  ## manylinux2014 + musllinux_1_2 wheels, x86_64 + aarch64, into dist/ (zig linker), auditwheel-checked
	bash scripts/wheels.sh

# Time of the fuzz targets together, in seconds (`make test` runs them for 20 s in a debug build).
FNMESH_FUZZ_SECONDS ?= 300

fuzz:  ## the property-based fuzz harness for longer, release build (docs/fuzzing.md)
	FNMESH_FUZZ_SECONDS=$(FNMESH_FUZZ_SECONDS) cargo test --release -p fnmesh-core --test fuzz -- --nocapture $(ARGS)

lint:  ## rustfmt, clippy, ruff check and format: no built wheel needed (needs ruff on PATH)
	bash scripts/lint.sh style

typecheck:  ## mypy --strict and stubtest of _native.pyi against the installed wheel (after make test)
	PATH="$(CURDIR)/.venv-test/bin:$$PATH" bash scripts/lint.sh types

fmt:  ## format Rust and Python
	cargo fmt --all
	ruff format python tests benches examples scripts

bench:  ## the benchmark suite E1-E12: benches/results/RESULTS.md and charts (under 20 min)
	cargo build --release -p fnmesh-benches --bins
	$(PYTHON) benches/suite.py $(ARGS)

bench-quick:  ## the short suite (under 3 min): benches/results/RESULTS.quick.md
	cargo build --release -p fnmesh-benches --bins
	$(PYTHON) benches/suite.py --quick $(ARGS)

bench-rust:  ## criterion benches (codec, registry) and the pytest-benchmark registry comparison
	cargo bench -p fnmesh-benches
	$(PYTHON) -m pytest benches --benchmark-only -p no:cacheprovider

# Length of the soak's measured run, in minutes.
SOAK_MINUTES ?= 10

soak:  ## mixed calls, HTTP, reconnect churn and worker kills for SOAK_MINUTES: benches/results/SOAK.md (not in CI)
	$(PYTHON) benches/soak.py --minutes $(SOAK_MINUTES) $(ARGS)
