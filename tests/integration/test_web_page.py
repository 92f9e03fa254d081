"""The operations page (`orchestrator web`, docs/web-ui.md) in a real headless chromium,
against the real services, an in-process engine and worker, and the app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.web.app import create_app
from tests.support import browser
from tests.support.harness import ROOT, running_engine, running_worker, wait_until
from tests.support.services import running_in_ci
from workers import TaskContext, TaskFailure, Worker

pytestmark = pytest.mark.integration

DATA = ROOT / "tests" / "data" / "bpmn"
TOKENS = "reader-token-1=read,operator-token-1=operator"
CHARGE = "page-charge"
IDLE = "page-idle"
#: Enough for a page to load, a refresh to come round and the engine to finish.
WAIT_S = 20.0
FAILURE = "card gateway down: <b>503</b>"
SCRIPT = "<script>window.__pwned=1</script>"
IMAGE = "<img src=x onerror=window.__pwned=2>"


def flows(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": f"{a}_to_{b}", "from": a, "to": b} for a, b in pairs]


def one_task_process(key: str, task: dict[str, Any], end: str = "end") -> str:
    """start -> `task` (a service task) -> `end`, in the YAML form as JSON."""
    nodes = [
        {"id": "start", "type": "start_event"},
        {"type": "service_task", **task},
        {"id": end, "type": "end_event"},
    ]
    links = flows(("start", task["id"]), (task["id"], end))
    return orjson.dumps({"key": key, "nodes": nodes, "flows": links}).decode()


def charge_process() -> str:
    """start -> charge (two attempts, then an incident) -> paid."""
    charge = {
        "id": "charge",
        "name": "Charge card",
        "topic": CHARGE,
        "retry": {"max_attempts": 2, "initial_backoff_ms": 0},
    }
    return one_task_process("pagepay", charge, end="paid")


def idle_process() -> str:
    """start -> a multi-instance task nobody works on -> end: it stays active."""
    each = {
        "id": "each",
        "topic": IDLE,
        "multi_instance": {"collection": "=items", "element_variable": "item"},
    }
    return one_task_process("pageidle", each)


@pytest.fixture
def chrome() -> Iterator[webdriver.Chrome]:
    why = browser.missing()
    if why is not None:
        if running_in_ci():
            pytest.fail(f"the browser tests need chromium in CI: {why}", pytrace=False)
        pytest.skip(f"no browser: {why}")
    driver = browser.chrome()
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.asynccontextmanager
async def web_page(settings: Settings, **options: Any) -> AsyncIterator[str]:
    """The web app served over HTTP; yields its base URL."""
    app = create_app(replace(settings, web_tokens=TOKENS), **options)
    with browser.serving(app) as base:
        yield base


def wait(driver: webdriver.Chrome, script: str, what: str) -> Any:
    """Run `script` in the page until it returns something truthy."""
    return WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(script), what)


def log_in(driver: webdriver.Chrome, base: str, path: str, token: str) -> None:
    """Open `path`; the page sends us to the login form, then back."""
    driver.get(base + path)
    WebDriverWait(driver, WAIT_S).until(lambda d: "/ui/login" in d.current_url)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: d.current_url == base + path)


def marked(element_id: str, marker: str) -> str:
    """A script: does the drawn element carry the marker (a class on its SVG group)?"""
    selector = orjson.dumps(f'#diagram [data-element-id="{element_id}"]').decode()
    found = f"const g = document.querySelector({selector});"
    return f"{found} return !!g && g.classList.contains('{marker}');"


def page_errors(driver: webdriver.Chrome) -> list[str]:
    """What the browser's console reported as errors (a blocked script, a failed import)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


