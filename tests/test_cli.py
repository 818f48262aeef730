"""The `securechat` command as people run it: a real subprocess, readable errors, clean exits."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from helpers import as_another_user, clean_env, free_port, wait_for_http
from security.rawws import RawWebSocket

from cli import main
from securechat import __version__, crypto
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


def test_sigterm_with_members_that_never_answer_is_a_clean_exit(tmp_path):
    """Members over the WebSocket, over the HTTP stream, and one that never reads again (so it
    never answers the close): every one leaves, logged, and nothing is written after the log is
    closed. Before, a close that came in late ran its leave against the closed log: "Uncaught
    exception GET /ws ... LogError: the ciphertext log ... is closed"."""
    process, port = serve(tmp_path)

    def mute_member():
        ws = RawWebSocket("127.0.0.1", port)
        client = ChatClient("unused", "mute", challenge=ws.hello["challenge"])
        client.session = crypto.SessionKey.generate()
        ws.send_json(client.join_frame("lobby"))
        assert ws.recv_json()["type"] == "welcome"
        return ws  # and never reads again

    async def scenario():
        alice = ChatClient(f"ws://127.0.0.1:{port}/ws", "alice")
        carol = ChatClient(f"http://127.0.0.1:{port}/ws", "carol", transport="http")
        await alice.connect()
        await carol.connect()
        mute = await asyncio.get_running_loop().run_in_executor(None, mute_member)
        await alice.send("before shutdown")
        await alice.next_message()
        process.send_signal(signal.SIGTERM)
        while await alice.ws.read_message() is not None:
            pass
        alice.close()
        carol.close()
        return mute

    mute = asyncio.run(scenario())
    out, err = process.communicate(timeout=15)
    mute.sock.close()
    assert process.returncode == 0, err
    assert "Traceback" not in err and "Uncaught exception" not in err, err
    records = [r.record for r in read_log(tmp_path / "data") if isinstance(r, LogRecord)]
    left = sorted(r["username"] for r in records if r["event"] == "leave")
    assert left == ["alice", "carol", "mute"], records


def test_a_data_dir_in_use_says_which_server_holds_it(tmp_path):
    first, port = serve(tmp_path)
    try:
        second = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "data")], cwd=ROOT, env=clean_env(),
                                capture_output=True, text=True, timeout=20)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=15)
    assert second.returncode == 1
    assert second.stderr == (f"securechat: the ciphertext log in {tmp_path / 'data'} is in use by another "
                             f"securechat server (pid {first.pid}, port {port}); stop it, or give this one "
                             "its own --data-dir\n")


def test_dumping_into_a_pipe_that_closes_early_is_a_normal_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    record = '{"event":"join","t":1000,"username":"alice","fingerprint":"' + "ab" * 32 + '"}\n'
    (data / "ciphertext.jsonl").write_text(record * 5000)  # far more than a pipe buffers
    for args in (["--json"], []):
        dump = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "logs", "dump", *args, "--data-dir",
                                 str(data)], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        first = dump.stdout.readline()  # what `| head -1` does: read a line, then go away
        dump.stdout.close()
        err = dump.communicate(timeout=20)[1].decode()
        assert first and dump.returncode == 0 and err == "", (args, dump.returncode, err)


def test_verbose_shows_each_join_and_leave(tmp_path):
    async def come_and_go(port: int) -> str:
        client = ChatClient(f"ws://127.0.0.1:{port}/ws", "alice")
        await client.connect()
        client.close()
        await asyncio.sleep(0.3)
        return client.fingerprint

    for verbose in (True, False):
        process, port = serve(tmp_path / str(verbose), *(["-v"] if verbose else []))
        fingerprint = asyncio.run(come_and_go(port))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
        prefix = " ".join(fingerprint[i:i + 4] for i in range(0, 16, 4))
        joined = f"securechat: alice joined (fingerprint {prefix} …) from 127.0.0.1"
        left = f"securechat: alice left (fingerprint {prefix} …) from 127.0.0.1"
        if verbose:
            assert joined in err and left in err, err
            assert err.index(joined) < err.index(left)
        else:
            assert "alice" not in err, err


def test_an_unwritable_data_dir_names_the_path_not_the_port(tmp_path_factory):
    """As a real non-root user (root may write anywhere): the data dir, not the port, and the fix."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="securechat-nobody-"))
    try:
        runner = as_another_user(root)
        assert runner is not None, "no way to run securechat as a non-root user here (setpriv, python3)"
        prefix, env = runner
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o555)  # nobody (nor a non-root us) may create anything in it
        for tls in ([], ["--tls"]):
            result = subprocess.run([*prefix, "-m", "cli", "serve", *tls, "--port", str(free_port()),
                                     "--data-dir", str(locked / "x")], cwd=root, env=env,
                                    capture_output=True, text=True, timeout=30)
            assert result.returncode == 1, result.stderr
            what = "the certificate" if tls else "the ciphertext log"
            assert result.stderr == (f"securechat: cannot write {what}: the data dir {locked / 'x'}: permission "
                                     "denied; choose a data dir you can write with --data-dir (or "
                                     "server.data_dir, SECURECHAT_DATA_DIR)\n"), result.stderr
            assert "port" not in result.stderr.replace("(or", "")  # the old "not allowed to listen on port"
    finally:
        import shutil

        (root / "locked").chmod(0o755) if (root / "locked").exists() else None
        shutil.rmtree(root, ignore_errors=True)
