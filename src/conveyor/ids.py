"""Job ids: 26 characters of Crockford base32, unique, URL-safe and sorted by creation time.

An id is 128 bits: the creation time in milliseconds (48 bits), then 80 random bits.
Within one millisecond a process increments the random part, so ids made by one process
also sort in the order they were made.
"""

from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per table entry: 13 look-ups encode an id.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_BITS = 80
_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _encode(value: int) -> str:
    """128 bits as 26 characters, most significant first (the last one holds 3 bits)."""
    value <<= 2
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -1, -10)])


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
    return _encode((ms << _RANDOM_BITS) | rand)


def id_time(job_id: str) -> float:
    """The creation time (seconds since the epoch) encoded in ``job_id``."""
    bits = 0
    for char in job_id[:10]:
        bits = bits * 32 + _ALPHABET.index(char)
    return (bits >> 2) / 1000  # 10 characters are 50 bits: the 48-bit time and 2 more


def is_valid_id(text: str) -> bool:
    """True when ``text`` has the shape of a job id."""
    return len(text) == 26 and all(c in _ALPHABET for c in text)


#: ids a caller may choose (``enqueue_call(job_id=...)``): plain text every store, URL and
#: log line takes as it is
_CHOSEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def is_acceptable_id(text: str) -> bool:
    """True when ``text`` may be a job id: 1 to 128 letters, digits, ``_ . : -``, starting
    with a letter or digit."""
    return _CHOSEN_ID.fullmatch(text) is not None
