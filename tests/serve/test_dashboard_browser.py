"""The dashboard in a real browser: headless Chromium driven by Playwright against a running server.

Loads every page, logs in, submits a chat with RAG in the playground and checks that the answer
streams in and the citations appear; saves a screenshot of every page (directory from
JIJIAN_UI_SCREENSHOTS, default a directory of the test session's temporary files, so that a plain
test run writes nothing into the repository).

By default the server runs the small deployment of `ui_deployment`. To take screenshots of an
existing deployment (e.g. a quick-start run), set JIJIAN_UI_DEPLOY=path/to/deploy.toml, plus
JIJIAN_UI_KEY=<an admin API key> when that deployment has keys, and optionally
JIJIAN_UI_COLLECTION=<collection for the RAG chat> (default: the first one listed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jijian.config import load_config
from jijian.serve.server import build_server, serve_in_thread


def chromium_path() -> str | None:
    """The system's Chromium (Debian's `chromium` package); Playwright never downloads a browser here."""
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


CHROMIUM = chromium_path()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed (/usr/bin/chromium or `chromium` on PATH): apt-get install -y chromium",
    ),
]


@dataclass
class Target:
    """The running server the browser visits, and how to log in to it."""

    url: str
    admin_key: str | None
    user_key: str | None  # a non-admin key, when the deployment is the test's own
    existing: bool


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    chosen = os.environ.get("JIJIAN_UI_SCREENSHOTS")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("ui-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def target(request) -> Iterator[Target]:
    existing = os.environ.get("JIJIAN_UI_DEPLOY")
    if existing:
        config = load_config(existing)
        admin_key, user_key = os.environ.get("JIJIAN_UI_KEY"), None
    else:
        deployment = request.getfixturevalue("ui_deployment")
        config = load_config(deployment.config_path)
        admin_key, user_key = deployment.admin_key, deployment.bob_key
    server = build_server(config)
    with serve_in_thread(server.app) as url:
        keys_required = httpx.get(f"{url}/ui/api/me", timeout=30).status_code == 401
        if existing and keys_required and not admin_key:
            pytest.skip("JIJIAN_UI_DEPLOY has API keys: set JIJIAN_UI_KEY to an admin key to log in")
        yield Target(url, admin_key if keys_required else None, user_key, bool(existing))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def log_in(page, target: Target, key: str | None, path: str = "/ui/training") -> None:
    page.goto(target.url + path)
    if key is None:
        return
    assert "/ui/login" in page.url  # every page asks for a key first
    page.fill("#api_key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"**{path}")


def open_page(page, link: str) -> None:
    """Follow a navigation link and wait for the new page: a script run before it would find the old one's DOM."""
    with page.expect_navigation():
        page.click(f"nav >> text={link}")


def test_every_page_and_a_streamed_rag_chat_as_admin(browser, target, screenshots):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, target, target.admin_key)

    runs = page.locator("section.run")
    if not target.existing:
        assert runs.count() == 1 and runs.first.get_attribute("data-run") == "tiny"
        assert runs.first.locator("svg.chart polyline").count() == 4  # loss, tokens/s, MFU, goodput
        assert runs.first.locator("table.checkpoints tbody tr").count() == 2
    page.screenshot(path=screenshots / "training.png", full_page=True)

    open_page(page, "Knowledge base")
    rows = page.locator("table.collections tbody tr")
    collection = os.environ.get("JIJIAN_UI_COLLECTION") or (
        rows.first.locator("td").first.inner_text() if rows.count() else None
    )
    if collection is not None:
        page.select_option("#kb-search select", collection)
        page.fill("#kb-search input[type=search]", "salaries budget" if not target.existing else "how to open a file")
        page.click("#kb-search button")
        page.wait_for_selector("ol.hits li, #no-hits")
        if not target.existing:
            assert "finance/salaries.md" in page.locator("ol.hits").inner_text()  # admin reads everything
    page.screenshot(path=screenshots / "knowledge-base.png", full_page=True)

    open_page(page, "Chat playground")
    # Count how often the answer's text changes while it streams (one change would mean no streaming).
    page.evaluate(
        """() => { window.answerUpdates = 0;
        new MutationObserver(() => { window.answerUpdates += 1; })
          .observe(document.getElementById('chat-log'), {subtree: true, characterData: true, childList: true}); }"""
    )
    if collection is not None:
        page.select_option("#chat-collection", collection)
    page.fill("#chat-top-k", "2")
    page.fill("#chat-max-tokens", "24")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", "When is lunch served, and what is the budget for salaries?")
    page.click("#chat-send")
    answer = page.locator(".turn.assistant")
    answer.and_(page.locator(".done, .failed")).wait_for(timeout=180_000 if target.existing else 60_000)
    assert page.locator(".turn.assistant .error").count() == 0, page.locator(".turn.assistant .error").inner_text()
    assert answer.locator(".content").inner_text().strip()
    # It streamed: several updates, not one at the end. (The guard releases streamed text a few words at
    # a time, after its leak check has seen them, so there are fewer updates than tokens.)
    assert page.evaluate("window.answerUpdates") >= 2
    if collection is not None:
        citations = answer.locator("ol.citations li")
        assert citations.count() >= 1 and citations.first.inner_text().startswith("[1] ")
    page.screenshot(path=screenshots / "chat.png", full_page=True)

    open_page(page, "Serving")
    page.wait_for_function("document.querySelector('[data-field=updated]').textContent !== 'now'")
    usage_rows = page.locator("tbody[data-field=usage] tr")
    assert usage_rows.count() >= 1 and "No requests yet" not in usage_rows.first.inner_text()
    assert page.locator("[data-field=ttft]").inner_text() != "—"
    assert float(page.locator("[data-field=live_tokens_per_s]").inner_text().rstrip("k")) > 0
    page.screenshot(path=screenshots / "serving.png", full_page=True)

    open_page(page, "Guard")
    status = page.locator("#audit-status, #no-audit")
    if not target.existing:
        assert "Audit log verified" in status.inner_text()
    page.screenshot(path=screenshots / "guard.png", full_page=True)
    assert not errors, errors
    page.close()


def test_a_user_sees_only_their_own_usage(browser, target, screenshots):
    if target.user_key is None:
        pytest.skip("an existing deployment: no non-admin key to log in with")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, target, target.user_key, "/ui/chat")
    page.select_option("#chat-collection", "handbook")
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "What is the salaries budget?")
    page.click("#chat-send")
    page.locator(".turn.assistant.done").wait_for(timeout=60_000)
    sources = page.locator("ol.citations").inner_text()
    assert "finance/salaries.md" not in sources  # bob may not read it, so it is never cited
    open_page(page, "Serving")
    page.wait_for_function("document.querySelector('[data-field=updated]').textContent !== 'now'")
    users = page.locator("tbody[data-field=usage] tr td:first-child").all_inner_texts()
    assert users == ["bob"]
    page.screenshot(path=screenshots / "serving-as-user.png", full_page=True)
    page.close()
