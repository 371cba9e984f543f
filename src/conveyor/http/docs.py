"""Interactive documentation: Swagger UI served from the ``swagger-ui-bundle`` package.

No CDN: the page's script, style sheet and icons are files of the installed package, served
under ``/docs/static/``; the page reads ``/openapi.json`` of the same server. The page sends
the dashboard's security headers (a policy that allows only this server's own scripts, styles
and requests, no framing) and has no inline script: its settings are a file of its own. A
token given to "Authorize" lives in the page only, never in the browser's storage.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response

from conveyor.http.errors import ApiError
from conveyor.http.headers import SECURITY_HEADERS

#: the page's own script, served as /docs/static/init.js: Swagger UI with the spec named by
#: the page, no authorization kept in localStorage and no calls to the online validator
INIT = """"use strict";
window.ui = SwaggerUIBundle({
  url: document.getElementById("swagger-ui").dataset.spec,
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
});
"""

#: the only files of the bundle that are served, and their media types
FILES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Conveyor API</title>
  <link rel="stylesheet" href="{static}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{static}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui" data-spec="{spec}"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script src="{static}/init.js"></script>
</body>
</html>
"""


def is_docs_path(path: str) -> bool:
    """True for the documentation's paths: the page, its files and the spec it reads."""
    return path in ("/docs", "/openapi.json") or path.startswith("/docs/")


@cache
def bundle_dir() -> Path:
    """The directory of Swagger UI's files inside the installed package."""
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def page(prefix: str) -> Response:
    """The documentation page for an API mounted under ``prefix``."""
    spec = html.escape(f"{prefix}/openapi.json", quote=True)
    static = html.escape(f"{prefix}/docs/static", quote=True)
    return HTMLResponse(PAGE.format(static=static, spec=spec),
                        headers=SECURITY_HEADERS)


def static(name: str) -> Response:
    """One file of the bundle, or the page's script; 404 for any other name."""
    cached = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}
    if name == "init.js":
        return Response(INIT, media_type="text/javascript", headers=cached)
    media_type = FILES.get(name)
    if media_type is None:
        raise ApiError(404, f"no such file: {name}")
    path = bundle_dir() / name
    if not path.is_file():
        raise ApiError(404, f"swagger-ui-bundle has no {name}")
    return FileResponse(path, media_type=media_type, headers=cached)
