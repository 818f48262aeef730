"""Render the PNG icons (favicon, home-screen and manifest icons) from static/icons/*.svg.

Run from the repository root after changing an SVG: `python tests/browser/icons.py`.
Chromium draws them, so the PNGs match what browsers show for the SVG; they are committed
because the page has no build step.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ICONS = ROOT / "static" / "icons"
# (source svg, output png, size in px)
OUTPUTS = [
    ("icon.svg", "favicon-32.png", 32),
    ("icon-maskable.svg", "icon-180.png", 180),  # iOS: opaque, it rounds the corners itself
    ("icon.svg", "icon-192.png", 192),
    ("icon.svg", "icon-512.png", 512),
    ("icon-maskable.svg", "icon-maskable-512.png", 512),
]

try:
    from .harness import launch
except ImportError:  # run as a script: no parent package
    sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
    from harness import launch


def render(browser) -> list[Path]:
    written = []
    for source, name, size in OUTPUTS:
        svg = base64.b64encode((ICONS / source).read_bytes()).decode("ascii")
        page = browser.new_page(viewport={"width": size, "height": size}, device_scale_factor=1)
        page.set_content(f'<body style="margin:0"><img src="data:image/svg+xml;base64,{svg}" '
                         f'width="{size}" height="{size}" style="display:block"></body>')
        page.wait_for_function("() => document.images[0].complete")
        out = ICONS / name
        page.screenshot(path=str(out), omit_background=True)
        page.close()
        written.append(out)
    return written


def write_ico(png: Path, ico: Path) -> None:
    """/favicon.ico: one 32 px PNG inside an ICO directory (every browser reads PNG-in-ICO)."""
    import struct

    data = png.read_bytes()
    ico.write_bytes(struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 32, 32, 0, 0, 1, 32, len(data), 22) + data)


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = launch(playwright, config_home=Path(tmp))
        try:
            for path in render(browser):
                print(f"wrote {path.relative_to(ROOT)}")
            # Tornado serves static/favicon.ico at /favicon.ico (pages without an icon link).
            write_ico(ICONS / "favicon-32.png", ICONS.parent / "favicon.ico")
            print("wrote static/favicon.ico")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
