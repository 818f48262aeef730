"""`securechat serve --workers N`: N processes serving one listening socket, joined by Redis.

Fork after bind, not SO_REUSEPORT: the parent binds once (a taken port or a bad address is one
error line before any worker exists, and port 0 gives every worker the same real port), then
forks. All workers accept from the one kernel queue, so connections waiting in it survive a
worker that dies: with SO_REUSEPORT each worker has its own queue, and a worker killed with
-9 takes the connections queued on it down too. The price is a less even spread of new
connections than SO_REUSEPORT's hashing; for long-lived chat sessions that matters little.

The parent does not serve: it writes the runtime file (one server for the admin commands, any
worker answers them), prints the banner, restarts a worker that dies, and passes SIGINT/SIGTERM
(stop) and SIGHUP (rotate every worker's log) on to all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time

import tornado.netutil
from tornado.ioloop import PeriodicCallback

log = logging.getLogger("securechat")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again


def serve(config) -> None:
    """Run the workers until SIGINT/SIGTERM; raises click.ClickException for a fixable problem."""
    import click

    from .. import console, tls
    from ..admin import runtime
    from ..server import fit_to_descriptor_limit

    if config.unix_socket is not None:
        # Each worker would bind (and take over) the one socket path in turn.
        raise click.ClickException("--workers does not work with [server] unix_socket yet; let the proxy "
                                   "connect over TCP to 127.0.0.1 ([proxy] trusted)")
    if config.admin_token is None:
        # One token for every worker: any of them may answer an admin command.
        config = config.replace(admin_token=secrets.token_urlsafe(32))
    config = fit_to_descriptor_limit(config)
    cert, _ = console.certificate(config)  # made (or checked) once, before the workers load it
    try:
        sockets = tornado.netutil.bind_sockets(config.port, address=config.listen_host)
    except OSError as exc:
        raise click.ClickException(console._bind_error(config, exc)) from None
    port = sockets[0].getsockname()[1]
    config = config.replace(port=port)
    addresses = tls.local_addresses()
    scheme = "https" if cert else "http"
    canonical = console.choose_canonical(config, addresses, cert)
    urls = console.server_urls(config.listen_host, port, scheme, addresses, cert, canonical)

    children: dict[int, int] = {}  # pid -> worker number
    for number in range(config.workers):
        children[_fork(config, number, sockets)] = number
    stopping = {"signal": None}

    def forward(sig, _frame) -> None:
        if sig in (signal.SIGINT, signal.SIGTERM):
            if stopping["signal"] is not None:
                for pid in children:  # a second interrupt: stop now
                    _kill(pid, signal.SIGKILL)
                return
            stopping["signal"] = sig
        for pid in list(children):
            _kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    info = runtime.ServerInfo(
        pid=os.getpid(), version=_version(), started=time.time_ns() // 1_000_000,
        data_dir=str(runtime.resolved(config.data_dir)), scheme=scheme, port=port, urls=urls,
        admin_url=console.admin_url(config.listen_host, port, scheme), token=config.admin_token,
        cert_fingerprint=cert.fingerprint if cert else None)
    runtime_file = console.register(info)
    try:
        setup_url = None
        if cert is not None and cert.ca is not None:
            setup_url = f"https://{console.url_host(canonical or 'localhost')}:{port}/setup"
        console.print_banner(console.make_console(), config, urls, cert, setup_url)
        console.make_console().print(f"[bold]{config.workers} workers[/bold] share port {port}, "
                                     "joined through Redis")
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            number = children.pop(pid, None)
            if number is None or stopping["signal"] is not None:
                continue
            log.warning("worker %d (pid %d) ended (%s); starting it again in %.0f s", number, pid,
                        _how(status), RESTART_DELAY)
            time.sleep(RESTART_DELAY)
            if stopping["signal"] is None:
                children[_fork(config, number, sockets)] = number
    finally:
        runtime.remove(runtime_file)
        for sock in sockets:
            sock.close()


def _fork(config, number: int, sockets) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # Its own process group: a Ctrl-C in the terminal reaches the parent alone, which
        # stops every worker once (a second signal would make a worker skip its clean shutdown).
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        asyncio.run(_worker(config.replace(worker=number), sockets))
        code = 0
    except BaseException:
        log.exception("worker %d failed", number)
    finally:
        os._exit(code)


async def _worker(config, sockets) -> None:
    from .. import console
    from ..server import install_signal_handlers, start, tune_garbage_collector

    cert, context = console.certificate(config)
    addresses = console.tls.local_addresses()
    canonical = console.choose_canonical(config, addresses, cert)
    redirect = None
    if canonical is not None:
        redirect = console.CanonicalHost.choose(canonical, console.machine_names(addresses, cert),
                                                listen_host=config.host)
    server = await start(config, context, sockets=sockets, canonical=redirect,
                         local_ca=cert.ca.public() if cert is not None and cert.ca is not None else None)
    install_signal_handlers(server)
    tune_garbage_collector()
    parent = os.getppid()

    def orphaned() -> None:
        # The parent is gone (killed with -9): nobody restarts us or removes the runtime file.
        if os.getppid() != parent and not server.stopped.is_set():
            orphan_check.stop()
            asyncio.get_running_loop().create_task(server.shutdown())

    orphan_check = PeriodicCallback(orphaned, 1000)
    orphan_check.start()
    await server.stopped.wait()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _version() -> str:
    from .. import __version__
    return __version__
