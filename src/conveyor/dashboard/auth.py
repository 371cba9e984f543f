"""Who may see the dashboard and press its buttons.

* **Login.** With a token set, the dashboard asks for it once on a login form and answers with
  an HttpOnly, ``SameSite=Strict`` session cookie. The cookie holds an HMAC of the token, not
  the token; it is compared in constant time, so changing the token logs everyone out. An
  ``Authorization: Bearer`` header with the token is accepted too. Without a token (a server
  that only listens on loopback) there is nothing to log in to.
* **CSRF.** Every action is a ``POST`` that must carry ``X-CSRF-Token``: an HMAC, under a
  secret of the server's, of the session. Pages hand it to their script; another site can
  neither read it nor send a custom header without a CORS preflight, which is never granted.
  A ``POST`` whose ``Origin`` names another host is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "conveyor_session"
#: what the session cookie is derived from when no token is set (no login, CSRF only)
_ANONYMOUS = b"anonymous"


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class DashboardAuth:
    """Session cookies and CSRF tokens for one dashboard."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        key = token.encode() if token else _ANONYMOUS
        self._session = _mac(key, "conveyor dashboard session")
        # with a token, every process of a deployment derives the same secret; without one,
        # a secret of this process's own (its pages are only ever served by it)
        self._csrf_key = (hashlib.sha256(b"conveyor csrf|" + key).digest() if token
                          else secrets.token_bytes(32))

    @property
    def required(self) -> bool:
        """True when a visitor must log in."""
        return self.token is not None

    def check_token(self, given: str) -> bool:
        """True when ``given`` (from the login form) is the token."""
        if self.token is None:
            return True
        return hmac.compare_digest(given.encode(), self.token.encode())

    def session_value(self) -> str:
        """The session cookie's value after a successful login."""
        return self._session

    def logged_in(self, request: Request) -> bool:
        """True when the request may see the dashboard: no token is set, or it carries the
        session cookie or the bearer token."""
        if self.token is None:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self._session.encode()):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode())

    def csrf_token(self) -> str:
        """The token a page's script sends back with every action."""
        return _mac(self._csrf_key, self._session)

    def csrf_ok(self, request: Request) -> bool:
        """True when an action request carries the CSRF token and comes from this site."""
        if not same_origin(request):
            return False
        given = request.headers.get("x-csrf-token", "")
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf_token().encode())


def same_origin(request: Request) -> bool:
    """False when the request names an ``Origin`` (or, lacking one, a ``Referer``) whose
    host is not the one it was sent to."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source != "null"
    host = request.headers.get("host", "")
    return urlsplit(source).netloc.lower() == host.lower()
