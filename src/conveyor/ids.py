"""Job ids: 26 characters of Crockford base32, unique, URL-safe and sorted by creation time.

The first 10 characters are the creation time in milliseconds, the other 16 are random.
Within one millisecond a process increments the random part, so ids made by one process
also sort in the order they were made.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(now: float | None = None) -> str:
    """Return a fresh job id for the time ``now`` (seconds since the epoch, default: now)."""
    global _last_ms, _last_random
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _last_random = (_last_random + 1) & ((1 << _RANDOM_BITS) - 1)
        else:
            _last_ms = ms
            _last_random = int.from_bytes(os.urandom(10), "big") >> 1
        rand = _last_random
    return _encode(ms, 10) + _encode(rand, 16)


def id_time(job_id: str) -> float:
    """The creation time (seconds since the epoch) encoded in ``job_id``."""
    ms = 0
    for char in job_id[:10]:
        ms = ms * 32 + _ALPHABET.index(char)
    return ms / 1000


def is_valid_id(text: str) -> bool:
    """True when ``text`` has the shape of a job id."""
    return len(text) == 26 and all(c in _ALPHABET for c in text)
