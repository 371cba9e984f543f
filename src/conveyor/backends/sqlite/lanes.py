"""Laned jobs in a SQLite claim: caps from live leases, round robin over groups, buckets.

A laned job (``grp`` not NULL) waits in the ``lanes`` index, ordered by queue, name, group
and rank, apart from the unlaned jobs of the ``queued`` index. Both are partial indexes on
the job's own state and group, so every path that makes a job queued or takes it out of
that state (enqueue, promotion, settle, recovery, retry, set_priority, claim, cancel,
delete, purge) keeps the lanes right by itself: there is no lane record to keep apart.

A claim makes one :class:`Lane` per (queue, laned name) with ready jobs; each yields its
name's jobs in round-robin order over the groups while the name's limits allow (visiting
a bounded number of groups: see :data:`VISITS`), and the broker merges them with the
queue's unlaned jobs by rank. What the claim decides is kept in :class:`Limiter` (running
counts, tokens) and written back by :meth:`Limiter.save` for the jobs actually taken: the
round-robin cursors (``turns``) and the buckets.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from conveyor.backends.sqlite.schema import due_now
from conveyor.limits import JobLimits, LimitUsage, Rate, tokens_after

#: a ready job's place in claim order: (rank, run_at, id)
Head = tuple[float, float, str]

LANED = "state='queued' AND grp IS NOT NULL"
#: group visits of one lane per claim at most, beyond twice what the claim wants: a claim
#: among many held groups (empty buckets, full caps) stops there, and the next one goes on
#: after the last group it visited
VISITS = 64


def bucket_key(name: str, group: str | None = None) -> str:
    """The key of a name's bucket, or of one of its groups' buckets."""
    return json.dumps([name] if group is None else [name, group], separators=(",", ":"))


@dataclass
class Taken:
    """One laned job a claim chose: its lane and group, and the buckets it spends."""

    queue: str
    name: str
    group: str
    head: Head
    spends: tuple[tuple[str, Rate], ...]


@dataclass
class Limiter:
    """The state of limits inside one claim (one write transaction)."""

    conn: sqlite3.Connection
    ns: str
    #: wall clock (buckets) and lease clock (running counts) of the claim
    now: float
    lease_now: float
    limits: Mapping[str, JobLimits]
    running: dict[str, int] = field(default_factory=dict)
    group_running: dict[tuple[str, str], int] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    #: (name, reason) that held back a ready job in this claim
    held: set[tuple[str, str]] = field(default_factory=set)
    #: grows with each take of a name: a lane's cached head is stale when it moved
    versions: dict[str, int] = field(default_factory=dict)

    def _load_running(self, name: str) -> None:
        if name in self.running:
            return
        rows = self.conn.execute(
            f"SELECT grp, count(*) FROM {self.ns}_jobs WHERE state='running' "
            f"AND grp IS NOT NULL AND name=? AND lease_expires_at > ? GROUP BY grp",
            (name, self.lease_now)).fetchall()
        self.running[name] = sum(count for _, count in rows)
        for group, count in rows:
            self.group_running[(name, group)] = count

    def _tokens(self, key: str, rate: Rate) -> float:
        found = self.tokens.get(key)
        if found is None:
            row = self.conn.execute(f"SELECT tokens, at FROM {self.ns}_buckets WHERE key=?",
                                    (key,)).fetchone()
            found = (float(rate.burst) if row is None
                     else tokens_after(float(row[0]), float(row[1]), self.now, rate))
            self.tokens[key] = found
        return found

    def name_held(self, name: str) -> str | None:
        """Why the name's next job may not start (None: it may)."""
        limit = self.limits.get(name)
        if limit is None:
            return None
        if limit.concurrency is not None:
            self._load_running(name)
            if self.running[name] >= limit.concurrency:
                return "concurrency"
        if limit.rate is not None and self._tokens(bucket_key(name), limit.rate) < 1:
            return "rate"
        return None

    def group_held(self, name: str, group: str) -> str | None:
        """Why a job of the name's ``group`` may not start (None: it may)."""
        limit = self.limits.get(name)
        if limit is None:
            return None
        if limit.group_concurrency is not None:
            self._load_running(name)
            if self.group_running.get((name, group), 0) >= limit.group_concurrency:
                return "group_concurrency"
        if (limit.group_rate is not None
                and self._tokens(bucket_key(name, group), limit.group_rate) < 1):
            return "group_rate"
        return None

    def take(self, queue: str, name: str, group: str, head: Head) -> Taken:
        """Count a job of ``name``'s ``group`` as running and spend its tokens."""
        limit = self.limits.get(name)
        spends: list[tuple[str, Rate]] = []
        if limit is not None:
            if limit.concurrency is not None or limit.group_concurrency is not None:
                self._load_running(name)
                self.running[name] += 1
                key = (name, group)
                self.group_running[key] = self.group_running.get(key, 0) + 1
            for key_of, rate in ((bucket_key(name), limit.rate),
                                 (bucket_key(name, group), limit.group_rate)):
                if rate is not None:
                    self.tokens[key_of] = self._tokens(key_of, rate) - 1
                    spends.append((key_of, rate))
        self.versions[name] = self.versions.get(name, 0) + 1
        return Taken(queue, name, group, head, tuple(spends))

    def save(self, taken: Sequence[Taken], lanes: Sequence[Lane] = ()) -> None:
        """Write back the cursors and buckets of the jobs of ``taken`` (those the claim
        keeps, in claim order): each lane's cursor on the last group it served (or, for a
        lane of ``lanes`` cut short whose jobs the claim all keeps, on the last group it
        visited), each bucket spent from its level at the claim's time."""
        turns: dict[tuple[str, str], str] = {}
        kept: dict[tuple[str, str], int] = {}
        spent: dict[str, tuple[Rate, int]] = {}
        for job in taken:
            turns[(job.queue, job.name)] = job.group
            kept[(job.queue, job.name)] = kept.get((job.queue, job.name), 0) + 1
            for key, rate in job.spends:
                spent[key] = (rate, spent.get(key, (rate, 0))[1] + 1)
        for lane in lanes:
            at = (lane.queue, lane.name)
            if lane.cut is not None and kept.get(at, 0) == lane.count:
                turns[at] = lane.cut
        if turns:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO {self.ns}_turns (queue, name, grp) VALUES (?,?,?)",
                [(queue, name, group) for (queue, name), group in turns.items()])
        rows = []
        for key, (rate, count) in spent.items():
            level = self._level(key, rate) - count
            full_at = self.now + max(0.0, rate.burst - level) / rate.per_second
            rows.append((key, level, self.now, full_at))
        if rows:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO {self.ns}_buckets (key, tokens, at, full_at) "
                f"VALUES (?,?,?,?)", rows)

    def _level(self, key: str, rate: Rate) -> float:
        """A bucket's tokens at the claim's time, before this claim spent any."""
        row = self.conn.execute(f"SELECT tokens, at FROM {self.ns}_buckets WHERE key=?",
                                (key,)).fetchone()
        return (float(rate.burst) if row is None
                else tokens_after(float(row[0]), float(row[1]), self.now, rate))


