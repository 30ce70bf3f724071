"""The benchmark kit's record of what was measured: the commit a RESULTS.md names, and whether
the checkout matched it (benches/benchkit.py, ``git_commit``)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture(scope="module")
def benchkit() -> ModuleType:
    """benches/benchkit.py, loaded once (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("benchkit_under_test", ROOT / "benches" / "benchkit.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up by name while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout with a source file and a tracked result under benches/results/, committed."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "bench@example.invalid")
    git(tmp_path, "config", "user.name", "bench")
    (tmp_path / "engine.rs").write_text("fn main() {}\n", encoding="utf-8")
    (tmp_path / "benches" / "results").mkdir(parents=True)
    (tmp_path / "benches" / "results" / "headline.png").write_bytes(b"chart 1")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_a_clean_checkout_is_named_by_its_commit(benchkit: ModuleType, repo: Path) -> None:
    assert benchkit.git_commit(repo) == git(repo, "rev-parse", "--short", "HEAD")


def test_the_suites_own_outputs_do_not_make_a_run_dirty(benchkit: ModuleType, repo: Path) -> None:
    (repo / "benches" / "results" / "headline.png").write_bytes(b"chart 2")
    assert benchkit.git_commit(repo) == git(repo, "rev-parse", "--short", "HEAD")


def test_an_edited_source_file_marks_the_run_dirty(benchkit: ModuleType, repo: Path) -> None:
    (repo / "benches" / "results" / "headline.png").write_bytes(b"chart 2")
    (repo / "engine.rs").write_text("fn main() { loop {} }\n", encoding="utf-8")
    assert benchkit.git_commit(repo) == git(repo, "rev-parse", "--short", "HEAD") + "+dirty"


def test_an_untracked_file_does_not_mark_the_run_dirty(benchkit: ModuleType, repo: Path) -> None:
    (repo / "notes.txt").write_text("scratch\n", encoding="utf-8")
    assert benchkit.git_commit(repo) == git(repo, "rev-parse", "--short", "HEAD")


def test_outside_a_checkout_the_commit_is_unknown(
    benchkit: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    # However the test's temporary folder is placed, git must not find a repository above it.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert benchkit.git_commit(outside) == "unknown"
