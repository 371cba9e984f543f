"""The heap of a process that runs a worker or a server for a long time."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect the garbage of loading, then move every object alive (modules, the app, its
    functions) out of the cyclic collector's reach: they live as long as the process, and
    each full collection would otherwise walk them all, holding the event loop for
    milliseconds at a time. Call once, when loading is done and before serving."""
    gc.collect()
    gc.freeze()
