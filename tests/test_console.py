"""The console (docs/cli-and-console.md) in a real headless Chromium, driven by Selenium through
Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them): a ``fnmesh serve``
with an iii-sdk worker and an fnmesh app connected; the page lists them and follows changes
without a reload, invokes a function from its form, redrives a dead letter, shows an id full of
HTML as text, and asks for its token beyond loopback. Its JSON API is also checked directly
(httpx) for the refusals a browser never shows."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Served, Worker, fnmesh_run, sdk_client, serve, wait_until
from shop_app import shop

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)",
)

SHOP = shop(
    """
    @app.function("shop::flaky")
    async def flaky(data: dict) -> dict:
        # Fails until the test creates the file: its first call ends in the dead letters.
        if not Path(os.environ["HEALED"]).exists():
            raise RuntimeError("not yet")
        with open(os.environ["NOTES"], "a") as notes:
            notes.write(str(data["n"]) + "\\n")
        return {"ok": True}
    """
)

CONFIG = textwrap.dedent(
    """
    queue_backend = "memory"

    [queues.dead]
    max_retries = 0
    """
)


@dataclass
class Setup:
    engine: Served
    console: str
    folder: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("console")
    (folder / "shop.py").write_text(SHOP)
    (folder / "engine.toml").write_text(CONFIG)
    env = {"HEALED": str(folder / "healed"), "NOTES": str(folder / "notes")}
    with serve(["--config", str(folder / "engine.toml"), "--log-level", "warn"]) as engine:
        console = engine.wait_for_log(r"console at (http://\S+)").split("console at ")[1].strip()
        worker = Worker(engine.url, "alpha")
        try:
            with fnmesh_run([str(folder / "shop.py"), "--connect", engine.url], env):
                yield Setup(engine, console, folder)
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1100")
    # The driver is named: Selenium Manager (which would download one) never runs.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(browser: Any, probe: Any, what: str, timeout: float = 20.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: probe())
    except Exception as exc:
        raise AssertionError(f"the console did not show {what}: {exc!r}") from None


def cells(browser: Any, table: str) -> list[list[str]]:
    """The table's rows as the user reads them, in one look (the page replaces its rows on each
    refresh, so elements found one by one could go stale in between)."""
    script = (
        "return [...document.querySelectorAll(arguments[0])].map("
        "(row) => [...row.querySelectorAll(':scope > td')].map((cell) => cell.innerText.trim()));"
    )
    rows: list[list[str]] = browser.execute_script(script, f"#{table} tbody tr")
    return rows


def row_of(browser: Any, table: str, first: str) -> list[str] | None:
    return next((row for row in cells(browser, table) if row and row[0].split("\n")[0] == first), None)


def open_console(browser: Any, url: str) -> None:
    """Loads the page and waits for its first complete look (which also turns the engine's
    recording of recent calls on)."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait(browser, lambda: row_of(browser, "functions", "shop::price"), "shop::price")
    wait(browser, lambda: browser.find_element(By.ID, "status").text.startswith("updated"), "a complete look")


# ----------------------------------------------------------------------------------------------
# What it shows, live
# ----------------------------------------------------------------------------------------------


def test_it_lists_functions_workers_and_triggers(setup: Setup, browser: Any) -> None:
    open_console(browser, setup.console)
    wait(browser, lambda: row_of(browser, "functions", "alpha::echo"), "the iii-sdk worker's functions")
    workers = wait(
        browser,
        lambda: (
            {row[0].split("\n")[0]: row for row in cells(browser, "workers") if len(row) == 5}
            if row_of(browser, "workers", "shop") and row_of(browser, "workers", "alpha")
            else None
        ),
        "both workers",
    )
    assert "python" in workers["alpha"][1].lower()  # iii-sdk's runtime
    assert "shop::price" in workers["shop"][3]
    price = row_of(browser, "functions", "shop::price")
    assert price is not None
    assert price[1] == "shop"
    # The pydantic schema of shop::price is there to read (in a closed <details>).
    from selenium.webdriver.common.by import By

    schema = browser.find_element(By.CSS_SELECTOR, '#functions tr[data-function-id="shop::price"] details')
    text = schema.get_attribute("textContent")
    assert '"qty"' in text
    assert '"integer"' in text
    triggers = cells(browser, "triggers")
    route = next(row for row in triggers if row[1] == "shop::order")
    assert route[0] == "http"
    assert route[2] == "GET /orders/:id"
    yearly = next(row for row in triggers if row[1] == "shop::yearly")
    assert yearly[0] == "cron"
    assert yearly[2] == "0 0 0 1 1 *"
    # The next run is a date (the 1st of January next year), not "never".
    assert str(datetime.date.today().year + 1) in yearly[3]


