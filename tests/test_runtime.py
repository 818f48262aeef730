"""Runtime files on real directories: private modes, stale files cleaned, the right server chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from securechat.admin import runtime
from securechat.admin.runtime import ServerInfo


def info(pid: int, data_dir, started: int = 1000, token: str = "t" * 43) -> ServerInfo:
    return ServerInfo(pid=pid, version="0.1.0", started=started, data_dir=str(data_dir), scheme="http",
                      port=5000, urls=["http://127.0.0.1:5000/"], admin_url="http://127.0.0.1:5000/",
                      token=token, cert_fingerprint=None)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_runtime_dirs_prefer_xdg(tmp_path):
    data = tmp_path / "data"
    assert runtime.runtime_dirs(data, env={}) == [data / "runtime"]
    assert runtime.runtime_dirs(data, env={"XDG_RUNTIME_DIR": "/run/user/1"}) == [
        runtime.Path("/run/user/1/securechat"), data / "runtime"]


def test_written_owner_only_and_read_back(tmp_path):
    directory = tmp_path / "run" / "securechat"
    previous = os.umask(0)  # a permissive umask must not widen the modes
    try:
        path = runtime.write(directory, info(os.getpid(), tmp_path))
    finally:
        os.umask(previous)
    assert path.name == f"server-{os.getpid()}.json"
    assert mode(directory) == 0o700 and mode(path) == 0o600
    assert json.loads(path.read_text())["token"] == "t" * 43
    assert runtime.running_servers([directory]) == [info(os.getpid(), tmp_path)]
    runtime.remove(path)
    assert not path.exists() and runtime.running_servers([directory]) == []


def test_repr_hides_the_token(tmp_path):
    assert "t" * 43 not in repr(info(1, tmp_path))


def test_stale_and_broken_files_are_skipped_and_stale_ones_removed(tmp_path):
    directory = tmp_path / "run"
    stale = runtime.write(directory, info(dead_pid(), tmp_path))
    broken = directory / "server-7.json"
    broken.write_text("{not json")
    assert runtime.running_servers([directory, tmp_path / "missing"]) == []
    assert not stale.exists()
    assert broken.exists()  # not provably stale: left alone, just not used


def test_choose_by_data_dir_else_newest(tmp_path):
    old = info(os.getpid(), tmp_path / "a", started=1)
    new = info(os.getppid(), tmp_path / "b", started=2)
    servers = sorted([old, new], key=lambda s: -s.started)
    assert runtime.choose(servers, tmp_path / "a", exact=False) is old
    assert runtime.choose(servers, tmp_path / "x" / ".." / "a", exact=True) is old
    assert runtime.choose(servers, tmp_path / "c", exact=False) is new
    assert runtime.choose(servers, tmp_path / "c", exact=True) is None
    assert runtime.choose([], tmp_path / "c", exact=False) is None
