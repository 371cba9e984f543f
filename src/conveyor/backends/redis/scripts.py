"""Loading the Lua scripts: one file per operation, each prefixed with the helpers of
``_lib.lua`` it uses.

redis-py's ``Script`` runs them with EVALSHA and loads them again on NOSCRIPT (after a
restart or ``SCRIPT FLUSH``), also inside pipelines.

Redis runs a script's whole text on every call, so defining all the helpers each time
would cost more than many scripts' own work: only the blocks a script needs (directly or
through other helpers) are put in front of it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

_DEFINES = re.compile(r"^local (?:function )?(\w+)", re.MULTILINE)
_WORD = re.compile(r"\w+")

NAMES = (
    "enqueue", "enqueue_one", "claim", "settle", "heartbeat", "recover", "expire_workers",
    "promote", "purge", "cancel", "retry", "delete", "progress", "stats", "known", "layout",
    "schedules_publish", "schedule_advance", "schedule_rewind", "schedule_pause",
    "prune_unique", "forget_idempotency", "set_priority", "limit_usage",
    "prune_buckets", "forget_queue", "prune_queues", "list_preview", "queue_setting", "clock",
    "shard_mark", "shard_register", "shard_forget", "writable",
)


def _lib_blocks() -> list[tuple[set[str], str]]:
    """The helper blocks of ``_lib.lua`` (separated by blank lines) and the names each
    defines; blocks that define nothing (comments) are dropped."""
    text = (resources.files("conveyor.backends.redis") / "lua" / "_lib.lua").read_text()
    blocks = []
    for block in re.split(r"\n\s*\n", text):
        names = set(_DEFINES.findall(block))
        if names:
            blocks.append((names, block))
    return blocks


@cache
def source(name: str) -> str:
    """The full text of script ``name``: the helpers it uses, then the operation."""
    body = (resources.files("conveyor.backends.redis") / "lua" / f"{name}.lua").read_text()
    blocks = _lib_blocks()
    needed = set(_WORD.findall(body))
    chosen: set[int] = set()
    grew = True
    while grew:
        grew = False
        for index, (names, block) in enumerate(blocks):
            if index not in chosen and names & needed:
                chosen.add(index)
                needed |= set(_WORD.findall(block))
                grew = True
    helpers = [block for index, (_, block) in enumerate(blocks) if index in chosen]
    return "\n\n".join([*helpers, body])


def register_all(client: Any) -> dict[str, Any]:
    """``{name: Script}`` for one client."""
    return {name: client.register_script(source(name)) for name in NAMES}
