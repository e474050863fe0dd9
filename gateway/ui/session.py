"""Dashboard sessions: a signed, opaque cookie set after the master key is typed into the login form.

The cookie holds ``<expiry>.<nonce>.<signature>``: no key, nothing to read. The signature is an HMAC-SHA256 under a
key derived from the master key, so every replica with the same master key accepts it, and changing the master key
ends every session. Logout deletes the cookie and remembers its nonce in this process until it would have expired
(another replica accepts a logged-out cookie until its expiry: sessions last ``lifetime_s``, 8 hours by default).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "poolgate_session"
FLASH_COOKIE = "poolgate_flash"
COOKIE_PATH = "/ui"
DEFAULT_LIFETIME_S = 8 * 3600


def _signing_key(master_key: str) -> bytes:
    # a key of its own: a session signature never doubles as anything signed with the master key elsewhere
    return hashlib.sha256(b"poolgate-ui-session-v1\x00" + master_key.encode()).digest()


@dataclass
class DashboardSessions:
    """Issues and checks session cookies (module docstring); ``clock`` is injectable for tests."""

    lifetime_s: int = DEFAULT_LIFETIME_S
    clock: Callable[[], float] = field(default=time.time, repr=False)
    _revoked: dict[str, float] = field(default_factory=dict, repr=False)

    def issue(self, master_key: str) -> str:
        expiry = int(self.clock()) + self.lifetime_s
        payload = f"{expiry}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._sign(master_key, payload)}"

    def valid(self, token: str | None, master_key: str | None) -> bool:
        """True for an unexpired, unrevoked cookie signed under ``master_key``."""
        if not token or not master_key or len(token) > 200:
            return False
        payload, _, signature = token.rpartition(".")
        expiry, _, nonce = payload.partition(".")
        if not expiry.isdigit() or not nonce:
            return False
        if not hmac.compare_digest(signature, self._sign(master_key, payload)):
            return False
        return int(expiry) > self.clock() and nonce not in self._revoked

    def revoke(self, token: str | None) -> None:
        """Refuse this cookie from now on in this process (logout)."""
        if not token:
            return
        expiry, _, rest = token.partition(".")
        nonce = rest.partition(".")[0]
        now = self.clock()
        self._revoked = {n: e for n, e in self._revoked.items() if e > now}  # forget the ones expired anyway
        if expiry.isdigit() and nonce:
            self._revoked[nonce] = float(expiry)

    @staticmethod
    def _sign(master_key: str, payload: str) -> str:
        return hmac.new(_signing_key(master_key), payload.encode(), hashlib.sha256).hexdigest()
