"""What `securechat serve` shows people and leaves behind: the banner, the runtime file, errors.

Start-up order: certificate, listen, runtime file, banner; shut-down removes the runtime file.
Every failure people can fix becomes one ClickException line, never a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.style import Style
from rich.text import Text

from . import __version__, qr, tls
from .admin import runtime
from .config import Config
from .server import ListenError, RunningServer, install_signal_handlers, start, tune_garbage_collector
from .storage.ciphertext_log import LogError, LogLocked
from .web.canonical import CanonicalHost, is_loopback, normalise, url_host

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
    return f"{scheme}://{url_host(host)}:{port}/"


def lan_hosts(listen_host: str | None, addresses: list, cert: tls.CertStatus | None = None,
              canonical: str | None = None) -> list[str]:
    """The hosts people on the LAN can open, canonical first, then addresses, then names.

    With a certificate, only what it covers: a browser would refuse the rest (and with your
    own --cert, this machine's addresses are often not in it). Its own names come along (a
    mkcert certificate for chat.lan); localhost never, it is added apart.
    """
    if listen_host not in ALL_INTERFACES:
        hosts = [] if is_loopback(listen_host) else [normalise(listen_host)]
    else:
        hosts = [str(a) for a in addresses if listen_host != "0.0.0.0" or a.version == 4]
    if cert is not None:
        names = [n for n in cert.sans if not n.startswith("*.") and _is_name(n)]
        if listen_host in ALL_INTERFACES:
            hosts += names
        hosts = [h for h in hosts if cert.covers(h)]
    if canonical is not None:
        hosts = [canonical, *hosts]
    return [h for h in dict.fromkeys(hosts) if not is_loopback(h)]


def _is_name(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return True
    return False


def server_urls(listen_host: str | None, port: int, scheme: str, addresses: list,
                cert: tls.CertStatus | None = None, canonical: str | None = None) -> list[str]:
    """Every URL people can open: the LAN ones (canonical first), then this machine's own.

    With a certificate, this machine's own URL too only if it covers it: ours always name
    localhost, yours (a mkcert certificate for chat.lan) may not, and then listing it would
    send people to a certificate error."""
    urls = [_url(scheme, host, port) for host in lan_hosts(listen_host, addresses, cert, canonical)]
    if listen_host in ALL_INTERFACES:
        # localhost first where a certificate names it (browsers treat it as secure anyway);
        # "::" is IPv6 only (Tornado sets IPV6_V6ONLY), so its loopback is ::1.
        loopback = "::1" if listen_host == "::" else "127.0.0.1"
        candidates = ["localhost", loopback] if scheme == "https" else [loopback]
    elif is_loopback(listen_host):
        candidates = [listen_host, "localhost"] if scheme == "https" else [listen_host]
    else:
        candidates = []
    local = [h for h in candidates if cert is None or cert.covers(h)]
    if local:
        urls.append(_url(scheme, local[0], port))
    return urls


def choose_canonical(config: Config, addresses: list, cert: tls.CertStatus | None) -> str | None:
    """The configured canonical host, else --host (if it is a LAN address), else the first LAN
    address the certificate covers (IPv4 first: every phone can open one). None: loopback only."""
    if config.canonical_host is not None:
        return config.canonical_host
    if config.listen_host not in ALL_INTERFACES:
        return None if is_loopback(config.listen_host) else normalise(config.listen_host)
    addresses_only = [h for h in lan_hosts(config.listen_host, addresses, cert) if not _is_name(h)]
    return addresses_only[0] if addresses_only else None


def admin_url(listen_host: str | None, port: int, scheme: str) -> str:
    """Where the admin commands on this machine call: loopback whenever the server listens there."""
    if listen_host == "::":
        return _url(scheme, "::1", port)
    if listen_host in ALL_INTERFACES:
        return _url(scheme, "127.0.0.1", port)
    return _url(scheme, listen_host, port)


# -- TLS ----------------------------------------------------------------------------------


def certificate(config: Config) -> tuple[tls.CertStatus | None, ssl.SSLContext | None]:
    """The certificate to serve and its TLS 1.2+ context: yours (--cert/--key), else one from
    the local CA (or self-signed with --self-signed), made or reused in the data dir.
    (None, None) without TLS."""
    if not config.uses_tls:
        return None, None
    extra = (config.canonical_host,) if config.canonical_host else ()
    try:
        if config.cert is not None:
            status = tls.load_certificate(config.cert, config.key)
        elif config.self_signed:
            status = tls.ensure_self_signed(config.data_dir, extra_names=extra)
        else:
            status = tls.ensure_local_ca(config.data_dir, extra_names=extra)
        if config.canonical_host is not None and not status.covers(config.canonical_host):
            raise tls.TLSConfigError(
                f"server.canonical_host {config.canonical_host} is not covered by the certificate "
                f"{status.cert_path} (it names {', '.join(status.sans) or 'nothing'})")
        return status, tls.server_ssl_context(status.cert_path, status.key_path)
    except tls.TLSConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_data_dir_error(config, exc, "the certificate")) from None


# -- the banner ---------------------------------------------------------------------------


def render_qr(url: str, colour: bool = True) -> Text:
    """A QR code of url in half blocks, so a phone can open it from the terminal.

    With colour, every cell sets both its colours (black on white, quiet zone included), so
    it scans on dark-on-light and light-on-dark terminals alike. Without (NO_COLOR), it can
    only use the terminal's own: light modules drawn as blocks, right for the more common
    light-on-dark terminal.
    """
    rows = qr.matrix(url)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    text = Text(no_wrap=True, overflow="ignore")
    for top, bottom in zip(rows[0::2], rows[1::2]):
        for upper, lower in zip(top, bottom):
            if colour:
                text.append("▀", Style(color=_QR_COLOURS[upper], bgcolor=_QR_COLOURS[lower]))
            else:
                text.append(_QR_PLAIN[(not upper, not lower)])
        text.append("\n")
    return text


_QR_COLOURS = {True: "#000000", False: "#ffffff"}
_QR_PLAIN = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def print_banner(console: Console, config: Config, urls: list[str], cert: tls.CertStatus | None,
                 setup_url: str | None = None) -> None:
    console.print(f"[bold]securechat {__version__}[/bold] is running. Open:")
    for url in urls:
        console.print(f"  {url}", markup=False)  # an IPv6 URL's brackets are not markup
    if not urls and cert is not None:
        console.print(f"  [yellow]warning[/yellow]    the certificate covers none of this server's addresses; it names "
                      f"{escape(', '.join(cert.sans) or 'nothing')}")
    if cert is None:
        console.print("  TLS        [yellow]off[/yellow] (plain http)")
        if config.listen_host != "127.0.0.1" and not _is_loopback(config.listen_host):
            console.print("  [yellow]warning[/yellow]    browsers on other devices refuse to encrypt over plain http;"
                          " use --tls")
    else:
        _print_certificate(console, cert, yours=config.cert is not None, setup_url=setup_url)
    console.print(f"  data dir   {config.data_dir}", markup=False)
    console.print(f"  log file   {config.log_dir / 'ciphertext.jsonl'}", markup=False)
    console.print("  admin      securechat status | securechat roster | securechat logs dump | securechat logs rotate")
    lan = [u for u in urls if "//127.0.0.1:" not in u and "//localhost:" not in u and "//[::1]:" not in u]
    target = setup_url or (lan[0] if lan else None)
    if target and console.is_terminal:
        # NO_COLOR leaves rich a colour system but strips every colour: the explicit black and
        # white would vanish and leave a block of ▀. Draw with the terminal's own colours then.
        colour = console.color_system is not None and not console.no_color
        console.print(render_qr(target, colour=colour), end="")
        what = "set up a phone and open the chat" if setup_url else "open the chat on a phone"
        console.print(f"  Scan to {what}: {target}", markup=False)
        if not colour:
            console.print("  (no colours: this code scans on a light-on-dark terminal only)", style="dim")
    console.print("  Press Ctrl-C to stop.")


def _print_certificate(console: Console, cert: tls.CertStatus, yours: bool, setup_url: str | None) -> None:
    if yours:
        kind = "your certificate"
    elif cert.ca is not None:
        kind = "issued by the local CA"
    else:
        kind = "self-signed"
    console.print(f"  TLS        [green]on[/green] ({kind}, valid until {cert.not_after:%Y-%m-%d})")
    if cert.ca is not None:
        console.print(f"  CA SHA-256 {cert.ca.fingerprint}", markup=False)
        if setup_url:
            console.print(f"  set up     {setup_url}", markup=False)
        console.print(f"             devices that install {cert.ca.name} see no warning", style="dim",
                      markup=False)
    console.print(f"  SHA-256    {cert.fingerprint}", markup=False)
    if not yours:
        # A certificate you bring is one your devices trust: no warning page to compare on.
        console.print("             compare this on the browser's certificate warning page", style="dim")
    if cert.generated:
        console.print(f"  new certificate made: {cert.reason}", markup=False)
    if cert.not_covered:
        console.print(f"  not covered {', '.join(cert.not_covered)} (the local CA signs only local names "
                      "and private addresses)", markup=False)
    for warning in cert.warnings:
        console.print(f"  [yellow]warning[/yellow]    {escape(warning)}")


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- running ------------------------------------------------------------------------------


def machine_names(addresses: list, cert: tls.CertStatus | None) -> list[str]:
    """Every name and address this machine answers to on the LAN, as far as it can tell."""
    hostname = socket.gethostname().lower().rstrip(".")
    names = [hostname, f"{hostname.split('.')[0]}.local", *(str(a) for a in addresses)]
    return names + (cert.sans if cert is not None else [])


async def run_server(config: Config) -> None:
    console = make_console()
    cert, context = certificate(config)
    addresses = tls.local_addresses()
    canonical = choose_canonical(config, addresses, cert)
    redirect = None
    if canonical is not None:
        redirect = CanonicalHost.choose(canonical, machine_names(addresses, cert), listen_host=config.host)
    local_ca = cert.ca.public() if cert is not None and cert.ca is not None else None
    try:
        server = await start(config, context, canonical=redirect, local_ca=local_ca,
                             host_names=tuple(machine_names(addresses, cert)))
    except LogLocked as exc:
        raise click.ClickException(_locked_error(config, exc)) from None
    except OSError as exc:
        # A file error names its file (the data dir, the log); a failed bind names none.
        message = _data_dir_error(config, exc, "the ciphertext log") if exc.filename else _bind_error(config, exc)
        raise click.ClickException(message) from None
    except (LogError, ListenError) as exc:
        raise click.ClickException(str(exc)) from None
    scheme = "https" if cert else "http"
    urls = server_urls(config.listen_host, server.port, scheme, addresses, cert, canonical)
    setup_url = None
    if local_ca is not None:
        setup_url = f"https://{url_host(canonical or 'localhost')}:{server.port}/setup"
    try:
        runtime_file = _write_runtime_file(server, scheme, urls, cert)
    except click.ClickException:
        await server.shutdown()
        raise
    try:
        install_signal_handlers(server)
        tune_garbage_collector()
        print_banner(console, server.config, urls, cert, setup_url)
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
    return register(info)


def register(info: runtime.ServerInfo) -> Path:
    """Write the runtime file the admin commands find this server by; one line if it cannot be."""
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
