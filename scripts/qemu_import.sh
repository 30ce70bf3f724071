#!/usr/bin/env bash
# Imports the native module of an aarch64 glibc wheel (make wheels' manylinux2014 one) under
# qemu-user on an x86_64 Debian machine, and exercises it: the codec, the registry, and an engine
# started on its own tokio runtime. Not part of CI (it needs root for apt-get and qemu-user).
#
#   scripts/qemu_import.sh [dist/fnmesh-*manylinux_2_17_aarch64*.whl]
#
# Needs qemu-user (apt-get install qemu-user). The aarch64 CPython 3.11 comes from Debian's arm64
# packages, fetched with apt-get download into .qemu-sysroot/ under a private apt state, so the
# machine's own apt configuration (its architectures, lists and status) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

wheel=${1:-$(ls dist/fnmesh-*manylinux_2_17_aarch64*.whl 2>/dev/null | head -1)}
[ -n "$wheel" ] && [ -e "$wheel" ] || { echo "no aarch64 wheel: run make wheels first" >&2; exit 2; }
command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 missing: apt-get install qemu-user" >&2; exit 2; }

sysroot=$PWD/.qemu-sysroot
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
    state=$(mktemp -d)
    mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs"
    touch "$state/status"
    apt_opts=(-o APT::Architecture=arm64 -o "APT::Architectures::=arm64"
        -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o "Dir::State::Status=$state/status")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$state/debs" && apt-get "${apt_opts[@]}" download -qq python3.11-minimal libpython3.11-minimal \
        libpython3.11-stdlib libc6 libgcc-s1 zlib1g libexpat1 libffi8)
    mkdir -p "$sysroot"
    for deb in "$state"/debs/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
    rm -rf "$state"
fi

unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
python3 -m zipfile -e "$wheel" "$unpacked"
file "$unpacked/fnmesh/_native.abi3.so"

qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/python3.11" - "$unpacked/fnmesh/_native.abi3.so" <<'EOF'
import importlib.machinery
import importlib.util
import platform
import sys
import types

path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader("fnmesh._native", path)
spec = importlib.util.spec_from_file_location("fnmesh._native", path, loader=loader)
native = importlib.util.module_from_spec(spec)
loader.exec_module(native)
print(f"imported fnmesh._native {native.__version__} on {platform.machine()} CPython {platform.python_version()}")

frame = native.Frame.decode(b'{"type":"invokefunction","function_id":"math::add","data":{"a":1}}')
assert frame.kind == "invokefunction", frame.kind
assert frame.to_dict()["data"] == {"a": 1}
print("codec: decode and encode", frame.encode())

registry = native.FunctionsRegistry()
registry.register("math::add", lambda d: d["a"] + d["b"], owner="app")
with registry.select("math::add") as replica:
    assert replica.handler({"a": 2, "b": 40}) == 42
print("registry: register and select")

config = types.SimpleNamespace(**native.engine_defaults())
config.port = 0
engine = native.EngineHandle.start(config)
print(f"engine: running={engine.running} on {engine.host}:{engine.port}")
engine.stop()
print("engine: stopped")
EOF
