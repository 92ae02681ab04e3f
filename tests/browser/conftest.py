"""Browser tests: Debian's Chromium driven by Playwright (never a downloaded browser), headless,
against the real app over loopback. Without /usr/bin/chromium they are skipped, except in CI,
where a missing browser is a failure (`make test` installs it when it can)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# Per module, not per session: while Playwright's sync API runs, this thread has a running
# event loop, and the other tests' asyncio.run() would refuse to start.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("no /usr/bin/chromium: install Debian's chromium package")
        pytest.skip("no /usr/bin/chromium (Debian's chromium package) for the browser tests")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a busy machine: generous ceilings, never sleeps
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield found
        finally:
            found.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each page's screenshot goes: $SEGFLOW_TEST_ARTIFACTS/screenshots, else the test
    session's temporary directory (pytest prints it; never the checkout)."""
    root = os.environ.get("SEGFLOW_TEST_ARTIFACTS")
    found = Path(root) / "screenshots" if root else tmp_path_factory.mktemp("screenshots")
    found.mkdir(parents=True, exist_ok=True)
    return found


@pytest.fixture
def page(browser: Any, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(60_000)  # a busy machine: generous ceilings, never sleeps
    opened.screenshots = (screenshots, request.node.name)  # read by the tests' ready()
    try:
        yield opened
    finally:
        context.close()
