"""One canonical LAN address on a real `serve --tls`, and the Host allow-list agreeing with it.

Every other name and address of this machine (host name, host.local, LAN addresses, the
certificate's names) is redirected to the canonical host, never refused (421, web/hosts.py) and
never served as it is; the canonical host itself is served; loopback is never redirected; and a
name that is not this machine's gets 421, never a redirect (an attacker's rebinding name must
not be turned into a trusted one).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest
from helpers import Server

from securechat.tls import describe_certificate, local_addresses
from securechat.web.canonical import is_loopback, normalise, url_host

UNVERIFIED = ssl.create_default_context()
UNVERIFIED.check_hostname, UNVERIFIED.verify_mode = False, ssl.CERT_NONE


def get(port: int, host: str, path: str = "/", address: str = "127.0.0.1") -> tuple[int, str | None]:
    """GET path from the server on address:port as if the browser had opened host."""
    connection = http.client.HTTPSConnection(address, port, context=UNVERIFIED, timeout=15)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def this_machines_names(server: Server) -> set[str]:
    hostname = socket.gethostname().lower().rstrip(".")
    cert = describe_certificate(server.data / "tls" / "cert.pem")
    names = {hostname, f"{hostname.split('.')[0]}.local", *map(str, local_addresses()), *cert.sans}
    return {normalise(n) for n in names if not is_loopback(n)}


@pytest.fixture(scope="module", params=["configured", "default"])
def serving(request, tmp_path_factory):
    """serve --tls with --canonical-host chat.lan, and with the default (the first LAN address)."""
    if request.param == "default" and not local_addresses():
        pytest.skip("this machine has no LAN address, so there is no default canonical host")
    args = ("--tls", "--canonical-host", "chat.lan") if request.param == "configured" else ("--tls",)
    server = Server(tmp_path_factory.mktemp(request.param), *args)
    yield server
    server.stop()


def canonical_of(server: Server) -> str:
    """The first URL of the banner (the runtime file holds the same list)."""
    info = json.loads(server.runtime_file().read_text())
    return info["urls"][0]


def test_every_other_name_of_this_machine_redirects_and_the_canonical_host_is_served(serving):
    port = serving.port
    canonical = canonical_of(serving)
    host = canonical.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    if "--canonical-host" in serving.process.args:
        assert host == "chat.lan"
    else:  # the first LAN address the certificate covers, IPv4 first
        cert = describe_certificate(serving.data / "tls" / "cert.pem")
        assert host == next(str(a) for a in local_addresses() if cert.covers(str(a)))
    aliases = this_machines_names(serving) - {normalise(host)}
    assert aliases, "a machine always has at least its host name"
    for alias in sorted(aliases):
        for path in ("/", "/setup"):
            assert get(port, f"{url_host(alias)}:{port}", path) == (302, f"{canonical.rstrip('/')}{path}"), alias
    # The target of every redirect is served, not refused and not redirected again.
    for path in ("/", "/setup"):
        assert get(port, f"{url_host(host)}:{port}", path) == (200, None)


@pytest.mark.parametrize("loopback", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_is_served_as_it_is(serving, loopback):
    assert get(serving.port, f"{loopback}:{serving.port}") == (200, None)


def test_a_name_that_is_not_this_machines_is_refused_never_redirected_to_it(serving):
    """A rebinding name gets 421 from the Host allow-list (web/hosts.py), on every page the
    redirect would move; it is never turned into a trusted name by a redirect."""
    for path in ("/", "/setup"):
        assert get(serving.port, f"rebind.attacker.example:{serving.port}", path) == (421, None)


def test_the_address_given_with_host_is_never_redirected(tmp_path):
    """`serve --host <LAN address>` with another canonical host: people told to open that address
    stay on it; the machine's other names still move to the canonical one."""
    lan = next((str(a) for a in local_addresses() if a.version == 4), None)
    if lan is None:
        pytest.skip("this machine has no IPv4 LAN address to listen on")
    server = Server(tmp_path, "--tls", "--host", lan, "--canonical-host", "chat.lan")
    try:
        port = server.port
        assert get(port, f"{lan}:{port}", address=lan) == (200, None)
        assert get(port, f"{lan}:{port}", "/setup", address=lan) == (200, None)
        assert get(port, f"chat.lan:{port}", address=lan) == (200, None)
        hostname = socket.gethostname().lower().rstrip(".")
        assert get(port, f"{hostname}:{port}", address=lan) == (302, f"https://chat.lan:{port}/")
    finally:
        server.stop()
