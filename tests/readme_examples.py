"""The README's runnable examples: how they are marked, read and run.

An HTML comment on the line(s) right before a fenced code block marks it:

* ``<!-- example: NAME -->`` starts the group NAME (``<!-- example: NAME sqlite-only -->``: a
  group that makes sense on SQLite only); its blocks, up to the next ``example:`` marker, run
  in order in one fresh directory.
* ``<!-- run: install -->``: the block creates ``.venv`` with ``python3 -m venv .venv`` and
  ``pip install /path/to/conveyor`` into it. It is run as written once per test session, with
  ``/path/to/conveyor`` replaced by a wheel of this checkout (with ``[redis]``); every group's
  ``.venv`` is then a link to that one.
* ``<!-- run: file PATH -->``: the block's text is written to PATH (relative, in the directory).
* ``<!-- run: sh -->``: ``bash -euo pipefail``; it must exit 0.
* ``<!-- run: sh background -->``: bash in the background (a worker, ``conveyor serve``), until
  the group ends; then SIGTERM to its process group, and it must exit 0. The next block waits
  until it is ready: ``/healthz`` answers for ``conveyor serve``, else the worker's start line.
* ``<!-- run: python -->``: the group's ``.venv/bin/python``, on the block saved as a script in
  the directory; it must exit 0.

Blocks without a ``run:`` marker are not run. The port ``8000`` of the README (``--port 8000``,
``:8000``) is replaced by a free port, so runs do not collide. Every step is bounded by a
timeout; a malformed marker, a marker not followed by a block, or an empty group is an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MARKER = re.compile(r"^\s*<!--\s*(example|run)\s*:(.*?)-->\s*$")
LOOKS_LIKE_MARKER = re.compile(r"^\s*<!--\s*(example|run)\b")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
GROUP_FLAGS = frozenset({"sqlite-only"})
KINDS = frozenset({"install", "file", "sh", "python"})
PLACEHOLDER = "/path/to/conveyor"
#: what a worker logs once it runs (``worker HOST-PID on URL ...``)
WORKER_READY = re.compile(r"\bworker \S+ on \S+")
STEP_TIMEOUT = 60.0
READY_TIMEOUT = 30.0


class ReadmeError(Exception):
    """The README's markers are wrong: which line, and why."""


@dataclass(frozen=True)
class Step:
    """One marked block: ``kind`` (install, file, sh, python), ``argument`` (the file's path,
    or ``background`` for sh), its text and the README line of its marker."""

    kind: str
    argument: str
    code: str
    line: int

    @property
    def background(self) -> bool:
        return self.kind == "sh" and self.argument == "background"

    def label(self) -> str:
        what = f"{self.kind} {self.argument}".strip()
        return f"README line {self.line} ({what})"


@dataclass
class Group:
    """An example group: its name, flags and steps."""

    name: str
    flags: frozenset[str]
    line: int
    steps: list[Step] = field(default_factory=list)

    @property
    def sqlite_only(self) -> bool:
        return "sqlite-only" in self.flags


def _run_marker(text: str, line: int) -> tuple[str, str]:
    words = text.split()
    if not words or words[0] not in KINDS:
        raise ReadmeError(f"line {line}: run marker needs one of {sorted(KINDS)}: {text!r}")
    kind, rest = words[0], words[1:]
    if kind == "file":
        if len(rest) != 1:
            raise ReadmeError(f"line {line}: 'run: file' needs exactly one PATH")
        path = PurePosixPath(rest[0])
        if path.is_absolute() or ".." in path.parts:
            raise ReadmeError(f"line {line}: 'run: file {rest[0]}' must be a relative path "
                              "inside the example's directory")
        return kind, rest[0]
    if kind == "sh" and rest in ([], ["background"]):
        return kind, " ".join(rest)
    if rest:
        raise ReadmeError(f"line {line}: unexpected {' '.join(rest)!r} after 'run: {kind}'")
    return kind, ""


