"""Runtime files: how the admin commands find the running servers and their admin tokens.

Every `securechat serve` writes `server-<pid>.json` (owner-only: it holds the admin token) into
one per-user runtime dir, whatever its data dir, and removes it on exit, like jupyter_server's
`jpserver-<pid>.json`. A file whose process is gone (a crash, a forced exit) is stale: readers
skip it and delete it.

The runtime dir is `$XDG_RUNTIME_DIR/securechat`, else `$XDG_DATA_HOME/securechat/runtime`
(`~/.local/share/securechat/runtime`). Another user must not be able to read a token from it,
plant a file in it (the admin commands would send a token to the URL it names) or block
`serve` by pre-creating it, so a directory is used only if it is a real directory (not a
symlink) owned by us with mode 0700, and a file only if it is a regular file, not a symlink,
owned by the directory's owner with mode 0600. A `$XDG_RUNTIME_DIR/securechat` that fails
those checks is skipped, with a reason, for the fallback under the home directory.

File I/O only; no Tornado, no HTTP.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..config import default_data_dir

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_FILE_BYTES = 64 * 1024  # a real one is < 1 KiB; a huge planted one is not read
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_PREFIX, _SUFFIX = "server-", ".json"


class UnsafeRuntimeDir(Exception):
    """A runtime dir we must not use; the message says why and how to fix it."""


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    version: str
    started: int  # ms since the epoch
    data_dir: str  # absolute
    scheme: str
    port: int
    urls: list[str]
    admin_url: str  # the address the admin commands call (loopback when possible)
    token: str
    cert_fingerprint: str | None  # SHA-256, "AA:BB:…"; pinned by the admin client

    def __repr__(self) -> str:  # the token must not reach a log through a repr
        return f"ServerInfo(pid={self.pid}, admin_url={self.admin_url!r}, data_dir={self.data_dir!r})"


@dataclass
class Scan:
    """What a look into the runtime dir found: live servers (newest first) and why anything was skipped."""

    directory: Path | None
    servers: list[ServerInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- where --------------------------------------------------------------------------------


def candidate_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """$XDG_RUNTIME_DIR/securechat (when set), then the fallback in the user's data home."""
    env = os.environ if env is None else env
    dirs = [default_data_dir(env) / "runtime"]
    if env.get("XDG_RUNTIME_DIR"):
        dirs.insert(0, Path(env["XDG_RUNTIME_DIR"]) / "securechat")
    return dirs


def runtime_dir(env: Mapping[str, str] | None = None, problems: list[str] | None = None, *,
                writer: bool = True) -> Path:
    """The one runtime dir `serve` writes to and the admin commands read, for this user.

    The first candidate that is usable: an existing one that passes the checks, or a missing
    one we could create (its nearest existing parent is writable). Writers and readers apply
    the same rule, so they agree without configuration (except that root may read a service
    user's directory it would not write into). Skipped candidates are explained in `problems`.
    """
    *preferred, fallback = candidate_dirs(env)
    for directory in preferred:
        try:
            if _usable(directory, writer):
                return directory
        except UnsafeRuntimeDir as exc:
            if problems is not None:
                problems.append(str(exc))
    return fallback


def _usable(directory: Path, writer: bool) -> bool:
    try:
        fd = _open_dir(directory, writer=writer)
    except FileNotFoundError:
        # serve makes it (and a missing $XDG_RUNTIME_DIR, 0700) if it can write where it would go
        parent = directory.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    os.close(fd)
    return True


# -- writing ------------------------------------------------------------------------------


def write(directory: Path, info: ServerInfo) -> Path:
    """Write the runtime file atomically with mode 0600 in a 0700 directory; return its path.

    Raises UnsafeRuntimeDir if the directory is not ours alone, OSError if it cannot be made.
    """
    _make_dir(directory)
    fd = _open_dir(directory, writer=True)
    name = f"{_PREFIX}{info.pid}{_SUFFIX}"
    tmp = name + ".tmp"
    try:
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE, dir_fd=fd)
        except FileExistsError:  # left by a crashed process with our pid; it is ours to replace
            os.unlink(tmp, dir_fd=fd)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE, dir_fd=fd)
        with os.fdopen(out, "w") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)  # the umask may have narrowed it: exact, always
            json.dump(asdict(info), fh, indent=2)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return directory / name


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)  # unlink never follows a symlink


def _make_dir(directory: Path) -> None:
    # Parents we create (~/.local/share, …) are private too; existing ones are left alone.
    directory.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.mkdir(directory, DIR_MODE)  # the umask can only narrow 0700
    except FileExistsError:
        pass  # checked, without following a symlink, when opened


