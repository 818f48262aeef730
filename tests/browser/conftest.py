"""Fixtures for the end-to-end tests: a real server per test, one headless Chromium per module.

Plain `playwright.sync_api` in a module-scoped fixture, never pytest-playwright (it breaks
pytest-tornado's fixtures and event loop; see /work/shared/notes/toolchain.md). Missing
Chromium fails loudly: these tests must not skip in CI.
"""

from __future__ import annotations

import pytest

from .harness import ServerThread, chromium_path, join, launch, open_page

TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        chromium_path()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # chat.lan resolves to loopback but is not a secure context: the insecure-page test.
        browser = launch(playwright, config_home=tmp_path_factory.mktemp("chromium-home"),
                         extra_args=["--host-resolver-rules=MAP chat.lan 127.0.0.1"])
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path):
    running = ServerThread(tmp_path / "data").start()
    yield running
    running.stop()


class People:
    """`people.join("alice")` opens a fresh browser profile (its own IndexedDB) and joins."""

    def __init__(self, browser, server):
        self.browser = browser
        self.server = server
        self.contexts = []
        self.dialogs = []  # every alert/confirm/prompt any page opened

    def context(self, **options):
        context = self.browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        return context

    def page(self, context=None):
        page = open_page(context or self.context(), self.server.url)
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        return page

    def join(self, username: str, context=None):
        page = self.page(context)
        join(page, username)
        return page

    def close(self):
        for context in self.contexts:
            context.close()


@pytest.fixture
def people(browser, server):
    crowd = People(browser, server)
    yield crowd
    crowd.close()
