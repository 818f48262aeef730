"""What `securechat serve` shows people: the start-up banner, and failures as one clear line."""

from __future__ import annotations

import errno

import click
from rich.console import Console

from .ciphertext_log import LogError
from .config import Config
from .server import install_signal_handlers, start


def url_for(config: Config, port: int, scheme: str = "http") -> str:
    host = config.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def print_banner(console: Console, config: Config, port: int) -> None:
    console.print(f"[bold]securechat[/bold] is running at [link]{url_for(config, port)}[/link]")
    console.print(f"  data dir   {config.data_dir}")
    console.print(f"  log file   {config.log_dir / 'ciphertext.jsonl'}")
    console.print("  Press Ctrl-C to stop.")


async def run_server(config: Config) -> None:
    console = Console(stderr=False, highlight=False)
    try:
        server = await start(config)
    except OSError as exc:
        raise click.ClickException(_bind_error(config, exc)) from None
    except LogError as exc:
        raise click.ClickException(str(exc)) from None
    install_signal_handlers(server)
    print_banner(console, config, server.port)
    await server.stopped.wait()


def _bind_error(config: Config, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {config.port} on {config.host} is already in use; pick another with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{config.host} is not an address of this machine; check --host"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {config.port}; use a port above 1023"
    return f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
