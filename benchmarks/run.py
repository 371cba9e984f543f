#!/usr/bin/env python3
"""Run the same no-op and sleep workloads on Conveyor and its peers; print one table.

Standard library only: ``python3 benchmarks/run.py [--peers celery,rq] [--jobs N] ...``.
Every system gets the same worker processes (``--processes``, default: the CPUs), each in
its documented mode for the workload; every job is counted the same way, by the recorder in
``peers/_common.py``. Systems take turns within each round; the table shows the medians of
the rounds and each figure's ratio to the strongest peer's. Each peer lives in its own
virtualenv under ``benchmarks/.venvs/<peer>``; all of them, and Conveyor's Redis runs, use
one private ``redis-server`` started here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
# What each peer's virtualenv installs from PyPI, majors pinned (minors for 0.x releases).
PEERS: dict[str, list[str]] = {
    "celery": ["celery[redis]>=5,<6", "gevent"],  # gevent: its pool for the sleep workload
    "rq": ["rq>=3,<4"],
    "dramatiq": ["dramatiq[redis]>=2,<3"],
    "arq": ["arq>=0.28,<0.29"],
    "huey": ["huey>=3,<4", "redis", "gevent"],  # gevent: its greenlet workers
    "saq": ["saq[redis]>=0.26,<0.27", "typing_extensions"],  # saq 0.26 imports it undeclared
    "taskiq": ["taskiq>=0.13,<0.14", "taskiq-redis>=1,<2"],
}
FIGURES = ("enqueue", "noop", "sleep")  # enqueue rate, no-op drain, sleep drain
NO_PERSISTENCE = "Redis without persistence (no RDB, no AOF)"
SQLITE_FULL = "SQLite WAL, synchronous=FULL (fsync per commit)"


@dataclass
class System:
    """One row of the table: a runner, the python that runs it, its store and processes."""

    label: str
    runner: str  # peers/<runner>_bench.py
    python: str
    processes: int
    store: str | None = None  # "sqlite" for Conveyor's SQLite runs, else the private Redis
    peer: bool = True
    skipped: str | None = None  # why it does not run
    runs: dict[str, list[dict[str, object]]] = field(
        default_factory=lambda: {"noop": [], "sleep": []})

    def median(self, figure: str) -> float | None:
        key, kind = ("enqueue_per_s", "noop") if figure == "enqueue" else ("drain_per_s", figure)
        values = [v for r in self.runs[kind] for v in [r.get(key)] if isinstance(v, float)]
        return statistics.median(values) if values else None

    def failures(self) -> list[str]:
        return [f"{kind} failed: {r['error']}" for kind, runs in self.runs.items()
                for r in runs if "error" in r]


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


def conveyor_python(given: str | None) -> tuple[str, str | None]:
    """The python that runs Conveyor's runner, and why it cannot (or None)."""
    python = given or str(ROOT / ".venv" / "bin" / "python")
    check = [python, "-c", "import conveyor, redis"]
    try:
        failed = subprocess.run(check, capture_output=True, env=conveyor_env(), timeout=60)
    except OSError as exc:
        return python, str(exc)
    if failed.returncode:
        return python, (f"`{python}` cannot import conveyor and redis (run ./scripts/run or "
                        "pip install -e '.[redis]' first, or pass --conveyor-python)")
    return python, None


def conveyor_env() -> dict[str, str]:
    """This checkout's ``src`` first on the path: the code measured is the code here."""
    path = os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)
    return {**os.environ, "PYTHONPATH": path}


class RedisServer:
    """A private redis-server on a loopback port, in a temp dir, without persistence."""

    def __init__(self, binary: str, port: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="conveyor-peers-")
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            try:
                if self.command("PING") == "+PONG" and self.process.poll() is None:
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
            process.communicate(timeout=30)
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