async def test_an_operator_retries_an_incident_from_the_page(
    settings: Settings, topics: set[str], chrome: webdriver.Chrome
) -> None:
    topics.add(CHARGE)
    broken = True
    worker = Worker("page", settings=settings)

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        if broken:
            raise TaskFailure(FAILURE)
        return {"charged": True}

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await stack.enter_async_context(running_worker(worker))
        await client.deploy(charge_process())
        instance_id = (await client.start("pagepay", business_key="order-7")).instance_id

        async def raised() -> bool:
            return bool(await client.incidents(instance_id=instance_id))

        await wait_until(raised, timeout=WAIT_S, what="the incident")
        base = await stack.enter_async_context(web_page(settings))

        def find_the_incident() -> None:
            log_in(chrome, base, "/ui/incidents", "operator-token-1")
            link = WebDriverWait(chrome, WAIT_S).until(
                lambda d: d.find_element(By.LINK_TEXT, instance_id), "the incident's instance"
            )
            assert FAILURE in chrome.find_element(By.ID, "incidents").text  # as text, not HTML
            link.click()
            wait(chrome, marked("charge", "orch-incident"), "the failing task drawn red")
            message = chrome.find_element(By.CSS_SELECTOR, ".incident .error-message")
            assert message.is_displayed() and message.text.startswith(FAILURE)
            assert chrome.find_element(By.ID, "state").text == "active"
            assert chrome.execute_script(marked("start", "orch-done"))  # the path so far
            assert chrome.execute_script(marked("start_to_charge", "orch-done"))
            assert chrome.find_element(By.ID, "diagram").get_attribute("data-drawn") == "generated"

        await asyncio.to_thread(find_the_incident)
        broken = False  # the fixed worker

        def retry() -> None:
            chrome.find_element(By.CSS_SELECTOR, ".incident button.retry").click()
            wait(chrome, "return document.getElementById('state').textContent === 'completed';",
                 "the instance to complete")  # fmt: skip
            assert chrome.execute_script(marked("paid", "orch-done"))
            assert chrome.execute_script(marked("charge_to_paid", "orch-done"))  # the path
            assert not chrome.execute_script(marked("charge", "orch-incident"))
            assert "Retry: done" in chrome.find_element(By.ID, "feedback").text
            assert chrome.find_elements(By.CSS_SELECTOR, ".incident.resolved")
            assert page_errors(chrome) == []

        await asyncio.to_thread(retry)


