"""How fast a page gets back into the chat, on the WebSocket and on the HTTP fallback.

python -m bench.reconnect [--repeats 5]   -> a Markdown table (medians, ms), and the raw runs as JSON

One real `securechat serve` (cli.py) behind a small TCP relay on 127.0.0.1 (the relay stands
for the network: cutting its connections is a phone changing access point, a proxy dropping
idle connections). Three headless Chromium pages join: `ws` on the WebSocket through the
relay, `sender` on the WebSocket straight to the server (never cut), and `http` through the
relay with a WebSocket that fails at once (error, close 1006: what WebKit does with a certificate
accepted on a warning page), so it runs on the fallback. The refusal is an init script inside the
page, not Playwright's WebSocket routing: a route handler runs only while this Python thread
calls into Playwright, so a reconnection during `serve` start-up would wait for the bench itself.

Measured, for the WebSocket page against the fallback page in the same run:
  join      click on "Join chat" -> the status says Connected (the fallback pays the refused
            WebSocket first)
  cut       every connection cut -> the page is back: for `ws` its status says Connected again
            (a new session: reconnect, hello, join, welcome); for `http` the message `sender`
            sent right after the cut is on screen (the same session resumed, that frame replayed)
  restart   the server restarted on the same port (down ~1 s) -> Connected again, from the moment
            the new server answers /healthz (both pages rejoin; the backoff schedule decides most of it)
Times come from the page's own clock (a MutationObserver on the status line and the message
log), so Playwright's round trips are not in them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .browser import ARGS, CHROMIUM
from .runner import REPO, free_port

NO_WEBSOCKET = """
(() => {
  window.WebSocket = function (url) {
    const socket = new EventTarget();
    socket.url = url;
    socket.readyState = 0;
    socket.send = () => { throw new DOMException("Still in CONNECTING state.", "InvalidStateError"); };
    socket.close = () => {};
    setTimeout(() => {
      socket.readyState = 3;
      socket.onerror?.(new Event("error"));
      socket.onclose?.(Object.assign(new Event("close"), {code: 1006, reason: "", wasClean: false}));
    }, 30);
    return socket;
  };
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();
"""

OBSERVE = """
(() => {
  window.__events = [];
  const note = (kind, text) => window.__events.push({kind, text, at: Date.now()});
  const watch = () => {
    const status = document.getElementById("status");
    new MutationObserver(() => note("status", status.textContent.trim())).observe(
      status, {childList: true, characterData: true, subtree: true, attributes: true});
    const log = document.querySelector("[role=log]");
    new MutationObserver(() => {
      for (const text of log.querySelectorAll("article .text")) {
        if (!text.dataset.seen) { text.dataset.seen = "1"; note("message", text.textContent.trim()); }
      }
    }).observe(log, {childList: true, subtree: true});
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", watch);
  else watch();
})();
"""


class Cutter:
    """A TCP relay on 127.0.0.1 in front of the server, whose connections can all be cut at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._pair, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _pair(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pump(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()
                self.writers.discard(sink)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        def close_all():
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self.loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        async def shut():
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()
            await self.server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Serve:
    """`securechat serve` on a fixed port, restartable (same data dir)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.data = workdir / "data"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start and wait for /healthz; returns the wall-clock time (ms) it first answered."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "SECURECHAT_LOG_FSYNC": "never"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(self.port),
                                      "--data-dir", str(self.data)], cwd=str(REPO), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return time.time() * 1000
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("securechat serve did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def events_since(page, since_ms: float) -> list[dict]:
    return [e for e in page.evaluate("window.__events") if e["at"] >= since_ms]


def first(page, since_ms: float, kind: str, test, timeout_s: float = 60) -> float:
    """ms from since_ms to the first event of `kind` whose text passes `test`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in events_since(page, since_ms):
            if event["kind"] == kind and test(event["text"]):
                return event["at"] - since_ms
        page.wait_for_timeout(20)
    raise RuntimeError(f"no {kind} event within {timeout_s} s")


def connected(text: str) -> bool:
    return text.startswith("Connected")


def run(repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    runs = []
    with tempfile.TemporaryDirectory() as home:
        serve = Serve(Path(home))
        serve.start()
        cutter = Cutter(serve.port)
        url = f"http://127.0.0.1:{cutter.port}/"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=ARGS, env={**os.environ, "HOME": home, "XDG_CONFIG_HOME": home})
                try:
                    for repeat in range(repeats):
                        runs.append(one_run(browser, serve, cutter, url, repeat))
                finally:
                    browser.close()
        finally:
            cutter.close()
            serve.stop()
    return {"runs": runs, "summary": summarise(runs)}


def one_run(browser, serve: Serve, cutter: Cutter, url: str, repeat: int) -> dict:
    direct = f"http://127.0.0.1:{serve.port}/"
    pages = {}
    contexts = []
    result = {}
    try:
        for name in ("sender", "ws", "http"):
            context = browser.new_context()
            contexts.append(context)
            context.add_init_script(OBSERVE)
            if name == "http":
                context.add_init_script(NO_WEBSOCKET)
            page = context.new_page()
            page.goto(direct if name == "sender" else url)
            page.wait_for_selector("html[data-ready=true]")
            page.get_by_label("Username", exact=True).fill(f"{name}{repeat}")
            started = page.evaluate("Date.now()")
            page.get_by_role("button", name="Join chat").click()
            result[f"join_{name}"] = first(page, started, "status", connected)
            pages[name] = page
        assert "HTTP fallback" in pages["http"].locator("#status").inner_text()
        pages["sender"].get_by_label("Message", exact=True).wait_for()
        # Everyone sees everyone before the cut.
        for page in pages.values():
            # A function, not a bare expression: Playwright polls a bare expression through
            # eval(), which the page's CSP (no 'unsafe-eval') refuses once the first check fails.
            page.wait_for_function("() => document.querySelectorAll('#participants li').length >= 3")

        # -- cut every connection through the relay; the sender, not cut, sends at once ----------
        text = f"sent after cut {repeat}"
        box = pages["sender"].get_by_label("Message", exact=True)
        box.fill(text)
        cut_at = time.time() * 1000
        cutter.cut()
        pages["sender"].get_by_role("button", name="Send", exact=True).click()
        result["cut_http"] = first(pages["http"], cut_at, "message", lambda t: t == text)
        result["cut_ws"] = first(pages["ws"], cut_at, "status", connected)
        # Did the fallback page's status line move at all (a resume that worked at once does not)?
        result["cut_http_status_changes"] = sum(e["kind"] == "status" for e in events_since(pages["http"], cut_at))

        # -- restart the server on the same port --------------------------------------------------
        serve.stop()
        time.sleep(1.0)
        up_at = serve.start()
        result["restart_ws"] = first(pages["ws"], up_at, "status", connected)
        result["restart_http"] = first(pages["http"], up_at, "status", connected)
        assert "HTTP fallback" in pages["http"].locator("#status").inner_text()
    finally:
        for context in contexts:
            context.close()
    return result


def summarise(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def markdown(result: dict) -> str:
    s = result["summary"]
    n = len(result["runs"])

    def row(what: str, ws: float, http: float, note: str) -> str:
        return f"| {what} | {ws:.0f} | {http:.0f} | {http / ws:.2f}× | {note} |"

    return "\n".join([
        f"Medians of {n} runs (ms).\n",
        "| | WebSocket page | HTTP fallback page | fallback ÷ WebSocket | what ends the interval |",
        "|---|---:|---:|---:|---|",
        row("join", s["join_ws"], s["join_http"], "status says Connected"),
        row("every connection cut", s["cut_ws"], s["cut_http"],
            "ws: Connected again (a new session; what was sent meanwhile is not replayed); http: the "
            "message another person sent right after the cut is on screen (the same session, resumed)"),
        row("server restart", s["restart_ws"], s["restart_http"], "Connected again, from the new server's first /healthz"),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the raw runs as JSON too")
    args = parser.parse_args(argv)
    result = run(args.repeats)
    print(markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