def parse(text: str) -> list[Group]:
    """The example groups marked in ``text`` (see the module docstring)."""
    groups: list[Group] = []
    pending: tuple[str, str, int] | None = None  # a run marker waiting for its block
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index]
        index += 1
        fence = FENCE.match(line)
        if fence:  # a block: collect it whole, so markers inside it are not read
            indent, ticks = fence.group(1), fence.group(2)
            body: list[str] = []
            while index < len(lines) and not lines[index].strip().startswith(ticks):
                body.append(lines[index][len(indent):] if lines[index].startswith(indent)
                            else lines[index])
                index += 1
            if index >= len(lines):
                raise ReadmeError(f"line {number}: the code block is never closed")
            index += 1
            if pending is not None:
                kind, argument, marked = pending
                if not groups:
                    raise ReadmeError(f"line {marked}: a run marker before any example marker")
                groups[-1].steps.append(Step(kind, argument, "\n".join(body) + "\n", marked))
                pending = None
            continue
        if pending is not None:
            raise ReadmeError(f"line {pending[2]}: a run marker must be right before a fenced "
                              f"code block (line {number} is not one)")
        marker = MARKER.match(line)
        if marker is None:
            if LOOKS_LIKE_MARKER.match(line):
                raise ReadmeError(f"line {number}: malformed marker {line.strip()!r}")
            continue
        what, rest = marker.group(1), marker.group(2).strip()
        if what == "run":
            pending = (*_run_marker(rest, number), number)
            continue
        words = rest.split()
        if not words or not NAME.match(words[0]):
            raise ReadmeError(f"line {number}: example marker needs a NAME: {line.strip()!r}")
        unknown = set(words[1:]) - GROUP_FLAGS
        if unknown:
            raise ReadmeError(f"line {number}: unknown example flag {sorted(unknown)[0]!r} "
                              f"(known: {sorted(GROUP_FLAGS)})")
        if any(group.name == words[0] for group in groups):
            raise ReadmeError(f"line {number}: a second example named {words[0]!r}")
        groups.append(Group(words[0], frozenset(words[1:]), number))
    if pending is not None:
        raise ReadmeError(f"line {pending[2]}: a run marker at the end, with no code block")
    for group in groups:
        if not group.steps:
            raise ReadmeError(f"line {group.line}: example {group.name!r} has no marked block")
    return groups


def check_install(step: Step) -> None:
    """An install block must show what the module docstring says it does."""
    if "python3 -m venv .venv" not in step.code or f"pip install {PLACEHOLDER}" not in step.code:
        raise ReadmeError(f"{step.label()}: an install block must run 'python3 -m venv .venv' "
                          f"and 'pip install {PLACEHOLDER}'")


def install_command(step: Step, wheel: Path) -> str:
    """The install block with the wheel (and its ``redis`` extra) in place of the path."""
    check_install(step)
    return step.code.replace(PLACEHOLDER, shlex.quote(f"{wheel}[redis]"))


