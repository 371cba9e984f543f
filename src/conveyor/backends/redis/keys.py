"""Every Redis key of a namespace, built in this one place.

All keys carry the hash tag ``{namespace}``, so on Redis Cluster a namespace lives in one
slot and every script can touch all the keys it is given. Scripts receive every key they
touch in KEYS, but for the keys of limits (``lane``, ``delayed``, ``cursors``, ``run``,
``buckets``): those are per job name and group, not known before the script reads a job,
so scripts name them from the namespace's prefix (``{ns}``, taken from the jobs hash's
name in KEYS[1]); carrying the hash tag, they live in the same slot.

A namespace sharded by queue (``?shard=queue``, see ``sharded.py``) is one such set of keys
per queue, under the tag ``{namespace|queue}``, and one under ``{namespace}`` for what is
namespace-wide.

In the keys of limits, Q, N and G (a queue, a job name, a group) are each written as their
byte length, ':' and themselves, one after the other (``{ns}:lane:Q:N`` in the table is
``{ns}:lane:7:default6:report``), so a ':' inside one cannot make two keys the same.

A job is spread over hashes keyed by its id, one per field, so that claiming and settling a
job writes the few fields that change and never decodes or re-encodes the rest: the
immutable part (name, queue, arguments, creation time, first run_at) is JSON written once
at enqueue; everything the life of a job changes is a plain value of its own. A field that
is absent has its default (0 attempts, no worker, no result, ...).

Layout (``ns`` is the namespace, ``q`` a queue):

==============================  =======  ===================================================
``{ns}:jobs``                   hash     job id -> {"id", "name", "queue", "args",
                                         "kwargs", "created_at", "run_at"} as JSON, written
                                         once (args and kwargs are JSON values inside it)
``{ns}:f:state``                hash     job id -> state
``{ns}:f:run_at``               hash     job id -> run_at, once it differs from the first
``{ns}:f:attempts``             hash     job id -> attempts
``{ns}:f:recoveries``           hash     job id -> times its worker was lost
``{ns}:f:worker``               hash     job id -> id of the worker that ran it last
``{ns}:f:started``              hash     job id -> started_at of the last attempt
``{ns}:f:finished``             hash     job id -> finished_at
``{ns}:f:result``               hash     job id -> result as JSON (absent: null)
``{ns}:f:error``                hash     job id -> error of the last attempt
``{ns}:f:traceback``            hash     job id -> its traceback
``{ns}:f:progress``             hash     job id -> "PROGRESS MESSAGE" of the running attempt
``{ns}:f:priority``             hash     job id -> "PRIORITY BOOST" (boost in seconds, see
                                         ``conveyor.priority``); absent: 0 and 0, so a
                                         job of the default priority writes nothing
``{ns}:f:deferrals``            hash     job id -> times it was put back uncharged after
                                         RateLimited (absent: 0)
``{ns}:f:lane``                 hash     laned job id -> its name as a key part (see
                                         below) directly followed by its group (see
                                         ``conveyor.limits``), written once at enqueue;
                                         absent: the job is not laned (group None)
``{ns}:f:claim``                hash     job id -> the number its latest claim took from
                                         ``{ns}:claim:counter`` (which only grows): the
                                         fencing token of its latest attempt, named by
                                         settle, heartbeat and progress
``{ns}:claim:counter``          string   the namespace's claim counter (INCR per claim)
``{ns}:expiry``                 zset     finished job id -> expires_at (when it is purged)
``{ns}:cancel``                 set      jobs whose cancellation was asked while they ran
``{ns}:queues``                 set      queues that hold jobs or have stored settings; a
                                         queue with neither is forgotten (delete.lua,
                                         purge.lua, prune_queues.lua); new names come in
                                         under max_queues (enqueue.lua, enqueue_one.lua,
                                         queue_setting.lua)
``{ns}:paused``                 set      paused queue names: claims skip them (claim.lua)
``{ns}:caps``                   hash     queue -> max_queued, the store's cap, enforced by
                                         enqueue.lua and enqueue_one.lua for every producer
``{ns}:workers``                zset     worker id -> heartbeat expiry
``{ns}:winfo``                  hash     worker id -> the worker as JSON
``{ns}:claims``                 hash     worker id -> its last claim's token and job ids
``{ns}:q:q:waiting``            zset     queued (ready) job id -> rank (run_at - boost);
                                         claims take the lowest ranks first
``{ns}:q:q:sched``              zset     scheduled (delayed, retrying) job id -> run_at;
                                         claims and promotions move the due ones to
                                         ``waiting`` (marked queued) without a scan
``{ns}:q:q:wake``               list     a token pushed when work arrives; idle workers
                                         block on it (BLPOP)
``{ns}:q:q:leases``             zset     running job id -> lease expiry (server time); it is
                                         also the index of the queue's running jobs
``{ns}:q:q:s:STATE``            zset     job ids of the queue in STATE (all but running),
                                         score 0, for counts and listing by id
``{ns}:q:q:lanes``              set      names of laned jobs with queued jobs in the queue
``{ns}:lane:Q:N``               zset     the groups of job name N with queued jobs in queue
                                         Q (score 0: in the order of their names, the
                                         round robin of claims)
``{ns}:lane:Q:N:G``             zset     queued job id of name N and group G in queue Q ->
                                         rank (laned jobs are never in ``waiting``)
``{ns}:delayed:N``              zset     scheduled laned job id of name N (any queue) ->
                                         run_at: its due ones are counted by limit_usage
                                         without reading other jobs
``{ns}:cursors``                hash     QN (parts as in keys) -> the group a claim served
                                         last (the next claim's round robin starts after it)
``{ns}:run:N``                  zset     running laned job id of name N -> lease expiry;
                                         running(N) counts the live leases (score > now)
``{ns}:run:N:G``                zset     the same for group G of name N
``{ns}:buckets``                hash     N, or NG (parts) -> "TOKENS AT RATE BURST": a token
                                         bucket of a rate limit at server time AT, refilled
                                         at RATE per second up to BURST (absent: full;
                                         purges drop full ones)
``{ns}:stats``                  zset     minute -> minute: the minutes that have statistics
``{ns}:stats:M``                hash     the statistics of minute M (seconds since the
                                         epoch): ``q NUL succeeded`` -> count, ... (see
                                         ``codec.stats_field``); expires STATS_KEEP after M
``{ns}:stats:call:T``           string   marks the add_stats call with token T as done, so
                                         a retry after a lost reply adds nothing twice
``{ns}:known``                  hash     job name -> the job as its workers publish it
                                         (JSON, see ``conveyor.known``; ``seen_at`` is
                                         server time)
``{ns}:unique``                 hash     unique key -> id of the last job stored with it;
                                         the key is held while that job exists and is not
                                         final (checked at enqueue, inside the script)
``{ns}:unique:until``           hash     unique key -> when its hold ends (server time),
                                         for keys held for a time (absent: until final)
``{ns}:idem:KEY``               string   idempotency key KEY of an HTTP enqueue -> JSON
                                         ``[request digest, job id]``; expires 24 h after
                                         the first request
``{ns}:revoked:NONCE``          string   "1": the dashboard session NONCE was logged out;
                                         expires when the session would have
``{ns}:layout``                 string   the storage layout of the namespace (see
                                         ``layout.py``)
``{ns}:probe``                  (none)   never left set: the write probe of an outage that
                                         reads do not end sets and deletes a field of it
                                         (``writable.lua``)
``{ns}:sched:def``              hash     schedule name -> its definition as JSON (see
                                         ``conveyor.schedules``), as workers publish it
``{ns}:sched:paused``           hash     schedule name -> 1 while it is paused
``{ns}:sched:last``             hash     schedule name -> the instant its ticks were dealt
                                         with up to (only grows)
``{ns}:sched:next``             hash     schedule name -> its next tick
``{ns}:sched:job``              hash     schedule name -> id of the job of its latest tick
``{ns}:sched:seen``             hash     schedule name -> when a worker last registered it
                                         (server time)
==============================  =======  ===================================================
"""

