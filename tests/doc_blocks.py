"""The fenced code blocks of README.md and docs/*.md, and how each one is checked.

The rules (CONTRIBUTING.md, "Docs that run"): the info string of a fence is its language, then
at most a few words that choose the check.

- ``python``: a standalone script, run with the test venv's Python in a scratch folder (the
  page's), under a timeout; it must exit 0. It starts its own embedded engine on ``port=0``
  (and ``http_port=0``), or reaches the engine a ``server`` block of the same page started
  through ``FNMESH_URL``, which the test sets (``os.environ.get("FNMESH_URL", default)``).
- ``python file=NAME.py``: written to ``NAME.py`` in the page's scratch folder for the blocks
  after it (``fnmesh run NAME.py``); checked by importing it there.
- ``sh``: run with bash (``-e -o pipefail``) in the page's scratch folder, under a timeout;
  a command that installs, fetches or builds (``pip``, ``git``, ``make``, ``cargo``, ...) fails it.
- ``sh server``: one long-running command (``fnmesh serve``, ``fnmesh run app.py``) that the test
  starts in the background on free ports (it adds ``--port`` and ``--http-port``), waits for, and
  stops at the end of the page. In the blocks after it the default ports (``49134`` for workers,
  ``3111`` for HTTP) are replaced by those ports, and ``FNMESH_URL`` points at it.
- ``sh check``: commands that must not run here (``pip install fnmesh``, ``make test``); every
  line is parsed by bash and then checked by what it names: a ``make`` target exists, an
  ``fnmesh`` command line parses with the CLI's own parser, a ``pip install`` names this project
  and extras it has, a script or file it runs exists, a program is on PATH.
- ``toml``, ``json``, ``yaml``: parsed (a ``json`` block may hold several values in a row, as
  frames follow each other on the wire). ``toml config``: also loaded as engine settings
  (``fnmesh.EngineConfig.from_mapping``: unknown keys and bad values fail).
- ``text``: not code (an output sample, a file tree, a wire diagram); nothing checks it.

Any other info string fails the test, so that no block goes unchecked by accident.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The ports a reader's commands use (fnmesh's defaults), replaced by free ones in the test.
WORKER_PORT = 49134
HTTP_PORT = 3111

LANGUAGES = {
    "python": {"", "file"},
    "sh": {"", "server", "check"},
    "toml": {"", "config"},
    "json": {""},
    "yaml": {""},
    "text": {""},
}
# Other spellings of the same language.
ALIASES = {"bash": "sh", "shell": "sh", "py": "python", "yml": "yaml"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    """One fenced block: where it is, its language, its check and its text (dedented)."""

    page: str
    line: int
    info: str
    language: str = ""
    mode: str = ""
    file: str = ""
    text: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse_info(block: Block) -> None:
    """Fills ``language``, ``mode`` and ``file`` from the info string, or records a problem."""
    words = block.info.split()
    if not words:
        block.problems.append("a fence without a language: say what it is (```text for non-code)")
        return
    language = ALIASES.get(words[0].lower(), words[0].lower())
    if language not in LANGUAGES:
        block.problems.append(f"language {words[0]!r} has no check; use one of {sorted(LANGUAGES)}")
        return
    block.language = language
    for word in words[1:]:
        key, _, value = word.partition("=")
        if key == "file" and "file" in LANGUAGES[language] and value:
            block.mode, block.file = "file", value
        elif key in LANGUAGES[language] and key and not value and not block.mode:
            block.mode = key
        else:
            block.problems.append(
                f"```{block.info}: {word!r} is not a check for {language} "
                f"(known: {sorted(m for m in LANGUAGES[language] if m)})"
            )


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, in order."""
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        block = Block(page=page, line=i + 1, info=m.group("info").strip())
        body: list[str] = []
        i += 1
        while i < len(lines):
            if re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[i]):
                break
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        else:
            block.problems.append("the fence is never closed")
        i += 1
        block.text = "\n".join(body) + "\n"
        parse_info(block)
        found.append(block)
    return found


def pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(script: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment lines left out."""
    joined = script.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def words_of(line: str) -> list[str]:
    """A command line's words as bash splits them (comments dropped), without expansion."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def commands_of(line: str) -> list[list[str]]:
    """The simple commands of a line (split at ``&&``, ``||``, ``;``, ``|``), each as its words,
    redirections left out."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif token in (">", ">>", "<", "2>", "&>"):
            i += 1  # and its target
        else:
            commands[-1].append(token)
        i += 1
    return [c for c in commands if c]


def with_ports(text: str, worker_port: int, http_port: int) -> str:
    """The default ports of a reader's command replaced by the ones the test serves on."""
    text = re.sub(rf"(?<=:){WORKER_PORT}\b", str(worker_port), text)
    return re.sub(rf"(?<=:){HTTP_PORT}\b", str(http_port), text)


# --- links ---------------------------------------------------------------------------------

_LINK = re.compile(
    r"(?<!\!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\((?P<image>[^)\s]+)\)"
)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeats get GitHub's -1, -2 suffixes)."""
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        m = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m and not in_fence:
            base = slug(m.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every link and image of a page that is not a URL (code left out)."""
    found = []
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for m in _LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = m.group("target") or m.group("image")
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                found.append((number, target))
    return found


def broken_link(path: Path, target: str) -> str | None:
    """Why a relative link of ``path`` does not resolve, or None when it does."""
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    if not resolved.exists():
        return f"{file_part} does not exist"
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return f"{file_part} is outside the repository"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{resolved.relative_to(ROOT)} has no heading #{anchor}"
    return None
