"""The docs stay true: what they cite exists, and every code block they show works.

Code comments cite the wire protocol as ``docs/protocol.md <section>`` and the architecture as
``docs/architecture.md, "<heading>"``. A citation of a file outside the repository (the project's
starting texts, which a reader of the repository cannot open) or of a section that does not exist
is a failure, reported as ``file:line``.

Every fenced block of README.md and docs/*.md is checked as its info string says
(tests/doc_blocks.py has the rules, CONTRIBUTING.md, "Docs that run", tells a writer): Python
examples and shell commands run against the installed wheel, commands that cannot run here are
parsed and what they name is looked up, TOML/JSON/YAML is parsed, and relative links resolve.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import doc_blocks
from doc_blocks import Block
from harness import free_port

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

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


# ==============================================================================================
# Every code block of README.md and docs/*.md is checked (tests/doc_blocks.py has the rules,
# CONTRIBUTING.md, "Docs that run", says them to a writer).
# ==============================================================================================

# A block that runs longer than this fails: examples end by themselves, in seconds.
BLOCK_TIMEOUT = 120.0
# A `sh server` block's process must be serving within this long.
SERVER_START_TIMEOUT = 30.0
# The log lines `fnmesh serve` and `fnmesh run` write once they serve (as tests/harness.py waits for).
READY = {
    "serve": re.compile(r"workers connect to ws://"),
    "run": re.compile(r"app \S+ (?:serving \d+ function\(s\) at|connected to) ws://"),
}
LINKED_PAGES = ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")


def all_blocks() -> list[Block]:
    return [block for page in doc_blocks.pages() for block in doc_blocks.blocks_of(page)]


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def runnable(block: Block) -> bool:
    return (block.language == "python") or (block.language == "sh" and block.mode != "check")


PAGES_THAT_RUN = [page for page in doc_blocks.pages() if any(map(runnable, doc_blocks.blocks_of(page)))]


# --- the info strings ----------------------------------------------------------------------


def test_every_block_says_which_check_applies() -> None:
    problems = [f"{b.where}: {p}" for b in all_blocks() for p in b.problems]
    assert not problems, "fix these fences (tests/doc_blocks.py lists the checks):\n" + "\n".join(problems)


def test_the_docs_have_blocks_of_each_kind() -> None:
    # A parser that stopped seeing fences would pass everything above.
    kinds = {(b.language, b.mode) for b in all_blocks()}
    assert {("python", ""), ("python", "file"), ("sh", ""), ("sh", "server"), ("sh", "check")} <= kinds
    assert {("toml", "config"), ("json", "")} <= kinds


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        ("", "without a language"),
        ("rust", "has no check"),
        ("python run", "not a check for python"),
        ("sh file=x.sh", "not a check for sh"),
        ("toml check", "not a check for toml"),
    ],
)
def test_an_unknown_info_string_is_a_problem(info: str, problem: str) -> None:
    block = Block(page="x.md", line=1, info=info)
    doc_blocks.parse_info(block)
    assert block.problems
    assert problem in block.problems[0]


def test_fences_are_read_with_their_indentation_and_info(tmp_path: Path) -> None:
    page = ROOT / "docs" / f"_doc_blocks_probe_{os.getpid()}.md"
    page.write_text("- item\n\n  ```python file=app.py\n  x = 1\n    y = 2\n  ```\n\n````text\n```\n````\n")
    try:
        first, second = doc_blocks.blocks_of(page)
    finally:
        page.unlink()
    assert (first.language, first.mode, first.file, first.line) == ("python", "file", "app.py", 3)
    assert first.text == "x = 1\n  y = 2\n"
    assert (second.language, second.text) == ("text", "```\n")


# --- data blocks: parsed --------------------------------------------------------------------


def check_data(block: Block) -> str | None:
    """Why a toml/json/yaml block is wrong, or None."""
    import json

    import yaml

    try:
        if block.language == "json":
            # One value, or several in a row (frames as they follow each other on the wire).
            decoder, text, at = json.JSONDecoder(), block.text.strip(), 0
            while at < len(text):
                _, at = decoder.raw_decode(text, at)
                at = len(text) - len(text[at:].lstrip())
        elif block.language == "yaml":
            yaml.safe_load(block.text)
        elif block.language == "toml":
            values = tomllib.loads(block.text)
            if block.mode == "config":
                import fnmesh

                fnmesh.EngineConfig.from_mapping(values)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def test_data_blocks_parse() -> None:
    found = []
    for block in all_blocks():
        if block.language in ("json", "yaml", "toml"):
            problem = check_data(block)
            if problem:
                found.append(f"{block.where} (```{block.info}): {problem}")
    assert not found, "\n".join(found)


def test_a_config_block_with_an_unknown_setting_fails() -> None:
    block = Block(page="x.md", line=1, info="toml config", language="toml", mode="config", text="prot = 1\n")
    assert "unknown engine setting" in (check_data(block) or "")
    block.text = "port = [\n"
    assert "TOMLDecodeError" in (check_data(block) or "")


# --- `sh check` blocks: parsed, and what they name exists -----------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE))


def pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def check_pip_install(words: list[str]) -> str | None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    extras = set(project["optional-dependencies"])
    requirements = [
        *project["dependencies"],
        *(r for group in project["optional-dependencies"].values() for r in group),
    ]
    named = {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}
    if "install" not in words:
        return None
    for spec in words[words.index("install") + 1 :]:
        if spec.startswith("-"):
            continue
        m = re.fullmatch(r"(?P<name>.*?)(?:\[(?P<extras>[^\]]*)\])?", spec)
        assert m is not None
        name, wanted = m.group("name"), m.group("extras")
        if "fnmesh" in name:  # the project, by name or as a built wheel (dist/fnmesh-*.whl)
            missing = [e for e in (wanted or "").split(",") if e and e not in extras]
            if missing:
                return f"fnmesh has no extra {', '.join(missing)} (pyproject.toml has {sorted(extras)})"
        elif name.lower() not in named:
            return f"{name} is not a dependency named in pyproject.toml"
    return None


def check_fnmesh_args(args: list[str]) -> str | None:
    from fnmesh.cli import _parser

    try:
        _parser().parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else f"the fnmesh CLI refuses: fnmesh {' '.join(args)}"
    return None


def check_command(words: list[str]) -> str | None:
    """Why a command of a `sh check` block would not work, or None."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words:
        return None
    program, args = Path(words[0]).name, words[1:]
    if program == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        missing = [t for t in targets if t not in make_targets()]
        return f"the Makefile has no target {', '.join(missing)}" if missing else None
    if program == "fnmesh":
        return check_fnmesh_args(args)
    if program in ("pip", "pip3"):
        return check_pip_install(args)
    if re.fullmatch(r"python3?(\.\d+)?", program):
        if args[:2] == ["-m", "pip"]:
            return check_pip_install(args[2:])
        if args[:2] == ["-m", "fnmesh"]:
            return check_fnmesh_args(args[2:])
        script = next((a for a in args if not a.startswith("-")), None)
        if script and script.endswith(".py") and not (ROOT / script).is_file():
            return f"{script} does not exist"
        return None
    if program in ("bash", "sh") and args and not (ROOT / args[0]).is_file():
        return f"{args[0]} does not exist"
    if program == "cargo":
        if "-p" in args:
            package = args[args.index("-p") + 1]
            if f'name = "{package}"' not in "".join(
                p.read_text(encoding="utf-8") for p in ROOT.glob("**/Cargo.toml") if "target" not in p.parts
            ):
                return f"no Cargo package {package}"
        if "--example" in args:
            example = args[args.index("--example") + 1]
            if not list(ROOT.glob(f"rust/*/examples/{example}.rs")):
                return f"no example {example}"
        return None
    if program == "git":
        return None  # `git clone URL`: parsed is all that can be checked here
    if program == "curl":
        return "curl needs a server: put it in a ```sh block after a ```sh server block"
    if shutil.which(words[0]) is None:
        return f"{words[0]} is not a program on PATH, and the test has no other check for it"
    return None


