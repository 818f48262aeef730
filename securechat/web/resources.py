"""Where the page's files are: inside the installed package, or beside it in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # securechat/


def _find(name: str) -> Path:
    # A wheel ships static/ and templates/ inside the package; a checkout keeps them at the top.
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"securechat cannot find its {name}/ folder; reinstall the package")


def static_dir() -> Path:
    return _find("static")


def template_dir() -> Path:
    return _find("templates")
