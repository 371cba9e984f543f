"""What a user installs: the wheel (py.typed, dependencies, version), type checking of user
code with ``mypy --strict``, and the hiredis fast path of the Redis backend.

The wheel is really built (``pip wheel --no-deps``) and mypy really runs, in a directory of
its own, on small user modules.
"""

from __future__ import annotations

import ast
import email
import importlib.metadata
import logging
import os
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import conveyor
from conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "conveyor"

#: runtime dependency -> the module whose import needs it
IMPORTED_AS = {
    "rich": "rich",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "httptools": "uvicorn.protocols.http.httptools_impl",  # uvicorn's httptools protocol
    "uvloop": "uvloop",
    "swagger-ui-bundle": "swagger_ui_bundle",
    "prometheus-client": "prometheus_client",
    "redis": "redis",
    "hiredis": "hiredis",
    "cronsim": "cronsim",
}
#: what ``uvicorn[standard]`` used to pull in, none of it used
UNUSED = {"watchfiles", "websockets", "pyyaml", "python-dotenv"}
#: dependencies whose internals Conveyor subclasses or reaches into: capped at the next major
CAPPED = {"uvicorn", "starlette", "redis", "hiredis"}

GOOD_USER_CODE = '''
from conveyor import Conveyor, JobContext, JobHandle, Upload

app = Conveyor(url="sqlite:///user.db")


@app.job(retries=2, executor="thread")
def resize(ctx: JobContext, path: str, width: int) -> str:
    ctx.progress(1.0, "done")
    return f"{path}@{width}"


@app.job
async def count(upload: Upload) -> int:
    return upload.size


def submit() -> str:
    handle: JobHandle[str] = resize.enqueue("a.png", width=100)
    result: str = handle.result(timeout=10)
    return result
'''

