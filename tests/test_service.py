"""Running as a service: the systemd unit, SIGHUP rotation and journald-friendly log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_env, free_port, wait_for_http

from securechat.client import ChatClient
from securechat.logfmt import LineFormatter, is_journal, priority
from securechat.storage.ciphertext_log import LogRecord, read_log

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "docs" / "deploy" / "securechat.service"


# -- the unit ----------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_runs_hardened_with_its_own_state_and_reload_rotates():
    unit = unit_settings()
    assert unit["DynamicUser"] == ["yes"] and unit["StateDirectory"] == ["securechat"]
    assert "--data-dir /var/lib/securechat" in unit["ExecStart"][0] and "--host 127.0.0.1" in unit["ExecStart"][0]
    assert unit["RuntimeDirectory"] == ["securechat"] and "XDG_RUNTIME_DIR=%t/securechat" in unit["Environment"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("PrivateDevices", "yes"), ("ProtectKernelTunables", "yes"),
                       ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"), ("LockPersonality", "yes"),
                       ("MemoryDenyWriteExecute", "yes"), ("CapabilityBoundingSet", ""), ("UMask", "0077"),
                       ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX")]:
        assert unit[key] == [value], key
    assert "@system-service" in unit["SystemCallFilter"]


def test_the_unit_allows_more_descriptors_than_the_default_connection_cap():
    from securechat.config import Config
    from securechat.server import descriptor_reserve

    (limit,) = unit_settings()["LimitNOFILE"]
    # Room for every connection, the reserve and what the process holds on its own (~20).
    assert int(limit) >= Config().max_connections + descriptor_reserve(int(limit)) + 100


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # verify insists ExecStart exists; point it at this machine's securechat (or python).
    executable = shutil.which("securechat") or sys.executable
    unit = tmp_path / "securechat.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/securechat", executable))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values, so its complaints are the verdict.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "securechat.service" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


# -- log lines ---------------------------------------------------------------------------------


def record(level=logging.WARNING, message="closing a connection from %s", args=("10.0.0.7",), exc_info=None):
    return logging.LogRecord("securechat", level, __file__, 1, message, args, exc_info)


def test_journal_lines_carry_the_priority_and_no_timestamp():
    journal = LineFormatter(journal=True, colour=True)
    assert journal.format(record()) == "<4>securechat: closing a connection from 10.0.0.7"
    assert journal.format(record(logging.INFO, "started", ())) == "<6>securechat: started"
    assert [priority(level) for level in (10, 20, 30, 40, 50, 25)] == [7, 6, 4, 3, 2, 6]


def test_plain_lines_have_a_timestamp_and_colour_only_when_asked():
    plain = LineFormatter().format(record())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING securechat: closing a connection from 10\.0\.0\.7",
                        plain)
    coloured = LineFormatter(colour=True).format(record())
    assert "\033[33mWARNING\033[0m" in coloured and "\033[" not in plain


def test_one_line_per_event_even_with_an_exception_or_a_newline():
    try:
        raise ValueError("bad frame")
    except ValueError:
        failure = record(logging.ERROR, "internal error from %s", ("a\nb",), sys.exc_info())
    line = LineFormatter(journal=True).format(failure)
    assert line == "<3>securechat: internal error from a\\nb (ValueError: bad frame)"
    verbose = LineFormatter(journal=True, verbose=True).format(failure)
    assert "\n" not in verbose and "Traceback (most recent call last)" in verbose


def test_journal_stream_must_be_this_very_stream(tmp_path):
    with open(tmp_path / "err", "w") as stream:
        stat = os.fstat(stream.fileno())
        assert is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}, stream)
        assert not is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"}, stream)
        assert not is_journal({"JOURNAL_STREAM": "nonsense"}, stream) and not is_journal({}, stream)


# -- a real server -----------------------------------------------------------------------------


def start_server(tmp_path: Path, stderr, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=clean_env(XDG_RUNTIME_DIR=str(tmp_path / "run"), **env),
        stdout=subprocess.DEVNULL, stderr=stderr)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
    return process, port


async def join_and_say(port: int, text: str) -> None:
    client = ChatClient(f"ws://127.0.0.1:{port}/ws", "alice")
    await client.connect()
    await client.send(text)
    await client.expect("ack")
    client.close()
    while await asyncio.wait_for(client.ws.read_message(), 5) is not None:
        pass


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sighup_rotates_the_log_and_says_so_in_one_journal_line(tmp_path):
    data = tmp_path / "data"
    # The server's stderr is a pipe; JOURNAL_STREAM names that pipe, as systemd would.
    read_end, write_end = os.pipe()
    stat = os.fstat(write_end)
    process, port = start_server(tmp_path, write_end, JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}")
    os.close(write_end)
    try:
        asyncio.run(join_and_say(port, "before the reload"))
        wait_for(lambda: "leave" in [r.record["event"] for r in read_log(data) if isinstance(r, LogRecord)])
        stored = [r.raw for r in read_log(data) if isinstance(r, LogRecord)]
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: list(data.glob("ciphertext-*.jsonl.gz")))
        process.send_signal(signal.SIGHUP)  # nothing new since: says so, makes no file
        asyncio.run(join_and_say(port, "after the reload"))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    with os.fdopen(read_end) as pipe:
        lines = pipe.read().splitlines()
    (gz,) = data.glob("ciphertext-*.jsonl.gz")
    rotated = [r.raw for r in read_log(data) if isinstance(r, LogRecord) and r.path.name == gz.name]
    live = [r.record["event"] for r in read_log(data) if isinstance(r, LogRecord) and r.path.name == "ciphertext.jsonl"]
    assert rotated == stored and live[:2] == ["join", "msg"]  # the chat after the reload went on
    assert f"<6>securechat: SIGHUP: rotated the ciphertext log to {gz.name}" in lines
    assert "<6>securechat: SIGHUP: the ciphertext log is empty; nothing to rotate" in lines
    assert lines and all(re.match(r"<[0-7]>\S", line) for line in lines), lines
    assert not any("\033[" in line or "Traceback" in line for line in lines)


def test_sighup_with_an_empty_log_rotates_nothing(tmp_path):
    process, port = start_server(tmp_path, subprocess.PIPE)
    process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=15)
    lines = err.decode().splitlines()
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO securechat: SIGHUP: the ciphertext log is empty; "
                            r"nothing to rotate", line) for line in lines), lines
    assert not list((tmp_path / "data").glob("ciphertext-*"))
