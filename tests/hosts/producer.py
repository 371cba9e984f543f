"""A producer on a host: ``python -m hosts.producer URL GO`` enqueues one job at once, then
another once the file ``GO`` exists, with the app's default ``store_timeout``. For each it
prints one line of JSON: ``{"ok": true, "id": ..., "seconds": ...}``, or what it raised
(type, message, the type of its ``__cause__``) and after how many seconds. Conveyor's log
goes to stderr (INFO and up), to be read by the test.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from hosts.hostjobs import make_host_app


def enqueue(app: Conveyor) -> dict[str, Any]:
    began = time.monotonic()
    try:
        handle = app.enqueue("work", 0.01)
    except Exception as exc:  # the test asserts which type it was
        return {"ok": False, "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": str(exc), "cause": type(exc.__cause__).__name__,
                "seconds": time.monotonic() - began}
    return {"ok": True, "id": handle.id, "seconds": time.monotonic() - began}


def main(url: str, go: Path) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    app = make_host_app(url)
    print(json.dumps(enqueue(app)), flush=True)
    while not go.exists():
        time.sleep(0.02)
    print(json.dumps(enqueue(app)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