def run_one(system: System, kind: str, args: argparse.Namespace, url: str,
            tmp: str) -> dict[str, object]:
    """One enqueue-then-drain run of ``system`` (kind: noop or sleep)."""
    c = args.concurrency if kind == "sleep" else args.noop_concurrency
    spec = "noop" if kind == "noop" else f"sleep:{args.sleep_ms:g}"
    command = [system.python, str(BENCH / "peers" / f"{system.runner}_bench.py"),
               "--jobs", str(args.jobs), "--kind", spec, "--processes", str(system.processes),
               "--concurrency", str(c), "--timeout", str(args.timeout)]
    env = conveyor_env() if system.runner == "conveyor" else dict(os.environ)
    env["BENCH_REDIS_URL"] = url
    db = Path(tmp) / "bench.db"
    if system.store == "sqlite":
        env["BENCH_STORE_URL"] = f"sqlite:///{db}"
    # the enqueue is not bounded by --timeout: one call at a time, 30,000 calls may take minutes
    try:
        return run_json(command, 2 * args.timeout + 120, env)
    finally:
        for leftover in Path(tmp).glob("bench.db*"):
            leftover.unlink()


def systems(args: argparse.Namespace, peers: list[str]) -> list[System]:
    """Conveyor on both stores at 1, 2 and P processes, then every peer at P processes."""
    rows = []
    if not args.no_conveyor:
        python, why = conveyor_python(args.conveyor_python)
        if why:
            log(f"SKIPPING conveyor: {why}")
        for store, name in (("redis", "Redis"), ("sqlite", "SQLite")):
            for p in sorted({1, 2, args.processes}):
                label = f"Conveyor, {name}, {p} process{'es' if p > 1 else ''}"
                rows.append(System(label, "conveyor", python, p,
                                   store if store == "sqlite" else None, False, why))
    for peer in peers:
        why = ensure_venv(peer, args.upgrade)
        if why:
            log(f"SKIPPING {peer}: its install failed: {why}")
        python = str(VENVS / peer / "bin" / "python")
        rows.append(System(peer, peer, python, args.processes, skipped=why))
    return rows


def run_rounds(rows: list[System], args: argparse.Namespace, url: str) -> None:
    """``--rounds`` rounds; in each, every system runs both workloads before the next."""
    with tempfile.TemporaryDirectory(prefix="conveyor-sqlite-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for system in rows:
                if system.skipped:
                    continue
                for kind in ("noop", "sleep"):
                    log(f"round {round_}/{args.rounds}: {system.label}: {kind}, "
                        f"{args.jobs} jobs ...")
                    result = run_one(system, kind, args, url, tmp)
                    if "error" in result:
                        log(f"  failed: {result['error']}")
                    else:
                        log(f"  enqueue {result['enqueue_per_s']:,.0f}/s, "
                            f"drain {result['drain_per_s']:,.0f}/s")
                    system.runs[kind].append(result)


def strongest(rows: list[System]) -> dict[str, float | None]:
    """The best peer's median for each figure."""
    best: dict[str, float | None] = {}
    for figure in FIGURES:
        values = [v for r in rows if r.peer for v in [r.median(figure)] if v is not None]
        best[figure] = max(values) if values else None
    return best


def cells(row: System, best: dict[str, float | None]) -> list[str]:
    out = [row.label]
    for figure in FIGURES:
        value, top = row.median(figure), best[figure]
        out.append("skipped" if row.skipped else "failed" if value is None else f"{value:,.0f}")
        out.append(f"{value / top:.2f}x" if value is not None and top else "")
    return out


def heads(args: argparse.Namespace) -> list[str]:
    return ["system", "enqueue jobs/s", "x strongest peer", "no-op drain jobs/s",
            "x strongest peer", f"sleep {args.sleep_ms:g} ms drain jobs/s", "x strongest peer"]


def text_table(rows: list[System], args: argparse.Namespace) -> str:
    body = [heads(args)] + [cells(r, strongest(rows)) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(body[0]))]
    body.insert(1, ["-" * w for w in widths])
    return "\n".join("  ".join([line[0].ljust(widths[0])] +
                               [x.rjust(w) for x, w in zip(line[1:], widths[1:], strict=True)])
                     .rstrip() for line in body)