class Lane:
    """The ready jobs of one laned name in one queue, in round-robin order over its groups
    (by group name, from the group after the one served last), as its limits allow."""

    def __init__(self, limiter: Limiter, queue: str, name: str, cursor: str | None,
                 want: int = 1):
        self.limiter = limiter
        self.queue = queue
        self.name = name
        #: the group served last (None: start from the first)
        self.pos = cursor
        #: per group, the last job taken from it in this claim
        self.last: dict[str, Head] = {}
        #: groups that give nothing more in this claim: held (holds only grow within a
        #: claim), or out of ready jobs
        self.closed: set[str] = set()
        #: visits of groups left (see :data:`VISITS`)
        self.visits = VISITS + 2 * want
        #: the last group visited, when the visits ran out among groups giving nothing
        self.cut: str | None = None
        self.count = 0
        self.done = False
        self._head: tuple[str, Head] | None = None
        self._after: dict[str | None, str | None] = {}
        self._version = -1
        t = limiter.ns
        where = f"FROM {t}_jobs WHERE {LANED} AND queue=? AND name=?"
        self._sql_first = f"SELECT min(grp) {where}"
        self._sql_after = f"SELECT min(grp) {where} AND grp > ?"
        order = "ORDER BY run_at - boost, run_at, id LIMIT 1"
        self._sql_head = f"SELECT run_at - boost, run_at, id {where} AND grp=? {order}"
        self._sql_head_after = (f"SELECT run_at - boost, run_at, id {where} AND grp=? "
                                f"AND (run_at - boost, run_at, id) > (?, ?, ?) {order}")
        self._sql_left = f"SELECT count(*) FROM (SELECT 1 {where} LIMIT ?)"

    def head(self) -> Head | None:
        """The job this lane gives next, or None when it gives no more in this claim."""
        if self.done:
            return None
        version = self.limiter.versions.get(self.name, 0)
        if self._head is None or version != self._version:
            self._head = self._find()
            self._version = version
        return None if self._head is None else self._head[1]

    def take(self) -> Taken:
        """Take the job :meth:`head` gave."""
        assert self._head is not None
        group, head = self._head
        self._head = None
        self.pos = group
        self.last[group] = head
        self.count += 1
        return self.limiter.take(self.queue, self.name, group, head)

    def _next_group(self, after: str | None) -> str | None:
        """The group after ``after`` with ready jobs, wrapping around (remembered: the
        jobs a claim takes stay queued until its end, so the groups do not change)."""
        if after in self._after:
            return self._after[after]
        conn, key = self.limiter.conn, (self.queue, self.name)
        found = None
        if after is not None:
            (found,) = conn.execute(self._sql_after, (*key, after)).fetchone()
        if found is None:
            (found,) = conn.execute(self._sql_first, key).fetchone()
        group = None if found is None else str(found)
        self._after[after] = group
        return group

    def _group_head(self, group: str) -> Head | None:
        conn, key = self.limiter.conn, (self.queue, self.name, group)
        last = self.last.get(group)
        for _ in range(2):
            row = (conn.execute(self._sql_head, key) if last is None
                   else conn.execute(self._sql_head_after, (*key, *last))).fetchone()
            if row is None or type(row[1]) is float:
                break
            # a run time a hand left as no number: the queue's such jobs due now, then anew
            due_now(conn, self.limiter.ns, self.queue, self.limiter.now)
        return None if row is None else (float(row[0]), float(row[1]), str(row[2]))

    def _next_open(self, after: str | None) -> str | None:
        """The group after ``after`` (wrapping around) not closed in this claim; None when
        every group is closed. The groups passed over are skipped at once next time."""
        group = self._next_group(after)
        passed: set[str] = set()
        while group is not None and group in self.closed:
            if group in passed:
                group = None
                break
            passed.add(group)
            group = self._next_group(group)
        self._after[after] = group
        return group

    def _any_left(self) -> bool:
        (left,) = self.limiter.conn.execute(
            self._sql_left, (self.queue, self.name, self.count + 1)).fetchone()
        return int(left) > self.count

    def _find(self) -> tuple[str, Head] | None:
        limiter = self.limiter
        reason = limiter.name_held(self.name)
        if reason is not None:
            self.done = True
            if self.count == 0 or self._any_left():
                limiter.held.add((self.name, reason))
            return None
        visited: set[str] = set()
        at = self.pos
        while True:
            group = self._next_open(at)
            if group is None or group in visited:
                self.done = True
                return None
            if self.visits <= 0:  # the next claim goes on after the last group visited
                self.done = True
                self.cut = at
                return None
            self.visits -= 1
            visited.add(group)
            at = group
            reason = limiter.group_held(self.name, group)
            if reason is not None:
                self.closed.add(group)
                if group not in self.last or self._group_head(group) is not None:
                    limiter.held.add((self.name, reason))
                continue
            head = self._group_head(group)
            if head is not None:
                return group, head
            self.closed.add(group)


