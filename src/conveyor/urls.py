"""Store URLs made safe to show: :func:`redact_url` for every URL that is printed or logged,
:func:`redact` for text that may quote one (a driver's error message).

Credentials are the user-info before the host (``redis://user:password@host``, shown as
``redis://***@host``) and the values of query parameters whose names speak of a secret
(``?password=``, ``?token=``, ...). The parsing is lenient on purpose: a URL too malformed
for :mod:`urllib.parse` (a bad port, an unclosed ``[``, a password with an unescaped ``/``)
is still cut at its last ``@``, so a typo never shows a password.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import unquote

MASK = "***"

#: a query parameter whose value is hidden: its name mentions one of these
_SECRET_NAME = r"[\w.\-]*(?:pass|pwd|secret|token|auth|cred)[\w.\-]*"
_SECRET_PARAM = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)([^&;#]*)")
#: where a query starts: ``?name=``
_QUERY = re.compile(r"\?[\w.\-]+=")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _userinfo(url: str) -> tuple[int, int] | None:
    """The span of the user-info in ``url`` (without its ``@``), or None when it has none."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    if url.startswith("//", start):
        start += 2
        if url.startswith("/", start):  # sqlite:///PATH: no host, so no credentials
            return None
    query = _QUERY.search(url, start)
    end = url.rfind("@", start, query.start() if query else len(url))
    return (start, end) if end >= 0 else None


def redact_url(url: str) -> str:
    """``url`` with its user name and password, and any secret query value, as ``***``."""
    span = _userinfo(url)
    rest = url
    if span is not None:
        start, end = span
        url, rest = url[:start] + MASK, url[end:]
    else:
        url, rest = "", url
    query = rest.find("?")
    if query < 0:
        return url + rest
    return url + rest[:query] + _SECRET_PARAM.sub(rf"\1{MASK}", rest[query:])


def secrets_of(url: str) -> set[str]:
    """The credentials in ``url`` as written and percent-decoded: the strings that
    :func:`redact` hides (none empty)."""
    found: set[str] = set()
    span = _userinfo(url)
    if span is not None:
        user, _, password = url[span[0]:span[1]].partition(":")
        found.add(password if password else user)
    found.update(match.group(2) for match in _SECRET_PARAM.finditer(url))
    return {text for secret in found for text in (secret, unquote(secret)) if text}


def redact(text: str, url: str) -> str:
    """``text`` with every credential of ``url`` in it replaced by ``***``; longest first,
    so that a secret containing another is hidden whole."""
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def take_parameters(url: str, names: Collection[str]) -> tuple[str, dict[str, str]]:
    """``url`` without its query parameters named in ``names`` (Conveyor's own, which a
    driver must not see), and their values, percent-decoded; the other parameters are kept
    as written."""
    base, sep, rest = url.partition("?")
    if not sep:
        return url, {}
    query, hash_, fragment = rest.partition("#")
    kept: list[str] = []
    taken: dict[str, str] = {}
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if unquote(name) in names:
            taken[unquote(name)] = unquote(value)
        elif item:
            kept.append(item)
    return base + ("?" + "&".join(kept) if kept else "") + hash_ + fragment, taken


__all__ = ["MASK", "redact", "redact_url", "secrets_of", "take_parameters"]
