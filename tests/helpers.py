"""Helpers for tests that run `securechat` as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from securechat.web.canonical import url_host

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 20, context=None) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"server exited with {process.returncode}: {out!r} {err!r}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                return response.read()
        except urllib.error.HTTPError as refused:
            # Not ready yet (a 503 while Redis connects). The error holds the open response:
            # closed here, not left to the garbage collector to find in some later test.
            refused.close()
            time.sleep(0.1)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SECURECHAT_") and k not in ("COLUMNS", "LINES")}
    env.update(NO_COLOR="1", **extra)
    return env


class Server:
    """`securechat serve` as a real subprocess on a free loopback port, registered in its own
    XDG_RUNTIME_DIR (and XDG_DATA_HOME, so nothing lands in the real home directory)."""

    def __init__(self, tmp_path: Path, *args: str, runtime_dir: Path | None = None, data_dir: Path | None = None,
                 **env: str):
        self.data = data_dir or tmp_path / "data"
        self.runtime = runtime_dir or tmp_path / "run"
        self.runtime.mkdir(mode=0o700, exist_ok=True)  # XDG_RUNTIME_DIR exists before anyone logs in
        self.port = free_port()
        # XDG_DATA_HOME: the fallback runtime dir must be this test's, never the real home's.
        self.env = clean_env(XDG_RUNTIME_DIR=str(self.runtime), XDG_DATA_HOME=str(self.runtime) + "-home", **env)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(self.port), "--data-dir", str(self.data),
             *args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tls = "--tls" in args or "--cert" in args
        self.scheme = "https" if tls else "http"
        context = None
        if tls:  # only waiting for it to answer; the tests check certificates themselves
            import ssl

            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        # With --host <a LAN address> the server listens there only, and the tests call it there.
        self.address = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
        where = url_host(self.address)
        wait_for_http(f"{self.scheme}://{where}:{self.port}/healthz", self.process, context=context)
        self.url = f"{self.scheme}://{where}:{self.port}/"
        self.ws = f"{'wss' if tls else 'ws'}://{where}:{self.port}/ws"

    def runtime_file(self) -> Path:
        return self.runtime / "securechat" / f"server-{self.process.pid}.json"

    def stop(self) -> tuple[str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=15)
        assert "Traceback" not in err
        return out, err


def cli(*args: str, runtime: Path, **env: str):
    """Run a securechat command in-process (CliRunner) as a user whose XDG_RUNTIME_DIR is runtime."""
    from click.testing import CliRunner

    from cli import main

    runner = CliRunner(env={"XDG_RUNTIME_DIR": str(runtime), "XDG_DATA_HOME": str(runtime) + "-home",
                            "NO_COLOR": "1", "SECURECHAT_TOKEN": None, "SECURECHAT_DATA_DIR": None, **env})
    return runner.invoke(main, list(args))


async def close_all(clients) -> None:
    """Close and wait for the close handshake, so no socket outlives the event loop."""
    for client in clients:
        client.close()
        while await asyncio.wait_for(client.ws.read_message(), 5) is not None:
            pass


async def joined(url: str, *names: str) -> list:
    """Real protocol clients, joined to the server at url in this order."""
    from securechat.client import ChatClient

    clients = [ChatClient(url, name) for name in names]
    for client in clients:
        await client.connect()
    return clients


def as_another_user(tmp_root: Path) -> tuple[list[str], dict[str, str]] | None:
    """A command prefix and environment that run `securechat` (this checkout) as a real
    non-root user: `nobody` through setpriv when we are root, or ourselves when we are not.

    As nobody, neither this interpreter (often under /root) nor the checkout may be readable,
    so the checkout and the third-party packages it imports are copied into tmp_root (which
    must be world-readable), to run under a python3 that nobody can execute. None if this
    machine has no way to do that (no setpriv, no usable python3).
    """
    import shutil

    if os.geteuid() != 0:
        return [sys.executable], clean_env()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    code = tmp_root / "code"
    code.mkdir(parents=True)
    for name in ("securechat", "static", "templates"):
        shutil.copytree(ROOT / name, code / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "cli.py", code / "cli.py")
    import qrcode  # noqa: F401

    import cli  # noqa: F401 (what `serve` imports, so its packages are in sys.modules)
    import securechat.console  # noqa: F401

    site = {Path(p).resolve() for p in sys.path if Path(p).name in ("site-packages", "dist-packages")}
    for module in list(sys.modules.values()):
        path = Path(getattr(module, "__file__", None) or "/").resolve()
        home = next((s for s in site if s in path.parents), None)
        if home is None:
            continue  # the standard library, or this checkout
        top = path.relative_to(home).parts[0]
        source, target = home / top, code / top
        if target.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            libs = home / f"{top}.libs"  # bundled shared libraries of a manylinux wheel
            if libs.is_dir() and not (code / libs.name).exists():
                shutil.copytree(libs, code / libs.name)
        else:
            shutil.copy(source, target)
    for path in [tmp_root, *tmp_root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = clean_env(HOME=str(tmp_root), PYTHONPATH=str(code), PYTHONDONTWRITEBYTECODE="1")
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("XDG_DATA_HOME", None)
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if python and subprocess.run([*drop, python, "-c", "import cli"], env=env, cwd=tmp_root,
                                     capture_output=True).returncode == 0:
            return [*drop, python], env
    return None
def files_containing(directory, *markers: bytes) -> list[str]:
    """Every file under `directory` whose bytes (gunzipped too) contain one of `markers`."""
    import gzip
    from pathlib import Path

    found = []
    for path in sorted(Path(directory).rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data += gzip.decompress(data)
        for marker in markers:
            if marker in data:
                found.append(f"{path}: {marker!r}")
    return found
