#!/usr/bin/env bash
# `make test-all-pythons`: one abi3 wheel, installed with its test extras into a fresh venv
# (.venv-py3.X) for each supported CPython, and pytest run there against it.
#
#   scripts/test_pythons.sh [--wheel PATH] [--smoke] [--skip-missing] [--except X.Y] [-- PYTEST ARGS]
#
# --wheel: the wheel to test (default: make wheels' manylinux2014 wheel for this machine's
#   architecture in dist/, else make test's, else one built with maturin). Every version gets
#   that same file.
# --smoke: the import and smoke subset (SMOKE below) instead of the whole suite.
# --skip-missing: a version with no interpreter here is skipped with a message (scripts/test.sh);
#   without it, a missing version fails.
# --except X.Y: leave a version out (scripts/test.sh: the one its own venv already tested).
# Interpreters: pyenv's (`$(pyenv root)/versions/X.Y.*`), else pythonX.Y on PATH; PYTHON_X_Y
# (e.g. PYTHON_3_13=/opt/py/bin/python3.13) names one explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS=(3.10 3.11 3.12 3.13)
# Import, the command line, the codec, the registry, the SDK embedded and with an iii-sdk worker,
# schemas, errors, settings: every part of the wheel that differs by Python version (the abi3
# boundary, asyncio, typing and pydantic), in about a minute per version.
SMOKE=(tests/test_packaging.py tests/test_protocol.py tests/test_registry.py tests/test_errors.py
    tests/test_schema.py tests/test_engine_config.py tests/test_app.py tests/test_engine.py)

wheel=""
smoke=0
skip_missing=0
except=""
while [ $# -gt 0 ]; do
    case $1 in
        --wheel) wheel=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        --skip-missing) skip_missing=1; shift ;;
        --except) except=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

find_python() {
    local version=$1 var="PYTHON_${1//./_}" root candidate
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        # The newest installed patch release of that version.
        for candidate in $(ls -d "$root"/versions/"$version".* 2>/dev/null | sort -V -r); do
            if [ -x "$candidate/bin/python$version" ]; then echo "$candidate/bin/python$version"; return; fi
        done
    fi
    command -v "python$version" 2>/dev/null || true
}

if [ -z "$wheel" ]; then
    # The released portable wheel when make wheels built it, else the host build of make test.
    arch=$(uname -m)
    for candidate in dist/fnmesh-*manylinux_2_17_"$arch"*.whl dist/fnmesh-*-manylinux_*_"$arch".whl; do
        if [ -e "$candidate" ]; then wheel=$candidate; break; fi
    done
fi
if [ -z "$wheel" ]; then
    step "no wheel for this machine in dist/: building one"
    if command -v maturin >/dev/null 2>&1; then maturin=maturin; else
        python3 -m pip install --quiet --user "maturin>=1.7,<2"; maturin="python3 -m maturin"; fi
    $maturin build --release --locked --out dist
    wheel=$(ls -t dist/fnmesh-*-manylinux_*_"$(uname -m)".whl | head -1)
fi
echo "wheel: $wheel"

if [ $smoke -eq 1 ]; then tests=("${SMOKE[@]}"); else tests=(tests); fi

results=()
failed=0
for version in "${VERSIONS[@]}"; do
    [ "$version" = "$except" ] && continue
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        if [ $skip_missing -eq 1 ]; then
            echo "skipping CPython $version: no interpreter on this machine (pyenv install $version, or set PYTHON_${version//./_})"
            results+=("$version: skipped, not installed")
            continue
        fi
        echo "CPython $version not found (pyenv install $version, or set PYTHON_${version//./_})" >&2
        results+=("$version: MISSING")
        failed=1
        continue
    fi
    venv=.venv-py$version
    step "CPython $version ($python): fresh $venv with $(basename "$wheel")[test]"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "${wheel}[test]"
    step "CPython $version: pytest ${tests[*]} $*"
    set +e
    "$venv/bin/python" -m pytest "${tests[@]}" -q -p no:cacheprovider "$@"
    rc=$?
    set -e
    if [ $rc -eq 0 ]; then results+=("$version: passed"); else results+=("$version: FAILED (pytest exit $rc)"); failed=1; fi
done

step "results ($(basename "$wheel"))"
printf '  CPython %s\n' "${results[@]}"
exit $failed
