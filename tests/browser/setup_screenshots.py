"""Screenshots of device set-up with the local CA, as a phone that has not installed it yet sees
it: the join card's "Set up this device" link, the /setup page and the menu's link to it, at phone (390×844, and
390×480 with the keyboard open) and desktop sizes. Run from the repository root:
`python tests/browser/setup_screenshots.py [dir]`; tests/browser/test_local_ca.py runs the same
capture into a temporary directory.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

try:
    from .harness import ServerThread, launch, open_menu, open_page
except ImportError:  # run as a script: no parent package
    sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
    from harness import ServerThread, launch, open_menu, open_page

from securechat import tls

SIZES = {"phone": (390, 844), "keyboard": (390, 480), "desktop": (1280, 760)}
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1")


def serve(data: Path) -> ServerThread:
    status = tls.ensure_local_ca(data, addresses=[])
    context = tls.server_ssl_context(status.cert_path, status.key_path)
    return ServerThread(data, ssl_context=context, hostname="localhost",
                        app_options={"local_ca": status.ca.public()}).start()


def capture(browser, server: ServerThread, out_dir: Path) -> list[Path]:
    """join-<size>.png, setup-<size>.png, setup-phone-full.png and menu-<size>.png (in the chat); the phones are iPhones, so /setup
    leads with iOS."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for size, (width, height) in SIZES.items():
        phone = size != "desktop"
        options = {"is_mobile": True, "has_touch": True, "user_agent": IPHONE} if phone else {}
        # A device that has not installed the CA yet: it clicked through the warning once.
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1,
                                      ignore_https_errors=True, **options)
        try:
            page = open_page(context, server.url)
            link = page.get_by_role("link", name="Set up this device")
            link.wait_for()
            if size == "keyboard":
                page.get_by_label("Username", exact=True).focus()
            box = link.bounding_box()
            assert box is not None and box["y"] + box["height"] <= height, f"the link is off screen at {size}"
            written.append(out_dir / f"join-{size}.png")
            page.screenshot(path=str(written[-1]))
            link.click()
            page.wait_for_url("**/setup")
            page.get_by_role("heading", level=1).wait_for()
            written.append(out_dir / f"setup-{size}.png")
            page.screenshot(path=str(written[-1]))
            if size == "phone":  # the whole page: the steps and the QR code below the fold
                written.append(out_dir / "setup-phone-full.png")
                page.screenshot(path=str(written[-1]), full_page=True)
            # In the chat (a reload re-joins there, past the join card), the menu keeps the way.
            page.goto(server.url)
            page.get_by_label("Username", exact=True).fill(f"iris-{size}")
            page.get_by_role("button", name="Join chat").click()
            page.get_by_label("Message", exact=True).wait_for()
            open_menu(page)
            page.get_by_role("link", name="Trust this server's certificate").scroll_into_view_if_needed()
            written.append(out_dir / f"menu-{size}.png")
            page.screenshot(path=str(written[-1]))
        finally:
            context.close()
    return written


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else ROOT / "screenshots"
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp())
    server = serve(home / "data")
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright, config_home=home)
            try:
                for path in capture(browser, server, out_dir):
                    print(path)
            finally:
                browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