WRONG_USER_CODE = '''
from conveyor import Conveyor

app = Conveyor(url="sqlite:///user.db")


@app.job
def resize(path: str, width: int) -> str:
    return path


width: int = resize.enqueue("a.png", width=100)
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel --no-deps`` builds from this tree."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT),
                           "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheels = list(out.glob("conveyor-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def requirements(wheel: Path) -> dict[str, list[Requirement]]:
    """Requires-Dist by extra ("" for the runtime ones)."""
    found: dict[str, list[Requirement]] = {}
    for line in metadata(wheel).get_all("Requires-Dist") or []:
        req = Requirement(line)
        extra = ""
        if req.marker is not None and "extra" in str(req.marker):
            extra = str(req.marker).split("extra ==")[1].strip().strip("'\"")
        found.setdefault(extra, []).append(req)
    return found


def test_wheel_ships_py_typed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "conveyor/py.typed" in names
    assert "conveyor/__init__.py" in names


def test_version_is_written_once(wheel: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert metadata(wheel)["Version"] == conveyor.__version__
    assert importlib.metadata.version("conveyor") == conveyor.__version__
    Version(conveyor.__version__)  # a valid version


def test_runtime_requirements(wheel: Path) -> None:
    found = requirements(wheel)
    runtime = {req.name.lower(): req for req in found[""]}
    assert {"uvicorn", "httptools", "uvloop", "starlette"} <= set(runtime)
    assert not UNUSED & set(runtime)
    assert runtime["uvicorn"].extras == set()  # not uvicorn[standard]
    uvloop = runtime["uvloop"].marker
    assert uvloop is not None
    assert uvloop.evaluate({"sys_platform": "linux"})
    assert not uvloop.evaluate({"sys_platform": "win32"})
    redis_extra = {req.name.lower(): req for req in found["redis"]}
    assert set(redis_extra) == {"redis", "hiredis"}
    hiredis = redis_extra["hiredis"].specifier
    assert Version("2.2.0") not in hiredis and Version("2.2.1") in hiredis  # pack_command
    for name in CAPPED:
        spec = (runtime.get(name) or redis_extra[name]).specifier
        installed = Version(importlib.metadata.version(name))
        assert installed in spec, f"{name} {installed} is refused by {spec}"
        next_major = Version(f"{installed.major + 1}")
        assert next_major not in spec, f"{name}: no upper bound below {next_major} in {spec}"
    test_extra = {req.name.lower(): req.specifier for req in found["test"]}
    assert test_extra["hiredis"] == hiredis  # the test extra repeats the redis pins
    assert test_extra["redis"] == redis_extra["redis"].specifier


def test_every_runtime_dependency_is_imported(wheel: Path) -> None:
    imported: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
    found = requirements(wheel)
    for req in found[""] + found["redis"]:
        name = req.name.lower()
        assert name in IMPORTED_AS, f"{name}: a new dependency? say which import needs it"
        module = IMPORTED_AS[name]
        assert any(m == module or m.startswith(module + ".") for m in imported), \
            f"{name} is declared but src/conveyor never imports {module}"


# -- mypy on user code ----------------------------------------------------------------------
def run_mypy(directory: Path, source: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``source`` as a user module in ``directory`` (no MYPYPATH, no
    config file of this project)."""
    (directory / "userjobs.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(directory / ".mypy_cache"), *options, "userjobs.py"],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_mypy_strict_accepts_correct_user_code(tmp_path: Path) -> None:
    done = run_mypy(tmp_path, GOOD_USER_CODE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "import-untyped" not in done.stdout and "missing library stubs" not in done.stdout


def test_mypy_strict_catches_wrong_user_code(tmp_path: Path) -> None:
    done = run_mypy(tmp_path, WRONG_USER_CODE)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'expression has type "JobHandle[str]", variable has type "int"' in done.stdout
    assert "import-untyped" not in done.stdout


def test_the_wheel_is_typed_because_of_py_typed(wheel: Path, tmp_path: Path) -> None:
    """The wheel's files on the path of another environment: mypy takes their types, and
    without ``py.typed`` it refuses them (``import-untyped``)."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "conveyor_wheel.pth").write_text(f"{site}\n")
    work = tmp_path / "user"
    work.mkdir()

    typed = run_mypy(work, GOOD_USER_CODE, "--python-executable", str(python))
    assert typed.returncode == 0, typed.stdout + typed.stderr
    wrong = run_mypy(work, WRONG_USER_CODE, "--python-executable", str(python))
    assert wrong.returncode == 1 and '"JobHandle[str]"' in wrong.stdout, wrong.stdout

    (site / "conveyor" / "py.typed").unlink()
    untyped = run_mypy(work, GOOD_USER_CODE, "--python-executable", str(python))
    assert untyped.returncode == 1
    assert "import-untyped" in untyped.stdout, untyped.stdout


# -- the hiredis fast path ------------------------------------------------------------------
def test_hiredis_packs_commands(caplog: pytest.LogCaptureFixture) -> None:
    import hiredis
    import redis.asyncio as aioredis

    from conveyor.backends.redis.client import pack_with_hiredis

    assert hasattr(hiredis, "pack_command")  # what hiredis>=2.2.1 guarantees
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    plain = client.connection_pool.connection_class
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        pack_with_hiredis(client)
    assert client.connection_pool.connection_class is not plain
    assert issubclass(client.connection_pool.connection_class, plain)
    packing: Any = client.connection_pool.connection_class
    packed = packing(host="127.0.0.1").pack_command("SET", "k", 1)
    assert b"".join(packed) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"
    assert "hiredis" not in caplog.text


def test_without_hiredis_the_slow_path_is_logged_once() -> None:
    script = '''
import logging, sys
sys.modules["hiredis"] = None  # as if hiredis were not installed
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s: %(message)s")
import redis.asyncio as aioredis
from conveyor.backends.redis.client import pack_with_hiredis
client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
plain = client.connection_pool.connection_class
pack_with_hiredis(client)
pack_with_hiredis(aioredis.Redis.from_url("redis://127.0.0.1:1/0"))
chosen = client.connection_pool.connection_class
assert issubclass(chosen, plain) and "pack_command" not in vars(chosen)  # redis-py's packing
print("packed:", repr(b"".join(chosen(host="x").pack_command("SET", "k", 1))))
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("conveyor.redis.packing:")]
    assert len(warnings) == 1, done.stdout
    assert "hiredis>=2.2.1 is not installed" in warnings[0]
    assert "packed: b'*3\\r\\n$3\\r\\nSET\\r\\n" in done.stdout  # redis-py's own packing


def test_without_hiredis_a_command_prints_no_advice() -> None:
    """The advice to install hiredis is for processes that run on (a worker logs it once),
    not a line before every one-shot command's output."""
    from redis_server import shared_redis_url

    script = (
        "import sys\n"
        "sys.modules['hiredis'] = None  # as if hiredis were not installed\n"
        "from conveyor.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    for argv in (["stats", "--json"], ["top", "--once"]):
        done = subprocess.run([sys.executable, "-c", script, *argv, "--url",
                               shared_redis_url()], capture_output=True, text=True, timeout=60,
                              env=cli_env())
        assert done.returncode == 0, done.stderr
        assert "queues" in done.stdout
        assert "hiredis" not in done.stderr, (argv, done.stderr)
