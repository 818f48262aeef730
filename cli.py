"""The `securechat` command: Click wiring only; the work happens in the securechat package."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import click

from securechat import __version__
from securechat.config import Config, ConfigError, load_config

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class UserError(click.ClickException):
    """One readable line on stderr and exit code 1 (2 for a choice the user must make), never
    a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"securechat: {self.format_message()}", err=True)


class Securechat(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `securechat logs dump | head -1`: the reader has all it wanted; a normal end.
            # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


def build_config(config_file: Path | None, **flags) -> Config:
    try:
        return load_config(config_file, overrides=flags)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def setup_logging(verbose: bool) -> None:
    from securechat.logfmt import configure

    # One line per event on stderr; `<N>`-prefixed and without timestamps under journald.
    configure(verbose)
    # One line per HTTP request is noise on a chat server; failures are still logged.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


@click.group(cls=Securechat, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="securechat")
def main() -> None:
    """securechat: an end-to-end encrypted group chat for your LAN.

    \b
    Start it:  securechat serve
    Then open http://127.0.0.1:5000 in a browser.
    """


def config_options(command=None, *, several: bool = False):
    """--config and --data-dir: how every command finds the configuration and the data.
    several=True: --data-dir may be given more than once (`logs dump` of several machines)."""
    if command is None:
        return lambda command: config_options(command, several=several)
    command = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), multiple=several,
                           help="Where the ciphertext log lives" + ("; again for another machine's, read "
                           "as one log in time order" if several else "") +
                           ".  [default: ~/.local/share/securechat]")(command)
    return click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                        envvar="SECURECHAT_CONFIG", help="A TOML file (see config.example.toml).")(command)


