.PHONY: run test lint bench bench-rust fmt

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
