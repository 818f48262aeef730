"""Runtime files: how the admin commands find a running server and its admin token.

`securechat serve` writes `server-<pid>.json` (owner-only, it holds the admin token) into the
runtime dir and removes it on exit, like jupyter_server's `jpserver-<pid>.json`. A file whose
process is gone (a crash, a forced exit) is stale: readers skip it and delete it.
File I/O only; no Tornado, no HTTP.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

DIR_MODE = 0o700
FILE_MODE = 0o600


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    version: str
    started: int  # ms since the epoch
    data_dir: str
    scheme: str
    port: int
    urls: list[str]
    admin_url: str  # the address the admin commands call (loopback when possible)
    token: str
    cert_fingerprint: str | None  # SHA-256, "AA:BB:…"; pinned by the admin client

    def __repr__(self) -> str:  # the token must not reach a log through a repr
        return f"ServerInfo(pid={self.pid}, admin_url={self.admin_url!r}, data_dir={self.data_dir!r})"


def runtime_dirs(data_dir: Path, env: Mapping[str, str] | None = None) -> list[Path]:
    """Where runtime files may be: $XDG_RUNTIME_DIR/securechat first, then <data_dir>/runtime."""
    env = os.environ if env is None else env
    dirs = [Path(data_dir) / "runtime"]
    if env.get("XDG_RUNTIME_DIR"):
        dirs.insert(0, Path(env["XDG_RUNTIME_DIR"]) / "securechat")
    return dirs


def write(directory: Path, info: ServerInfo) -> Path:
    """Write the runtime file atomically with mode 0600 in a 0700 directory; return its path."""
    _private_dir(directory)
    path = directory / f"server-{info.pid}.json"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), FILE_MODE)  # the umask or an older file may say otherwise
        json.dump(asdict(info), fh, indent=2)
    os.replace(tmp, path)
    return path


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def running_servers(directories: Iterable[Path]) -> list[ServerInfo]:
    """Every live server described in these directories, newest first; stale files are deleted."""
    found: dict[int, ServerInfo] = {}
    for directory in directories:
        for path in sorted(Path(directory).glob("server-*.json")):
            info = _read(path)
            if info is None:
                continue
            if not pid_alive(info.pid):
                remove(path)
                continue
            found[info.pid] = info
    return sorted(found.values(), key=lambda info: info.started, reverse=True)


def choose(servers: list[ServerInfo], data_dir: Path, *, exact: bool) -> ServerInfo | None:
    """The server using data_dir; else, unless exact, the newest one."""
    wanted = _resolved(data_dir)
    for info in servers:
        if _resolved(info.data_dir) == wanted:
            return info
    if exact or not servers:
        return None
    return servers[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def _read(path: Path) -> ServerInfo | None:
    # A half-written or foreign file must not stop an admin command; skip it.
    try:
        return ServerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)  # mkdir's mode is narrowed by the umask, ignored if it exists


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()
