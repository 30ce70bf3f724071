"""Checks that Linux wheels comply with the platform tags their file names carry.

    python scripts/check_wheels.py dist/fnmesh-*.whl [--auditwheel PATH]

For each wheel, ``auditwheel show --json`` reports the most compatible tag the wheel's native code
allows (from the glibc or musl symbol versions it references and the libraries it links). A
wheel passes when every platform tag in its name is of the same family and architecture as that
tag and asks no less of the system: a wheel named ``manylinux_2_17`` whose code needs glibc 2.34
fails, and so does a wheel that links a library outside the policy (auditwheel's tag is then
``linux_<arch>``). Prints one line per wheel; exits 1 if any fails, 2 on bad usage.
Used by ``make wheels`` (scripts/wheels.sh) and tests/test_packaging.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The legacy manylinux names and the glibc versions they stand for (PEP 600).
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_TAG = re.compile(r"(?P<family>manylinux|musllinux)_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>\w+)")


def parse_tag(tag: str) -> tuple[str, tuple[int, int], str] | None:
    """(family, (major, minor), arch) of a manylinux or musllinux platform tag; None otherwise."""
    for legacy, version in _LEGACY.items():
        if tag.startswith(legacy + "_"):
            return "manylinux", version, tag[len(legacy) + 1 :]
    m = _TAG.fullmatch(tag)
    if m is None:
        return None
    return m["family"], (int(m["major"]), int(m["minor"])), m["arch"]


def platform_tags(wheel: Path) -> list[str]:
    """The platform tags of a wheel's file name (name-version[-build]-python-abi-platform.whl)."""
    parts = wheel.name.removesuffix(".whl").split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{wheel.name}: not a wheel file name")
    return parts[-1].split(".")


def problems(claimed: list[str], audited: str) -> list[str]:
    """Why the claimed platform tags do not hold, given auditwheel's most compatible tag."""
    found = parse_tag(audited)
    if found is None:
        return [f"auditwheel allows only {audited!r}: the wheel needs libraries outside every policy"]
    family, version, arch = found
    errors = []
    for tag in claimed:
        mine = parse_tag(tag)
        if mine is None:
            errors.append(f"{tag!r} is not a manylinux or musllinux tag")
        elif mine[0] != family or mine[2] != arch:
            errors.append(f"{tag!r} claimed, but the code is {family} {arch} ({audited})")
        elif mine[1] < version:
            errors.append(f"{tag!r} claimed, but the code needs {audited}")
    return errors


def audit(wheel: Path, auditwheel: str) -> str:
    """auditwheel's most compatible tag for ``wheel``."""
    done = subprocess.run(
        [auditwheel, "show", "--json", str(wheel)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"auditwheel show {wheel.name} failed: {done.stderr.strip() or done.stdout}")
    tag = json.loads(done.stdout)["overall_tag"]
    assert isinstance(tag, str)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--auditwheel", help="the auditwheel command (default: on PATH, else beside python)")
    args = parser.parse_args(argv)
    auditwheel = (
        args.auditwheel or shutil.which("auditwheel") or str(Path(sys.executable).parent / "auditwheel")
    )
    failed = False
    for wheel in args.wheels:
        try:
            claimed = platform_tags(wheel)
            audited = audit(wheel, auditwheel)
        except (ValueError, RuntimeError, OSError, json.JSONDecodeError, KeyError) as exc:
            print(f"FAIL {wheel.name}: {exc}")
            failed = True
            continue
        errors = problems(claimed, audited)
        if errors:
            failed = True
            print(f"FAIL {wheel.name}: " + "; ".join(errors))
        else:
            print(f"ok   {wheel.name}: complies with {'.'.join(claimed)} (auditwheel: {audited})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
