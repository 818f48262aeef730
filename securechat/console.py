"""What `securechat serve` shows people and leaves behind: the banner, the runtime file, errors.

Start-up order: certificate, listen, runtime file, banner; shut-down removes the runtime file.
Every failure people can fix becomes one ClickException line, never a traceback.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import logging
import os
import ssl
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from . import __version__, tls
from .admin import runtime
from .config import Config
from .server import RunningServer, install_signal_handlers, start, tune_garbage_collector
from .storage.ciphertext_log import LogError, LogLocked

ALL_INTERFACES = (None, "", "0.0.0.0", "::")
log = logging.getLogger("securechat")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit 1; `securechat logs dump | head -1` is a normal end, which the CLI
        # turns into exit 0 for every command alike.
        self.quiet = True
        raise BrokenPipeError


def make_console(stderr: bool = False) -> Console:
    """Colour only on a terminal (rich itself honours NO_COLOR); wide when piped, so no wrapping.

    emoji=False: rich would turn ":CD:" inside a certificate fingerprint into an emoji.

    soft_wrap keeps a URL or fingerprint on one line even in a narrow terminal or a CI log
    with COLUMNS set: a fingerprint split in two cannot be compared or copied.
    """
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    width = None if terminal or os.environ.get("COLUMNS") else 200
    return _Console(stderr=stderr, highlight=False, color_system="auto" if terminal else None, width=width,
                    soft_wrap=True, emoji=False)


# -- URLs ---------------------------------------------------------------------------------


def _url(scheme: str, host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def server_urls(listen_host: str | None, port: int, scheme: str, addresses: list) -> list[str]:
    """Every URL people can open: one per LAN address, then this machine's own."""
    if listen_host not in ALL_INTERFACES:
        return [_url(scheme, listen_host, port)]
    lan = [a for a in addresses if listen_host != "0.0.0.0" or a.version == 4]
    local = "localhost" if scheme == "https" else "127.0.0.1"  # the certificate names localhost
    return [_url(scheme, str(a), port) for a in lan] + [_url(scheme, local, port)]


def admin_url(listen_host: str | None, port: int, scheme: str) -> str:
    """Where the admin commands on this machine call: loopback whenever the server listens there."""
    if listen_host == "::":
        return _url(scheme, "::1", port)
    if listen_host in ALL_INTERFACES:
        return _url(scheme, "127.0.0.1", port)
    return _url(scheme, listen_host, port)


# -- TLS ----------------------------------------------------------------------------------


def certificate(config: Config) -> tuple[tls.CertStatus | None, ssl.SSLContext | None]:
    """The certificate to serve and its TLS 1.2+ context: yours (--cert/--key), else ours,
    made or reused in the data dir. (None, None) without TLS."""
    if not config.uses_tls:
        return None, None
    try:
        if config.cert is not None:
            status = tls.load_certificate(config.cert, config.key)
        else:
            status = tls.ensure_self_signed(config.data_dir)
        return status, tls.server_ssl_context(status.cert_path, status.key_path)
    except tls.TLSConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_data_dir_error(config, exc, "the certificate")) from None


# -- the banner ---------------------------------------------------------------------------


def render_qr(url: str) -> str:
    """A QR code of url in terminal block characters, so a phone can open the chat."""
    import qrcode

    code = qrcode.QRCode(border=1)
    code.add_data(url)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def print_banner(console: Console, config: Config, urls: list[str], cert: tls.CertStatus | None) -> None:
    console.print(f"[bold]securechat {__version__}[/bold] is running. Open:")
    for url in urls:
        console.print(f"  {url}", markup=False)  # an IPv6 URL's brackets are not markup
    if cert is None:
        console.print("  TLS        [yellow]off[/yellow] (plain http)")
        if config.listen_host != "127.0.0.1" and not _is_loopback(config.listen_host):
            console.print("  [yellow]warning[/yellow]    browsers on other devices refuse to encrypt over plain http;"
                          " use --tls")
    else:
        _print_certificate(console, cert, yours=config.cert is not None)
    console.print(f"  data dir   {config.data_dir}", markup=False)
    console.print(f"  log file   {config.log_dir / 'ciphertext.jsonl'}", markup=False)
    console.print("  admin      securechat roster | securechat logs dump | securechat logs rotate")
    lan = [u for u in urls if "//127.0.0.1:" not in u and "//localhost:" not in u]
    if lan and console.is_terminal:
        console.print(render_qr(lan[0]), markup=False, highlight=False)
    console.print("  Press Ctrl-C to stop.")


