"""HTTP intake: ``POST /jobs/add`` on ``conveyor serve`` (SQLite) next to uvicorn's ceiling.

    .venv/bin/python benchmarks/http_intake.py [--connections 64] [--duration 10] \
        [--rounds 1] [--serve-arg=--no-worker] [--profile DIR] [--src PATH] [--only conveyor]

Each round starts, on free loopback ports:

* ``conveyor``: ``python -m conveyor serve examples.hello:app`` on a fresh SQLite file
  (``--url sqlite:///...``, ``--containers dir:...``), with the extra ``--serve-arg`` given;
  wrk posts ``{"args": [2, 3]}`` (``Content-Type: application/json``) to ``/jobs/add``;
* ``ceiling``: a bare Starlette route answering 202 under the settings ``conveyor serve``
  gives uvicorn (httptools on uvloop, no access log, no server header, no lifespan, no
  WebSockets); wrk posts the same body to it;
* ``ceiling+protocol`` (with ``--protocol-ceiling``): the same route through conveyor's HTTP
  protocol (:mod:`conveyor.http.protocol`, its limits and its writes) of the ``--src`` tree.

and runs ``wrk -t2 -cN -dS --latency`` against each, printing requests/s, p50, p99 and the
errors wrk counted (non-2xx answers, socket errors), the server's CPU time per request (the
whole process, and its event loop thread alone: the one that bounds the rate), then a summary
(medians over rounds).
``--profile DIR`` records the server under load with py-spy (``--rate 250``) into
``DIR/NAME-ROUND.txt`` (collapsed stacks); print their top with ``--top FILE``.
``--src`` runs another tree's ``src`` (for A/B rounds; the ceiling is the same for both).
Needs ``wrk`` (``apt-get install wrk``) and, for ``--profile``, ``py-spy`` in the venv.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POST_LUA = """wrk.method = "POST"
wrk.body = '{"args": [2, 3]}'
wrk.headers["Content-Type"] = "application/json"
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bare_server(port: int, own_protocol: bool = False) -> None:
    """The ceiling: one Starlette route answering 202, served as ``conveyor serve`` serves
    (with ``own_protocol``: through conveyor's HTTP protocol and its limits, too)."""
    import uvicorn
    import uvloop
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def accept(request: Request) -> Response:
        await request.body()
        return Response(b'{"id":"x"}', status_code=202, media_type="application/json")

    api = Starlette(routes=[Route("/jobs/{job}", accept, methods=["POST"])])
    http: Any = "httptools"
    if own_protocol:
        from conveyor.http.protocol import protocol_class
        from conveyor.serverlimits import ServerLimits

        http = protocol_class(ServerLimits())
    config = uvicorn.Config(api, host="127.0.0.1", port=port, http=http, loop="none",
                            ws="none", lifespan="off", log_config=None, server_header=False,
                            access_log=False)
    with __import__("asyncio").Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:  # an answer all the same
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {seconds:g} s")


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms), non-2xx answers and socket errors of wrk's output."""
    out: dict[str, float] = {"rps": 0.0, "p50": 0.0, "p99": 0.0, "non2xx": 0.0, "errors": 0.0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
            out[key] = float(m.group(1)) * UNITS[m.group(2)]
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        out["non2xx"] = float(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      text):
        out["errors"] = float(sum(int(g) for g in m.groups()))
    return out


def run_wrk(url: str, connections: int, duration: int, lua: Path) -> str:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(lua), url]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(name: str, cmd: list[str], env: dict[str, str], port: int, args: argparse.Namespace,
            lua: Path, round_no: int, work: Path) -> dict[str, float]:
    """Start the server, load it with wrk (recording it with py-spy if asked), stop it."""
    log = open(work / f"{name}-{round_no}.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    spy = None
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz" if name == "conveyor"
                   else f"http://127.0.0.1:{port}/nothing-here", proc)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            spy_bin = Path(sys.executable).parent / "py-spy"
            spy = subprocess.Popen(
                [str(spy_bin), "record", "--pid", str(proc.pid), "--rate", "250", "--format",
                 "raw", "--duration", str(args.duration), "--nonblocking", "--threads",
                 "--output", str(Path(args.profile) / f"{name}-{round_no}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu_before, loop_before = process_cpu(proc.pid), process_cpu(proc.pid, proc.pid)
        text = run_wrk(f"http://127.0.0.1:{port}/jobs/add", args.connections, args.duration, lua)
        cpu = process_cpu(proc.pid) - cpu_before
        loop_cpu = process_cpu(proc.pid, proc.pid) - loop_before
    finally:
        if spy is not None:
            spy.wait(60)
        stop(proc)
        log.close()
    result = parse_wrk(text)
    requests = result["rps"] * args.duration
    result["cpu_us"] = cpu / requests * 1e6 if requests else 0.0
    result["loop_us"] = loop_cpu / requests * 1e6 if requests else 0.0
    print(f"--- {name}, round {round_no} ---\n{text.rstrip()}\n"
          f"server CPU: {cpu:.2f} s, {result['cpu_us']:.0f} us per request; its event loop "
          f"thread: {loop_cpu:.2f} s, {result['loop_us']:.0f} us per request", flush=True)
    return result


def process_cpu(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads; or only ``thread``,
    whose id is ``pid`` for the main thread), from /proc."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_name(frame: str) -> str:
    """The name of a py-spy ``--threads`` root frame (``thread (ID): NAME``), pools merged."""
    name = frame.partition("): ")[2] or frame
    return re.sub(r"_\d+$", "", name)


def top_of(path: Path, count: int = 25) -> None:
    """Print the top functions of a py-spy ``raw`` profile: self samples and total samples."""
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        if not weight.isdigit():
            continue
        n = int(weight)
        samples += n
        frames = stack.split(";")
        if frames[0].startswith("thread ("):  # recorded with --threads
            threads[thread_name(frames[0])] += n
            frames = frames[1:]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"{samples} samples")
    for thread, n in threads.most_common():
        print(f"{100 * n / samples:5.1f}%  {thread}")
    print("-- self --")
    for frame, n in own.most_common(count):
        print(f"{100 * n / samples:5.1f}%  {frame}")
    print("-- total (inclusive) --")
    for frame, n in total.most_common(count):
        print(f"{100 * n / samples:5.1f}%  {frame}")


def asgi_cost(requests: int, concurrency: int, directory: Path) -> None:
    """CPU per ``POST /jobs/add`` of the API's ASGI app alone (no sockets, no uvicorn),
    ``concurrency`` at a time on one loop, over a fresh SQLite file: the event loop thread's
    time and the process's (with the store's writer thread). Steadier than wrk's rate on a
    busy machine, for A/B rounds of the app's own layers."""
    import asyncio

    import uvloop

    from conveyor import Conveyor
    from conveyor.http import create_app

    app = Conveyor(url=f"sqlite:///{directory / 'asgi.db'}")

    @app.job
    async def add(a: float, b: float) -> float:
        return a + b

    api = create_app(app)
    body = POST_LUA.split("'")[1].encode()
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]

    async def one() -> int:
        status = 0
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/jobs/add",
                 "raw_path": b"/jobs/add", "root_path": "", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000)}
        await api(scope, receive, send)
        return status

    async def run() -> None:
        for _ in range(200):  # warm up: open the store, fill the caches
            assert await one() == 202
        left = requests

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                assert await one() == 202

        thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        thread, process = time.thread_time() - thread, time.process_time() - process
        wall = time.perf_counter() - wall
        print(f"ASGI app alone: {requests} requests, {concurrency} at a time, "
              f"{requests / wall:,.0f}/s; CPU per request: event loop thread "
              f"{thread / requests * 1e6:.0f} us, process {process / requests * 1e6:.0f} us")
        await app.broker.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra argument of conveyor serve (repeatable; use the = form: "
                        "--serve-arg=--no-worker)")
    parser.add_argument("--src", default=str(ROOT / "src"), help="the src directory to run")
    parser.add_argument("--only", choices=("conveyor", "ceiling"))
    parser.add_argument("--dir", help="where the servers' files go (default: a temporary "
                        "directory)")
    parser.add_argument("--profile", metavar="DIR", help="record py-spy profiles into DIR")
    parser.add_argument("--top", metavar="FILE", help="print the top of a profile and exit")
    parser.add_argument("--asgi", type=int, metavar="REQUESTS",
                        help="measure the ASGI app alone (in this process) and exit")
    parser.add_argument("--protocol-ceiling", action="store_true",
                        help="also measure the bare route through conveyor's HTTP protocol")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bare-protocol", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server, args.bare_protocol)
        return 0
    if args.asgi:
        with tempfile.TemporaryDirectory(prefix="conveyor-http-asgi-", dir=args.dir) as tmp:
            asgi_cost(args.asgi, args.connections, Path(tmp))
        return 0
    if args.top:
        top_of(Path(args.top))
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    results: dict[str, list[dict[str, float]]] = {"conveyor": [], "ceiling": [],
                                                  "ceiling+protocol": []}
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="conveyor-http-intake-", dir=args.dir) as tmp:
        work = Path(tmp)
        lua = work / "post.lua"
        lua.write_text(POST_LUA)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.src, str(ROOT)])}
        env.pop("CONVEYOR_TOKEN", None)
        env.pop("CONVEYOR_URL", None)
        for round_no in range(1, args.rounds + 1):
            if args.only != "ceiling":
                port = free_port()
                (work / "containers").mkdir(exist_ok=True)
                db = work / f"bench-{round_no}.db"
                cmd = [sys.executable, "-m", "conveyor", "serve", "examples.hello:app",
                       "--port", str(port), "--url", f"sqlite:///{db}",
                       "--containers", f"dir:{work / 'containers'}", *args.serve_arg]
                results["conveyor"].append(
                    measure("conveyor", cmd, env, port, args, lua, round_no, work))
            if args.only != "conveyor":
                port = free_port()
                cmd = [sys.executable, __file__, "--bare-server", str(port)]
                results["ceiling"].append(
                    measure("ceiling", cmd, env, port, args, lua, round_no, work))
            if args.protocol_ceiling and args.only != "conveyor":
                port = free_port()
                cmd = [sys.executable, __file__, "--bare-server", str(port), "--bare-protocol"]
                results["ceiling+protocol"].append(
                    measure("ceiling+protocol", cmd, env, port, args, lua, round_no, work))
    print(f"\n{args.connections} connections, {args.duration} s, {args.rounds} round(s), "
          f"medians; src {args.src}; serve args {' '.join(args.serve_arg) or '(none)'}")
    print(f"{'server':<16} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} "
          f"{'loop us/req':>12} {'non-2xx':>8} {'sock err':>8}")
    for name, runs in results.items():
        if not runs:
            continue

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"{name:<16} {median('rps'):>11,.0f} {median('p50'):>8.2f} {median('p99'):>8.2f} "
              f"{median('cpu_us'):>11.0f} {median('loop_us'):>12.0f} {median('non2xx'):>8.0f} "
              f"{median('errors'):>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