def _open_dir(directory: Path, *, writer: bool) -> int:
    """An fd on directory, after checking it is a real directory that only its owner can use."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeRuntimeDir(f"{directory} is not a directory (a symlink or a file); "
                                   "securechat uses only a real directory") from None
        raise
    st = os.fstat(fd)
    me = os.geteuid()
    # root may read a service user's dir (a systemd RuntimeDirectory), never write into it;
    # and only where nobody else could have made it: in a parent of that user's or root's
    # that no one else may write to (not a shared, world-writable XDG_RUNTIME_DIR).
    if st.st_uid != me and (writer or me != 0 or not _only_owner_writes(directory.parent, st.st_uid)):
        os.close(fd)
        raise UnsafeRuntimeDir(f"{directory} belongs to another user (uid {st.st_uid}); "
                               "securechat uses only a runtime dir of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise UnsafeRuntimeDir(f"{directory} is mode {stat.S_IMODE(st.st_mode):o}, not 700; "
                               f"other users could read or plant server files (fix: chmod 700 {directory})")
    return fd


def _only_owner_writes(directory: Path, uid: int) -> bool:
    try:
        st = os.stat(directory)
    except OSError:
        return False
    return st.st_uid in (uid, 0) and not stat.S_IMODE(st.st_mode) & 0o022


# -- reading ------------------------------------------------------------------------------


def scan(env: Mapping[str, str] | None = None) -> Scan:
    """Every live server registered in this user's runtime dir; stale files are deleted."""
    problems: list[str] = []
    directory = runtime_dir(env, problems, writer=False)
    result = Scan(directory, problems=problems)
    try:
        fd = _open_dir(directory, writer=False)
    except FileNotFoundError:
        return result
    except UnsafeRuntimeDir as exc:
        result.problems.append(str(exc))
        return result
    except OSError as exc:
        result.problems.append(f"cannot read {directory}: {exc.strerror}")
        return result
    try:
        owner = os.fstat(fd).st_uid
        found: dict[int, ServerInfo] = {}
        for name in sorted(os.listdir(fd)):
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            info = _read(fd, name, owner, result.problems, directory)
            if info is None:
                continue
            if not pid_alive(info.pid):
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
                continue
            found[info.pid] = info
    finally:
        os.close(fd)
    result.servers = sorted(found.values(), key=lambda info: info.started, reverse=True)
    return result


def running_servers(env: Mapping[str, str] | None = None) -> list[ServerInfo]:
    return scan(env).servers


def _read(dir_fd: int, name: str, owner: int, problems: list[str], directory: Path) -> ServerInfo | None:
    # O_NONBLOCK: a planted FIFO must not hang an admin command.
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            problems.append(f"ignored {directory / name}: a symlink")
        return None
    try:
        st = os.fstat(fd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_uid != owner:
            why = f"it belongs to another user (uid {st.st_uid})"
        elif stat.S_IMODE(st.st_mode) & 0o077:
            why = f"mode {stat.S_IMODE(st.st_mode):o}, not 600"
        elif st.st_size > MAX_FILE_BYTES:
            why = "too large"
        if why:
            problems.append(f"ignored {directory / name}: {why}")
            return None
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    # A half-written or foreign file must not stop an admin command; skip it.
    try:
        info = ServerInfo(**json.loads(raw))
    except (ValueError, TypeError):
        return None
    if not isinstance(info.pid, int) or not isinstance(info.port, int) or not isinstance(info.started, int):
        return None
    return info


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # kill(0) and kill(-1) would mean process groups, not a server
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


# -- choosing -----------------------------------------------------------------------------


def select(servers: Iterable[ServerInfo], *, port: int | None = None,
           data_dir: Path | str | None = None) -> list[ServerInfo]:
    """The servers matching every criterion given (port, data dir), newest first."""
    wanted = resolved(data_dir) if data_dir is not None else None
    return [info for info in servers
            if (port is None or info.port == port) and (wanted is None or resolved(info.data_dir) == wanted)]


def resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


# -- who holds a log ----------------------------------------------------------------------


def lock_holder(lock_file: Path) -> int | None:
    """The pid holding an flock on lock_file, from /proc/locks (Linux), or None."""
    try:
        st = os.stat(lock_file)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 2436 08:01:1234 0 EOF" (a blocked waiter has "->" first)
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted and parts[4].isdigit():
            return int(parts[4])
    return None


def listening_ports(pid: int) -> list[int]:
    """TCP ports process pid listens on (readable for our own processes, or as root)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def holder(data_dir: Path | str, servers: Iterable[ServerInfo] = ()) -> str | None:
    """Who holds the ciphertext log in data_dir, for an error message: "pid 1234, port 5001"."""
    from ..storage.ciphertext_log import LOCK_NAME

    for info in select(servers, data_dir=data_dir):
        return f"pid {info.pid}, port {info.port}"
    pid = lock_holder(Path(data_dir) / LOCK_NAME)
    if pid is None:
        return None
    ports = listening_ports(pid)
    if not ports:
        return f"pid {pid}"
    return f"pid {pid}, port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))}"
