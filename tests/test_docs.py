"""The docs the code cites are in the repository, and the citations point at sections that exist.

Code comments cite the wire protocol as ``docs/protocol.md <section>`` and the architecture as
``docs/architecture.md, "<heading>"``. A citation of a file outside the repository (the project's
starting texts, which a reader of the repository cannot open) or of a section that does not exist
is a failure, reported as ``file:line``. Needs no built wheel.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

THIS = Path(__file__).resolve()
ROOT = THIS.parents[1]
PROTOCOL = ROOT / "docs" / "protocol.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# What is scanned: every text file of these trees, plus these files.
SCANNED_DIRS = ("rust", "python", "tests", "benches", "examples", "scripts", "docs")
SCANNED_FILES = ("Makefile", "README.md", "CONTRIBUTING.md")
TEXT_SUFFIXES = {".rs", ".py", ".pyi", ".md", ".toml", ".sh", ".txt", ".yaml", ".yml", ".cfg", ".ini"}
SKIPPED_DIRS = {"target", "dist", "node_modules", "__pycache__"}

# Built from pieces so that a mechanical rewrite of the citations leaves this file alone (which is
# not scanned itself: it names what it looks for).
_OLD_NAMES = "|".join(("PROTOCOL", "DESIGN"))
OUTSIDE = re.compile(
    rf"(?<!docs/)\b(?:{_OLD_NAMES})\.md"  # the starting texts, beside the repository
    r"|\.\./shared\b"  # the folder that holds them, relative
    r"|/work/shared\b"  # ... and absolute
)

_NUMBER = r"\d+(?:\.\d+)*"
# `docs/protocol.md 6.4`, `docs/protocol.md section 5`, `docs/protocol.md sections 1 to 4`,
# `docs/protocol.md 1-4, 6.1-6.2`, `docs/protocol.md 4.4, 6.5 and 11.4`, `docs/protocol.md §3.4`.
PROTOCOL_CITATION = re.compile(
    r"docs/protocol\.md[\s,]*(?:§\s*|sections?\s+)?"
    rf"(?P<list>{_NUMBER}(?:\s*(?:-|\u2013|to|,|and)\s*{_NUMBER})*)"
)
# `docs/architecture.md, "The hot path"` (the quoted words are a heading of the file; a `<...>`
# placeholder, as in the docs that describe the form, is not a citation).
ARCHITECTURE_CITATION = re.compile(r'docs/architecture\.md,?\s*"(?P<heading>[^"<][^"]*)"')


def scanned_files() -> Iterator[Path]:
    for name in SCANNED_FILES:
        path = ROOT / name
        if path.is_file():
            yield path
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            relative = path.relative_to(ROOT).parts
            if any(part in SKIPPED_DIRS or part.startswith(".") for part in relative):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path != THIS:
                yield path


def lines_of(path: Path) -> Iterator[tuple[str, int, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    where = path.relative_to(ROOT).as_posix()
    for number, line in enumerate(text.splitlines(), start=1):
        yield where, number, line


def headings(path: Path) -> list[str]:
    return [
        m.group(1).strip()
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]


def protocol_sections() -> set[str]:
    """Section numbers of docs/protocol.md: `## 6. Triggers` gives 6, `### 6.3 ...` gives 6.3."""
    numbers = set()
    for heading in headings(PROTOCOL):
        m = re.match(rf"({_NUMBER})\.?(?:\s|$)", heading)
        if m:
            numbers.add(m.group(1))
    return numbers


def cited_numbers(listed: str) -> list[str]:
    """The section numbers a citation names; a range names both of its ends."""
    return re.findall(_NUMBER, listed)


def test_the_docs_exist() -> None:
    for path in (PROTOCOL, ARCHITECTURE, ROOT / "CONTRIBUTING.md"):
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


def test_no_source_refers_to_a_file_outside_the_repository() -> None:
    found = [
        f"{where}:{number}: {line.strip()}"
        for path in scanned_files()
        for where, number, line in lines_of(path)
        if OUTSIDE.search(line)
    ]
    assert not found, (
        "these lines cite files outside the repository; cite docs/protocol.md or "
        "docs/architecture.md instead:\n" + "\n".join(found)
    )


def test_protocol_citations_name_existing_sections() -> None:
    sections = protocol_sections()
    assert {"1", "1.5", "6.3", "11.2"} <= sections, "docs/protocol.md lost its section numbering"
    found = []
    for path in scanned_files():
        for where, number, line in lines_of(path):
            for m in PROTOCOL_CITATION.finditer(line):
                missing = [n for n in cited_numbers(m.group("list")) if n not in sections]
                if missing:
                    found.append(f"{where}:{number}: section {', '.join(missing)}: {line.strip()}")
    assert not found, "these lines cite sections docs/protocol.md does not have:\n" + "\n".join(found)


def test_architecture_citations_name_existing_headings() -> None:
    known = {h.lower() for h in headings(ARCHITECTURE)}
    found = [
        f"{where}:{number}: {line.strip()}"
        for path in scanned_files()
        for where, number, line in lines_of(path)
        for m in ARCHITECTURE_CITATION.finditer(line)
        if m.group("heading").lower() not in known
    ]
    assert not found, "these lines cite headings docs/architecture.md does not have:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("(docs/protocol.md 6.4)", ["6.4"]),
        ("docs/protocol.md section 5) through", ["5"]),
        ("(docs/protocol.md sections 1 to 4).", ["1", "4"]),
        ("(docs/protocol.md 1-4, 6.1-6.2).", ["1", "4", "6.1", "6.2"]),
        ("(docs/protocol.md 4.4, 6.5 and 11.4): where", ["4.4", "6.5", "11.4"]),
        ("(docs/protocol.md 6.3, buffered mode)", ["6.3"]),
        ("docs/protocol.md §3.4", ["3.4"]),
    ],
)
def test_citation_forms(text: str, numbers: list[str]) -> None:
    m = PROTOCOL_CITATION.search(text)
    assert m is not None
    assert cited_numbers(m.group("list")) == numbers


def test_outside_pattern() -> None:
    old = "PROTOCOL" + ".md"
    assert OUTSIDE.search(f"see {old} 6.3")
    assert OUTSIDE.search("beyond `/work/shared/x`")
    assert OUTSIDE.search("the file beside it, ../shared/x")
    assert not OUTSIDE.search("see docs/protocol.md 6.3")
    assert not OUTSIDE.search("docs/" + old)
