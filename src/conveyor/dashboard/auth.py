"""Who may see the dashboard and press its buttons.

* **Login.** With a token set, the dashboard asks for it once on a login form and answers with
  an HttpOnly, ``SameSite=Strict`` session cookie: ``ISSUED.NONCE.MAC``, signed with a key
  derived from the token by scrypt (so neither the cookie nor a page gives a cheap way to
  test guesses of the token). A session lasts :data:`SESSION_AGE`; logging out revokes it in
  this process; changing the token revokes them all. An ``Authorization: Bearer`` header with
  the token is accepted too. Without a token (a server on loopback) there is no login.
* **CSRF.** Every action is a ``POST`` that must carry ``X-CSRF-Token``: an HMAC of the
  session's nonce under the same key (without a token, under a secret of this process). Pages
  hand it to their script; another site can neither read it nor send a custom header without a
  CORS preflight, which is never granted. A ``POST`` whose ``Origin`` names another site is
  refused as well (:mod:`conveyor.http.origin`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from starlette.requests import Request

from conveyor.http.app import bearer_verdict
from conveyor.http.origin import Origins

SESSION_COOKIE = "conveyor_session"
#: seconds a session lasts after its login
SESSION_AGE = 7 * 24 * 3600
#: revoked sessions remembered (each expires by itself after SESSION_AGE anyway)
MAX_REVOKED = 10_000


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _key_of(token: str) -> bytes:
    """A key for sessions and CSRF tokens, slow to derive from guesses of the token."""
    return hashlib.scrypt(token.encode(), salt=b"conveyor dashboard", n=1 << 14, r=8, p=1,
                          dklen=32)


class DashboardAuth:
    """Session cookies and CSRF tokens for one dashboard."""

    def __init__(self, token: str | None, origins: Origins | None = None) -> None:
        self.token = token
        self.origins = origins or Origins()
        # with a token, every process of a deployment derives the same key; without one, a
        # secret of this process's own (its pages are only ever served by it)
        self._key = _key_of(token) if token else secrets.token_bytes(32)
        self._revoked: set[str] = set()

    @property
    def required(self) -> bool:
        """True when a visitor must log in."""
        return self.token is not None

    def check_token(self, given: str) -> bool:
        """True when ``given`` (from the login form) is the token."""
        if self.token is None:
            return True
        return hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        """The value of a new session cookie."""
        body = f"{int(time.time())}.{secrets.token_hex(16)}"
        return f"{body}.{_mac(self._key, body)}"

    def session_nonce(self, request: Request) -> str | None:
        """The nonce of the request's session cookie if it is valid, current and not
        revoked; else ``None``."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        issued, _, rest = cookie.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (issued.isdigit() and nonce and mac):
            return None
        if not hmac.compare_digest(mac.encode(), _mac(self._key, f"{issued}.{nonce}").encode()):
            return None
        if not 0 <= time.time() - int(issued) < SESSION_AGE or nonce in self._revoked:
            return None
        return nonce

    def revoke(self, request: Request) -> None:
        """Log the request's session out (in this process)."""
        nonce = self.session_nonce(request)
        if nonce is not None:
            if len(self._revoked) >= MAX_REVOKED:
                self._revoked.clear()
            self._revoked.add(nonce)

    def logged_in(self, request: Request) -> bool:
        """True when the request may see the dashboard: no token is set, or it carries a
        valid session cookie or the bearer token."""
        if self.token is None:
            return True
        return self.session_nonce(request) is not None or \
            bearer_verdict(request.scope, self.token.encode()) is True

    def csrf_token(self, request: Request) -> str:
        """The token a page's script sends back with every action of this session."""
        return _mac(self._key, "csrf|" + (self.session_nonce(request) or ""))

    def csrf_ok(self, request: Request) -> bool:
        """True when an action request carries its CSRF token and comes from this site."""
        if not self.origins.same_site(request.scope):
            return False
        given = request.headers.get("x-csrf-token", "")
        return bool(given) and hmac.compare_digest(given.encode(),
                                                   self.csrf_token(request).encode())
