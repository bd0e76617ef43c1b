"""The console's tests: a real orchestrator serving the console on loopback, the session's real
plugin processes, and a real browser (Debian's chromium, driven by Playwright; no download).
Screenshots of the pages go to test-artifacts/console/ (MCP_TEST_ARTIFACTS overrides)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from mcp_sdk import Client
from mcp_server.api.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("MCP_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    raise RuntimeError(
        "the console tests need Debian's chromium: apt-get install chromium (`make test` installs it when run as root)"
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.problems = problems  # type: ignore[attr-defined]
    yield opened
    await context.close()


@pytest.fixture
async def console(server_factory: Callable[..., Awaitable[RunningServer]]) -> RunningServer:
    """An orchestrator with the console on a free port and the session's plugins registered."""
    return await server_factory(console_listen="127.0.0.1:0")


@pytest.fixture
async def api(console: RunningServer) -> AsyncIterator[Client]:
    async with Client(console.address) as client:
        yield client


async def screenshot(page: Page, name: str) -> Path:
    """Keep a picture of the page as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
