"""The one error type of the HTTP API: a status code, a message and extra headers."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.responses import JSONResponse


@dataclass
class ApiError(Exception):
    """A request that fails: the client gets ``status`` and ``{"error": message}``."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def error_response(status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON body every error has: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)
