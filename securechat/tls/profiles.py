"""The local CA in the forms devices install: DER for Android, Windows, macOS, Linux and
Firefox, and an Apple configuration profile (``.mobileconfig``) for iPhone and iPad.

Pure functions of the CA certificate: the same CA always gives byte-identical files, so a
profile downloaded twice is the same profile (iOS then offers to replace, not to add).
"""

from __future__ import annotations

import plistlib
import uuid

from .ca import LocalCA

CRT_NAME = "securechat-ca.crt"
PROFILE_NAME = "securechat.mobileconfig"
CRT_TYPE = "application/x-x509-ca-cert"
PROFILE_TYPE = "application/x-apple-aspen-config"

# Fixed namespace for the profile's UUIDs, derived from each CA's fingerprint.
_NAMESPACE = uuid.UUID("5b0b7f2e-2c55-4f3e-9d1b-6a2f0c1e8a41")


def mobileconfig(ca: LocalCA) -> bytes:
    """An unsigned configuration profile holding one root certificate payload.

    iOS shows an unsigned profile as "Not Verified"; that is expected: the person compares
    the fingerprint instead. Installing it is not enough on iOS: full trust for the root is
    a separate switch (Settings > General > About > Certificate Trust Settings).
    """
    fingerprint = ca.fingerprint.replace(":", "").lower()
    identifier = f"org.securechat.ca.{fingerprint[:16]}"
    certificate = {
        "PayloadCertificateFileName": CRT_NAME,
        "PayloadContent": ca.der(),
        "PayloadDescription": "Lets this device trust the securechat server on your network.",
        "PayloadDisplayName": ca.name,
        "PayloadIdentifier": f"{identifier}.root",
        "PayloadType": "com.apple.security.root",
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, f"root:{fingerprint}")).upper(),
        "PayloadVersion": 1,
    }
    profile = {
        "PayloadContent": [certificate],
        "PayloadDescription": (
            f"Installs {ca.name} (SHA-256 {ca.fingerprint}). It can only vouch for local names "
            "and private addresses, never for a public website."
        ),
        "PayloadDisplayName": ca.name,
        "PayloadIdentifier": identifier,
        "PayloadOrganization": "securechat",
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, f"profile:{fingerprint}")).upper(),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