async def test_the_page_shows_data_as_text_and_draws_yaml_and_bpmn(
    settings: Settings, topics: set[str], chrome: webdriver.Chrome, tmp_path: Path
) -> None:
    topics.update({IDLE, "reserve-stock"})
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(idle_process())
        variables = {"note": SCRIPT, "picture": IMAGE, "items": [1, 2, 3]}
        started = await client.start("pageidle", business_key=IMAGE, variables=variables)
        instance_id = started.instance_id
        await client.deploy((DATA / "c7_order.bpmn").read_text())
        modelled = (await client.start("order-c7", variables={"amount": 5})).instance_id
        base = await stack.enter_async_context(web_page(settings))

        def look() -> None:
            log_in(chrome, base, "/ui/instances?process=pageidle", "reader-token-1")
            row = WebDriverWait(chrome, WAIT_S).until(
                lambda d: d.find_element(By.ID, "instances"), "the instances table"
            )
            assert IMAGE in row.text  # the business key, as text
            chrome.find_element(By.LINK_TEXT, instance_id).click()
            wait(chrome, marked("each", "orch-active"), "the waiting task drawn active")
            values = chrome.find_element(By.ID, "variable-table").text
            assert SCRIPT in values and IMAGE in values
            assert chrome.execute_script("return typeof window.__pwned") == "undefined"
            assert chrome.find_elements(By.CSS_SELECTOR, "#variables img, #main script") == []
            svg = chrome.find_element(By.CSS_SELECTOR, "#diagram svg")
            assert svg.is_displayed()
            drawn = chrome.execute_script(
                "return [...document.querySelectorAll('#diagram [data-element-id]')]"
                ".map(g => g.getAttribute('data-element-id'));"
            )
            assert {"start", "each", "end", "start_to_each", "each_to_end"} <= set(drawn)
            badges = [b.text for b in chrome.find_elements(By.CSS_SELECTOR, ".orch-badge")]
            assert "3" in badges  # three tokens wait at the task
            assert "0/3 ✓ · 3 started" in badges  # its multi-instance progress
            # a read token sees no actions
            assert chrome.find_elements(By.CSS_SELECTOR, "#cancel, button.retry") == []
            assert chrome.find_elements(By.ID, "set-variables") == []
            assert page_errors(chrome) == []

            # a BPMN file with its own diagram is drawn as deployed
            chrome.get(f"{base}/ui/instances/{modelled}")
            wait(chrome, marked("Task_Reserve", "orch-active"), "the modelled diagram")
            assert chrome.find_element(By.ID, "diagram").get_attribute("data-drawn") == "deployed"
            assert chrome.execute_script(marked("StartEvent_1", "orch-done"))

            # an operator may set variables (the value shown as text), then cancel
            chrome.find_element(By.ID, "logout").click()
            log_in(chrome, base, f"/ui/instances/{instance_id}", "operator-token-1")
            values = WebDriverWait(chrome, WAIT_S).until(
                lambda d: d.find_element(By.ID, "set-values")
            )
            values.send_keys("[1, 2]")  # not an object: refused on the page
            chrome.find_element(By.ID, "set-submit").click()
            assert "write a JSON object" in chrome.find_element(By.ID, "feedback").text
            values.clear()
            values.send_keys('{"limit": 500, "comment": "<b>checked</b>"}')
            chrome.find_element(By.ID, "set-submit").click()
            wait(chrome, "return document.getElementById('feedback').textContent.startsWith("
                 "'Set variables: done');", "the variables to be set")  # fmt: skip
            wait(chrome, "return document.getElementById('variable-table').textContent"
                 ".includes('<b>checked</b>');", "the new value, as text")  # fmt: skip
            assert "variables_set" in chrome.find_element(By.ID, "history-table").text
            WebDriverWait(chrome, WAIT_S).until(lambda d: d.find_element(By.ID, "cancel")).click()
            chrome.switch_to.alert.accept()
            wait(chrome, "return document.getElementById('state').textContent === 'cancelled';",
                 "the instance to be cancelled")  # fmt: skip

        await asyncio.to_thread(look)
        # without bpmn-js the page still works, and says why it draws nothing
        bare = await stack.enter_async_context(web_page(settings, bpmn_js=tmp_path))

        def look_without_bpmn_js() -> None:
            log_in(chrome, bare, f"/ui/instances/{modelled}", "reader-token-1")
            note = WebDriverWait(chrome, WAIT_S).until(
                lambda d: d.find_element(By.ID, "diagram-note").text, "the note"
            )
            assert "bpmn-js is not installed" in note
            assert chrome.find_element(By.ID, "state").text == "active"
            assert chrome.find_elements(By.CSS_SELECTOR, "#diagram svg") == []

        await asyncio.to_thread(look_without_bpmn_js)


async def test_pages_need_no_token_but_data_does(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shell and scripts hold no data: served to anyone, with a strict CSP. Without
    bpmn-js the app says so and serves no diagram library."""
    with caplog.at_level(logging.WARNING, logger="orchestrator.web.pages"):
        app = create_app(replace(settings, web_tokens=TOKENS), bpmn_js=tmp_path)
    assert "bpmn-js is not installed" in caplog.text
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as http:
            shell = await http.get("/ui/instances/00000000-0000-0000-0000-000000000000")
            assert shell.status_code == 200 and "app.js" in shell.text
            policy = shell.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe-eval" not in policy
            assert shell.headers["x-content-type-options"] == "nosniff"
            assert (await http.get("/static/ui/app.js")).status_code == 200
            missing = await http.get("/static/bpmn-js/bpmn-navigated-viewer.production.min.js")
            assert missing.status_code == 404
            assert (await http.get("/", follow_redirects=False)).headers[
                "location"
            ] == "/ui/instances"
            assert (await http.get("/api/whoami")).status_code == 401
            read = {"Authorization": "Bearer reader-token-1"}
            assert (await http.get("/api/whoami", headers=read)).json() == {"role": "read"}
            unknown = await http.get("/api/definitions/nothing/1/diagram", headers=read)
            assert unknown.status_code == 404
            assert (await http.get("/api/definitions/nothing/1/diagram")).status_code == 401
