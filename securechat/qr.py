"""QR codes of the chat's URLs, for the terminal banner and the /setup page.

Both draw the same module matrix with the standard four-module quiet zone (ISO/IEC 18004):
scanners need it to find the code, and a terminal or page colour behind a code without one
makes many phones give up.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import qrcode
from qrcode.constants import ERROR_CORRECT_M

QUIET_ZONE = 4


def matrix(data: str) -> list[list[bool]]:
    """Rows of modules, True for dark, quiet zone included."""
    code = qrcode.QRCode(border=QUIET_ZONE, error_correction=ERROR_CORRECT_M)
    code.add_data(data)
    code.make(fit=True)
    return code.get_matrix()


def svg(data: str, label: str) -> str:
    """An inline SVG (no script, no style attribute: fine under a strict CSP), dark on white
    whatever the page's colour scheme, one path for all dark modules."""
    rows = matrix(data)
    size = len(rows)
    path = "".join(f"M{x},{y}h1v1h-1z" for y, row in enumerate(rows) for x, dark in enumerate(row) if dark)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label={quoteattr(label)} shape-rendering="crispEdges" class="qr">'
        f'<rect width="{size}" height="{size}" fill="#ffffff"/>'
        f'<path d="{path}" fill="#000000"/></svg>'
    )
