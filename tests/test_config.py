"""Configuration precedence and errors: flag > SECURECHAT_* > TOML file > default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from securechat.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "securechat.toml"
    path.write_text(text)
    return path


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    config = load_config(env={})
    assert (config.host, config.port, config.tls) == (None, 5000, False)
    assert config.listen_host == "127.0.0.1"
    assert config.data_dir == tmp_path / "securechat"


@pytest.mark.parametrize("settings, listen", [
    ({}, "127.0.0.1"),                                   # plain http: this machine only
    ({"tls": True}, None),                               # TLS: every interface, both families
    ({"cert": Path("c.pem"), "key": Path("k.pem")}, None),  # a certificate implies TLS
    ({"tls": True, "host": "192.168.1.20"}, "192.168.1.20"),  # an explicit host always wins
    ({"host": "0.0.0.0"}, "0.0.0.0"),
])
def test_listen_host_follows_tls_unless_given(settings, listen):
    assert Config(**settings).listen_host == listen


def test_cert_and_key_go_together(tmp_path):
    with pytest.raises(ConfigError, match="tls.cert and tls.key go together"):
        load_config(env={"SECURECHAT_TLS_CERT": str(tmp_path / "cert.pem")})


def test_admin_token_is_secret():
    token = "s3cret-token-0123456789"
    config = load_config(env={"SECURECHAT_TOKEN": token})
    assert config.admin_token == token
    assert token not in repr(config)
    with pytest.raises(ConfigError) as info:
        load_config(env={"SECURECHAT_TOKEN": "short"})
    assert "at least 16 characters" in str(info.value) and "short" not in str(info.value)


def test_precedence(tmp_path):
    path = write(tmp_path, "[server]\nport = 6000\nhost = '0.0.0.0'\n[log]\nkeep = 3\n")
    env = {"SECURECHAT_PORT": "7000", "SECURECHAT_LOG_KEEP": "4"}
    config = load_config(path, env=env, overrides={"port": 8000, "host": None})
    assert (config.port, config.host, config.log_keep) == (8000, "0.0.0.0", 4)
    assert load_config(path, env=env).port == 7000
    assert load_config(path, env={}).port == 6000


def test_example_file_documents_every_key_and_loads():
    example = ROOT / "config.example.toml"
    config = load_config(example, env={})
    assert isinstance(config, Config)
    text = example.read_text()
    from securechat.config import _fields, toml_key

    for f in _fields().values():
        assert f"{toml_key(f)} =" in text, f"config.example.toml does not document {f.name}"


@pytest.mark.parametrize("text, message", [
    ("[server]\nprot = 1\n", "unknown key server.prot"),
    ("[srever]\nport = 1\n", "unknown section [srever]"),
    ("[server]\nport = 'x'\n", "server.port must be an integer"),
    # TOML has types: text where a number belongs is a mistake, even if it looks like one
    ('[server]\nport = "5001"\n', "server.port must be an integer, not '5001' (write 5001 without quotes)"),
    ('[limits]\nrate_per_second = "2.5"\n', "limits.rate_per_second must be a number, not '2.5'"),
    ('[log]\nmax_bytes = "1048576"\n', "log.max_bytes must be an integer"),
    # a setting outside its section says which section it belongs in
    ("port = 5001\n", "port is outside any section; put `port = 5001` under [server] (server.port)"),
    ('host = "0.0.0.0"\n', 'put `host = "0.0.0.0"` under [server]'),
    ("keep = 3\n", "under [log] (log.keep)"),
    ("[server]\nkeep = 3\n", "unknown key server.keep; did you mean log.keep?"),
    ("tls = true\n", "[tls] must be a table of settings"),
    ("bogus = 1\n", "unknown key bogus (every setting lives in a section such as [server]"),
    ("[server]\nport = 70000\n", "server.port must be at most 65535"),
    # protocol v2 caps a message at 256 recipients (PROTOCOL.md §7.3), so a room too
    ("[limits]\nmax_participants = 257\n", "limits.max_participants must be at most 256"),
    ("[log]\nfsync = 'sometimes'\n", "log.fsync must be one of always, interval, never"),
    ("[tls]\nenabled = 'yes'\n", "tls.enabled must be true or false"),
    ("[server]\nallowed_origins = 'https://a'\n", "server.allowed_origins must be a list of strings"),
    ("[server\n", "is not valid TOML"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, text), env={})


def test_env_errors_name_the_variable():
    with pytest.raises(ConfigError, match="SECURECHAT_PORT must be an integer"):
        load_config(env={"SECURECHAT_PORT": "five"})
    with pytest.raises(ConfigError, match="SECURECHAT_TLS must be true or false"):
        load_config(env={"SECURECHAT_TLS": "maybe"})


def test_env_values_are_text_and_parsed():
    config = load_config(env={"SECURECHAT_PORT": "5001", "SECURECHAT_RATE_PER_SECOND": "2.5"})
    assert config.port == 5001 and config.rate_per_second == 2.5


def test_which_settings_were_given(tmp_path):
    assert load_config(env={}).given == frozenset()
    path = write(tmp_path, "[server]\nport = 6000\n")
    config = load_config(path, env={"SECURECHAT_ROOM": "x"}, overrides={"data_dir": tmp_path, "host": None})
    assert config.given == {"port", "room", "data_dir"}


def test_env_lists_and_booleans():
    config = load_config(env={"SECURECHAT_ALLOWED_ORIGINS": "https://a, https://b", "SECURECHAT_TLS": "on"})
    assert config.allowed_origins == ("https://a", "https://b") and config.tls is True


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
