#!/usr/bin/env bash
# Linters: rustfmt, clippy, ruff, mypy --strict, and stubtest of the hand-written _native.pyi
# against the installed extension. Expects ruff/mypy on PATH (the test venv provides them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
ruff check python tests benches examples
ruff format --check python tests benches examples
# mypy checks the source tree's Python against the installed compiled module's stub.
mypy --strict python/fnmesh
python -m mypy.stubtest fnmesh._native --ignore-missing-stub
