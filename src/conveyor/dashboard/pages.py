"""The dashboard's HTML: a page shell its script fills in, and the login form.

Both are built from constants and values escaped with :func:`html.escape`; everything that
comes from jobs reaches the browser as JSON and is put on the page as text by the script.
"""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse

from conveyor.http.headers import SECURITY_HEADERS

NAV = (("overview", "/", "Overview"), ("workers", "/ui/workers", "Workers"),
       ("jobs", "/ui/jobs", "Jobs"), ("schedules", "/ui/schedules", "Schedules"))

SHELL = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Conveyor</title>
<link rel="stylesheet" href="{prefix}/ui/static/app.css">
<link rel="icon" href="{prefix}/ui/static/favicon.svg" type="image/svg+xml">
<script src="{prefix}/ui/static/app.js" defer></script>
</head>
<body data-prefix="{prefix}" data-page="{page}" data-csrf="{csrf}" data-job="{job}"
      data-secured="{secured}">
<header class="top">
  <a class="brand" href="{prefix}/">Conveyor</a>
  <nav>{nav}</nav>
  <span id="live" class="live" title="refreshes every 2 seconds">live</span>
  {logout}
</header>
<main id="main"><noscript>The dashboard needs JavaScript.</noscript></main>
<dialog id="confirm">
  <form method="dialog">
    <p id="confirm-text"></p>
    <div class="buttons">
      <button value="cancel" id="confirm-no">Cancel</button>
      <button value="ok" id="confirm-yes" class="danger">Confirm</button>
    </div>
  </form>
</dialog>
</body>
</html>
"""

LOGIN = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Conveyor</title>
<link rel="stylesheet" href="{prefix}/ui/static/app.css">
<link rel="icon" href="{prefix}/ui/static/favicon.svg" type="image/svg+xml">
</head>
<body class="login">
<form class="login-box" method="post" action="{prefix}/ui/login">
  <h1>Conveyor</h1>
  <p>This server needs its token (the one <code>conveyor serve</code> was given: its
  <code>--token-file</code> or <code>CONVEYOR_TOKEN</code>).</p>
  {error}
  <label for="token">Token</label>
  <input id="token" name="token" type="password" autocomplete="current-password" required
         autofocus>
  <button type="submit">Log in</button>
</form>
</body>
</html>
"""


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def shell(prefix: str, page: str, csrf: str, *, job: str = "",
          secured: bool = False) -> HTMLResponse:
    """A dashboard page: the frame, with what its script needs in ``data-`` attributes."""
    titles = {key: label for key, _, label in NAV} | {"job": "Job"}
    nav = "".join(
        f'<a href="{_attr(prefix + path)}"{" class=active" if key == page else ""}>{label}</a>'
        for key, path, label in NAV)
    logout = ('<button id="logout" class="link" type="button">Log out</button>'
              if secured else "")
    body = SHELL.format(title=titles.get(page, "Dashboard"), prefix=_attr(prefix),
                        page=_attr(page), csrf=_attr(csrf), job=_attr(job),
                        secured="1" if secured else "", nav=nav, logout=logout)
    return HTMLResponse(body, headers=SECURITY_HEADERS)


def login(prefix: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    """The login form, with ``error`` above it when the last try failed."""
    shown = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(LOGIN.format(prefix=_attr(prefix), error=shown),
                        status_code=status, headers=SECURITY_HEADERS)
