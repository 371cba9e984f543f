"""The clock of SQLite leases: one that does not step, shared by the machine's processes.

Leases compare times written by one process with times read by another, so they need a
clock every process on the machine reads alike and that an NTP step, a manual change or a
wrong time zone cannot move: Linux's ``CLOCK_BOOTTIME`` (it also counts a suspended VM's
sleep, so a lease runs out across a suspend as it would have). Displayed times
(``started_at``, ``heartbeat_at``) stay on the wall clock.

A boot clock starts again at zero after a reboot, so the database remembers the boot it
saw (:func:`boot_id`); on the first open after another boot, leases are reset to the new
clock (see ``schema.check_boot``).
"""

from __future__ import annotations

import time
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def lease_now() -> float:
    """Seconds on the machine's boot clock."""
    return time.clock_gettime(_CLOCK)


def boot_id() -> str:
    """An id of the current boot: the kernel's where it gives one, else the wall time of the
    boot rounded to a minute (a wall clock step of more than that reads as a new boot, which
    only expires leases early: their jobs run again, fenced from the old attempts)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return f"boot-{round((time.time() - lease_now()) / 60)}"