def check_shell(block: Block) -> list[str]:
    syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    if syntax.returncode != 0:
        return [f"{block.where}: bash cannot parse it: {syntax.stderr.strip()}"]
    found = []
    for line in doc_blocks.command_lines(block.text):
        for command in doc_blocks.commands_of(line):
            problem = check_command(command)
            if problem:
                found.append(f"{block.where}: {line}: {problem}")
    return found


def test_commands_that_do_not_run_here_are_checked() -> None:
    found = [p for b in all_blocks() if b.language == "sh" and b.mode == "check" for p in check_shell(b)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("make no-such-target", "no target no-such-target"),
        ("make test", None),
        ("pip install fnmesh", None),
        ("pip install 'fnmesh[fast]'", None),
        ("pip install 'fnmesh[turbo]'", "no extra turbo"),
        ("pip install leftpad", "not a dependency"),
        ("fnmesh call math::add '{}'", None),
        ("fnmesh call", "refuses"),
        ("fnmesh frobnicate", "refuses"),
        ("python examples/hello.py", None),
        ("python examples/nope.py", "does not exist"),
        ("cargo run -p fnmesh-core --example embed", None),
        ("cargo run -p fnmesh-core --example nope", "no example nope"),
        ("curl http://127.0.0.1:3111/", "needs a server"),
        ("no-such-program-xyz --help", "not a program on PATH"),
        ("FOO=1 make test", None),
    ],
)
def test_the_command_checks_fail_what_would_not_work(command: str, problem: str | None) -> None:
    found = check_command(doc_blocks.words_of(command))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --- links between README and the docs ------------------------------------------------------


