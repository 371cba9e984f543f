"""Who may see the dashboard and press its buttons.

* **Login.** With a token set, the dashboard asks for it once on a login form and answers with
  an HttpOnly, ``SameSite=Strict`` session cookie: ``ISSUED.NONCE.MAC``, signed with a key
  derived from the token by scrypt (so neither the cookie nor a page gives a cheap way to
  test guesses of the token). A session lasts :data:`SESSION_AGE`; logging out revokes it in
  the store, for every server process on it and across restarts (see
  :mod:`conveyor.dashboard.sessions`); changing the token revokes them all. The cookie is
  ``Secure`` when the login came over https as the server sees it: behind a proxy that
  terminates TLS, only a proxy it trusts (``--forwarded-allow-ips``) can say so. An
  ``Authorization: Bearer`` header with the token is accepted too. Without a token (a server
  on loopback) there is no login.
* **Guesses.** Wrong tokens, on the login form or in a bearer header, are counted per client
  address by the app's :class:`~conveyor.http.throttle.Throttle`: a penalized address gets
  429 for every token it sends, right or wrong. A valid session cookie still opens the
  dashboard then (it proves an earlier login, and cannot be guessed), and cookies that are not
  valid are not counted as guesses.
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

from conveyor.dashboard.sessions import Revocations
from conveyor.http.app import bearer_verdict
from conveyor.http.errors import ApiError
from conveyor.http.origin import Origins
from conveyor.http.throttle import Throttle, client_address

SESSION_COOKIE = "conveyor_session"
#: seconds a session lasts after its login
SESSION_AGE = 7 * 24 * 3600


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _key_of(token: str) -> bytes:
    """A key for sessions and CSRF tokens, slow to derive from guesses of the token."""
    return hashlib.scrypt(token.encode(), salt=b"conveyor dashboard", n=1 << 14, r=8, p=1,
                          dklen=32)


class DashboardAuth:
    """Session cookies, CSRF tokens and the throttling of wrong tokens for one dashboard.

    ``revocations`` keeps logouts (required with a token); ``throttle`` counts wrong tokens
    (shared with the API's bearer check)."""

    def __init__(self, token: str | None, origins: Origins | None = None,
                 throttle: Throttle | None = None,
                 revocations: Revocations | None = None) -> None:
        if token is not None and revocations is None:
            raise ValueError("a dashboard with a token needs a place to keep its logouts")
        self.token = token
        self.origins = origins or Origins()
        self.throttle = throttle if throttle is not None else Throttle()
        self.revocations = revocations
        # with a token, every process of a deployment derives the same key; without one, a
        # secret of this process's own (its pages are only ever served by it)
        self._key = _key_of(token) if token else secrets.token_bytes(32)

    @property
    def required(self) -> bool:
        """True when a visitor must log in."""
        return self.token is not None

    def refusal(self, request: Request) -> ApiError | None:
        """The 429 for the request's address while it is penalized for wrong tokens."""
        refusal = self.throttle.refusal(client_address(request.scope))
        return None if refusal is None else ApiError(429, *refusal)

    def check_token(self, request: Request, given: str) -> bool:
        """True when ``given`` (from the login form) is the token; a wrong one is counted
        against the request's address (the caller checks :meth:`refusal` first)."""
        if self.token is None:
            return True
        if hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        if given:  # an empty form guesses nothing (like a request without a bearer token)
            self.throttle.failed(client_address(request.scope), "login")
        return False

    def new_session(self) -> str:
        """The value of a new session cookie."""
        body = f"{int(time.time())}.{secrets.token_hex(16)}"
        return f"{body}.{_mac(self._key, body)}"

    def _signed(self, request: Request) -> tuple[int, str] | None:
        """``(issued, nonce)`` of the request's session cookie if it is signed and current."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        issued, _, rest = cookie.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (issued.isdigit() and len(issued) < 20 and nonce and mac):
            return None
        if not hmac.compare_digest(mac.encode(), _mac(self._key, f"{issued}.{nonce}").encode()):
            return None
        if not 0 <= time.time() - int(issued) < SESSION_AGE:
            return None
        return int(issued), nonce

    async def session_nonce(self, request: Request) -> str | None:
        """The nonce of the request's session cookie if it is valid, current and not
        logged out; else ``None`` (asked of the store at most once per request)."""
        memo: dict[str, str | None] = request.scope.setdefault("conveyor.session", {})
        if "nonce" in memo:
            return memo["nonce"]
        signed = self._signed(request)
        nonce = None
        if signed is not None and (self.revocations is None
                                   or not await self.revocations.revoked(signed[1])):
            nonce = signed[1]
        memo["nonce"] = nonce
        return nonce

    async def revoke(self, request: Request) -> None:
        """Log the request's session out, for good."""
        signed = self._signed(request)
        if signed is not None and self.revocations is not None:
            request.scope.pop("conveyor.session", None)
            issued, nonce = signed
            await self.revocations.revoke(nonce, issued + SESSION_AGE)

    async def logged_in(self, request: Request) -> bool:
        """True when the request may see the dashboard: no token is set, or it carries a
        valid session cookie or the bearer token. A bearer token from a penalized address
        raises the 429 :class:`ApiError` (see :meth:`refusal`); a wrong one is counted."""
        if self.token is None:
            return True
        if await self.session_nonce(request) is not None:
            return True
        verdict = bearer_verdict(request.scope, self.token.encode())
        if verdict is None:
            return False
        refused = self.refusal(request)
        if refused is not None:
            raise refused
        if not verdict:
            self.throttle.failed(client_address(request.scope), "bearer token")
        return verdict

    async def csrf_token(self, request: Request) -> str:
        """The token a page's script sends back with every action of this session."""
        return _mac(self._key, "csrf|" + (await self.session_nonce(request) or ""))

    async def csrf_ok(self, request: Request) -> bool:
        """True when an action request carries its CSRF token and comes from this site."""
        if not self.origins.same_site(request.scope):
            return False
        given = request.headers.get("x-csrf-token", "")
        return bool(given) and hmac.compare_digest(given.encode(),
                                                   (await self.csrf_token(request)).encode())
