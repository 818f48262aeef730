"""Render terminal output the way a terminal would, and read QR codes off it with zbarimg.

A tiny ANSI renderer: SGR colours (16, 256 and true colour, reverse video) over a chosen
default foreground/background, i.e. a light-on-dark or dark-on-light theme. Each character
cell becomes 1 x 2 "pixels" (half blocks split it in two), scaled up and written as a PGM
image, which zbarimg (Debian's zbar-tools) reads like a photo of the screen.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DARK_THEME = ((229, 229, 229), (30, 30, 30))    # foreground, background
LIGHT_THEME = ((30, 30, 30), (255, 255, 255))

_SGR = re.compile(r"\x1b\[([0-9;]*)m")
# xterm's default 16 colours
_BASIC = [(0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0), (0, 0, 238), (205, 0, 205), (0, 205, 205),
          (229, 229, 229), (127, 127, 127), (255, 0, 0), (0, 255, 0), (255, 255, 0), (92, 92, 255),
          (255, 0, 255), (0, 255, 255), (255, 255, 255)]


def _xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return _BASIC[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    grey = 8 + 10 * (n - 232)
    return grey, grey, grey


def cells(text: str, theme) -> list[list[tuple[str, tuple, tuple]]]:
    """Lines of (character, foreground, background) as a terminal with `theme` shows them."""
    default_fg, default_bg = theme
    fg, bg, reverse = None, None, False
    lines, line = [], []
    position = 0
    for match in [*_SGR.finditer(text), None]:
        chunk = text[position:match.start()] if match else text[position:]
        for ch in chunk:
            if ch == "\n":
                lines.append(line)
                line = []
                continue
            shown_fg, shown_bg = fg or default_fg, bg or default_bg
            if reverse:
                shown_fg, shown_bg = shown_bg, shown_fg
            line.append((ch, shown_fg, shown_bg))
        if match is None:
            break
        position = match.end()
        codes = [int(c) if c else 0 for c in match.group(1).split(";")]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                fg, bg, reverse = None, None, False
            elif code == 7:
                reverse = True
            elif code == 27:
                reverse = False
            elif 30 <= code <= 37 or 90 <= code <= 97:
                fg = _BASIC[code - 30 if code < 90 else code - 90 + 8]
            elif 40 <= code <= 47 or 100 <= code <= 107:
                bg = _BASIC[code - 40 if code < 100 else code - 100 + 8]
            elif code == 39:
                fg = None
            elif code == 49:
                bg = None
            elif code in (38, 48):
                if codes[i + 1] == 5:
                    colour, i = _xterm256(codes[i + 2]), i + 2
                else:
                    colour, i = tuple(codes[i + 2:i + 5]), i + 4
                if code == 38:
                    fg = colour
                else:
                    bg = colour
            i += 1
    if line:
        lines.append(line)
    return lines


def _dark(colour) -> bool:
    r, g, b = colour
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 128


def to_pgm(lines, path: Path, scale: int = 6) -> Path:
    """Half-block aware: top and bottom halves of each cell become separate rows."""
    width = max(len(line) for line in lines)
    rows = []
    for line in lines:
        top, bottom = [], []
        for ch, fg, bg in line + [(" ", (255, 255, 255), (255, 255, 255))] * (width - len(line)):
            upper = {"▀": fg, "▄": bg, "█": fg}.get(ch, bg)
            lower = {"▀": bg, "▄": fg, "█": fg}.get(ch, bg)
            top.append(0 if _dark(upper) else 255)
            bottom.append(0 if _dark(lower) else 255)
        for half in (top, bottom):
            row = bytes(v for v in half for _ in range(scale))
            rows.extend([row] * scale)
    # A generous white margin, as on a phone photo of a screen with space around the code.
    margin = 8 * scale
    full = width * scale + 2 * margin
    blank = bytes([255]) * full
    image = [blank] * margin + [bytes([255]) * margin + r + bytes([255]) * margin for r in rows] + [blank] * margin
    path.write_bytes(b"P5 %d %d 255\n" % (full, len(image)) + b"".join(image))
    return path


def qr_lines(lines):
    """The rows of the QR code: lines made only of block characters and spaces."""
    blocks = set("▀▄█ \xa0")
    return [line for line in lines
            if line and set(ch for ch, _, _ in line) <= blocks and any(ch in "▀▄█" for ch, _, _ in line)]


def decode(path: Path) -> str | None:
    """What zbarimg reads in the image, or None if it finds no QR code."""
    result = subprocess.run(["zbarimg", "--nodbus", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable",
                             str(path)], capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def scan_terminal(text: str, theme, path: Path) -> str | None:
    return decode(to_pgm(qr_lines(cells(text, theme)), path))
