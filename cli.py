"""The `securechat` command: Click wiring only; the work happens in the securechat package."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from securechat import __version__
from securechat.config import Config, ConfigError, load_config

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class UserError(click.ClickException):
    """One readable line on stderr and exit code 1, never a traceback."""

    def show(self, file=None) -> None:
        click.echo(f"securechat: {self.format_message()}", err=True)


def build_config(config_file: Path | None, **flags) -> Config:
    try:
        return load_config(config_file, overrides=flags)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request is noise on a chat server; failures are still logged.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="securechat")
def main() -> None:
    """securechat: an end-to-end encrypted group chat for your LAN.

    \b
    Start it:  securechat serve
    Then open http://127.0.0.1:5000 in a browser.
    """


@main.command(context_settings=CONTEXT)
@click.option("--host", help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port to listen on.  [default: 5000]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the ciphertext log lives.  [default: ~/.local/share/securechat]")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="SECURECHAT_CONFIG", help="A TOML file (see config.example.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def serve(host, port, data_dir, config_file, verbose) -> None:
    """Start the chat server.

    \b
    Examples:
      securechat serve
      securechat serve --port 8443 --data-dir /var/lib/securechat
    """
    config = build_config(config_file, host=host, port=port, data_dir=data_dir)
    setup_logging(verbose)
    from securechat.console import run_server

    try:
        asyncio.run(run_server(config))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
