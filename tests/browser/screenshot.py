"""Write docs/screenshot.png: a three-person conversation as alice sees it.

Run from the repository root: `python tests/browser/screenshot.py [output.png]`.
tests/browser/test_screenshot.py runs the same capture into a temporary file.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

try:
    from .harness import ServerThread, join, launch, messages, open_page, participant, participants, send
except ImportError:  # run as a script: no parent package
    sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
    from harness import ServerThread, join, launch, messages, open_page, participant, participants, send

CONVERSATION = [
    ("alice", "Morning! Is everyone on the new build?"),
    ("bob", "Yes. We compared fingerprints at standup, so you show as verified for me."),
    ("carol", "Installing now. I'll check fingerprints with you both after lunch."),
    ("alice", "Great. Agenda for Thursday:\n1. release notes\n2. office Wi-Fi upgrade\n3. lunch order"),
    ("bob", "Adding: 4. rotate the guest Wi-Fi password"),
]


def capture(browser, server, path: Path) -> None:
    contexts = [browser.new_context(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
                for _ in range(3)]
    try:
        pages = {}
        for name, context in zip(("alice", "bob", "carol"), contexts):
            pages[name] = open_page(context, server.url)
            join(pages[name], name)
        for page in pages.values():
            participants(page).nth(2).wait_for()
        alice = pages["alice"]
        participant(alice, "bob").get_by_role("button", name="Mark bob verified").click()
        alice.get_by_role("dialog").get_by_role("button", name="They match").click()
        participant(alice, "bob").locator(".badge.verified").wait_for()
        for i, (name, text) in enumerate(CONVERSATION, start=1):
            send(pages[name], text)
            messages(alice).locator("article").nth(i - 1).wait_for()
        alice.locator("article.mine[data-state=delivered]").nth(1).wait_for()
        alice.get_by_label("Message", exact=True).blur()
        alice.screenshot(path=str(path))
    finally:
        for context in contexts:
            context.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot.png"
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        server = ServerThread(Path(tmp) / "data").start()
        browser = launch(playwright, config_home=Path(tmp))
        try:
            capture(browser, server, out)
        finally:
            browser.close()
            server.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
