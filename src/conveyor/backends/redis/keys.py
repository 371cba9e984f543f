"""Every Redis key of a namespace, built in this one place.

All keys carry the hash tag ``{namespace}``, so on Redis Cluster a namespace lives in one
slot and every script can touch all the keys it is given. Scripts receive every key they
touch in KEYS and never build key names themselves.

Layout (``ns`` is the namespace, ``q`` a queue):

==============================  =======  ===================================================
``{ns}:jobs``                   hash     job id -> the job as JSON (args, kwargs and result
                                         kept as JSON text inside it, opaque to the scripts)
``{ns}:queues``                 set      queue names ever used
``{ns}:leases``                 zset     running job id -> lease expiry (server time)
``{ns}:expiry``                 zset     finished job id -> when it is purged
``{ns}:cancel``                 set      running jobs whose cancellation was asked for
``{ns}:workers``                zset     worker id -> heartbeat expiry
``{ns}:winfo``                  hash     worker id -> the worker as JSON
``{ns}:claims``                 hash     worker id -> its last claim's token and job ids
``{ns}:q:q:waiting``            zset     waiting (queued, delayed, retrying) job id ->
                                         run_at; claims take the due ones, oldest first
``{ns}:q:q:sched``              zset     the scheduled ones among them -> run_at, so due
                                         ones can be marked queued without a scan
``{ns}:q:q:wake``               list     a token pushed when work arrives; idle workers
                                         block on it (BLPOP)
``{ns}:q:q:s:STATE``            zset     job ids of the queue in STATE, score 0, for counts
                                         and listing
``{ns}:stats``                  zset     minute -> minute: the minutes that have statistics
``{ns}:stats:M``                hash     the statistics of minute M (seconds since the
                                         epoch): ``q NUL succeeded`` -> count, ... (see
                                         ``codec.stats_field``); expires STATS_KEEP after M
``{ns}:stats:call:T``           string   marks the add_stats call with token T as done, so
                                         a retry after a lost reply adds nothing twice
==============================  =======  ===================================================
"""

from __future__ import annotations

from conveyor.job import ALL_STATES, JobState


class Keys:
    """Key names of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{{{namespace}}}"
        p = self.prefix
        self.jobs = f"{p}:jobs"
        self.queues = f"{p}:queues"
        self.leases = f"{p}:leases"
        self.expiry = f"{p}:expiry"
        self.cancel = f"{p}:cancel"
        self.workers = f"{p}:workers"
        self.winfo = f"{p}:winfo"
        self.claims = f"{p}:claims"
        self.stats = f"{p}:stats"

    def waiting(self, queue: str) -> str:
        """Waiting job ids of ``queue`` scored by run_at."""
        return f"{self.prefix}:q:{queue}:waiting"

    def sched(self, queue: str) -> str:
        """The scheduled (delayed, retrying) job ids of ``queue`` scored by run_at."""
        return f"{self.prefix}:q:{queue}:sched"

    def wake(self, queue: str) -> str:
        """The wake-up token list of ``queue``."""
        return f"{self.prefix}:q:{queue}:wake"

    def state(self, queue: str, state: JobState | str) -> str:
        """The index of ``queue``'s jobs in ``state``."""
        return f"{self.prefix}:q:{queue}:s:{state}"

    def states(self, queue: str) -> list[str]:
        """The six state indexes of ``queue``, in :data:`ALL_STATES` order."""
        return [self.state(queue, s) for s in ALL_STATES]

    def queue_group(self, queue: str) -> list[str]:
        """The keys of one queue that most scripts take, in a fixed order:
        waiting, sched, wake, then the six state indexes."""
        return [self.waiting(queue), self.sched(queue), self.wake(queue), *self.states(queue)]

    def stats_minute(self, minute: int) -> str:
        """The statistics hash of the minute starting at ``minute``."""
        return f"{self.prefix}:stats:{minute}"

    def stats_call(self, token: str) -> str:
        """The marker of one add_stats call."""
        return f"{self.prefix}:stats:call:{token}"
