"""Security headers of every page the server sends a browser (the dashboard, ``/docs``)."""

from __future__ import annotations

#: nothing but this server's own files and requests (and the style sheets' data: images), no
#: inline script, no framing, no sniffing, no caching
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
