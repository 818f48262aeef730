"""A non-editable install works: the wheel carries static/ and templates/ and `securechat serve` runs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, fetch, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation builds with the setuptools already installed: no download, same result.
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=ROOT)
    return next(out.glob("securechat-*.whl"))


def outer_site_packages() -> list[str]:
    """The directories this suite imports its installed packages from, whatever installed them:
    the system Python, a venv, a venv with --system-site-packages, a user site."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    # Not --system-site-packages: from inside a venv that links the *base* interpreter's
    # packages, not the ones this suite runs with. Instead a .pth file appends this suite's own
    # site-packages, so tornado & co. come without a download; plain path lines, so no
    # editable-install hook in them runs. The wheel goes into the venv's own site-packages,
    # which come first on sys.path.
    # --without-pip saves ~15 s of ensurepip; this suite's own pip installs into the venv.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "outer-site-packages.pth").write_text("".join(p + "\n" for p in outer_site_packages()))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                    "--no-deps", "--force-reinstall", str(wheel)], check=True, capture_output=True)
    return venv


def test_wheel_contains_page_files(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "securechat/templates/index.html" in names
    assert any(re.match(r"securechat/static/js/.+\.js$", n) for n in names)
    assert any(re.match(r"securechat/static/css/.+\.css$", n) for n in names)
    assert "cli.py" in names


def test_installed_command_serves_page_and_static_files(venv, tmp_path):
    port = free_port()
    env = clean_env(XDG_DATA_HOME=str(tmp_path / "xdg"))
    located = subprocess.run([venv / "bin/python", "-c", "import securechat; print(securechat.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert located.stdout.startswith(str(venv)), "the test must exercise the installed copy"
    server = subprocess.Popen([venv / "bin/securechat", "serve", "--port", str(port), "--data-dir",
                               str(tmp_path / "data")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        page = wait_for_http(f"http://127.0.0.1:{port}/", server).decode()
        asset = re.search(r'src="(/static/[^"]+\.js[^"]*)"', page).group(1)
        assert fetch(f"http://127.0.0.1:{port}{asset.replace('&amp;', '&')}")
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    assert "Traceback" not in err
