#!/usr/bin/env bash
# Linters, in two groups:
#   style  rustfmt, clippy, ruff check and ruff format: need cargo and ruff only, no built wheel
#          (`make lint`, and the pre-commit hooks in .pre-commit-config.yaml);
#   types  mypy --strict and stubtest of the hand-written _native.pyi: need the fnmesh wheel
#          installed in the Python on PATH, with mypy (`make typecheck`, after `make test`);
#   all    both (the default; what scripts/test.sh runs).
# Expects ruff (and, for `types`, mypy and python) on PATH; the test venv provides them.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}

style() {
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    ruff check python tests benches examples scripts
    ruff format --check python tests benches examples scripts
}

types() {
    # mypy checks the source tree's Python against the installed compiled module's stub.
    mypy --strict python/fnmesh
    python -m mypy.stubtest fnmesh._native --ignore-missing-stub
}

case "$mode" in
    style) style ;;
    types) types ;;
    all)
        style
        types
        ;;
    *)
        echo "usage: $0 [style|types|all]" >&2
        exit 2
        ;;
esac
