"""Loading the Lua scripts: one file per operation, each prefixed with ``_lib.lua``.

redis-py's ``Script`` runs them with EVALSHA and loads them again on NOSCRIPT (after a
restart or ``SCRIPT FLUSH``), also inside pipelines.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

NAMES = (
    "enqueue", "claim", "settle", "heartbeat", "recover", "expire_workers", "promote",
    "purge", "cancel", "retry", "delete", "progress",
)


@cache
def source(name: str) -> str:
    """The full text of script ``name``: the shared helpers, then the operation."""
    lua = resources.files("conveyor.backends.redis") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def register_all(client: Any) -> dict[str, Any]:
    """``{name: Script}`` for one client."""
    return {name: client.register_script(source(name)) for name in NAMES}
