"""Interactive documentation: Swagger UI served from the ``swagger-ui-bundle`` package.

No CDN: the page's script, style sheet and icons are files of the installed package, served
under ``/docs/static/``; the page reads ``/openapi.json`` of the same server.
"""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response

from conveyor.http.errors import ApiError

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
  <div id="swagger-ui"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: {spec},
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis],
    }});
  </script>
</body>
</html>
"""


@cache
def bundle_dir() -> Path:
    """The directory of Swagger UI's files inside the installed package."""
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def page(prefix: str) -> Response:
    """The documentation page for an API mounted under ``prefix``."""
    spec = json.dumps(f"{prefix}/openapi.json").replace("<", "\\u003c")
    static = html.escape(f"{prefix}/docs/static", quote=True)
    return HTMLResponse(PAGE.format(static=static, spec=spec))


def static(name: str) -> Response:
    """One file of the bundle; 404 for any other name."""
    media_type = FILES.get(name)
    if media_type is None:
        raise ApiError(404, f"no such file: {name}")
    path = bundle_dir() / name
    if not path.is_file():
        raise ApiError(404, f"swagger-ui-bundle has no {name}")
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})