def test_a_new_function_appears_without_a_reload(setup: Setup, browser: Any) -> None:
    open_console(browser, setup.console)
    browser.execute_script("window.__sameDocument = true;")
    with sdk_client(setup.engine.url, "late") as late:
        late.register_function("late::hello", lambda data: {"hello": data})
        wait(browser, lambda: row_of(browser, "functions", "late::hello"), "late::hello")
        wait(browser, lambda: row_of(browser, "workers", "late"), "the worker late")
    assert browser.execute_script("return window.__sameDocument === true;")
    # ... and goes once its worker has left.
    wait(browser, lambda: row_of(browser, "functions", "late::hello") is None, "late::hello gone")


def test_recent_invocations_show_latency_and_outcome(setup: Setup, browser: Any) -> None:
    open_console(browser, setup.console)
    # The page's look turned recording on; calls made now are listed.
    post(setup, "api/call", {"function_id": "alpha::echo", "data": {"x": 1}})
    post(setup, "api/call", {"function_id": "alpha::fail", "data": {}})
    ok = wait(
        browser,
        lambda: next((r for r in cells(browser, "recent") if r[1] == "alpha::echo"), None),
        "the call of alpha::echo",
    )
    assert ok[3] == "ok"
    assert "µs" in ok[2] or "ms" in ok[2]
    failed = wait(
        browser,
        lambda: next((r for r in cells(browser, "recent") if r[1] == "alpha::fail"), None),
        "the failed call",
    )
    assert failed[3] == "invocation_failed"


# ----------------------------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------------------------


