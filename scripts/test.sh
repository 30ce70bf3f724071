#!/usr/bin/env bash
# The project's test command (README, `make test`, `.ci/run`): builds the release wheel with
# maturin, installs that wheel (not an editable install) into a fresh virtual environment with the
# test extras, then runs the Rust tests, the linters and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-test
python=${PYTHON:-python3}

step() { printf '\n==> %s\n' "$*"; }

step "fresh virtual environment in $venv"
rm -rf "$venv" dist
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip

step "release wheel (maturin)"
if command -v maturin >/dev/null 2>&1; then
    maturin=maturin
else
    "$venv/bin/python" -m pip install --quiet "maturin>=1.7,<2"
    maturin="$venv/bin/maturin"
fi
"$maturin" build --release --out dist --interpreter "$venv/bin/python"
wheel=$(ls dist/fnmesh-*.whl)
"$venv/bin/python" -m pip install --quiet "${wheel}[test]"

step "cargo test (workspace)"
cargo test --workspace --locked

step "lint"
PATH="$PWD/$venv/bin:$PATH" bash scripts/lint.sh

step "pytest (against the installed wheel)"
# Run from tests' parent with python/ off sys.path, so `import fnmesh` is the installed wheel.
set +e
"$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$rc"