def test_relative_links_resolve() -> None:
    found = []
    for path in [*doc_blocks.pages(), *(ROOT / name for name in LINKED_PAGES[1:])]:
        for number, target in doc_blocks.relative_links(path):
            problem = doc_blocks.broken_link(path, target)
            if problem:
                found.append(f"{page_id(path)}:{number}: ({target}) {problem}")
    assert not found, "\n".join(found)


def test_a_broken_link_is_found() -> None:
    readme = ROOT / "README.md"
    assert doc_blocks.broken_link(readme, "docs/nope.md") == "docs/nope.md does not exist"
    assert "no heading #nope" in (doc_blocks.broken_link(readme, "CONTRIBUTING.md#nope") or "")
    assert doc_blocks.broken_link(readme, "CONTRIBUTING.md#releasing") is None
    assert doc_blocks.slug("The `fnmesh` CLI, step 2") == "the-fnmesh-cli-step-2"


# --- the README's two set-up commands -------------------------------------------------------


def test_the_readme_has_the_two_set_up_commands_and_ci_runs_the_second() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Set up\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md has no Set up section"
    setup = [
        b
        for b in doc_blocks.blocks_of(ROOT / "README.md")
        if b.language == "sh" and b.text.strip() and b.text in m.group(1)
    ]
    assert len(setup) == 1, "the Set up section holds one shell block"
    commands = [doc_blocks.words_of(line) for line in doc_blocks.command_lines(setup[0].text)]
    assert commands == [["make", "run"], ["make", "test"]]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec make test$", ci, re.MULTILINE), (
        ".ci/run no longer runs the README's test command"
    )
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run:.*\n\tbash scripts/run\.sh", makefile, re.MULTILINE)
    assert re.search(r"^test:.*\n\tbash scripts/test\.sh", makefile, re.MULTILINE)


# --- running the pages ----------------------------------------------------------------------


# Commands a docs test must never run: they install, fetch or build (`sh check` checks them).
NOT_RUN = {"pip", "pip3", "pipx", "uv", "git", "make", "cargo", "maturin", "rustup", "apt-get", "apt", "sudo"}


def installs_or_builds(words: list[str]) -> bool:
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    if not words:
        return False
    program = Path(words[0]).name
    return program in NOT_RUN or (
        re.fullmatch(r"python3?(\.\d+)?", program) is not None and words[1:3] == ["-m", "pip"]
    )


class PageRun:
    """The scratch folder, environment and (once a `sh server` block ran) server of one page."""

    def __init__(self, page: str, scratch: Path) -> None:
        self.page = page
        self.scratch = scratch
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self.env.pop("FNMESH_URL", None)
        self.env.pop("FNMESH_AUTH_TOKEN", None)
        # curl fails on an HTTP error status (a reader's `curl -s` shows the error body instead).
        (scratch / ".curlrc").write_text("fail\n", encoding="utf-8")
        self.env["CURL_HOME"] = str(scratch)
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = scratch / "server.log"
        self.worker_port = doc_blocks.WORKER_PORT
        self.http_port = doc_blocks.HTTP_PORT

    def fail(self, block: Block, what: str, output: str = "") -> None:
        pytest.fail(
            f"{block.where} (```{block.info}) {what}\n--- block ---\n{block.text}--- output ---\n{output}"
        )

    def run(self, block: Block, command: list[str], stdin: str | None = None) -> None:
        try:
            done = subprocess.run(
                command,
                input=stdin,
                cwd=self.scratch,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            self.fail(block, f"did not end within {BLOCK_TIMEOUT:.0f} s", out)
        else:
            if done.returncode != 0:
                self.fail(block, f"exited with {done.returncode}", done.stdout + done.stderr)

    def block(self, block: Block, later: list[Block]) -> None:
        if block.language == "python" and block.mode == "file":
            (self.scratch / block.file).write_text(block.text, encoding="utf-8")
            module = Path(block.file).stem
            self.run(block, [sys.executable, "-c", f"import {module}"])
        elif block.language == "python":
            script = self.scratch / f"block_{block.line}.py"
            script.write_text(block.text, encoding="utf-8")
            self.run(block, [sys.executable, script.name])
        elif block.language == "sh" and block.mode == "server":
            self.start_server(block, needs_http=any(f":{doc_blocks.HTTP_PORT}" in b.text for b in later))
        elif block.language == "sh" and block.mode == "":
            for line in doc_blocks.command_lines(block.text):
                for command in doc_blocks.commands_of(line):
                    if installs_or_builds(command):
                        self.fail(block, f"would change this machine ({line}): make it a ```sh check block")
            script = doc_blocks.with_ports(block.text, self.worker_port, self.http_port)
            self.run(block, ["bash", "-e", "-o", "pipefail", "-c", script])

    def start_server(self, block: Block, needs_http: bool) -> None:
        lines = doc_blocks.command_lines(block.text)
        words = doc_blocks.words_of(lines[0]) if len(lines) == 1 else []
        if words[:1] != ["fnmesh"] or len(words) < 2 or words[1] not in READY:
            self.fail(block, "a server block is one `fnmesh serve` or `fnmesh run` command")
        if self.server is not None:
            self.fail(block, "a page starts one server")
        self.worker_port, self.http_port = free_port(), free_port()
        command = [*words[1:], "--port", str(self.worker_port), "--http-port", str(self.http_port)]
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "fnmesh.cli", *command],
                cwd=self.scratch,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.env["FNMESH_URL"] = f"ws://127.0.0.1:{self.worker_port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not (READY[words[1]].search(self.log()) and (not needs_http or self.listening(self.http_port))):
            if self.server.poll() is not None:
                self.fail(block, f"exited with {self.server.returncode} instead of serving", self.log())
            if time.monotonic() > deadline:
                self.fail(block, f"was not serving after {SERVER_START_TIMEOUT:.0f} s", self.log())
            time.sleep(0.05)

    def log(self) -> str:
        return self.server_log.read_text(encoding="utf-8", errors="replace")

    @staticmethod
    def listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.send_signal(signal.SIGINT)
        try:
            self.server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


