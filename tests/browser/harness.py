"""The pieces the browser tests and the screenshot script share.

A real securechat server runs in a background thread with its own asyncio loop (pytest-tornado's
loop must not be shared with Playwright's sync API, see /work/shared/notes/toolchain.md) and is
reached at http://127.0.0.1:<port>, a secure context, so crypto.subtle exists. Chromium is
Debian's, driven by the `playwright` package; `playwright install` is never needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

from securechat.config import Config
from securechat.server import start

CHROMIUM = os.environ.get("SECURECHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
GROUPED_FINGERPRINT = re.compile(r"^([0-9a-f]{4} ){15}[0-9a-f]{4}$")


def _find_chromium() -> str | None:
    return shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)


def _install_chromium() -> None:
    """The README's one test command must work on a fresh Debian machine: install the browser
    from Debian when we are root and apt-get exists (never `playwright install`)."""
    if os.geteuid() != 0 or not shutil.which("apt-get") or os.environ.get("SECURECHAT_CHROMIUM"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("\nChromium is missing: installing Debian's chromium for the browser tests…", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                   stdout=subprocess.DEVNULL)


def chromium_path() -> str:
    """The browser to drive; a missing one is installed if we can, else a failure, never a skip."""
    path = _find_chromium()
    if not path:
        _install_chromium()
        path = _find_chromium()
    if not path:
        raise RuntimeError(
            f"Chromium was not found at {CHROMIUM}. The browser tests need it and never skip: "
            "install it with `apt-get install -y chromium` (or set SECURECHAT_CHROMIUM to a "
            "Chromium/Chrome binary). Do not run `playwright install`."
        )
    return path


def launch(playwright, *, extra_args=(), config_home: Path):
    return playwright.chromium.launch(
        executable_path=chromium_path(),
        args=[*CHROMIUM_ARGS, *extra_args],
        env={**os.environ, "XDG_CONFIG_HOME": str(config_home), "HOME": str(config_home)},
    )


class ServerThread:
    """securechat's own start()/shutdown() on a loop in a thread; restartable on one port."""

    def __init__(self, data_dir: Path, port: int = 0, ssl_context=None, hostname: str = "127.0.0.1",
                 app_options: dict | None = None, **config):
        self.app_options = app_options or {}  # make_app's keywords: canonical, local_ca
        self.data_dir = data_dir
        self.config = config  # further Config fields, e.g. rate_per_second=0.5
        self.port = port
        self.ssl_context = ssl_context
        self.hostname = hostname
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.server = None

    def start(self) -> "ServerThread":
        ready = threading.Event()
        failure: list[BaseException] = []
        self.loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                # chat.lan (mapped to 127.0.0.1 for Chromium in conftest) stands for this
                # machine's LAN name, which `serve` answers to; test servers are told so.
                options = {"allowed_hosts": ("chat.lan",), **self.config}
                config = Config(data_dir=self.data_dir, port=self.port, log_fsync="never", **options)
                self.server = self.loop.run_until_complete(start(config, self.ssl_context, **self.app_options))
                self.port = self.server.port
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, name="securechat-test-server", daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("the test server did not start within 30 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self.loop is None or not self.loop.is_running():
            return
        self.call(self.server.shutdown(), timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)

    def call(self, coroutine, timeout: float = 20):
        """Run a coroutine on the server's loop (the Python client, reads of the hub)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def on_loop(self, function, *args):
        """Call a plain function on the server's loop: Tornado objects are not thread-safe."""

        async def run():
            return function(*args)

        return self.call(run())

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.hostname}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def roster(self) -> list[dict]:
        async def read():
            return self.server.hub.rooms.get().roster()

        return self.call(read())

    def log_text(self) -> str:
        async def flush():
            self.server.hub.log.flush()

        self.call(flush())
        return "".join(p.read_text() for p in sorted(self.data_dir.glob("ciphertext*.jsonl")))

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]


def group(fingerprint: str) -> str:
    return " ".join(fingerprint[i:i + 4] for i in range(0, 64, 4))


# -- page helpers (everything by accessible name) --------------------------------------------

def open_page(context, url: str):
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("html[data-ready=true]")
    return page


def join(page, username: str) -> None:
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_role("button", name="Join chat").click()
    page.get_by_label("Message", exact=True).wait_for()
    status = page.get_by_role("status")
    status.filter(has_text="Connected").wait_for()


def send(page, text: str) -> None:
    """Type and press Send (on touch screens Enter adds a line, so the button is what works
    everywhere; tests of the Enter key press it themselves)."""
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    page.get_by_role("button", name="Send", exact=True).click()


def open_people(page) -> None:
    """Phones keep the participant list behind the People button; wide screens show it."""
    button = page.get_by_role("button", name="People")
    if button.is_visible() and button.get_attribute("aria-expanded") != "true":
        button.click()


def open_menu(page) -> None:
    """Phones keep identity, notifications and Leave chat behind Menu; wide screens show them."""
    button = page.get_by_role("button", name="Menu", exact=True)
    if button.is_visible() and button.get_attribute("aria-expanded") != "true":
        button.click()


def participants(page):
    return page.get_by_role("list", name="Participants").get_by_role("listitem")


def participant(page, username: str):
    return participants(page).filter(has=page.locator(".name", has_text=re.compile(f"^{re.escape(username)}$")))


def messages(page):
    return page.get_by_role("log", name="Messages")


def own_fingerprint(page) -> str:
    return page.locator("#own-fingerprint").inner_text().strip()


def run_screenshots(capture, argv: list[str]) -> None:
    """The main() of a *_screenshots.py script: a plain server and a Chromium in a temp dir,
    `capture(browser, server, out_dir)`, one line per PNG written (into argv[0], or a temp dir)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    out = Path(argv[0]) if argv else Path(tempfile.mkdtemp())
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        server = ServerThread(Path(tmp) / "data").start()
        browser = launch(playwright, config_home=Path(tmp))
        try:
            for path in capture(browser, server, out):
                print(f"wrote {path}")
        finally:
            browser.close()
            server.stop()