def laned_names(conn: sqlite3.Connection, ns: str, queue: str) -> list[str]:
    """The names with laned ready jobs in ``queue``: one index seek each (none at all
    costs one seek)."""
    where = f"FROM {ns}_jobs WHERE {LANED} AND queue=?1"
    rows = conn.execute(
        f"WITH RECURSIVE n(name) AS (SELECT min(name) {where} UNION ALL "
        f"SELECT (SELECT min(name) {where} AND name > n.name) FROM n "
        f"WHERE n.name IS NOT NULL) SELECT name FROM n WHERE name IS NOT NULL",
        (queue,)).fetchall()
    return [str(name) for (name,) in rows]


def cursors(conn: sqlite3.Connection, ns: str, queue: str,
            names: Sequence[str]) -> dict[str, str]:
    """The group each of ``names`` served last in ``queue``."""
    marks = ",".join("?" * len(names))
    rows = conn.execute(f"SELECT name, grp FROM {ns}_turns WHERE queue=? AND name IN "
                        f"({marks})", (queue, *names)).fetchall()
    return {str(name): str(group) for name, group in rows}


def laned_queues(conn: sqlite3.Connection, ns: str) -> list[str]:
    """The queues with laned ready jobs: one seek each in the ``lanes`` index (named: the
    planner would rather walk the queued jobs of the ``state`` index)."""
    where = f"FROM {ns}_jobs INDEXED BY {ns}_jobs_lanes WHERE {LANED}"
    rows = conn.execute(
        f"WITH RECURSIVE q(queue) AS (SELECT min(queue) {where} UNION ALL "
        f"SELECT (SELECT min(queue) {where} AND queue > q.queue) FROM q "
        f"WHERE q.queue IS NOT NULL) SELECT queue FROM q WHERE queue IS NOT NULL").fetchall()
    return [str(queue) for (queue,) in rows]


