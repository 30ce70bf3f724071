"""Names musl's C library in a musllinux wheel's native modules as musllinux wheels do.

    python scripts/musl_soname.py dist/fnmesh-*-musllinux_1_2_x86_64.whl [--patchelf PATH]

zig links a musl shared library against ``libc.so``; musl distributions install their C library
as ``libc.musl-<arch>.so.1`` (Alpine's /lib/libc.musl-x86_64.so.1), which is the name the
musllinux policy allows and auditwheel's own repair writes. This replaces the needed entry in
each native module of the wheel in place with patchelf and rewrites the wheel's RECORD hashes.
Used by ``make wheels`` (scripts/wheels.sh); a wheel already fixed is left as it is.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Wheel architecture -> musl's C library name on that architecture.
_MUSL_LIBC = {"x86_64": "libc.musl-x86_64.so.1", "aarch64": "libc.musl-aarch64.so.1"}


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def fix(wheel: Path, patchelf: str) -> bool:
    """Rewrites ``wheel`` in place; True when something changed."""
    arch = next((a for a in _MUSL_LIBC if wheel.name.endswith(f"musllinux_1_2_{a}.whl")), None)
    if arch is None:
        raise ValueError(f"{wheel.name}: not a musllinux_1_2 x86_64 or aarch64 wheel")
    changed: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.endswith(".so"):
                continue
            path = Path(z.extract(info, tmp))
            needed = subprocess.run(
                [patchelf, "--print-needed", str(path)], check=True, capture_output=True, text=True
            ).stdout.split()
            if "libc.so" not in needed:
                continue
            subprocess.run([patchelf, "--replace-needed", "libc.so", _MUSL_LIBC[arch], str(path)], check=True)
            changed[info.filename] = path.read_bytes()
        if not changed:
            return False
        out = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
            for info in z.infolist():
                data = changed.get(info.filename, z.read(info))
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = []
                    for line in data.decode().splitlines():
                        name, _, _ = line.rsplit(",", 2)
                        if name in changed:
                            line = f"{name},{_record_hash(changed[name])},{len(changed[name])}"
                        lines.append(line)
                    data = ("\n".join(lines) + "\n").encode()
                new.writestr(info, data)
    out.replace(wheel)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--patchelf", default=shutil.which("patchelf") or "patchelf")
    args = parser.parse_args()
    for wheel in args.wheels:
        done = fix(wheel, args.patchelf)
        print(f"{wheel.name}: {'libc.so renamed to musl libc' if done else 'already fixed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