def markdown_table(rows: list[System], args: argparse.Namespace) -> str:
    lines = ["| " + " | ".join(heads(args)) + " |",
             "| --- |" + " ---: |" * (len(heads(args)) - 1)]
    best = strongest(rows)
    lines += ["| " + " | ".join(cells(r, best)) + " |" for r in rows]
    return "\n".join(lines)


def configuration(rows: list[System]) -> str:
    """Each system's version, enqueue call, modes and worker command lines."""
    lines = []
    for row in rows:
        if row.skipped:
            lines.append(f"{row.label}: skipped: {row.skipped}")
            continue
        done = {kind: next((r for r in runs if "error" not in r), None)
                for kind, runs in row.runs.items()}
        first = done["noop"] or done["sleep"]
        if first is None:
            lines.append(f"{row.label}: every run failed")
            continue
        store = SQLITE_FULL if row.store == "sqlite" else NO_PERSISTENCE
        lines.append(f"{row.label}: {first['system']} {first['version']}; {store}; "
                     f"enqueue: {first['enqueue']}")
        for kind, result in done.items():
            if result is not None:
                lines.append(f"  {kind:<5}  {result['mode']}")
                commands = result["commands"]
                assert isinstance(commands, list)
                lines += [f"         $ {command}" for command in commands]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated, default: all")
    p.add_argument("--jobs", type=int, default=30000, help="jobs per run, both workloads")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="worker processes of every system (default: the CPUs)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    p.add_argument("--sleep-ms", type=float, default=10, help="what a sleep job sleeps")
    p.add_argument("--concurrency", type=int, default=100,
                   help="C per process for the sleep workload")
    p.add_argument("--noop-concurrency", type=int, default=10,
                   help="C per process for the no-op workload (systems whose mode has one)")
    p.add_argument("--timeout", type=float, default=900, help="seconds for one drain")
    p.add_argument("--no-conveyor", action="store_true", help="run the peers only")
    p.add_argument("--conveyor-python", help="python with Conveyor (default: .venv/bin/python)")
    p.add_argument("--upgrade", action="store_true", help="pip install --upgrade every peer")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--redis-port", type=int, default=0, help="default: a free port")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    rows = systems(args, peers)
    started = time.monotonic()
    server = RedisServer(args.redis_server, args.redis_port)
    try:
        run_rounds(rows, args, server.url)
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    redis_version = subprocess.run([args.redis_server, "--version"], capture_output=True,
                                   text=True).stdout.split()[2].removeprefix("v=")
    if args.json:
        best = strongest(rows)
        print(json.dumps({
            "settings": vars(args), "redis_server": redis_version, "cpus": os.cpu_count(),
            "seconds": elapsed, "strongest_peer": best,
            "rows": [{"system": r.label, "peer": r.peer, "processes": r.processes,
                      "skipped": r.skipped, "medians": {f: r.median(f) for f in FIGURES},
                      "runs": r.runs} for r in rows]}, indent=2))
        return 0
    print(f"{args.jobs:,} jobs per run, enqueued one call at a time by one producer, then "
          f"drained by workers started afterwards; {args.processes} worker processes per "
          f"system (Conveyor also at 1 and 2); no-op C={args.noop_concurrency} and sleep "
          f"C={args.concurrency} per process where the mode has one; medians of "
          f"{args.rounds} round(s), systems taking turns; {os.cpu_count()} CPUs; private "
          f"redis-server {redis_version}; {elapsed:.0f} s in all.")
    print("drain: N / (first job start .. last job end), from the jobs' own timestamps, "
          "counted in each worker process and published to Redis every 10 ms.")
    print("x strongest peer: the figure / the best peer's figure in that column.\n")
    print(configuration(rows) + "\n")
    print(markdown_table(rows, args) if args.markdown else text_table(rows, args))
    failures = [f"{r.label}: {f}" for r in rows for f in r.failures()]
    if failures:
        print("\n" + "\n".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
