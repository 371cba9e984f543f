"""Job ids: 26 characters of Crockford base32, unique, URL-safe and sorted by creation time.

An id is 128 bits: the creation time in milliseconds (48 bits), then 80 random bits.
Within one millisecond a process increments the random part, so ids made by one process
also sort in the order they were made.

The random bits come from ``os.urandom``, read a few kilobytes at a time into a pool that
the ids take from under the module's lock: ``os.urandom`` releases the GIL, and taking it
back on every id would stall an event loop while other threads run. A forked child starts
with an empty pool (and a fresh lock and last id), so it never repeats its parent's bits:
by the fork hook, or, in a child forked without Python's fork hooks (uWSGI's default), by
the process id each id checks. An id asked for by a signal handler that interrupted this
thread's own making of an id takes fresh random bits instead of waiting for itself.
"""

from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per table entry: 13 look-ups encode an id (5 for the time, 8 for the rest).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
#: the random bits the last 16 characters hold (the first 10 hold the time and 2 more)
_LOW_BITS = 78
_LOW_MASK = (1 << _LOW_BITS) - 1
#: bytes read from ``os.urandom`` at a time; each new millisecond takes 10 of them
_POOL_SIZE = 4096
_lock = threading.RLock()
#: True while an id is being made under the lock: another id asked for meanwhile can only
#: come from a signal handler that interrupted it on the same thread (other threads wait)
_busy = False
#: held while a child forked without the fork hooks forgets its parent's pool and lock (by
#: the first of its threads to make an id; the others wait, then use the new lock)
_RESET = threading.Lock()
#: the process the pool and the last id belong to
_pid = os.getpid()
_pool = b""
_pool_at = 0
_last_ms = -1
_last_random = 0
#: (time and top random bits, their 10 characters) of the last id made
_last_head: tuple[int, str] = (-1, "")


def _random_bits() -> int:
    """80 random bits from the pool, refilled from ``os.urandom`` when short (call it with
    the lock held)."""
    global _pool, _pool_at
    at = _pool_at
    end = at + 10
    if end > len(_pool):
        _pool = os.urandom(_POOL_SIZE)
        at, end = 0, 10
    _pool_at = end
    return int.from_bytes(_pool[at:end], "big") >> 1


def _after_fork_in_child() -> None:
    """Forget the parent's pool, last id and lock (another thread may have held it)."""
    global _lock, _pid, _pool, _pool_at, _last_ms, _last_random, _last_head, _busy
    _lock, _pid, _busy = threading.RLock(), os.getpid(), False
    _pool, _pool_at = b"", 0
    _last_ms, _last_random, _last_head = -1, 0, (-1, "")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _encode(value: int) -> str:
    """128 bits as 26 characters, most significant first (the last one holds 3 bits)."""
    value <<= 2
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def _encode_head(top: int) -> str:
    """The first 10 characters of an id: its top 50 bits (the time and 2 random bits)."""
    pairs = _PAIRS
    return (pairs[(top >> 40) & 1023] + pairs[(top >> 30) & 1023]
            + pairs[(top >> 20) & 1023] + pairs[(top >> 10) & 1023] + pairs[top & 1023])


def _encode_low(low: int) -> str:
    """The last 16 characters of an id: its low 78 bits (and the 2 padding bits)."""
    low <<= 2
    pairs = _PAIRS
    return (pairs[low >> 70] + pairs[(low >> 60) & 1023] + pairs[(low >> 50) & 1023]
            + pairs[(low >> 40) & 1023] + pairs[(low >> 30) & 1023]
            + pairs[(low >> 20) & 1023] + pairs[(low >> 10) & 1023] + pairs[low & 1023])


def new_id(now: float | None = None) -> str:
    """Return a fresh job id for the time ``now`` (seconds since the epoch, default: now)."""
    global _last_ms, _last_random, _last_head, _busy
    if _pid != os.getpid():  # a child forked without the fork hooks: reset once
        with _RESET:
            if _pid != os.getpid():
                _after_fork_in_child()
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        if _busy:  # a signal handler interrupted this thread's own new_id: fresh bits
            return _encode((ms << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big") >> 1)
        _busy = True
        try:
            if ms <= _last_ms:
                ms = _last_ms
                _last_random = (_last_random + 1) & _RANDOM_MASK
            else:
                _last_ms = ms
                _last_random = _random_bits()
            rand = _last_random
            # the first 10 characters (the time and the top 2 random bits) change once per
            # millisecond at most, while ids made within one millisecond share them
            top = (ms << 2) | (rand >> _LOW_BITS)
            known, head = _last_head
            if known != top:
                head = _encode_head(top)
                _last_head = (top, head)
        finally:
            _busy = False
    return head + _encode_low(rand & _LOW_MASK)


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
