"""Write docs/screenshot.png (desktop) and docs/screenshot-phone.png (a 390 px phone): a
three-person conversation as alice sees it.

Run from the repository root: `python tests/browser/screenshot.py [output.png [phone.png]]`.
Add `--dark` for the dark scheme. tests/browser/test_screenshot.py runs the same capture into
temporary files.
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


DESKTOP = {"viewport": {"width": 1280, "height": 760}, "device_scale_factor": 1}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 1, "is_mobile": True, "has_touch": True}


def capture(browser, server, path: Path, phone_path: Path | None = None, scheme: str = "light") -> None:
    """alice on a desktop (and, with phone_path, carol on her phone)."""
    sizes = [DESKTOP, DESKTOP, PHONE if phone_path else DESKTOP]
    contexts = [browser.new_context(**size, color_scheme=scheme) for size in sizes]
    try:
        pages = {}
        for name, context in zip(("alice", "bob", "carol"), contexts):
            pages[name] = open_page(context, server.url)
            join(pages[name], name)
        for page in pages.values():
            page.locator("#participants li").nth(2).wait_for(state="attached")  # behind People on a phone
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
        if phone_path:
            phone = pages["carol"]
            messages(phone).locator("article").nth(len(CONVERSATION) - 1).wait_for()
            phone.get_by_label("Message", exact=True).blur()
            phone.screenshot(path=str(phone_path))
    finally:
        for context in contexts:
            context.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    args = [a for a in sys.argv[1:] if a != "--dark"]
    scheme = "dark" if "--dark" in sys.argv else "light"
    out = Path(args[0]) if args else ROOT / "docs" / "screenshot.png"
    phone = Path(args[1]) if len(args) > 1 else out.with_name(out.stem + "-phone" + out.suffix)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        server = ServerThread(Path(tmp) / "data").start()
        browser = launch(playwright, config_home=Path(tmp))
        try:
            capture(browser, server, out, phone, scheme)
        finally:
            browser.close()
            server.stop()
    print(f"wrote {out} and {phone}")


if __name__ == "__main__":
    main()