def usage(conn: sqlite3.Connection, ns: str, names: Sequence[str], max_groups: int,
          now: float, lease_now: float) -> list[LimitUsage]:
    """Running attempts (live leases) and ready jobs (queued, or scheduled and due) of each
    of ``names``: a total row, then up to ``max_groups`` of its busiest groups. Each count
    reads the name's own jobs through an index (``running``, ``lanes`` per queue with
    laned jobs, ``laned_scheduled``), nothing of other names."""
    found: list[LimitUsage] = []
    queues = laned_queues(conn, ns) if names else []
    queued = (f"SELECT grp, count(*) FROM {ns}_jobs WHERE {LANED} AND queue=? AND name=? "
              f"GROUP BY grp")
    due = (f"SELECT grp, count(*) FROM {ns}_jobs WHERE state='scheduled' "
           f"AND grp IS NOT NULL AND name=? AND run_at <= ? GROUP BY grp")
    for name in dict.fromkeys(names):
        running = dict(conn.execute(
            f"SELECT grp, count(*) FROM {ns}_jobs WHERE state='running' AND grp IS NOT NULL "
            f"AND name=? AND lease_expires_at > ? GROUP BY grp", (name, lease_now)))
        ready: dict[str, int] = {}
        counts = [conn.execute(queued, (queue, name)) for queue in queues]
        for rows in (*counts, conn.execute(due, (name, now))):
            for group, count in rows:
                ready[group] = ready.get(group, 0) + count
        found.append(LimitUsage(name, None, sum(running.values()), sum(ready.values())))
        groups = sorted(set(running) | set(ready),
                        key=lambda g: (-running.get(g, 0), -ready.get(g, 0), g))
        found.extend(LimitUsage(name, str(g), running.get(g, 0), ready.get(g, 0))
                     for g in groups[:max_groups])
    return found