@pytest.mark.parametrize("page", PAGES_THAT_RUN, ids=page_id)
def test_the_page_runs(page: Path, tmp_path: Path) -> None:
    blocks = doc_blocks.blocks_of(page)
    problems = [f"{b.where}: {p}" for b in blocks for p in b.problems]
    assert not problems, "\n".join(problems)
    run = PageRun(page_id(page), tmp_path)
    try:
        for i, block in enumerate(blocks):
            run.block(block, blocks[i + 1 :])
    finally:
        run.stop()


# --- the configuration page names every setting ---------------------------------------------


def test_the_configuration_page_names_every_engine_setting() -> None:
    import dataclasses

    import fnmesh

    page = ROOT / "docs" / "configuration.md"
    text = page.read_text(encoding="utf-8")
    section = text[text.index("## Every setting") :]
    blocks = [b for b in doc_blocks.blocks_of(page) if b.mode == "config" and b.text in section]
    assert len(blocks) == 1, "docs/configuration.md's 'Every setting' holds one ```toml config block"
    # A setting with no default worth showing is there as a comment (`# name = ...`), a table as
    # one of its entries (`[queues.orders]`).
    named = set(re.findall(r"^(?:#\s*)?\[?([a-z_]+)(?:\s*=|\.)", blocks[0].text, re.MULTILINE))
    missing = [f.name for f in dataclasses.fields(fnmesh.EngineConfig) if f.name not in named]
    assert not missing, f"docs/configuration.md, 'Every setting', lacks: {', '.join(missing)}"


def test_the_runner_fails_a_failing_block(tmp_path: Path) -> None:
    run = PageRun("x.md", tmp_path)
    blocks = [
        Block(page="x.md", line=1, info="python", language="python", text="raise SystemExit(3)\n"),
        Block(page="x.md", line=5, info="sh server", language="sh", mode="server", text="fnmesh serve\n"),
        Block(page="x.md", line=9, info="sh", language="sh", text="fnmesh functions --quiet\n"),
        Block(page="x.md", line=13, info="sh", language="sh", text="curl -s http://127.0.0.1:3111/nope\n"),
        Block(page="x.md", line=17, info="sh", language="sh", text="fnmesh call no::such '{}'\n"),
        Block(page="x.md", line=21, info="sh", language="sh", text="echo hi && python -m pip install x\n"),
    ]
    try:
        with pytest.raises(pytest.fail.Exception, match=r"x.md:1 \(```python\) exited with 3"):
            run.block(blocks[0], blocks[1:])
        run.block(blocks[1], blocks[2:])  # serves on free ports, and the HTTP port (curl below)
        assert run.worker_port != doc_blocks.WORKER_PORT
        assert run.http_port != doc_blocks.HTTP_PORT
        run.block(blocks[2], blocks[3:])  # reaches the server through FNMESH_URL
        with pytest.raises(pytest.fail.Exception, match=r"x.md:13 .* exited with 22"):  # curl --fail: 404
            run.block(blocks[3], blocks[4:])
        with pytest.raises(pytest.fail.Exception, match=r"x.md:17 .* exited with 1"):
            run.block(blocks[4], [])
        with pytest.raises(pytest.fail.Exception, match=r"x.md:21 .* would change this machine"):
            run.block(blocks[5], [])
    finally:
        run.stop()
