"""Runtime files on real directories: private modes, stale files cleaned, the right server chosen,
and nothing another local user made is trusted (issue 14, "Local and proxy trust")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from securechat.admin import runtime
from securechat.admin.runtime import ServerInfo

NOBODY = 65534


def info(pid: int, data_dir, started: int = 1000, token: str = "t" * 43, port: int = 5000) -> ServerInfo:
    return ServerInfo(pid=pid, version="0.1.0", started=started, data_dir=str(data_dir), scheme="http",
                      port=port, urls=[f"http://127.0.0.1:{port}/"], admin_url=f"http://127.0.0.1:{port}/",
                      token=token, cert_fingerprint=None)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def env_for(tmp_path: Path, xdg: Path | None) -> dict[str, str]:
    env = {"XDG_DATA_HOME": str(tmp_path / "home-data")}
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = str(xdg)
    return env


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")


def test_one_runtime_dir_per_user_whatever_the_data_dir(tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    assert runtime.runtime_dir(env_for(tmp_path, xdg)) == xdg / "securechat"
    assert runtime.runtime_dir(env_for(tmp_path, None)) == tmp_path / "home-data" / "securechat" / "runtime"


def test_written_owner_only_and_read_back(tmp_path):
    env = env_for(tmp_path, None)
    directory = runtime.runtime_dir(env)
    previous = os.umask(0)  # a permissive umask must not widen the modes
    try:
        path = runtime.write(directory, info(os.getpid(), tmp_path))
    finally:
        os.umask(previous)
    assert path.name == f"server-{os.getpid()}.json"
    assert mode(directory) == 0o700 and mode(path) == 0o600
    assert json.loads(path.read_text())["token"] == "t" * 43
    assert runtime.running_servers(env) == [info(os.getpid(), tmp_path)]
    runtime.remove(path)
    assert not path.exists() and runtime.running_servers(env) == []


def test_repr_hides_the_token(tmp_path):
    assert "t" * 43 not in repr(info(1, tmp_path))


def test_stale_and_broken_files_are_skipped_and_stale_ones_removed(tmp_path):
    env = env_for(tmp_path, None)
    directory = runtime.runtime_dir(env)
    stale = runtime.write(directory, info(dead_pid(), tmp_path))
    broken = directory / "server-7.json"
    broken.write_text("{not json")
    broken.chmod(0o600)
    assert runtime.running_servers(env) == []
    assert not stale.exists()
    assert broken.exists()  # not provably stale: left alone, just not used


def test_select_by_port_and_data_dir(tmp_path):
    old = info(os.getpid(), tmp_path / "a", started=1, port=5000)
    new = info(os.getppid(), tmp_path / "b", started=2, port=5001)
    servers = [new, old]
    assert runtime.select(servers) == [new, old]
    assert runtime.select(servers, port=5000) == [old]
    assert runtime.select(servers, data_dir=tmp_path / "x" / ".." / "b") == [new]
    assert runtime.select(servers, port=5000, data_dir=tmp_path / "b") == []
    assert runtime.select(servers, data_dir=tmp_path / "c") == []


# -- another user's directories and files --------------------------------------------------


def test_a_symlinked_runtime_dir_is_refused_and_serve_falls_back(tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (xdg / "securechat").symlink_to(elsewhere)
    problems: list[str] = []
    directory = runtime.runtime_dir(env_for(tmp_path, xdg), problems)
    assert directory == tmp_path / "home-data" / "securechat" / "runtime"
    assert problems and "not a directory (a symlink" in problems[0]
    with pytest.raises(runtime.UnsafeRuntimeDir):
        runtime.write(xdg / "securechat", info(os.getpid(), tmp_path))
    assert list(elsewhere.iterdir()) == []


def test_a_runtime_dir_wider_than_0700_is_refused(tmp_path):
    xdg = tmp_path / "xdg"
    (xdg / "securechat").mkdir(parents=True)
    (xdg / "securechat").chmod(0o755)
    problems: list[str] = []
    assert runtime.runtime_dir(env_for(tmp_path, xdg), problems) != xdg / "securechat"
    assert "mode 755, not 700" in problems[0] and "chmod 700" in problems[0]
    with pytest.raises(runtime.UnsafeRuntimeDir):
        runtime.write(xdg / "securechat", info(os.getpid(), tmp_path))


@needs_root
def test_a_runtime_dir_of_another_user_is_refused_for_writing(tmp_path):
    xdg = tmp_path / "xdg"
    planted = xdg / "securechat"
    planted.mkdir(parents=True, mode=0o700)
    os.chown(planted, NOBODY, NOBODY)  # pre-created by someone else in a shared XDG_RUNTIME_DIR
    problems: list[str] = []
    directory = runtime.runtime_dir(env_for(tmp_path, xdg), problems)
    assert directory == tmp_path / "home-data" / "securechat" / "runtime"  # serve is not blocked
    assert f"belongs to another user (uid {NOBODY})" in problems[0]
    with pytest.raises(runtime.UnsafeRuntimeDir):
        runtime.write(planted, info(os.getpid(), tmp_path))


@needs_root
def test_planted_files_are_never_read(tmp_path):
    env = env_for(tmp_path, None)
    directory = runtime.runtime_dir(env)
    mine = runtime.write(directory, info(os.getpid(), tmp_path / "mine", started=1))
    fake = info(os.getppid(), tmp_path / "fake", started=2, token="f" * 43, port=6666)

    def plant(name: str, *, uid: int = 0, file_mode: int = 0o600) -> Path:
        path = directory / name
        path.write_text(json.dumps(vars(fake)))
        path.chmod(file_mode)
        os.chown(path, uid, uid)
        return path

    plant("server-1.json", uid=NOBODY)  # another user's file: it would get our token
    plant("server-2.json", file_mode=0o644)
    target = tmp_path / "target.json"
    target.write_text(json.dumps(vars(fake)))
    target.chmod(0o600)
    (directory / "server-3.json").symlink_to(target)
    os.mkfifo(directory / "server-4.json", 0o600)  # must not hang the reader

    result: list[runtime.Scan] = []
    reader = threading.Thread(target=lambda: result.append(runtime.scan(env)), daemon=True)
    reader.start()
    reader.join(10)
    assert result, "reading the runtime dir hung on a FIFO"
    (scan,) = result
    assert scan.servers == [info(os.getpid(), tmp_path / "mine", started=1)]
    problems = "\n".join(scan.problems)
    assert f"server-1.json: it belongs to another user (uid {NOBODY})" in problems
    assert "server-2.json: mode 644, not 600" in problems
    assert "server-3.json: a symlink" in problems
    assert "server-4.json: not a regular file" in problems
    runtime.remove(mine)


def test_writing_never_follows_a_planted_symlink(tmp_path):
    env = env_for(tmp_path, None)
    directory = runtime.runtime_dir(env)
    directory.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (directory / f"server-{os.getpid()}.json.tmp").symlink_to(victim)
    path = runtime.write(directory, info(os.getpid(), tmp_path))
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and json.loads(path.read_text())["pid"] == os.getpid()


def test_who_holds_a_log(tmp_path):
    from securechat.storage.ciphertext_log import CiphertextLog

    with CiphertextLog(tmp_path / "data"):
        assert runtime.lock_holder(tmp_path / "data" / "ciphertext.lock") == os.getpid()
        assert runtime.holder(tmp_path / "data").startswith(f"pid {os.getpid()}")
        registered = info(4242, tmp_path / "data", port=5123)
        assert runtime.holder(tmp_path / "data", [registered]) == "pid 4242, port 5123"
    assert runtime.lock_holder(tmp_path / "data" / "ciphertext.lock") is None


@needs_root
def test_root_reads_a_service_users_runtime_dir(tmp_path):
    """systemd's RuntimeDirectory= belongs to the service's (dynamic) user; root administers it."""
    xdg = tmp_path / "run"
    service_dir = xdg / "securechat"
    service_dir.mkdir(parents=True, mode=0o700)
    path = runtime.write(service_dir, info(os.getpid(), tmp_path / "lib"))
    for owned in (path, service_dir):
        os.chown(owned, NOBODY, NOBODY)
    env = env_for(tmp_path, xdg)
    assert runtime.scan(env).servers == [info(os.getpid(), tmp_path / "lib")]
    assert runtime.runtime_dir(env) != service_dir  # but root's own serve would not write there
