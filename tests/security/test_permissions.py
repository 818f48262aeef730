"""Attack: another local user reads the log, the TLS key or the admin token. Defence: owner-only files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from helpers import clean_env, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_secret_and_log_file_is_owner_only_even_with_a_loose_umask(tmp_path):
    port = free_port()
    data, run = tmp_path / "data", tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--tls", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data)],
        cwd=ROOT, env=clean_env(XDG_RUNTIME_DIR=str(run)), preexec_fn=lambda: os.umask(0o002),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        wait_for_http(f"https://127.0.0.1:{port}/healthz", process, context=context)
        runtime_file = next((run / "securechat").glob("server-*.json"))
        info = json.loads(runtime_file.read_text())
        request = urllib.request.Request(f"https://127.0.0.1:{port}/api/admin/logs/rotate", method="POST",
                                         headers={"Authorization": f"Bearer {info['token']}"}, data=b"")
        urllib.request.urlopen(request, context=context, timeout=5).read()
        expectations = {
            data: 0o700, data / "tls": 0o700, data / "tls" / "key.pem": 0o600, data / "tls" / "ca-key.pem": 0o600,
            data / "ciphertext.jsonl": 0o600, data / "ciphertext.lock": 0o600,
            run / "securechat": 0o700, runtime_file: 0o600,
        }
        for path, expected in expectations.items():
            assert mode(path) == expected, f"{path} is {oct(mode(path))}, want {oct(expected)}"
        for path in data.glob("ciphertext-*"):
            assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"
        # Nothing in the data dir is readable by group or others, whatever it is.
        for path in data.rglob("*"):
            if path.name not in ("cert.pem", "ca.pem"):  # certificates are public; their keys are not
                assert not mode(path) & 0o077, f"{path} is {oct(mode(path))}"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    assert info["token"] not in out + err, "the admin token was printed"
    assert not runtime_file.exists(), "the runtime file outlived the server"
