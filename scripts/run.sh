#!/usr/bin/env bash
# The project's main job on the embedded default (README, `make run`): builds and installs the
# wheel into .venv, then runs the example app.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
if command -v maturin >/dev/null 2>&1; then maturin=maturin; else
    "$venv/bin/python" -m pip install --quiet "maturin>=1.7,<2"; maturin="$venv/bin/maturin"; fi
rm -rf dist
"$maturin" build --release --out dist --interpreter "$venv/bin/python"
wheel=$(ls dist/fnmesh-*.whl)
# The first install brings the dependencies; the second replaces a same-version fnmesh.
"$venv/bin/python" -m pip install --quiet "$wheel"
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
exec "$venv/bin/python" examples/hello.py "$@"
