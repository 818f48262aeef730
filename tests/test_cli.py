"""The `securechat` command as people run it: a real subprocess, readable errors, clean exits."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from helpers import clean_env, free_port, wait_for_http

from cli import main
from securechat import __version__
from securechat.client import ChatClient
from securechat.storage.ciphertext_log import LogRecord, read_log

ROOT = Path(__file__).resolve().parents[1]


def serve(tmp_path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         *args], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
    return process, port


def test_version_and_help():
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "--data-dir" in result.output


def test_bad_config_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'five'\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip() == "securechat: server.port must be an integer, not 'five'"


def test_unknown_option_is_usage_error():
    assert CliRunner().invoke(main, ["serve", "--prot", "1"]).exit_code == 2


def test_port_in_use_is_a_clear_error(tmp_path):
    first, port = serve(tmp_path)
    try:
        second = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port),
                                 "--data-dir", str(tmp_path / "other")], cwd=ROOT, env=clean_env(),
                                capture_output=True, text=True, timeout=20)
        assert second.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=15)


def test_sigterm_closes_websockets_with_1001_and_the_log(tmp_path):
    process, port = serve(tmp_path)

    async def scenario():
        client = ChatClient(f"ws://127.0.0.1:{port}/ws", "alice")
        await client.connect()
        await client.send("before shutdown")
        await client.next_message()
        process.send_signal(signal.SIGTERM)
        while await client.ws.read_message() is not None:
            pass
        client.close()
        return client.ws.close_code

    assert asyncio.run(scenario()) == 1001
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
    assert "Traceback" not in err
    events = [r.record["event"] for r in read_log(tmp_path / "data") if isinstance(r, LogRecord)]
    assert events == ["join", "msg", "leave"]
    # The writer lock was released: another server could open the same log now.
    assert not [r for r in read_log(tmp_path / "data") if not isinstance(r, LogRecord)]