from __future__ import annotations

from conveyor.job import JobState

#: the per-field hashes of a job, in the order scripts receive them (see :attr:`Keys.fields`)
FIELDS = (
    "state", "run_at", "attempts", "recoveries", "worker", "started", "finished", "result",
    "error", "traceback", "progress", "priority", "deferrals", "lane",
)
#: the states that have a score-0 index of their own (running jobs are the lease set)
INDEXED_STATES = (
    JobState.QUEUED, JobState.SCHEDULED, JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED,
)


def part(text: str) -> str:
    """A queue, job name or group as a part of a key of limits: its byte length, ':' and
    itself (as ``enc`` in _lib.lua)."""
    return f"{len(text.encode('utf-8', 'surrogatepass'))}:{text}"


def lane_field(name: str, group: str) -> str:
    """A laned job's lane field: its name as a key part, then its group."""
    return part(name) + group


def group_of_lane(field: str | None) -> str | None:
    """The group in a lane field (None: the job is not laned, or its field, left odd by a
    hand, does not read as "LEN:NAME" then a group: as the scripts read it)."""
    if field is None:
        return None
    digits, colon, rest = field.partition(":")
    raw = rest.encode("utf-8", "surrogatepass")
    if not colon or not digits.isdigit() or not digits.isascii() or int(digits) > len(raw):
        return None
    return raw[int(digits):].decode("utf-8", "surrogatepass")


#: queues whose key groups are kept made (more are made again as needed)
MAX_CACHED_GROUPS = 1024


