"""The HTTP API: a thin Starlette layer over :mod:`conveyor.http.services`.

``create_app(app, token=..., max_upload_bytes=...)`` returns an ASGI app; ``conveyor serve``
runs it with uvicorn next to a worker pool, or mount it inside your own Starlette or FastAPI
application.
"""

from conveyor.http.app import create_app
from conveyor.http.errors import ApiError
from conveyor.http.services import DEFAULT_MAX_UPLOAD, Services

__all__ = ["DEFAULT_MAX_UPLOAD", "ApiError", "Services", "create_app"]