class FingerprintParam(click.ParamType):
    name = "SHA256"

    def convert(self, value, param, ctx):
        from securechat.admin.client import normalise_fingerprint

        try:
            return normalise_fingerprint(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def server_options(command=None, *, several: bool = False):
    """How an admin command picks its server: one running here (--port, --data-dir to choose
    among several) or any server by --url, --token and how to trust its certificate.
    several=True: --url may be given more than once (`logs dump` of several machines)."""
    if command is None:
        return lambda command: server_options(command, several=several)
    command = click.option("--cacert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                           help="With --url: trust certificates this CA (PEM) issued, e.g. the "
                           "server's <data dir>/tls/ca.pem.")(command)
    command = click.option("--fingerprint", type=FingerprintParam(),
                           help="With --url: trust exactly the certificate with this SHA-256 "
                           "fingerprint (what `securechat tls show` prints on the server).")(command)
    command = click.option("--token", help="The server's admin token; prefer SECURECHAT_TOKEN "
                           "(a flag shows up in `ps`).")(command)
    command = click.option("--url", multiple=several,
                           help="The server's base URL, e.g. https://192.168.1.20:5000/" +
                           ("; again for another machine (same token)" if several else "") +
                           ".  [default: the server running here]")(command)
    return click.option("--port", type=click.IntRange(1, 65535),
                        help="The running server on this port, when several run here.")(command)


class RoomParam(click.ParamType):
    name = "NAME"

    def convert(self, value, param, ctx):
        from securechat.relay import roomname

        why = roomname.problem(value)
        if why is not None:
            self.fail(why, param, ctx)
        return value


class TimeParam(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        from securechat.admin.dump import parse_time

        try:
            return parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@main.command(context_settings=CONTEXT)
@click.option("--host", help="Address to listen on.  [default: 127.0.0.1; every interface with --tls]")
@click.option("--port", type=int, help="Port to listen on.  [default: 5000]")
@click.option("--tls/--no-tls", default=None,
              help="Serve https/wss with a certificate from securechat's local CA, unless --cert/--key "
                   "or --self-signed.  [default: off]")
@click.option("--self-signed", is_flag=True, default=None,
              help="With TLS, a self-signed certificate instead of the local CA's (version 1's way).")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path),
              help="Your certificate chain (PEM); needs --key and turns TLS on.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="The key of --cert (PEM).")
@click.option("--canonical-host", metavar="HOST",
              help="The LAN address or name people open; other names of this machine redirect to it.  "
                   "[default: the first LAN address the certificate covers]")
@click.option("--workers", type=click.IntRange(1, 64), metavar="N",
              help="Run N processes sharing the port, one per core; above 1 needs [cluster] redis_url.  "
                   "[default: 1]")
@config_options
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def serve(host, port, tls, self_signed, cert, key, canonical_host, workers, data_dir, config_file,
          verbose) -> None:
    """Start the chat server.

    Without --tls it serves http://127.0.0.1:5000, this machine only. With --tls it serves
    https on every interface so phones and laptops on the LAN can join, with a certificate
    from a local CA it keeps in the data dir: a device that installs the CA once (the
    https://<address>:5000/setup page shows how) never sees a certificate warning.

    \b
    Examples:
      securechat serve
      securechat serve --tls
      securechat serve --tls --self-signed
      securechat serve --tls --cert chat.pem --key chat-key.pem --port 8443
      securechat serve --port 8000 --data-dir /var/lib/securechat
      SECURECHAT_CLUSTER_REDIS_URL=redis://127.0.0.1:6379/0 securechat serve --workers 4
    """
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together: give both or neither")
    if self_signed and cert is not None:
        raise click.UsageError("--self-signed and --cert/--key exclude each other")
    config = build_config(config_file, host=host, port=port, tls=tls, self_signed=self_signed or None,
                          cert=cert, key=key, canonical_host=canonical_host, workers=workers,
                          data_dir=data_dir)
    if config.workers > 1 and config.cluster_redis_url is None:
        raise UserError(f"--workers {config.workers} needs Redis to share rooms between the processes: set "
                        "[cluster] redis_url (or SECURECHAT_CLUSTER_REDIS_URL), e.g. redis://127.0.0.1:6379/0")
    setup_logging(verbose)
    from securechat.console import run_server

    try:
        if config.workers > 1:
            from securechat.cluster import workers as cluster_workers

            cluster_workers.serve(config)
            return
        asyncio.run(run_server(config))
    except click.ClickException as exc:
        raise UserError(exc.format_message()) from None
    except KeyboardInterrupt:
        pass


@main.group(context_settings=CONTEXT)
def tls() -> None:
    """Inspect the TLS certificate `serve --tls` uses, and export its local CA.

    \b
    Examples:
      securechat tls show
      securechat tls ca export securechat-ca.crt
    """


@tls.command("show", context_settings=CONTEXT)
@config_options
def tls_show(data_dir, config_file) -> None:
    """Print the certificate's names, validity and SHA-256 fingerprint, and the local CA's.

    It is the configured --cert if there is one, else the one in the data dir. People compare
    the CA fingerprint with the /setup page before installing the CA, and the certificate's
    with a browser's warning page before accepting it.

    \b
    Examples:
      securechat tls show
      securechat tls show --data-dir /var/lib/securechat
    """
    from securechat import tls as tls_module
    from securechat.admin.views import print_ca, print_certificate
    from securechat.console import make_console

    config = build_config(config_file, data_dir=data_dir)
    path = config.cert or config.data_dir / "tls" / "cert.pem"
    try:
        ca = tls_module.load_ca(config.data_dir / "tls") if config.cert is None else None
        if not path.exists() and config.cert is None and ca is None:
            raise UserError(f"no certificate yet in {path.parent}; `securechat serve --tls` makes one")
        console = make_console()
        if path.exists() or config.cert is not None:
            print_certificate(console, tls_module.describe_certificate(path))
        if ca is not None:
            print_ca(console, ca)
    except tls_module.TLSConfigError as exc:
        raise UserError(str(exc)) from None


@tls.group("ca", context_settings=CONTEXT)
def tls_ca() -> None:
    """The local CA that issues the certificate of `serve --tls`.

    \b
    Example:
      securechat tls ca export securechat-ca.crt
    """


@tls_ca.command("export", context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--format", "form", type=click.Choice(["pem", "der", "mobileconfig"]),
              help="[default: from FILE's name: .der/.cer DER, .mobileconfig an Apple profile, else PEM "
                   "(what update-ca-certificates wants in a .crt)]")
@config_options
def tls_ca_export(file, form, data_dir, config_file) -> None:
    """Write the local CA's certificate (never its key) to FILE, or - for standard output.

    Install it on the devices that open the chat, or in a browser's store; the server's
    https://<address>:5000/setup page offers the same files to phones.

    \b
    Examples:
      securechat tls ca export securechat-ca.crt
      securechat tls ca export securechat.mobileconfig
      securechat tls ca export - | openssl x509 -noout -text
    """
    from securechat import tls as tls_module
    from securechat.tls import profiles

    config = build_config(config_file, data_dir=data_dir)
    try:
        ca = tls_module.load_ca(config.data_dir / "tls")
    except tls_module.TLSConfigError as exc:
        raise UserError(str(exc)) from None
    if ca is None:
        raise UserError(f"no local CA yet in {config.data_dir / 'tls'}; `securechat serve --tls` makes one")
    suffix = file.suffix.lower() if str(file) != "-" else ""
    form = form or {".der": "der", ".cer": "der", ".mobileconfig": "mobileconfig"}.get(suffix, "pem")
    data = {"pem": ca.pem, "der": ca.der, "mobileconfig": lambda: profiles.mobileconfig(ca)}[form]()
    if str(file) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        file.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {file}: {exc.strerror}") from None
    click.echo(f"wrote {ca.name} ({form.upper() if form != 'mobileconfig' else 'Apple profile'}, "
               f"SHA-256 {ca.fingerprint}) to {file}")


def admin_client(config: Config, *, url=None, token=None, port=None, fingerprint=None, cacert=None,
                 required: bool = True):
    """The server an admin command talks to; every admin command finds it the same way.

    Without --url: the one running here, narrowed by --port and by --data-dir (only when the
    data dir was given: flag, variable or file). None when `required` is false and none runs.
    """
    from securechat.admin.client import AdminError, find_server

    if (fingerprint or cacert) and url is None:
        raise click.UsageError("--fingerprint and --cacert go with --url; a server running here is "
                               "pinned through its runtime file")
    data_dir = config.data_dir if "data_dir" in config.given else None
    try:
        return find_server(config, url=url, token=token, port=port, data_dir=data_dir,
                           fingerprint=fingerprint, cacert=cacert, required=required)
    except AdminError as exc:
        raise UserError(str(exc), exc.exit_code) from None


def admin_call(call):
    from securechat.admin.client import AdminError

    try:
        return call()
    except AdminError as exc:
        raise UserError(str(exc), exc.exit_code) from None


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (no tokens).")
def status(as_json) -> None:
    """List the securechat servers running here, as this user: port, data dir, URLs, people.

    Every `securechat serve` registers in this user's runtime dir ($XDG_RUNTIME_DIR/securechat,
    else ~/.local/share/securechat/runtime); the admin commands use the one running, or the
    one --port or --data-dir names when several run.

    \b
    Examples:
      securechat status
      securechat status --json | jq '.servers[].port'
    """
    from securechat.admin import runtime
    from securechat.admin.client import AdminClient, AdminError
    from securechat.admin.views import status_lines

    scan = runtime.scan()
    for problem in scan.problems:
        click.echo(f"securechat: warning: {problem}", err=True)
    servers = []
    for info in scan.servers:
        entry = {key: value for key, value in vars(info).items() if key != "token"}
        try:
            live = AdminClient(info.admin_url, info.token, info.cert_fingerprint, timeout=3).status()
            entry["status"] = {k: live.get(k) for k in ("participants", "connections", "room", "rooms", "in_default", "uptime")}
            if "cluster" in live:
                entry["status"]["cluster"] = live["cluster"]
        except AdminError as exc:
            entry["status"] = None
            entry["problem"] = str(exc)
        servers.append(entry)
    if as_json:
        click.echo(json.dumps({"runtime_dir": str(scan.directory), "servers": servers}, indent=2))
        return
    for line in status_lines(servers, scan.directory):
        click.echo(line)


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@server_options
@config_options
def rooms(as_json, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    """List the rooms open now: name, how many people are in each, since when.

    A room exists while someone is in it: the first join makes it, the last leave ends it.
    The default room (server.room) is the one the server's address opens; any other is
    /r/<name>. Finds the server like every admin command (--port or --data-dir picks one of
    several; `securechat status` lists them).

    \b
    Examples:
      securechat rooms
      securechat rooms --json | jq -r '.rooms[] | "\\(.name) \\(.members)"'
    """
    config = build_config(config_file, data_dir=data_dir)
    client = admin_client(config, url=url, token=token, port=port, fingerprint=fingerprint, cacert=cacert)
    answer = admin_call(client.rooms)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    from securechat.admin.views import cluster_warning, rooms_table
    from securechat.console import make_console

    make_console().print(rooms_table(answer))
    if (warning := cluster_warning(answer)) is not None:
        click.echo(f"securechat: warning: {warning}", err=True)


@main.command(context_settings=CONTEXT)
@click.option("--room", type=RoomParam(), help="Only the people in this room.  [default: every room, grouped]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@server_options
@config_options
def roster(room, as_json, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    """List who is connected, room by room: name, fingerprint, since when, from where.

    The fingerprint is grouped exactly as the browser shows it, for comparing out of band.
    With one server running here it needs no options; with several, --port or --data-dir
    says which (`securechat status` lists them).

    \b
    Examples:
      securechat roster
      securechat roster --room design
      securechat roster --port 5001
      securechat roster --json | jq -r '.participants[] | "\\(.room) \\(.username)"'
      SECURECHAT_TOKEN=... securechat roster --url https://192.168.1.20:5000/ --fingerprint AB:CD:…
    """
    config = build_config(config_file, data_dir=data_dir)
    client = admin_client(config, url=url, token=token, port=port, fingerprint=fingerprint, cacert=cacert)
    answer = admin_call(lambda: client.roster(room))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    from securechat.admin.views import cluster_warning, roster_tables
    from securechat.console import make_console

    console = make_console()
    tables = roster_tables(answer)
    if not tables:
        console.print("nobody is connected", markup=False)
    for table in tables:
        console.print(table)
    if (warning := cluster_warning(answer)) is not None:
        click.echo(f"securechat: warning: {warning}", err=True)


@main.group(context_settings=CONTEXT)
def logs() -> None:
    """Read and rotate the ciphertext log.

    \b
    Examples:
      securechat logs dump --since 10m
      securechat logs rotate --keep 5
    """


@logs.command("dump", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the records as stored (JSON Lines).")
@click.option("--since", type=TimeParam(), help="Only records from this time: ISO 8601 or an age (10m, 2h, 1d).")
@click.option("--until", type=TimeParam(), help="Only records before this time: ISO 8601 or an age.")
@click.option("--room", type=RoomParam(), help="Only the records of this room.  [default: every room]")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records, like tail -f; Ctrl-C stops.")
@click.option("--follow-for", type=float, hidden=True, help="Follow for this many seconds (tests).")
@server_options(several=True)
@config_options(several=True)
def dump(as_json, since, until, room, follow, follow_for, port, url, token, fingerprint, cacert, data_dir,
         config_file) -> None:
    """Print the ciphertext log, oldest first, across rotated files.

    Only metadata is readable (who, when, to how many, how big); the content is ciphertext.
    A torn or corrupt line is reported on stderr with its file and line, and skipped.
    It reads the log of the server running here (--port or --data-dir picks one of several;
    with none running, the configured data dir). With --url it reads a server's log over its
    admin API instead of the local files. Several machines sharing one Redis each log what
    their own people sent: give --data-dir (copies, mounts) or --url once per machine and
    their logs are read as one, in time order (their clocks must agree: NTP).

    \b
    Examples:
      securechat logs dump --since 1h
      securechat logs dump --since 2026-11-25T09:00 --until 2026-11-25T17:00
      securechat logs dump --room design
      securechat logs dump --json | jq -c 'select(.event == "join")'
      securechat logs dump --follow
      SECURECHAT_TOKEN=... securechat logs dump --url https://chat.example/ --json > log.jsonl
      securechat logs dump --data-dir /backup/chat1 --data-dir /backup/chat2
      SECURECHAT_TOKEN=... securechat logs dump --url https://10.0.0.11:5000/ --url https://10.0.0.12:5000/
    """
    import time

    from securechat.admin import dump as dump_module
    from securechat.storage.ciphertext_log import LogRecord, read_log

    config = build_config(config_file, data_dir=data_dir[0] if data_dir else None)
    if url:
        if follow or follow_for is not None:
            raise click.UsageError("--follow reads the local files; it does not go with --url")
        clients = [admin_client(config, url=one, token=token, fingerprint=fingerprint, cacert=cacert) for one in url]
        items = dump_module.merged([stream for client in clients for stream in remote_logs(client, since, until, room)])
        print_items(with_progress(items), as_json=as_json, chunk=500)
        return
    if len(data_dir) > 1:
        given = list(data_dir)
        for directory in given:
            if not directory.is_dir():
                raise UserError(f"no ciphertext log in {directory}; check --data-dir")
    else:
        log_dir = local_log_dir(config, port=port, fingerprint=fingerprint, cacert=cacert)
        if not log_dir.is_dir():
            raise UserError(f"no ciphertext log in {log_dir}; check --data-dir")
        given = [log_dir]
    # With `serve --workers N` every worker writes its own log, and every machine its own:
    # they are read as one, in time order.
    log_dirs = [found for directory in given for found in dump_module.log_dirs(directory)]
    if follow or follow_for is not None:
        deadline = time.monotonic() + follow_for if follow_for is not None else None
        items = dump_module.follow(log_dirs, since=since, until=until,
                                   keep_going=lambda: deadline is None or time.monotonic() < deadline)
    else:
        items = with_progress(dump_module.merged([read_log(d, since=since, until=until) for d in log_dirs]))
    if room is not None:
        items = (item for item in items
                 if not isinstance(item, LogRecord) or dump_module.in_room(item.record, room))
    try:
        print_items(items, as_json=as_json, chunk=1 if follow or follow_for else 500)
    except KeyboardInterrupt:
        pass


def local_log_dir(config: Config, *, port, fingerprint, cacert) -> Path:
    """The data dir whose files to read: the one given, else the running server's (the one on
    --port), else the configured default."""
    if fingerprint or cacert:
        raise click.UsageError("--fingerprint and --cacert go with --url")
    if "data_dir" in config.given:
        return config.log_dir
    client = admin_client(config, port=port, required=port is not None)
    return Path(client.server.data_dir) if client is not None else config.log_dir


def remote_logs(client, since, until, room=None) -> list:
    """One stream of records per log the server has: a `serve --workers N` has N (each worker
    writes its own, and whichever worker answers can read any of them)."""
    from securechat.admin.client import AdminError

    try:
        status = client.status()
    except AdminError:
        # A server that will not say how many logs it has (an older one, or one that refuses
        # status): read the one it serves; if it refuses that too, its answer says why.
        status = {}
    workers = status.get("workers", 1) if isinstance(status, dict) else 1
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > 1:
        return [remote_items(client, since, until, room, worker=n) for n in range(min(workers, 64))]
    return [remote_items(client, since, until, room)]


def remote_items(client, since, until, room=None, worker=None):
    """The server's records as LogRecords, so remote and local dumps print alike. The server
    is not ours: no control character it sends reaches the terminal, even in --json lines."""
    from securechat.admin.client import AdminError
    from securechat.admin.terminal import safe_json_line
    from securechat.storage.ciphertext_log import LogRecord

    def skipped(count: int) -> None:
        click.echo(f"securechat: the server skipped {count} unreadable line(s) of its log", err=True)

    try:
        for raw in client.logs(since=since, until=until, on_skipped=skipped, room=room, worker=worker):
            raw = safe_json_line(raw)
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(raw)
            yield LogRecord(Path(client.url), 0, record, raw)
    except (ValueError, AdminError) as exc:
        raise UserError(str(exc) if isinstance(exc, AdminError) else
                        f"the server at {client.url} sent a line that is not JSON") from None


def with_progress(items):
    """A record counter on stderr while dumping to a file or pipe, if someone watches stderr."""
    if sys.stdout.isatty() or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from securechat.console import make_console

    columns = (SpinnerColumn(), TextColumn("{task.completed} records"), TimeElapsedColumn())
    with Progress(*columns, console=make_console(stderr=True), transient=True) as progress:
        task = progress.add_task("dump", total=None)
        for item in items:
            progress.advance(task)
            yield item


def print_items(items, *, as_json: bool, chunk: int) -> None:
    from securechat.admin.dump import attachment_rows, row
    from securechat.admin.views import dump_table
    from securechat.console import make_console
    from securechat.storage.ciphertext_log import LogProblem

    console, rows, header = make_console(), [], True
    for item in items:
        if isinstance(item, LogProblem):
            click.echo(f"securechat: {item.path}:{item.line_no}: {item.reason}; skipped", err=True)
        elif as_json:
            click.echo(item.raw)
        else:
            rows.append(row(item.record))
            rows.extend(attachment_rows(item.record))
            if len(rows) >= chunk:
                console.print(dump_table(rows, header))
                rows, header = [], False
    if rows or (header and not as_json):
        console.print(dump_table(rows, header))


@main.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@server_options
@config_options
@click.pass_context
def blobs(ctx, as_json, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    """Show how much space the encrypted attachments take, and prune them.

    Without a subcommand it shows the usage. Through the running server when there is one
    (the one running here, or the one --port or --data-dir names), else straight from the
    files in the data dir.

    \b
    Examples:
      securechat blobs
      securechat blobs usage --json
      securechat blobs prune --dry-run
      securechat blobs prune
    """
    if ctx.invoked_subcommand is None:
        show_blob_usage(as_json, port=port, url=url, token=token, fingerprint=fingerprint, cacert=cacert,
                        data_dir=data_dir, config_file=config_file)


@blobs.command("usage", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@server_options
@config_options
def blobs_usage(as_json, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    """How many attachments are stored, how large, which the log still refers to.

    \b
    Example:
      securechat blobs usage --json | jq .bytes
    """
    show_blob_usage(as_json, port=port, url=url, token=token, fingerprint=fingerprint, cacert=cacert,
                    data_dir=data_dir, config_file=config_file)


def show_blob_usage(as_json, *, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    from securechat.admin.blobs import offline_usage
    from securechat.admin.views import print_blob_usage
    from securechat.console import make_console

    config = build_config(config_file, data_dir=data_dir)
    client = admin_client(config, url=url, token=token, port=port, fingerprint=fingerprint, cacert=cacert,
                          required=url is not None or port is not None)
    if client is not None:
        report = admin_call(client.blobs)
    elif not config.data_dir.is_dir():
        raise UserError(f"no data in {config.data_dir} and no server using it; check --data-dir")
    else:
        report = offline_usage(config)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_blob_usage(make_console(), report)


@blobs.command("prune", context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@server_options
@config_options
def blobs_prune(dry_run, as_json, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    """Delete attachments past retention now: older than [attachments] retention_days, or
    referenced by no message of the kept log once older than grace_seconds.

    The server does the same every hour by itself.

    \b
    Examples:
      securechat blobs prune --dry-run
      securechat blobs prune
    """
    from securechat.admin import runtime
    from securechat.admin.blobs import offline_prune
    from securechat.admin.views import prune_summary
    from securechat.storage.ciphertext_log import LogLocked

    config = build_config(config_file, data_dir=data_dir)
    client = admin_client(config, url=url, token=token, port=port, fingerprint=fingerprint, cacert=cacert,
                          required=url is not None or port is not None)
    if client is not None:
        result = admin_call(lambda: client.prune_blobs(dry_run))
        where = f"by the server at {client.url}"
    elif not config.data_dir.is_dir():
        raise UserError(f"no data in {config.data_dir} and no server using it; check --data-dir")
    else:
        try:
            result = offline_prune(config, dry_run=dry_run).as_json()
        except LogLocked:
            scan = runtime.scan()
            who = runtime.holder(config.log_dir, scan.servers)
            who = f" ({who})" if who else ""
            raise UserError(f"a securechat server{who} is using {config.data_dir} but is not registered in "
                            f"{scan.directory}; prune through it with --url URL and --token (or "
                            "SECURECHAT_TOKEN)") from None
        except OSError as exc:
            raise UserError(f"cannot prune the attachments in {config.data_dir}: {exc}") from None
        where = f"in {config.data_dir} (no server running)"
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{prune_summary(result)} {where}")


@logs.command("rotate", context_settings=CONTEXT)
@click.option("--keep", type=click.IntRange(min=1), help="Rotated files to keep.  [default: log.keep, 10]")
@server_options
@config_options
def rotate(keep, port, url, token, fingerprint, cacert, data_dir, config_file) -> None:
    """Start a new live log now; gzip the old one and delete the oldest beyond --keep.

    Through the running server when there is one (so no record is lost): the one running
    here, or the one --port or --data-dir names. With none, directly on the files in the
    data dir.

    \b
    Examples:
      securechat logs rotate
      securechat logs rotate --keep 3
      securechat logs rotate --data-dir /var/lib/securechat
    """
    from securechat.admin import runtime
    from securechat.admin.terminal import strip_controls
    from securechat.storage.ciphertext_log import LogError, LogLocked, rotate_offline

    config = build_config(config_file, data_dir=data_dir)
    keep = keep or config.log_keep
    client = admin_client(config, url=url, token=token, port=port, fingerprint=fingerprint, cacert=cacert,
                          required=url is not None or port is not None)
    kept = f"keeping at most {keep} rotated file{'s' if keep != 1 else ''}"
    if client is not None:
        rotated = admin_call(lambda: client.rotate(keep)).get("rotated")
        if rotated is None:
            click.echo(f"nothing to rotate: the live log of the server at {client.url} is empty; {kept}")
        else:
            click.echo(f"rotated to {strip_controls(str(rotated))} by the server at {client.url}; {kept}")
        return
    if not config.log_dir.is_dir():
        raise UserError(f"no ciphertext log in {config.log_dir} and no server using it; check --data-dir")
    try:
        path = rotate_offline(config.log_dir, keep)
    except LogLocked:
        scan = runtime.scan()
        who = runtime.holder(config.log_dir, scan.servers)
        who = f" ({who})" if who else ""
        raise UserError(f"a securechat server{who} is using {config.log_dir} but is not registered in "
                        f"{scan.directory}; rotate through it with --url URL and --token (or "
                        "SECURECHAT_TOKEN)") from None
    except (LogError, OSError) as exc:
        raise UserError(f"cannot rotate the log in {config.log_dir}: {exc}") from None
    if path is None:
        click.echo(f"nothing to rotate: the live log in {config.log_dir} is empty (no server running); {kept}")
    else:
        click.echo(f"rotated to {path.name} in {config.log_dir} (no server running); {kept}")


if __name__ == "__main__":
    main()
