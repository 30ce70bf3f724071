#!/usr/bin/env bash
# The project's test command (README, `make test`, `.ci/run`): builds the release wheel with
# maturin, installs that wheel (not an editable install) into a fresh virtual environment with the
# test extras, then runs the Rust tests, the linters and pytest. Installs redis-server first when
# it is missing and apt-get can (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-test
python=${PYTHON:-python3}

# A CI run builds once from a clean clone, so incremental state (1.9 GB of a debug build) is never
# reused there; a developer's repeated `make test` keeps it.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

step() { printf '\n==> %s\n' "$*"; }

# NOTE: a CI run from a clean clone writes 4.6 GB (target/ 2.9 GB, four virtual environments
# 1.7 GB); stop 35's ran out of disk halfway, in pip. Say so before the first build instead.
need_kb=$((5 * 1024 * 1024))
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
    echo "warning: $((free_kb / 1024)) MiB free here; a run from a clean clone writes about" \
        "4.6 GB (target/ and four virtual environments) and may fail with 'No space left on device'" >&2
fi

step "redis-server (the cron lock tests start their own, on a free port)"
if command -v redis-server >/dev/null 2>&1; then
    redis-server --version
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    # The package may also enable a system-wide service; no test uses it.
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } \
        >"$apt_log" 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
        cat "$apt_log" >&2
        echo "could not install redis-server with apt-get (see above); install it and run again" >&2
        rm -f "$apt_log"
        exit 1
    fi
    rm -f "$apt_log"
    redis-server --version
else
    echo "warning: redis-server is not on PATH and cannot be installed here (needs root and" \
        "apt-get): the Redis tests will fail; install it (apt-get install redis-server," \
        "brew install redis)" >&2
fi

step "chromium and chromium-driver (the console tests drive a headless browser: tests/test_console.py)"
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    chromium --version
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
        >"$apt_log" 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        cat "$apt_log" >&2
        echo "could not install chromium with apt-get (see above); install it and run again" >&2
        rm -f "$apt_log"
        exit 1
    fi
    rm -f "$apt_log"
    chromium --version
else
    echo "warning: chromium and chromedriver are not on PATH and cannot be installed here (needs" \
        "root and apt-get): the console tests will fail; install them (apt-get install chromium" \
        "chromium-driver)" >&2
fi

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
PATH="$PWD/$venv/bin:$PATH" bash scripts/lint.sh all

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
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi

step "every supported Python: the same wheel, import and smoke subset (scripts/test_pythons.sh)"
# The full suite ran above on $venv's Python; make test-all-pythons runs it on every version.
own=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
bash scripts/test_pythons.sh --wheel "$wheel" --smoke --skip-missing --except "$own"

step "benchmark smoke: make bench-quick's E1 row (the suite must not rot; no timing is asserted)"
cargo build --release --locked -p fnmesh-benches --bins
"$venv/bin/python" benches/suite.py --quick --only E1
