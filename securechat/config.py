"""One typed configuration object, loaded from defaults < TOML file < SECURECHAT_* env < flags.

Every setting lives in a section of the TOML file (`[server] port = 5000`) and has one
environment variable (`SECURECHAT_PORT`, `SECURECHAT_LOG_MAX_BYTES`); config.example.toml
documents them all. Anything unknown or mistyped is a ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .relay import roomname
from .web.proxy import parse_networks

ENV_PREFIX = "SECURECHAT_"
FSYNC_POLICIES = ("always", "interval", "never")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "securechat"


def _setting(section: str, default: Any, env: str | None = None, *, secret: bool = False, **extra):
    # A secret is kept out of repr() and out of error messages, which both end up in logs.
    return field(default=default, repr=not secret, metadata={"section": section, "env": env, "secret": secret, **extra})


@dataclass(frozen=True)
class Config:
    # [server]
    # None means "decide from tls": see listen_host.
    host: str | None = _setting("server", None)
    port: int = _setting("server", 5000, minimum=0, maximum=65535)
    data_dir: Path = _setting("server", None)
    room: str = _setting("server", "lobby")
    allowed_origins: tuple[str, ...] = _setting("server", ())
    # The one LAN address or name people open (identity keys are per origin); other names of
    # this machine redirect to it. None picks the first LAN address the certificate covers.
    canonical_host: str | None = _setting("server", None)
    # Names (or addresses) this server answers to besides its own: a reverse proxy's public
    # name, say. Any other Host gets 421 (DNS rebinding). See web/hosts.py.
    allowed_hosts: tuple[str, ...] = _setting("server", ())
    # Also listen on this unix socket, for a reverse proxy on the same machine: its peers are
    # the proxy (file permissions say who may connect), so their X-Forwarded-* headers count.
    unix_socket: Path | None = _setting("server", None)
    # Processes sharing the listening socket (`serve --workers N`); above 1 needs cluster.redis_url.
    workers: int = _setting("server", 1, minimum=1, maximum=64)
    # [tls]
    tls: bool = _setting("tls", False, env="SECURECHAT_TLS", key="enabled")
    cert: Path | None = _setting("tls", None, env="SECURECHAT_TLS_CERT")
    key: Path | None = _setting("tls", None, env="SECURECHAT_TLS_KEY")
    # Version 1's certificate instead of one from the local CA (implies TLS).
    self_signed: bool = _setting("tls", False, env="SECURECHAT_TLS_SELF_SIGNED")
    # [log]
    log_max_bytes: int = _setting("log", 10 * 1024 * 1024, minimum=1024)
    log_keep: int = _setting("log", 10, minimum=1)
    log_fsync: str = _setting("log", "interval", choices=FSYNC_POLICIES)
    log_fsync_interval: float = _setting("log", 1.0, minimum=0.01)
    # [limits]
    max_frame_bytes: int = _setting("limits", 1024 * 1024, minimum=4096)
    # At most protocol v2's MAX_RECIPIENTS: the Merkle path must fit in the wrapped key (PROTOCOL.md §7.3).
    max_participants: int = _setting("limits", 256, minimum=2, maximum=256)
    rate_per_second: float = _setting("limits", 10.0, minimum=0.1)
    rate_burst: int = _setting("limits", 30, minimum=1)
    max_clock_skew: float = _setting("limits", 300.0, minimum=1.0)
    ping_interval: float = _setting("limits", 20.0, minimum=1.0)
    ping_timeout: float = _setting("limits", 10.0, minimum=1.0)
    # TCP connections (page loads and WebSockets alike) in all and per client address; start()
    # lowers max_connections to what the file-descriptor limit allows.
    max_connections: int = _setting("limits", 10000, minimum=1)
    max_connections_per_address: int = _setting("limits", 32, minimum=1)
    # Sockets that have not joined yet: a smaller pool, and a deadline to join.
    max_unjoined: int = _setting("limits", 256, minimum=1)
    max_unjoined_per_address: int = _setting("limits", 4, minimum=1)
    join_timeout: float = _setting("limits", 15.0, minimum=1.0)
    # Plain HTTP: the time to send a request head (also how long an idle keep-alive connection
    # stays open), the time to send a body, and the largest body outside routes that stream.
    header_timeout: float = _setting("limits", 10.0, minimum=1.0)
    body_timeout: float = _setting("limits", 30.0, minimum=1.0)
    max_body_bytes: int = _setting("limits", 64 * 1024, minimum=1024)
    joins_per_minute: int = _setting("limits", 20, minimum=1)
    # Rooms (/r/<name>) open at once besides the default room, and rooms one address may be in.
    max_rooms: int = _setting("limits", 1000, minimum=1)
    max_rooms_per_address: int = _setting("limits", 16, minimum=1)
    max_outbound_bytes: int = _setting("limits", 4 * 1024 * 1024, minimum=65536)
    # [attachments]
    # The largest file people may send (its size before encryption); 0 turns attachments off.
    attachments_max_bytes: int = _setting("attachments", 25 * 1024 * 1024, minimum=0, maximum=2**40)
    attachments_quota_bytes: int = _setting("attachments", 1024 * 1024 * 1024, minimum=0)
    attachments_uploads_per_minute: int = _setting("attachments", 30, minimum=1)
    # 0 keeps attachments as long as a kept log file refers to them.
    attachments_retention_days: float = _setting("attachments", 30.0, minimum=0.0)
    attachments_grace_seconds: float = _setting("attachments", 3600.0, minimum=60.0)
    # [proxy]
    # Reverse proxies whose X-Forwarded-* headers are believed; empty believes nobody.
    proxy_trusted: tuple[str, ...] = _setting("proxy", ())
    # [cluster]
    # Redis (redis://, rediss:// or unix://) joining processes on one or several machines into
    # one server; None is today's single process. Secret: the URL may carry a password.
    cluster_redis_url: str | None = _setting("cluster", None, secret=True)
    # [admin]
    admin_token: str | None = _setting("admin", None, env="SECURECHAT_TOKEN", secret=True, min_length=16)
    # Not a setting: the names of the settings the file, the environment or a flag gave, so a
    # command can tell "the default data dir" from "this data dir, on purpose".
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    # Not a setting: which of `serve --workers N` this process is (0..N-1), None when alone.
    worker: int | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.ping_timeout > self.ping_interval:
            # Tornado would silently cap it; say so instead of running with another value.
            raise ConfigError(
                f"limits.ping_timeout ({self.ping_timeout}) must not exceed limits.ping_interval "
                f"({self.ping_interval})"
            )
        if self.max_outbound_bytes < self.max_frame_bytes:
            # Tornado refuses any single write larger than the cap, even to a fast reader.
            raise ConfigError("limits.max_outbound_bytes must be at least limits.max_frame_bytes")
        why = roomname.problem(self.room)
        if why is not None:
            raise ConfigError(f"server.room (SECURECHAT_ROOM): {why}, not {self.room!r}")
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", default_data_dir())
        if (self.cert is None) != (self.key is None):
            raise ConfigError("tls.cert and tls.key go together: give both or neither")
        if self.self_signed and self.cert is not None:
            raise ConfigError("tls.self_signed and tls.cert/tls.key exclude each other: "
                              "securechat makes the self-signed certificate, or you bring one")
        if self.canonical_host is not None:
            object.__setattr__(self, "canonical_host", _host_only(self.canonical_host))
        object.__setattr__(self, "allowed_hosts", tuple(
            _host_only(host, "server.allowed_hosts (SECURECHAT_ALLOWED_HOSTS)") for host in self.allowed_hosts))
        if self.cluster_redis_url is not None and not self.cluster_redis_url.startswith(
                ("redis://", "rediss://", "unix://")):
            raise ConfigError("cluster.redis_url (SECURECHAT_CLUSTER_REDIS_URL) must start with redis://, "
                              "rediss:// or unix://")
        try:
            parse_networks(self.proxy_trusted)
        except ValueError as exc:
            raise ConfigError(f"proxy.trusted (SECURECHAT_PROXY_TRUSTED): {exc}") from None

    @property
    def uses_tls(self) -> bool:
        """A certificate you bring (or ask for) implies TLS: nobody configures one for plain http."""
        return self.tls or self.cert is not None or self.self_signed

    @property
    def listen_host(self) -> str | None:
        """The address to bind; None binds every interface, IPv4 and IPv6.

        Plain http is a secure context only on localhost, so it stays there unless asked;
        TLS exists to serve the LAN, so it listens everywhere. An explicit host always wins.
        """
        if self.host is not None:
            return self.host
        return None if self.uses_tls else "127.0.0.1"

    @property
    def log_dir(self) -> Path:
        # One log per worker process: each has its own writer lock, and `logs dump` merges them.
        if self.worker is not None:
            return Path(self.data_dir) / "workers" / str(self.worker)
        return Path(self.data_dir)

    @property
    def attachments_enabled(self) -> bool:
        return self.attachments_max_bytes > 0

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _host_only(text: str, key: str = "server.canonical_host") -> str:
    """`192.168.1.20`, `[fd00::2]` or `myhost.local`: a host, lower-cased, without brackets."""
    host = text.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or not all(label and len(label) <= 63 and label.replace("-", "").isalnum()
                           and label.isascii() for label in labels):
        raise ConfigError(f"{key} must be a host name or address without scheme or port, "
                          f"like 192.168.1.20 or myhost.local; not {text!r}")
    return host.rstrip(".")


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Config) if "section" in f.metadata}


def toml_key(f: dataclasses.Field) -> str:
    """`log_max_bytes` sits in [log] as `max_bytes`; [server] keys keep their names."""
    section = f.metadata["section"]
    key = f.metadata.get("key") or f.name
    prefix = section + "_"
    return key[len(prefix) :] if key.startswith(prefix) else key


def env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or ENV_PREFIX + f.name.upper()


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config; `overrides` are CLI flags (None values mean "not given")."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_from_toml(Path(path)))
    values.update(_from_env(env))
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(_fields()[name], value, f"--{name.replace('_', '-')}")
    return Config(**values, given=frozenset(values))


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    by_key = {(f.metadata["section"], toml_key(f)): f for f in _fields().values()}
    sections = {section for section, _ in by_key}
    values = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {_misplaced(section, table, by_key, sections)}")
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, raw in table.items():
            f = by_key.get((section, key))
            if f is None:
                raise ConfigError(f"{path}: unknown key {section}.{key}{_elsewhere(key, by_key)}")
            # TOML has types: a number written as a string is a mistake, not a number.
            values[f.name] = _coerce(f, raw, f"{section}.{key}", strict=True)
    return values


def _misplaced(key: str, value: Any, by_key: dict, sections: set[str]) -> str:
    """A top-level `key = value`: every setting lives in a section; say which one."""
    homes = sorted(section for section, name in by_key if name == key)
    if homes:
        shown = json.dumps(value) if isinstance(value, (str, bool, int, float)) else "…"
        return f"{key} is outside any section; put `{key} = {shown}` under [{homes[0]}] ({homes[0]}.{key})"
    if key in sections:
        return f"[{key}] must be a table of settings, not a single value"
    return f"unknown key {key} (every setting lives in a section such as [server]; see config.example.toml)"


def _elsewhere(key: str, by_key: dict) -> str:
    homes = sorted(f"{section}.{name}" for section, name in by_key if name == key)
    return f"; did you mean {' or '.join(homes)}?" if homes else ""


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for f in _fields().values():
        name = env_name(f)
        if name in env:
            values[f.name] = _coerce(f, _parse_env(f, env[name], name), name)
    return values


def _parse_env(f: dataclasses.Field, text: str, name: str) -> Any:
    kind = _kind(f)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be true or false, not {text!r}")
    if kind is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _kind(f: dataclasses.Field):
    annotation = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("tuple", tuple), ("Path", Path)):
        if annotation.startswith(name):
            return kind
    return str


def _coerce(f: dataclasses.Field, value: Any, where: str, *, strict: bool = False) -> Any:
    """value as the setting's type; strict (a TOML file) refuses text where a number belongs,
    while environment variables, which are always text, are parsed."""
    kind = _kind(f)
    shown = "the value given" if f.metadata.get("secret") else repr(value)
    try:
        if strict and kind in (int, float) and isinstance(value, str):
            raise TypeError
        coerced = _convert(kind, value)
    except (TypeError, ValueError):
        hint = f" (write {value.strip()} without quotes)" if strict and isinstance(value, str) \
            and _parses_as(kind, value) else ""
        raise ConfigError(f"{where} must be {_describe(kind)}, not {shown}{hint}") from None
    _check_range(f, coerced, where, shown)
    return coerced


def _convert(kind, value):
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        return float(value)
    if kind is tuple:
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise TypeError
        return tuple(value)
    if kind is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise TypeError
        return Path(value).expanduser()
    if not isinstance(value, str):
        raise TypeError
    return value


def _parses_as(kind, text: str) -> bool:
    try:
        _convert(kind, text)
    except (TypeError, ValueError):
        return False
    return True


def _describe(kind) -> str:
    return {bool: "true or false", int: "an integer", float: "a number",
            tuple: "a list of strings", Path: "a path"}.get(kind, "a string")


def _check_range(f: dataclasses.Field, value: Any, where: str, shown: str) -> None:
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(meta['choices'])}, not {shown}")
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(f"{where} must be at least {meta['minimum']}, not {shown}")
    if "maximum" in meta and value > meta["maximum"]:
        raise ConfigError(f"{where} must be at most {meta['maximum']}, not {shown}")
    if "min_length" in meta and len(value) < meta["min_length"]:
        raise ConfigError(f"{where} must be at least {meta['min_length']} characters long")