def _print_certificate(console: Console, cert: tls.CertStatus, yours: bool) -> None:
    kind = "your certificate" if yours else "self-signed"
    console.print(f"  TLS        [green]on[/green] ({kind}, valid until {cert.not_after:%Y-%m-%d})")
    console.print(f"  SHA-256    {cert.fingerprint}", markup=False)
    console.print("             compare this on the browser's certificate warning page", style="dim")
    if cert.generated:
        console.print(f"  new certificate made: {cert.reason}", markup=False)
    for warning in cert.warnings:
        console.print(f"  [yellow]warning[/yellow]    {escape(warning)}")


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- running ------------------------------------------------------------------------------


async def run_server(config: Config) -> None:
    console = make_console()
    cert, context = certificate(config)
    try:
        server = await start(config, context)
    except LogLocked as exc:
        raise click.ClickException(_locked_error(config, exc)) from None
    except OSError as exc:
        # A file error names its file (the data dir, the log); a failed bind names none.
        message = _data_dir_error(config, exc, "the ciphertext log") if exc.filename else _bind_error(config, exc)
        raise click.ClickException(message) from None
    except LogError as exc:
        raise click.ClickException(str(exc)) from None
    scheme = "https" if cert else "http"
    urls = server_urls(config.listen_host, server.port, scheme, tls.local_addresses())
    try:
        runtime_file = _write_runtime_file(server, scheme, urls, cert)
    except click.ClickException:
        await server.shutdown()
        raise
    try:
        install_signal_handlers(server)
        tune_garbage_collector()
        print_banner(console, server.config, urls, cert)
        await server.stopped.wait()
    finally:
        runtime.remove(runtime_file)


def _write_runtime_file(server: RunningServer, scheme: str, urls: list[str], cert) -> Path:
    config = server.config
    info = runtime.ServerInfo(
        pid=os.getpid(), version=__version__, started=server.hub.started,
        # absolute: the admin commands compare it from wherever they run
        data_dir=str(runtime.resolved(config.data_dir)),
        scheme=scheme, port=server.port, urls=urls, admin_url=admin_url(config.listen_host, server.port, scheme),
        token=config.admin_token, cert_fingerprint=cert.fingerprint if cert else None,
    )
    problems: list[str] = []
    directory = runtime.runtime_dir(problems=problems)
    for problem in problems:  # e.g. a shared XDG_RUNTIME_DIR: say why we registered elsewhere
        log.warning("runtime dir: %s; using %s instead", problem, directory)
    try:
        return runtime.write(directory, info)
    except runtime.UnsafeRuntimeDir as exc:
        raise click.ClickException(f"cannot register this server for the admin commands: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the runtime file in {directory}: {exc.strerror}") from None


def _data_dir_error(config: Config, exc: OSError, what: str) -> str:
    """A file the server must write cannot be: say which, why, and what to do."""
    path = exc.filename or config.data_dir
    why = (exc.strerror or str(exc)).lower()
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a data dir you can write with --data-dir (or server.data_dir, SECURECHAT_DATA_DIR)"
    elif exc.errno == errno.ENOSPC:
        fix = "free some space or choose another --data-dir"
    else:
        fix = "check --data-dir"
    if runtime.resolved(path) == runtime.resolved(config.data_dir):
        where = f"the data dir {path}"
    else:
        where = f"{path} (data dir {config.data_dir})"
    return f"cannot write {what}: {where}: {why}; {fix}"


def _locked_error(config: Config, exc: LogLocked) -> str:
    who = runtime.holder(config.data_dir, runtime.running_servers())
    by = f"another securechat server ({who})" if who else "another securechat process"
    return (f"the ciphertext log in {config.data_dir} is in use by {by}; stop it, or give this "
            "one its own --data-dir")


def _bind_error(config: Config, exc: OSError) -> str:
    host = config.listen_host or "every interface"
    if exc.errno == errno.EADDRINUSE:
        return f"port {config.port} on {host} is already in use; pick another with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; check --host"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {config.port}; use a port above 1023"
    return f"cannot listen on {host}:{config.port}: {exc.strerror or exc}"
