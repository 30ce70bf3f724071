"""What a user of the published package depends on: one version everywhere, the command-line entry
points, a changelog in Keep a Changelog form, a release workflow that builds every platform's wheel
and publishes through trusted publishing, and an ``import fnmesh`` that leaves the heavy optional
dependencies unloaded."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import fnmesh

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def cargo_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        version = tomllib.load(f)["workspace"]["package"]["version"]
    assert isinstance(version, str)
    return version


def run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd or ROOT.parent
    )


# --- one version -----------------------------------------------------------------------------


def test_the_version_has_one_source_cargo_toml() -> None:
    version = cargo_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-.]?\w+)?", version), version
    assert fnmesh.__version__ == version
    assert importlib.metadata.version("fnmesh") == version


def test_fnmesh_version_prints_the_version() -> None:
    scripts = Path(sys.executable).parent
    done = subprocess.run([str(scripts / "fnmesh"), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fnmesh {cargo_version()}"


def test_python_dash_m_fnmesh_is_the_command_line() -> None:
    done = run_python("-m", "fnmesh", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fnmesh {cargo_version()}"

    helped = run_python("-m", "fnmesh", "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "run", "queues"):
        assert command in helped.stdout
    # The program name is the command's, not __main__.py.
    assert helped.stdout.startswith("usage: fnmesh ")


def test_python_dash_m_fnmesh_without_a_command_is_a_usage_error() -> None:
    done = run_python("-m", "fnmesh")
    assert done.returncode == 2
    assert "usage: fnmesh" in done.stderr
    assert "required" in done.stderr


def test_python_dash_m_fnmesh_reports_errors_like_the_command() -> None:
    done = run_python("-m", "fnmesh", "run", "no_such_module_here:app")
    assert done.returncode == 2
    assert done.stderr.startswith("fnmesh: "), done.stderr
    assert "no_such_module_here" in done.stderr


# --- changelog -------------------------------------------------------------------------------


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.MULTILINE)
    assert versions, "no version sections"
    assert versions[0][0] == "Unreleased", "the first section is Unreleased"
    for name, rest in versions[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+\S*", name), name
        assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), f"{name}: a release section carries its date"
    kinds = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    for kind in re.findall(r"^### (.+)$", text, re.MULTILINE):
        assert kind in kinds, f"### {kind} is not a Keep a Changelog kind"
    # A released version must be the one Cargo.toml gives (the release workflow checks the tag).
    released = [name for name, _ in versions[1:]]
    if released:
        assert released[0] == cargo_version()


# --- release workflow ------------------------------------------------------------------------


def workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def maturin_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith("PyO3/maturin-action@")]


def test_release_workflow_runs_on_version_tags() -> None:
    flow = workflow()
    # YAML 1.1 reads the bare key `on` as True.
    triggers = flow.get("on", flow.get(True))
    assert triggers["push"]["tags"] == ["v*"]
    assert set(triggers) == {"push", "workflow_dispatch"}, "no release from a branch push"


def test_release_workflow_builds_every_platform_and_the_sdist() -> None:
    jobs = workflow()["jobs"]
    linux = jobs["linux"]
    assert linux["strategy"]["matrix"]["target"] == ["x86_64", "aarch64"]
    assert linux["strategy"]["matrix"]["manylinux"] == ["2014", "musllinux_1_2"]
    (build,) = maturin_steps(linux)
    assert build["with"]["manylinux"] == "${{ matrix.manylinux }}"
    assert build["with"]["target"] == "${{ matrix.target }}"
    assert any("scripts/check_wheels.py" in str(s.get("run", "")) for s in linux["steps"])

    macos = jobs["macos"]["strategy"]["matrix"]["include"]
    assert sorted(entry["target"] for entry in macos) == ["aarch64", "x86_64"]
    assert len({entry["runner"] for entry in macos}) == 2
    (windows_build,) = maturin_steps(jobs["windows"])
    assert windows_build["with"]["target"] == "x64"

    (sdist,) = maturin_steps(jobs["sdist"])
    assert sdist["with"]["command"] == "sdist"
    for name in ("linux", "macos", "windows"):
        (step,) = maturin_steps(jobs[name])
        assert "--release" in step["with"]["args"]
        assert "--locked" in step["with"]["args"]


def test_release_workflow_publishes_through_trusted_publishing_only_on_a_tag() -> None:
    jobs = workflow()["jobs"]
    publish = jobs["publish"]
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/')"
    assert set(publish["needs"]) == {"linux", "macos", "windows", "sdist"}
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    (upload,) = [
        s for s in publish["steps"] if str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish@")
    ]
    # Trusted publishing: no token or password anywhere in the workflow.
    assert "password" not in upload.get("with", {})
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert "secrets." not in text
    # Every build job uploads under the name the publish job downloads.
    download = next(
        s for s in publish["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact@")
    )
    pattern = download["with"]["pattern"]
    assert pattern == "wheels-*"
    for name in ("linux", "macos", "windows", "sdist"):
        uploads = [
            s for s in jobs[name]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")
        ]
        assert len(uploads) == 1, name
        assert uploads[0]["with"]["name"].startswith("wheels-"), name


def test_release_workflow_checks_the_tag_against_the_version() -> None:
    jobs = workflow()["jobs"]
    steps = " ".join(str(s.get("run", "")) for s in jobs["version"]["steps"])
    assert "Cargo.toml" in steps
    assert "GITHUB_REF_NAME" in steps
    for name in ("linux", "macos", "windows", "sdist"):
        assert jobs[name]["needs"] == "version"


# --- import footprint ------------------------------------------------------------------------

HEAVY = ("opentelemetry", "httpx", "httpcore", "redis")


def loaded_after(code: str) -> list[str]:
    """The heavy optional dependencies loaded in a fresh interpreter after running ``code``."""
    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"heavy = {list(HEAVY)!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    done = run_python("-c", probe)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert isinstance(loaded, list)
    return loaded


def test_import_fnmesh_leaves_the_heavy_optional_dependencies_out() -> None:
    assert loaded_after("import fnmesh") == []
    # Declaring functions, routes and jobs, and the command line's parser, need none of them.
    app = (
        "import fnmesh, fnmesh.cli\n"
        "app = fnmesh.App('shop')\n"
        "@app.http('GET', '/price')\n"
        "@app.cron('0 * * * * *')\n"
        "@app.function('shop::price')\n"
        "async def price(data: dict) -> dict:\n"
        "    return data\n"
    )
    assert loaded_after(app) == []


def test_an_app_without_tracing_or_external_functions_runs_without_them() -> None:
    app = (
        "import asyncio, fnmesh\n"
        "app = fnmesh.App('shop', port=0, log_level='warn')\n"
        "@app.function('shop::price')\n"
        "async def price(data: dict) -> dict:\n"
        "    return {'price': data['qty'] * 3}\n"
        "async def main() -> None:\n"
        "    async with app:\n"
        "        assert await app.call('shop::price', {'qty': 2}) == {'price': 6}\n"
        "asyncio.run(main())\n"
    )
    assert loaded_after(app) == []


@pytest.mark.parametrize(
    ("code", "loaded"),
    [
        # fnmesh.external (and its httpx client) is imported on first use of the name ...
        ("import fnmesh; fnmesh.external.Retry(attempts=2)", ["httpcore", "httpx"]),
        ("from fnmesh import external", ["httpcore", "httpx"]),
        # ... or when an app declares an external function.
        (
            "import fnmesh; fnmesh.App('x').external('billing.charge', url='https://billing.example/c')",
            ["httpcore", "httpx"],
        ),
        # Tracing imports opentelemetry when a tracer may exist.
        ("import fnmesh; fnmesh.telemetry.tracer(always=True)", ["opentelemetry"]),
        ("import opentelemetry.trace, fnmesh; fnmesh.telemetry.tracer()", ["opentelemetry"]),
    ],
)
def test_the_heavy_dependencies_load_when_used(code: str, loaded: list[str]) -> None:
    assert loaded_after(code) == loaded


def test_an_unknown_attribute_of_fnmesh_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        _ = fnmesh.no_such_thing  # type: ignore[attr-defined]


def test_a_tracer_provider_named_in_the_environment_is_still_found() -> None:
    """OTEL_PYTHON_TRACER_PROVIDER configures a provider without importing opentelemetry first:
    the app must still look for it (and so import opentelemetry)."""
    code = (
        "import os\n"
        "os.environ['OTEL_PYTHON_TRACER_PROVIDER'] = 'sdk_tracer_provider'\n"
        "import fnmesh\n"
        "print(fnmesh.telemetry.tracer() is not None)\n"
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


# --- wheel platform tags ---------------------------------------------------------------------


def check_wheels_module() -> Any:
    spec = importlib.util.spec_from_file_location("check_wheels", ROOT / "scripts" / "check_wheels.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform != "linux", reason="auditwheel audits Linux wheels")
def test_the_built_wheels_comply_with_their_platform_tags() -> None:
    """auditwheel on the wheel `make test` built (and on make wheels' four, when dist/ has them):
    the native module needs no newer glibc or musl, and links no library, beyond its tag."""
    wheels = sorted((ROOT / "dist").glob("fnmesh-*.whl"))
    assert wheels, "no wheel in dist/: build one first (make test does)"
    auditwheel = Path(sys.executable).parent / "auditwheel"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_wheels.py"), "--auditwheel", str(auditwheel)]
        + [str(w) for w in wheels],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = [line.split()[0] for line in done.stdout.splitlines()]
    assert verdicts == ["ok"] * len(wheels), done.stdout


@pytest.mark.parametrize(
    ("claimed", "audited", "problem"),
    [
        (["manylinux_2_17_x86_64", "manylinux2014_x86_64"], "manylinux_2_17_x86_64", None),
        (["manylinux_2_34_x86_64"], "manylinux_2_17_x86_64", None),
        (["musllinux_1_2_aarch64"], "musllinux_1_2_aarch64", None),
        # Linked against this machine's glibc, named as manylinux2014: refused.
        (["manylinux2014_x86_64"], "manylinux_2_34_x86_64", "the code needs manylinux_2_34_x86_64"),
        # A glibc build named as musl, or the wrong architecture.
        (["musllinux_1_2_x86_64"], "manylinux_2_17_x86_64", "the code is manylinux x86_64"),
        (["manylinux2014_aarch64"], "manylinux_2_17_x86_64", "the code is manylinux x86_64"),
        # A library outside every policy: auditwheel allows only the plain linux tag.
        (["manylinux2014_x86_64"], "linux_x86_64", "libraries outside every policy"),
        (["linux_x86_64"], "manylinux_2_17_x86_64", "not a manylinux or musllinux tag"),
    ],
)
def test_the_wheel_check_compares_the_claimed_tag_with_auditwheels(
    claimed: list[str], audited: str, problem: str | None
) -> None:
    found = check_wheels_module().problems(claimed, audited)
    if problem is None:
        assert found == []
    else:
        assert found
        assert problem in found[0]


def test_the_wheel_check_reads_the_tags_of_a_wheel_file_name() -> None:
    check = check_wheels_module()
    name = "fnmesh-0.1.0-cp310-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    assert check.platform_tags(Path(name)) == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    with pytest.raises(ValueError, match="not a wheel file name"):
        check.platform_tags(Path("fnmesh.whl"))


# --- what the README promises ----------------------------------------------------------------


def readme_install_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Install\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md has no Install section"
    return m.group(1)


def python_versions_tested() -> list[str]:
    script = (ROOT / "scripts" / "test_pythons.sh").read_text(encoding="utf-8")
    m = re.search(r"^VERSIONS=\(([^)]*)\)", script, re.MULTILINE)
    assert m
    return m.group(1).split()


def test_the_readme_names_the_python_versions_the_tests_run_on() -> None:
    versions = python_versions_tested()
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
    section = readme_install_section()
    assert "CPython " + ", ".join(versions[:-1]) + " and " + versions[-1] in section
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["requires-python"] == f">={versions[0]}"
    classified = [
        c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r"Programming .*:: 3\.\d+", c)
    ]
    assert classified == versions
    # The abi3 floor the binding compiles against is the lowest tested version.
    cargo = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    assert f'"abi3-py{versions[0].replace(".", "")}"' in cargo


def test_the_readme_names_the_platforms_the_release_builds() -> None:
    section = readme_install_section()
    jobs = workflow()["jobs"]
    matrix = jobs["linux"]["strategy"]["matrix"]
    for tag in matrix["manylinux"]:
        assert ("manylinux" + tag if tag.isdigit() else tag) in section
    for arch in matrix["target"]:
        assert arch in section
    assert "macOS" in section
    assert "x86_64, arm64" in section  # the macOS row, as the workflow's two runners
    assert sorted(e["target"] for e in jobs["macos"]["strategy"]["matrix"]["include"]) == [
        "aarch64",
        "x86_64",
    ]
    assert "Windows" in section
    assert "pip install fnmesh" in section