def invoke(browser: Any, function_id: str, data: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait(
        browser,
        lambda: any(
            o.text == function_id for o in Select(browser.find_element(By.ID, "invoke-function")).options
        ),
        f"{function_id} in the form",
    )
    Select(browser.find_element(By.ID, "invoke-function")).select_by_visible_text(function_id)
    box = browser.find_element(By.ID, "invoke-data")
    box.clear()
    box.send_keys(data)
    browser.find_element(By.ID, "invoke-submit").click()


def test_the_form_invokes_a_function_and_shows_its_result(setup: Setup, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    open_console(browser, setup.console)
    invoke(browser, "shop::price", '{"qty": 4}')
    result = browser.find_element(By.ID, "invoke-result")
    wait(browser, lambda: result.text.strip(), "the result")
    assert json.loads(result.text) == {"price": 12}
    assert browser.find_element(By.ID, "invoke-error").text == ""
    # An iii-sdk worker's function too.
    invoke(browser, "alpha::echo", '{"name": "<b>Zoë</b>"}')
    wait(browser, lambda: "Zoë" in browser.find_element(By.ID, "invoke-result").text, "the echo")
    assert json.loads(browser.find_element(By.ID, "invoke-result").text)["data"]["name"] == "<b>Zoë</b>"
    # A failure shows its code.
    invoke(browser, "alpha::fail", "{}")
    error = browser.find_element(By.ID, "invoke-error")
    wait(browser, lambda: error.text, "the error")
    assert error.text.startswith("invocation_failed: ")


def test_the_form_checks_the_input_against_the_schema(setup: Setup, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    open_console(browser, setup.console)
    invoke(browser, "shop::price", '{"qty": "four"}')
    error = browser.find_element(By.ID, "invoke-error")
    wait(browser, lambda: error.text, "the schema error")
    assert "does not match the schema" in error.text
    assert "$.qty" in error.text
    assert browser.find_element(By.ID, "invoke-result").text == ""
    invoke(browser, "shop::price", "{qty: 4")
    wait(browser, lambda: "not valid JSON" in error.text, "the JSON error")
    # The engine checks too, whoever sends the call.
    answer = post(setup, "api/call", {"function_id": "shop::price", "data": {"qty": "four"}})
    assert answer["ok"] is False
    assert answer["error"]["code"] == "validation_failed"
    assert "$.qty: expected integer, got string" in answer["error"]["message"]
    missing = post(setup, "api/call", {"function_id": "nobody::here", "data": {}})
    assert missing == {
        "ok": False,
        "error": {"code": "function_not_found", "message": missing["error"]["message"]},
    }


# ----------------------------------------------------------------------------------------------
# Queues
# ----------------------------------------------------------------------------------------------


def test_a_dead_letter_is_redriven_from_the_page(setup: Setup, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    for n in (1, 2):
        answer = post(
            setup,
            "api/call",
            {
                "function_id": "engine::queue::enqueue",
                "data": {"queue": "dead", "function_id": "shop::flaky", "data": {"n": n}},
            },
        )
        assert answer["ok"], answer
    open_console(browser, setup.console)
    letters = wait(
        browser,
        lambda: rows if len(rows := cells(browser, "dead-letters")) == 2 else None,
        "two dead letters",
    )
    assert all(row[0] == "dead" and row[1] == "shop::flaky" for row in letters)
    assert "not yet" in letters[0][2]
    queue = wait(browser, lambda: row_of(browser, "queues", "dead"), "the queue dead")
    assert queue[4] == "2"
    (setup.folder / "healed").touch()
    buttons = browser.find_elements(By.CSS_SELECTOR, "#dead-letters button.redrive")
    first = buttons[0].get_attribute("data-message-id")
    buttons[0].click()
    wait(browser, lambda: len(cells(browser, "dead-letters")) == 1, "one dead letter left")
    notes = setup.folder / "notes"
    wait_until(lambda: notes.exists() and notes.read_text().strip(), what="the redriven call")
    assert len(notes.read_text().split()) == 1
    # The other is discarded: gone, never run.
    left = browser.find_element(By.CSS_SELECTOR, "#dead-letters button.discard")
    assert left.get_attribute("data-message-id") != first
    left.click()
    wait(browser, lambda: cells(browser, "dead-letters") == [], "no dead letter")
    wait(browser, lambda: (row_of(browser, "queues", "dead") or [""] * 5)[4] == "0", "the dead count at 0")
    assert len(notes.read_text().split()) == 1


# ----------------------------------------------------------------------------------------------
# Escaping and access
# ----------------------------------------------------------------------------------------------


def test_a_function_id_full_of_html_is_shown_as_text(setup: Setup, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    hostile = 'evil::<img src=x onerror="window.__xss=1">'
    open_console(browser, setup.console)
    with sdk_client(setup.engine.url, "<b>evil</b>") as evil:
        evil.register_function(hostile, lambda data: {"html": "<script>window.__xss=2</script>"})
        wait(browser, lambda: row_of(browser, "functions", hostile), "the hostile id as text")
        invoke(browser, hostile, "{}")
        result = browser.find_element(By.ID, "invoke-result")
        wait(browser, lambda: "script" in result.text, "the hostile result")
        assert json.loads(result.text) == {"html": "<script>window.__xss=2</script>"}
        assert row_of(browser, "workers", "<b>evil</b>") is not None
        assert browser.find_elements(By.CSS_SELECTOR, "main img, main script, main b") == []
        assert browser.execute_script("return window.__xss === undefined;")


def test_the_pages_carry_a_strict_content_security_policy(setup: Setup) -> None:
    for path in ("", "console.js", "console.css"):
        response = httpx.get(setup.console + path)
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in httpx.get(setup.console).text.split("console.js")[1]
    # The path without its final slash leads to the page.
    bare = httpx.get(setup.console.rstrip("/"))
    assert bare.status_code == 308
    assert bare.headers["location"] == "/_console/"


def test_another_site_cannot_drive_the_api(setup: Setup) -> None:
    body = {"function_id": "shop::price", "data": {"qty": 1}}
    evil = httpx.post(setup.console + "api/call", json=body, headers={"origin": "http://evil.example"})
    assert evil.status_code == 403
    assert evil.json()["error"]["code"] == "UNAUTHORIZED"
    # A DNS-rebinding page reaches the loopback port under its own name: refused without a token.
    rebound = httpx.post(setup.console + "api/call", json=body, headers={"host": "evil.example"})
    assert rebound.status_code == 403


def test_beyond_loopback_the_console_needs_a_token(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    # Not on loopback and no token: no console at all.
    with serve(["--http-host", "0.0.0.0", "--log-level", "warn"]) as engine:
        http = engine.wait_for_log(r"HTTP triggers at (http://\S+)").split("HTTP triggers at ")[1].strip()
        port = http.rsplit(":", 1)[1]
        assert not any("console at" in line for line in engine.log)
        assert httpx.get(f"http://127.0.0.1:{port}/_console/").status_code == 404
    with serve(
        ["--http-host", "0.0.0.0", "--log-level", "warn"], env={"FNMESH_CONSOLE_TOKEN": "s3cret-token"}
    ) as engine:
        announced = engine.wait_for_log(r"console at (http://\S+)").split("console at ")[1].strip()
        assert "s3cret" not in announced
        page = f"http://127.0.0.1:{announced.rsplit(':', 1)[1]}"
        api = page + "api/call"
        body = {"function_id": "engine::functions::list", "data": {}}
        assert httpx.post(api, json=body).status_code == 401
        assert (
            httpx.post(api, json=body, headers={"x-fnmesh-console-token": "s3cret-tokeX"}).status_code == 401
        )
        assert httpx.post(api, json=body, headers={"x-fnmesh-console-token": "s3cret-token"}).json()["ok"]
        # The page asks for the token, refuses a wrong one, and works with the right one.
        browser.delete_all_cookies()
        browser.get(page)
        login = browser.find_element(By.ID, "login")
        wait(browser, login.is_displayed, "the login form")
        assert not browser.find_element(By.ID, "console").is_displayed()
        browser.find_element(By.ID, "login-token").send_keys("wrong")
        browser.find_element(By.ID, "login-submit").click()
        wait(
            browser, lambda: browser.find_element(By.ID, "login-error").text == "Wrong token.", "Wrong token."
        )
        box = browser.find_element(By.ID, "login-token")
        box.clear()
        box.send_keys("s3cret-token")
        browser.find_element(By.ID, "login-submit").click()
        wait(browser, lambda: row_of(browser, "functions", "engine::queue::enqueue"), "the console")
        assert "s3cret" not in browser.current_url
        cookie = browser.get_cookie("fnmesh_console")
        assert cookie is not None
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"


def test_screenshot(setup: Setup, browser: Any, tmp_path: Path) -> None:
    """The README's picture: FNMESH_CONSOLE_SCREENSHOT=docs/console.png writes it there."""
    open_console(browser, setup.console)
    post(setup, "api/call", {"function_id": "shop::price", "data": {"qty": 2}})
    wait(browser, lambda: cells(browser, "recent"), "a recent call")
    invoke(browser, "shop::price", '{"qty": 14}')
    from selenium.webdriver.common.by import By

    wait(browser, lambda: browser.find_element(By.ID, "invoke-result").text, "the result")
    target = Path(os.environ.get("FNMESH_CONSOLE_SCREENSHOT") or tmp_path / "console.png")
    assert browser.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def post(setup: Setup, path: str, body: Any) -> Any:
    response = httpx.post(setup.console + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()