class Keys:
    """Key names of one namespace (or, with ``tag``, of one shard of a namespace sharded
    by queue: its keys carry the hash tag ``{tag}`` instead, see ``sharded.py``)."""

    def __init__(self, namespace: str, tag: str | None = None) -> None:
        self.prefix = f"{{{namespace if tag is None else tag}}}"
        p = self.prefix
        self.jobs = f"{p}:jobs"
        self.queues = f"{p}:queues"
        self.paused = f"{p}:paused"
        self.caps = f"{p}:caps"
        self.expiry = f"{p}:expiry"
        self.cancel = f"{p}:cancel"
        self.workers = f"{p}:workers"
        self.winfo = f"{p}:winfo"
        self.claims = f"{p}:claims"
        self.stats = f"{p}:stats"
        self.known = f"{p}:known"
        self.layout = f"{p}:layout"
        #: never left set: a field set and deleted is a write that leaves nothing (see
        #: writable.lua)
        self.probe = f"{p}:probe"
        #: the hashes of schedules, in the order their scripts take them: definitions,
        #: paused, last, next, last job, seen
        self.schedule_block = [f"{p}:sched:{part}"
                               for part in ("def", "paused", "last", "next", "job", "seen")]
        self.unique = f"{p}:unique"
        self.unique_until = f"{p}:unique:until"
        self.cursors = f"{p}:cursors"
        self.buckets = f"{p}:buckets"
        self._groups: dict[str, list[str]] = {}
        #: the keys that hold a job, in the order most scripts take them first: the jobs
        #: hash, the field hashes (in :data:`FIELDS` order), the expiry zset, the cancel set,
        #: the set of running jobs claimed ahead and not started yet, the claim numbers, the
        #: claim counter
        self.unstarted = f"{p}:unstarted"
        self.claim_numbers = f"{p}:f:claim"
        self.claim_counter = f"{p}:claim:counter"
        #: the jobs hash and the field hashes, read together for a job's record
        self.record_hashes = [self.jobs, *(f"{p}:f:{name}" for name in FIELDS)]
        self.job_block = [*self.record_hashes, self.expiry, self.cancel, self.unstarted,
                          self.claim_numbers, self.claim_counter]

    def field(self, name: str) -> str:
        """The hash of one job field (one of :data:`FIELDS`)."""
        return f"{self.prefix}:f:{name}"

    def waiting(self, queue: str) -> str:
        """Queued (ready) job ids of ``queue`` scored by rank (run_at - boost)."""
        return f"{self.prefix}:q:{queue}:waiting"

    def sched(self, queue: str) -> str:
        """The scheduled (delayed, retrying) job ids of ``queue`` scored by run_at."""
        return f"{self.prefix}:q:{queue}:sched"

    def wake(self, queue: str) -> str:
        """The wake-up token list of ``queue``."""
        return f"{self.prefix}:q:{queue}:wake"

    def leases(self, queue: str) -> str:
        """The running job ids of ``queue`` scored by lease expiry."""
        return f"{self.prefix}:q:{queue}:leases"

    def state(self, queue: str, state: JobState | str) -> str:
        """The index of ``queue``'s jobs in ``state`` (the lease set for running)."""
        if state == JobState.RUNNING:
            return self.leases(queue)
        return f"{self.prefix}:q:{queue}:s:{state}"

    def queue_group(self, queue: str) -> list[str]:
        """The keys of one queue that most scripts take, in a fixed order: waiting, sched,
        wake, leases, then the indexes of :data:`INDEXED_STATES`, then the lanes set. (Made
        once per queue: they are built for every enqueue, claim and settle; callers must
        not change the list.)"""
        group = self._groups.get(queue)
        if group is None:
            if len(self._groups) >= MAX_CACHED_GROUPS:
                self._groups.clear()
            group = self._groups[queue] = [
                self.waiting(queue), self.sched(queue), self.wake(queue), self.leases(queue),
                *(self.state(queue, s) for s in INDEXED_STATES), self.lanes(queue)]
        return group

    def lanes(self, queue: str) -> str:
        """The names of laned jobs that have queued jobs in ``queue``."""
        return f"{self.prefix}:q:{queue}:lanes"

    def idempotency(self, key: str) -> str:
        """The record of one idempotency key of an HTTP enqueue."""
        return f"{self.prefix}:idem:{key}"

    def revoked(self, nonce: str) -> str:
        """The mark of one logged-out dashboard session."""
        return f"{self.prefix}:revoked:{nonce}"

    def stats_minute(self, minute: int) -> str:
        """The statistics hash of the minute starting at ``minute``."""
        return f"{self.prefix}:stats:{minute}"

    def stats_call(self, token: str) -> str:
        """The marker of one add_stats call."""
        return f"{self.prefix}:stats:call:{token}"
