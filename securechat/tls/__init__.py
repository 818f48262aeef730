"""TLS certificates for serving securechat over HTTPS on the LAN.

Browsers only expose WebCrypto in a secure context, so ``securechat serve --tls`` needs a
certificate. The package holds:

* ``addresses`` - the machine's interface addresses, found without sending any packet;
* ``certs`` - reading, describing and writing certificates and keys (owner-only), and the
  ``ssl.SSLContext`` the server listens with;
* ``ca`` - the local certificate authority, name-constrained to what a LAN server needs;
* ``leaf`` - the server's own certificate, issued by that CA or self-signed: the names it
  covers, and when it is replaced;
* ``profiles`` - the CA in the forms devices install (DER, an Apple configuration profile).

Nothing here imports Tornado.
"""

from .addresses import IPAddress, local_addresses
from .ca import LocalCA, load_ca
from .certs import (
    CertStatus,
    TLSConfigError,
    describe_certificate,
    load_certificate,
    server_ssl_context,
)
from .leaf import (
    CLOCK_SKEW,
    MAX_VALIDITY,
    RENEW_BEFORE,
    ensure_local_ca,
    ensure_self_signed,
)

__all__ = [
    "CLOCK_SKEW", "MAX_VALIDITY", "RENEW_BEFORE", "CertStatus", "IPAddress", "LocalCA", "TLSConfigError",
    "describe_certificate", "ensure_local_ca", "ensure_self_signed", "load_ca", "load_certificate",
    "local_addresses", "server_ssl_context",
]
