#!/usr/bin/env python3
"""Run the same no-op and sleep workloads on Conveyor and its peers; print one table.

Standard library only: ``python3 benchmarks/run.py [--peers celery,rq] [--jobs N] ...``.
Each peer lives in its own virtualenv under ``benchmarks/.venvs/<peer>``; all of them, and
Conveyor's Redis run, use one private ``redis-server`` started here on a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
CONVEYOR = ROOT / ".venv" / "bin" / "conveyor"
# What each peer's virtualenv installs from PyPI (latest versions unless pinned here).
PEERS: dict[str, list[str]] = {
    "celery": ["celery[redis]"],
    "rq": ["rq"],
    "dramatiq": ["dramatiq[redis]"],
    "arq": ["arq"],
    "huey": ["huey", "redis"],
    "saq": ["saq[redis]", "typing_extensions"],  # saq 0.26 imports it without requiring it
    "taskiq": ["taskiq", "taskiq-redis"],
}
NO_PERSISTENCE = "Redis without persistence (no RDB, no AOF)"
SQLITE_FULL = "SQLite WAL, synchronous=FULL (fsync per commit)"


@dataclass
class Row:
    system: str
    enqueue_per_s: float | None = None
    noop_drain_per_s: float | None = None
    sleep_drain_per_s: float | None = None
    notes: list[str] = field(default_factory=list)
    runs: list[dict[str, object]] = field(default_factory=list)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_venv(peer: str, upgrade: bool) -> str | None:
    """Create or update ``.venvs/<peer>``; return why it failed, or None."""
    venv, wanted = VENVS / peer, "\n".join(PEERS[peer])
    stamp = venv / "bench-requirements.txt"
    if not upgrade and stamp.exists() and stamp.read_text() == wanted:
        return None
    log(f"installing {peer} into {venv.relative_to(ROOT)} ...")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade"]
    for command in ([sys.executable, "-m", "venv", str(venv)], pip + PEERS[peer]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` timed out"
        if done.returncode:
            lines = [x for x in done.stderr.splitlines() if x.startswith("ERROR")]
            return (lines or done.stderr.strip().splitlines() or ["failed"])[-1]
    stamp.write_text(wanted)
    return None


class RedisServer:
    """A private redis-server on a free loopback port, in a temp dir, without persistence."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="conveyor-peers-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            try:
                if self.command("PING") == "+PONG":
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"redis-server did not start on port {self.port}")

    def command(self, *words: str) -> str:
        """Send one command, return the first line of the reply."""
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request.encode())
            return s.recv(65536).decode().split("\r\n")[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_json(command: list[str], timeout: float, env: dict[str, str]) -> dict[str, object]:
    """Run one benchmark process in its own session; its stdout ends with a JSON object."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # the runners stop their workers on SIGTERM
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        return {"error": f"timed out after {timeout:.0f}s"}
    start = out.find("{")
    if process.returncode or start < 0:
        tail = (err.strip().splitlines() or [f"exit status {process.returncode}"])[-1]
        return {"error": f"exit status {process.returncode}: {tail}"}
    result: dict[str, object] = json.loads(out[start:])
    return result


def run_peer(peer: str, kind: str, n: int, c: int, url: str, timeout: float) -> dict[str, object]:
    python = str(VENVS / peer / "bin" / "python")
    command = [python, str(BENCH / "peers" / f"{peer}_bench.py"), "--jobs", str(n), "--kind", kind,
               "--concurrency", str(c), "--timeout", str(max(10.0, timeout - 30))]
    return run_json(command, timeout, {**os.environ, "BENCH_REDIS_URL": url})


def run_conveyor(url: str, kind: str, n: int, c: int, timeout: float,
                 single: int = 1) -> dict[str, object]:
    """``conveyor bench``; with ``single=1`` its worker drains the N bulk jobs (+2) only."""
    command = [str(CONVEYOR), "bench", "--url", url, "--jobs", str(n), "--kind", kind,
               "--max-workers", str(c), "--single", str(single), "--latency-jobs", "1", "--json"]
    if single == 1:
        command += ["--callers", "1"]
    return run_json(command, timeout, dict(os.environ))


def fill(row: Row, kind: str, result: dict[str, object]) -> None:
    """Put one run's figures in its row."""
    row.runs.append(result)
    if "error" in result:
        row.notes.append(f"{kind} failed: {result['error']}")
        return
    drain = result["drain_per_s"]
    enqueue = result.get("bulk_enqueue_per_s", result.get("enqueue_per_s"))
    assert isinstance(drain, float) and isinstance(enqueue, float)
    if kind == "noop":
        row.enqueue_per_s, row.noop_drain_per_s = enqueue, drain
    else:
        row.sleep_drain_per_s = drain


def figure(value: float | None) -> str:
    return "failed" if value is None else f"{value:,.0f}"


def table(rows: list[Row], sleep_kind: str) -> str:
    head = ["system", "enqueue jobs/s", "no-op drain jobs/s", f"{sleep_kind} drain jobs/s",
            "notes"]
    body = [[r.system, figure(r.enqueue_per_s), figure(r.noop_drain_per_s),
             figure(r.sleep_drain_per_s), "; ".join(r.notes)] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(4)]
    lines = []
    for line in [head, ["-" * w for w in widths] + ["-----"], *body]:
        figures = [x.rjust(w) for x, w in zip(line[1:4], widths[1:], strict=True)]
        cells = [line[0].ljust(widths[0]), *figures]
        lines.append("  ".join([*cells, line[4]]).rstrip())
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated, default: all")
    p.add_argument("--jobs", type=int, default=5000, help="no-op jobs per run")
    p.add_argument("--sleep-jobs", type=int, default=2000, help="sleep jobs per run")
    p.add_argument("--sleep-ms", type=float, default=10, help="what a sleep job sleeps")
    p.add_argument("--concurrency", type=int, default=100, help="C for the sleep workload")
    p.add_argument("--noop-concurrency", type=int, default=10, help="C for the no-op workload")
    p.add_argument("--timeout", type=float, default=180, help="seconds per run")
    p.add_argument("--no-conveyor", action="store_true", help="run the peers only")
    p.add_argument("--upgrade", action="store_true", help="pip install --upgrade every peer")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args()


def run_all(args: argparse.Namespace, peers: dict[str, str | None], url: str,
            tmp: str) -> list[Row]:
    """Both workloads on Conveyor's two stores, then on every peer (value: why it is skipped)."""
    sleep_kind = f"sleep:{args.sleep_ms:g}"
    workloads = [("noop", args.jobs, args.noop_concurrency),
                 (sleep_kind, args.sleep_jobs, args.concurrency)]
    stores = [] if args.no_conveyor or not CONVEYOR.exists() else [
        ("conveyor (sqlite)", f"sqlite:///{tmp}/bench-{{}}.db", SQLITE_FULL),
        ("conveyor (redis)", url, NO_PERSISTENCE)]
    rows = []
    for system, store, persistence in stores:  # store: "{}" becomes a file name per run
        row = Row(system)
        for i, (kind, n, c) in enumerate(workloads):
            log(f"{system}: {kind}, {n} jobs, C={c} ...")
            fill(row, kind, run_conveyor(store.format(i), kind, n, c, args.timeout))
        log(f"{system}: single-call enqueue ...")
        one = run_conveyor(store.format("single"), "noop", 1, 10, args.timeout, single=2000)
        row.runs.append(one)
        calls = ("single calls failed" if "error" in one else
                 f"single calls {one['single_enqueue_per_s']:,.0f}/s, "
                 f"{one['concurrent_enqueue_per_s']:,.0f}/s from 32 callers")
        row.notes[:0] = ["1 process, --min-workers = --max-workers = C",
                         f"bulk enqueue_many ({calls})"]
        row.notes.append(persistence)
        rows.append(row)
    for peer, failure in peers.items():
        row = Row(peer)
        if failure:
            row.notes.append(f"skipped: install failed: {failure}")
            rows.append(row)
            continue
        for kind, n, c in workloads:
            log(f"{peer}: {kind}, {n} jobs, C={c} ...")
            fill(row, kind, run_peer(peer, kind, n, c, url, args.timeout))
        done = [r for r in row.runs if "error" not in r]
        if done:
            row.notes[:0] = [f"v{done[0]['version']}", str(done[0]["worker"]),
                             str(done[0]["enqueue"])]
        row.notes.append(NO_PERSISTENCE)
        rows.append(row)
    return rows


def main() -> int:
    args = parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    if not args.no_conveyor and not CONVEYOR.exists():
        log(f"SKIPPING conveyor: no {CONVEYOR} (run ./scripts/run or pip install -e . first)")
    installed: dict[str, str | None] = {}
    for peer in peers:
        installed[peer] = ensure_venv(peer, args.upgrade)
        if installed[peer]:
            log(f"SKIPPING {peer}: its install failed: {installed[peer]}")
    started = time.monotonic()
    server = RedisServer(args.redis_server)
    try:
        with tempfile.TemporaryDirectory(prefix="conveyor-sqlite-") as tmp:
            rows = run_all(args, installed, server.url, tmp)
    finally:
        server.stop()
    redis_version = subprocess.run([args.redis_server, "--version"], capture_output=True,
                                   text=True).stdout.split()[2].removeprefix("v=")
    sleep_kind = f"sleep:{args.sleep_ms:g}"
    if args.json:
        print(json.dumps({"settings": vars(args), "redis_server": redis_version,
                          "cpus": os.cpu_count(), "rows": [asdict(r) for r in rows]}, indent=2))
        return 0
    print(f"{args.jobs:,} no-op jobs at C={args.noop_concurrency} and {args.sleep_jobs:,} "
          f"{sleep_kind} jobs at C={args.concurrency}, already queued when ONE worker process "
          f"starts; {os.cpu_count()} CPUs; private redis-server {redis_version}; "
          f"{time.monotonic() - started:.0f} s in all.")
    print("enqueue: the no-op run's N jobs / the time to enqueue them (method in the notes).")
    print("drain, peers: N / (first job start .. last job end), times the jobs record in Redis;"
          " conveyor: `conveyor bench`'s own measure, finished jobs counted in the store every"
          " 20 ms.\n")
    print(table(rows, sleep_kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
