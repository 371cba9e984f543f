"""The README's marked examples, run as a newcomer would: in a fresh directory, with a fresh
virtual environment holding a wheel of this checkout, on SQLite and on a private Redis.

How blocks are marked and run: see tests/readme_examples.py. The README read is this
checkout's, or the file named by ``CONVEYOR_README``. The virtual environment is made once
per test session (by running the README's first install block) and linked into each
example's directory; that takes 10 to 20 seconds, each group run a few more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from readme_examples import (
    Group,
    ReadmeError,
    Runner,
    clean_env,
    install_command,
    parse,
    with_port,
)
from redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
README = Path(os.environ.get("CONVEYOR_README") or ROOT / "README.md")
INSTALL_TIMEOUT = 300.0


def _groups() -> list[Group] | ReadmeError:
    try:
        return parse(README.read_text())
    except ReadmeError as exc:
        return exc


GROUPS = _groups()


def _cases() -> list[object]:
    if isinstance(GROUPS, ReadmeError):
        return [pytest.param(None, "sqlite", id="markers")]
    cases: list[object] = []
    for group in GROUPS:
        stores = ["sqlite"] if group.sqlite_only else ["sqlite", "redis"]
        cases += [pytest.param(group, store, id=f"{group.name}-{store}") for store in stores]
    return cases


@pytest.fixture(scope="session")
def example_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment made by the README's first install block, with ``pip install``
    given a wheel of this checkout (``[redis]`` included) instead of ``/path/to/conveyor``."""
    if isinstance(GROUPS, ReadmeError):
        pytest.fail(f"{README}: {GROUPS}")
    steps = [step for group in GROUPS for step in group.steps if step.kind == "install"]
    if not steps:
        pytest.fail(f"{README}: no 'run: install' block")
    session = tmp_path_factory.mktemp("readme-venv")
    wheels = session / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("conveyor-*.whl")
    command = install_command(steps[0], wheel)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=session,
                          env=clean_env({}), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=INSTALL_TIMEOUT)
    assert done.returncode == 0, f"{steps[0].label()}:\n{command}\n{done.stdout}{done.stderr}"
    venv = session / ".venv"
    assert (venv / "bin" / "conveyor").exists(), done.stdout + done.stderr
    return venv


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
@pytest.mark.parametrize(("group", "store"), _cases())
def test_readme_example(group: Group | None, store: str, example_venv: Path,
                        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert group is not None, f"{README}: {GROUPS}"
    if any("curl " in step.code for step in group.steps) and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    extra: dict[str, str] = {}
    if store == "redis":
        redis: RedisServer = request.getfixturevalue("server")
        extra["CONVEYOR_URL"] = redis.url
    directory = tmp_path / group.name
    directory.mkdir()
    Runner(directory, example_venv, clean_env(extra), free_port()).run(group)
    if store == "redis":  # CONVEYOR_URL reached every part: nothing fell back to SQLite
        assert sorted(p.name for p in directory.rglob("*.db")) == []


# -- the markers themselves -------------------------------------------------------------------
def test_this_readme_has_the_quick_start() -> None:
    assert not isinstance(GROUPS, ReadmeError), f"{README}: {GROUPS}"
    names = [group.name for group in GROUPS]
    assert "quickstart" in names
    quickstart = GROUPS[names.index("quickstart")]
    assert [step.kind for step in quickstart.steps][:2] == ["install", "file"]


SAMPLE = """\
Intro.

```sh
echo never run
```

<!-- example: one -->
<!-- run: file app/x.py -->
```python
print("x")
```

Text between.

<!-- run: sh background -->
```sh
conveyor worker app.x:app
```

```sh
echo not marked, so not run
```

<!-- example: two sqlite-only -->
<!-- run: sh -->
````sh
```
<!-- run: nonsense inside a block is text -->
curl http://127.0.0.1:8000/healthz
````
"""


def test_parse_groups_steps_and_unmarked_blocks() -> None:
    one, two = parse(SAMPLE)
    assert (one.name, one.sqlite_only, two.name, two.sqlite_only) == ("one", False, "two", True)
    assert [(s.kind, s.argument, s.code) for s in one.steps] == [
        ("file", "app/x.py", 'print("x")\n'),
        ("sh", "background", "conveyor worker app.x:app\n"),
    ]
    assert one.steps[1].background and one.steps[1].line == 15
    (inner,) = two.steps
    assert "<!-- run: nonsense" in inner.code and inner.code.startswith("```\n")
    assert with_port(inner.code, 4321).endswith("curl http://127.0.0.1:4321/healthz\n")


@pytest.mark.parametrize(("text", "message"), [
    ("<!-- example: a -->\n<!-- run: shell -->\n```sh\ntrue\n```\n", "run marker needs"),
    ("<!-- example: a -->\n<!-- run: sh foreground -->\n```sh\ntrue\n```\n", "unexpected"),
    ("<!-- example: a -->\n<!-- run: file ../x -->\n```\nx\n```\n", "relative path"),
    ("<!-- example: a -->\n<!-- run: file -->\n```\nx\n```\n", "exactly one PATH"),
    ("<!-- example: a -->\n<!-- run: sh -->\n\n```sh\ntrue\n```\n", "right before"),
    ("<!-- example: a -->\n<!-- run: sh -->\n", "no code block"),
    ("<!-- example: a -->\n<!-- run sh -->\n```sh\ntrue\n```\n", "malformed marker"),
    ("<!-- example a -->\n", "malformed marker"),
    ("<!-- example: -->\n", "needs a NAME"),
    ("<!-- example: a redis-only -->\n<!-- run: sh -->\n```sh\ntrue\n```\n", "unknown"),
    ("<!-- run: sh -->\n```sh\ntrue\n```\n", "before any example"),
    ("<!-- example: a -->\n```sh\ntrue\n```\n", "has no marked block"),
    ("<!-- example: a -->\n<!-- run: sh -->\n```sh\ntrue\n```\n<!-- example: b -->\n",
     "'b' has no marked block"),
    ("<!-- example: a -->\n<!-- run: sh -->\n```sh\ntrue\n```\n"
     "<!-- example: a -->\n<!-- run: sh -->\n```sh\ntrue\n```\n", "a second example"),
    ("<!-- example: a -->\n<!-- run: sh -->\n```sh\ntrue\n", "never closed"),
])
def test_malformed_markers_fail(text: str, message: str) -> None:
    with pytest.raises(ReadmeError, match=message):
        parse(text)


def test_an_install_block_must_show_the_install(tmp_path: Path) -> None:
    (group,) = parse("<!-- example: a -->\n<!-- run: install -->\n```sh\npip install x\n```\n")
    with pytest.raises(ReadmeError, match=r"python3 -m venv \.venv"):
        install_command(group.steps[0], tmp_path / "conveyor.whl")


def test_a_failing_step_fails_with_its_output(tmp_path: Path) -> None:
    (group,) = parse("<!-- example: a -->\n<!-- run: sh -->\n```sh\necho before\nfalse\n"
                     "echo after\n```\n")
    runner = Runner(tmp_path, tmp_path / "no-venv", clean_env({}), free_port(), timeout=10)
    with pytest.raises(AssertionError, match=r"(?s)exited 1.*before") as caught:
        runner.run(group)
    assert "after" not in str(caught.value)  # -e: stopped at the failure


def test_a_background_step_must_exit_0_on_sigterm(tmp_path: Path) -> None:
    (group,) = parse("<!-- example: a -->\n<!-- run: sh background -->\n```sh\n"
                     "python3 -c 'import time; print(\"worker w on here\", flush=True); "
                     "time.sleep(60)'\n```\n")
    runner = Runner(tmp_path, tmp_path / "no-venv", clean_env({}), free_port(), timeout=10)
    with pytest.raises(AssertionError, match=r"exited (-15|143) on SIGTERM"):
        runner.run(group)


def test_a_hanging_step_fails_at_its_timeout(tmp_path: Path) -> None:
    (group,) = parse("<!-- example: a -->\n<!-- run: sh -->\n```sh\nsleep 30\n```\n")
    runner = Runner(tmp_path, tmp_path / "no-venv", clean_env({}), free_port(), timeout=1)
    with pytest.raises(AssertionError, match="still ran after 1s"):
        runner.run(group)