def with_port(code: str, port: int) -> str:
    """``code`` with the README's port 8000 replaced by ``port``."""
    return re.sub(r"(?<=:)8000\b|(?<=--port )8000\b", str(port), code)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a newcomer's shell: nothing of this test run's venv, no
    ``CONVEYOR_*`` setting, no ``PYTHONPATH``; then ``extra``."""
    ours = {str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONVEYOR_") and k not in ("VIRTUAL_ENV", "PYTHONPATH",
                                                         "PYTHONHOME", "REDIS_URL")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if p and p not in ours)
    env.update(extra)
    return env


@dataclass
class Background:
    """A ``run: sh background`` block running in its own process group."""

    step: Step
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Runner:
    """Runs the steps of one group in ``directory`` with ``env``; ``venv`` is the session's
    virtual environment, linked as ``directory/.venv`` by an install step."""

    def __init__(self, directory: Path, venv: Path, env: dict[str, str], port: int,
                 timeout: float = STEP_TIMEOUT) -> None:
        self.directory = directory
        self.venv = venv
        self.env = env
        self.port = port
        self.timeout = timeout
        self.background: list[Background] = []
        self.transcript: list[str] = []

    def run(self, group: Group) -> None:
        """Every step in order, then stop the background ones; AssertionError on a failure."""
        try:
            for number, step in enumerate(group.steps):
                self.step(step, number)
        except BaseException:
            with contextlib.suppress(AssertionError):  # the first failure is the one to tell
                self.stop_all()
            raise
        self.stop_all()

    def step(self, step: Step, number: int) -> None:
        self.transcript.append(f"--- {step.label()}")
        if step.kind == "install":
            check_install(step)
            link = self.directory / ".venv"
            if not link.exists():
                link.symlink_to(self.venv, target_is_directory=True)
        elif step.kind == "file":
            path = self.directory / step.argument
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step.code)
        elif step.background:
            self.start(step, number)
        elif step.kind == "sh":
            self.foreground(step, ["bash", "-euo", "pipefail", "-c",
                                   with_port(step.code, self.port)])
        else:
            python = self.directory / ".venv" / "bin" / "python"
            if not python.exists():
                raise AssertionError(f"{step.label()}: no .venv in the example (no install "
                                     "step before it)")
            script = self.directory / f"_readme_step{number}.py"
            script.write_text(with_port(step.code, self.port))
            self.foreground(step, [str(python), script.name])

    def foreground(self, step: Step, command: list[str]) -> None:
        try:
            done = subprocess.run(command, cwd=self.directory, env=self.env,
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            self.transcript.append(_text(exc.stdout) + _text(exc.stderr))
            raise AssertionError(self.failure(f"{step.label()} still ran after "
                                              f"{self.timeout:.0f}s")) from None
        self.transcript.append(_text(done.stdout) + _text(done.stderr))
        if done.returncode != 0:
            raise AssertionError(self.failure(f"{step.label()} exited {done.returncode}"))

    def start(self, step: Step, number: int) -> None:
        """Start a background block; return once it is ready."""
        log = self.directory / f"_readme_step{number}.log"
        code = with_port(step.code, self.port)
        # Like a terminal's shell: bash waits for the program it runs when SIGTERM comes
        # (the trap), so the block's status is the program's own.
        with log.open("wb") as out:
            process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"trap : TERM\n{code}"],
                                       cwd=self.directory, env=self.env,
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        running = Background(step, process, log)
        self.background.append(running)
        serve = "conveyor serve" in code
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self._serving() if serve else WORKER_READY.search(running.output())):
            if process.poll() is not None:
                self.transcript.append(running.output())
                raise AssertionError(self.failure(f"{step.label()} exited "
                                                  f"{process.returncode} before it was ready"))
            if time.monotonic() > deadline:
                self.transcript.append(running.output())
                raise AssertionError(self.failure(f"{step.label()} not ready after "
                                                  f"{READY_TIMEOUT:.0f}s"))
            time.sleep(0.05)

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop_all(self) -> None:
        """SIGTERM to every background block, newest first; each must exit 0."""
        problems: list[str] = []
        for running in reversed(self.background):
            process = running.process
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    problems.append(f"{running.step.label()} ignored SIGTERM")
            self.transcript.append(f"--- {running.step.label()}, stopped:\n{running.output()}")
            if process.returncode not in (0, -signal.SIGKILL):
                problems.append(f"{running.step.label()} exited {process.returncode} on "
                                "SIGTERM")
        self.background.clear()
        if problems:
            raise AssertionError(self.failure("; ".join(problems)))

    def failure(self, what: str) -> str:
        """``what``, then every step's output, then what the background blocks wrote."""
        running = [f"--- {b.step.label()}, in the background:\n{b.output()}"
                   for b in self.background]
        return f"{what}\n" + "\n".join(self.transcript + running)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
