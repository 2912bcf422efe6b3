"""The server's API key: loaded once, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

#: Addresses that only this machine can reach: a server bound there may run without a key.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def key_digest(key: str | None) -> str | None:
    """sha256 of a key (what the deployment keeps and ships to its replicas), or None."""
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def authorized(header: str | None, digest: str | None) -> bool:
    """Whether an ``Authorization: Bearer KEY`` header carries the key whose sha256 is
    ``digest`` (always True when the server has no key).

    The digests are compared with :func:`hmac.compare_digest`, so the time taken does not
    depend on how much of a wrong key matches.
    """
    if digest is None:
        return True
    scheme, _, key = (header or "").partition(" ")
    given = hashlib.sha256(key.strip().encode()).hexdigest()
    return scheme.lower() == "bearer" and hmac.compare_digest(given, digest)
