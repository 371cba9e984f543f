"""The ``dir:`` target under a directory/symlink swap race, and the bound on destination depth.

Another process keeps exchanging a directory inside the container with a symbolic link that
points outside (``renameat2(RENAME_EXCHANGE)``: the name is always there, one or the other) while
pushes run; nothing may ever be made outside the container, and every push either lands inside
or is refused with the symbolic-link error. The depth and component bounds are checked on the
target and at ``POST /uploads`` of a real server.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.containers import DirectoryTarget, PushFailed, UnsafeDestination
from conveyor.uploads import MAX_NAME_BYTES, MAX_PATH_DEPTH
from http_server import Server

RENAME_EXCHANGE = 2
#: the race runs until this many pushes or this many seconds, whichever comes first, and on
#: (up to LONGEST seconds) until pushes have both landed and been refused: on a loaded machine
#: the swapping process can be descheduled for seconds with the link in place
PUSHES, SECONDS, LONGEST = 600, 3.0, 60.0


def _renameat2() -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    return function


RENAMEAT2 = _renameat2()
needs_exchange = pytest.mark.skipif(RENAMEAT2 is None, reason="no renameat2 (Linux only)")


def exchange(dir_fd: int, first: str, second: str) -> None:
    """Swap the names ``first`` and ``second`` of ``dir_fd`` in one step."""
    assert RENAMEAT2 is not None
    if RENAMEAT2(dir_fd, first.encode(), dir_fd, second.encode(), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def everything_under(path: Path) -> list[str]:
    """Every entry under ``path``, directories and symbolic links included."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


#: run by another process (truly in parallel with the pushes, as an attacker would be):
#: exchange argv[2] and argv[3] in directory argv[1] until killed
SWAP_LOOP = """
import ctypes, os, sys
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
first, second = sys.argv[2].encode(), sys.argv[3].encode()
print("swapping", flush=True)
while renameat2(fd, first, fd, second, 2) == 0:
    pass
sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
"""


class Swapper:
    """A process that exchanges ``name`` (a directory) with ``name.link`` (a symbolic link)
    until stopped."""

    def __init__(self, parent: Path, name: str, link_target: str) -> None:
        self.parent, self.name, self.link = parent, name, f"{name}.link"
        (parent / name).mkdir()
        (parent / self.link).symlink_to(link_target)
        self.fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        exchange(self.fd, self.name, self.link)  # fails here if the file system cannot
        exchange(self.fd, self.name, self.link)
        self.proc = subprocess.Popen([sys.executable, "-c", SWAP_LOOP, str(parent), self.name,
                                      self.link], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "swapping\n"

    def stop(self) -> None:
        """Stop, leaving the directory under ``name``."""
        assert self.proc.poll() is None, "the swapping process stopped early"
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if (self.parent / self.name).is_symlink():
            exchange(self.fd, self.name, self.link)
        os.close(self.fd)
        assert (self.parent / self.name).is_dir() and (self.parent / self.link).is_symlink()


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """``containers/web``, ``outside`` next to the containers, and a file to push."""
    web = tmp_path / "containers" / "web"
    web.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(5000))
    yield tmp_path, web, source


@needs_exchange
@pytest.mark.parametrize(("swapped", "link_target"), [
    ("a", "ABSOLUTE"),
    ("a", "../../outside"),
    ("a/b", "ABSOLUTE"),
    ("a/b", "../../../outside"),
])
def test_a_directory_swapped_for_a_symlink_never_leads_a_push_outside(
    layout: tuple[Path, Path, Path], swapped: str, link_target: str
) -> None:
    tmp_path, web, source = layout
    outside = tmp_path / "outside"
    parent = web / swapped.rpartition("/")[0] if "/" in swapped else web
    parent.mkdir(parents=True, exist_ok=True)
    name = swapped.rpartition("/")[2]
    target_text = str(outside) if link_target == "ABSOLUTE" else link_target
    assert (parent / target_text).resolve() == outside.resolve()
    swapper = Swapper(parent, name, target_text)
    target = DirectoryTarget(tmp_path / "containers")
    landed: list[str] = []
    refused: list[str] = []
    unexpected: list[str] = []
    try:
        started = time.monotonic()
        i = -1
        while True:
            i += 1
            elapsed = time.monotonic() - started
            if (i >= PUSHES or elapsed > SECONDS) and ((landed and refused) or elapsed > LONGEST):
                break
            # a new directory under the swapped one (mkdir), a new file in it (rename), and
            # a directory two levels down
            destination = (f"/{swapped}/d{i}/f", f"/{swapped}/f{i}",
                           f"/{swapped}/d{i}/e/f")[i % 3]
            try:
                target.push_blocking("web", source, destination, job_id=f"job{i}")
            except UnsafeDestination as exc:
                expected = f"{destination}: /{swapped} is a symbolic link, which a dir: push " \
                           "never follows (it could lead outside the container)"
                (refused if str(exc) == expected else unexpected).append(repr(exc))
            except PushFailed as exc:  # swapped back and forth under every one of 8 opens
                if "kept changing while being opened" not in str(exc):
                    unexpected.append(repr(exc))
            except Exception as exc:  # reported below, after the outside check
                unexpected.append(repr(exc))
            else:
                landed.append(destination)
    finally:
        swapper.stop()
    assert everything_under(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["containers", "outside", "upload.bin"]
    assert unexpected == [], unexpected[:5]
    assert landed and refused, (len(landed), len(refused))
    for destination in landed:
        assert (web / destination.lstrip("/")).read_bytes() == source.read_bytes()
    files = sorted(str(p.relative_to(web)) for p in web.rglob("*")
                   if p.is_file() and not p.is_symlink())
    assert files == sorted(d.lstrip("/") for d in landed)  # no temporary file left either

def test_a_directory_replaced_by_a_symlink_is_refused_with_nothing_made(
    layout: tuple[Path, Path, Path]
) -> None:
    """The same swap, done once between two pushes: the second is refused at once."""
    tmp_path, web, source = layout
    target = DirectoryTarget(tmp_path / "containers")
    target.push_blocking("web", source, "/a/b/first")
    os.rename(web / "a", web / "a.old")
    (web / "a").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeDestination, match=r"^/a/b/c/second: /a is a symbolic link"):
        target.push_blocking("web", source, "/a/b/c/second")
    assert everything_under(tmp_path / "outside") == []


# -- depth and component length ----------------------------------------------------------------
def test_the_target_bounds_depth_and_component_length(layout: tuple[Path, Path, Path]) -> None:
    tmp_path, web, source = layout
    target = DirectoryTarget(tmp_path / "containers")
    deepest = "/d" * MAX_PATH_DEPTH
    target.push_blocking("web", source, deepest)
    assert (web / deepest.lstrip("/")).read_bytes() == source.read_bytes()
    too_deep = "/e" * (MAX_PATH_DEPTH + 1)
    with pytest.raises(UnsafeDestination, match=f"has {MAX_PATH_DEPTH + 1} components, "
                                                f"more than the limit of {MAX_PATH_DEPTH}"):
        target.push_blocking("web", source, too_deep)
    assert not (web / "e").exists()
    # what counts is the normalised path: ``..`` pairs cancel out
    target.push_blocking("web", source, "/x/.." * 100 + "/shallow")
    assert (web / "shallow").is_file()
    longest = "é" * (MAX_NAME_BYTES // 2) + "n"  # 255 bytes in UTF-8
    target.push_blocking("web", source, f"/{longest}/f")
    too_long = "é" * (MAX_NAME_BYTES // 2 + 1)  # 256 bytes in 128 characters
    with pytest.raises(UnsafeDestination, match=f"a component of 256 bytes, more than the "
                                                f"limit of {MAX_NAME_BYTES}"):
        target.push_blocking("web", source, f"/ok/{too_long}/f")
    assert not (web / "ok").exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("dir-depth"), "--min-workers", "1",
                 "--max-workers", "1")
    srv.start()
    (srv.containers / "web").mkdir()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.mark.parametrize(("path", "message"), [
    ("/d" * (MAX_PATH_DEPTH + 1),
     f"X-File-Path has {MAX_PATH_DEPTH + 1} components, more than the limit of "
     f"{MAX_PATH_DEPTH}"),
    ("/d" * 2000, f"X-File-Path has 2000 components, more than the limit of {MAX_PATH_DEPTH}"),
    ("/etc/" + "n" * (MAX_NAME_BYTES + 1),
     f"X-File-Path has a component of {MAX_NAME_BYTES + 1} bytes, more than the limit of "
     f"{MAX_NAME_BYTES}: "),
])
def test_post_uploads_refuses_deep_or_long_paths(server: Server, path: str, message: str) -> None:
    before = server.job_ids()
    response = server.client.post("/uploads", content=b"data", headers={
        "X-Container-Name": "web", "X-File-Path": path})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"].startswith(message)
    assert server.job_ids() == before
    assert server.staged() == []
    assert everything_under(server.containers / "web") == []


def test_post_uploads_takes_the_deepest_path_allowed(server: Server) -> None:
    path = "/p" * (MAX_PATH_DEPTH - 1) + "/" + "n" * MAX_NAME_BYTES
    response = server.client.post("/uploads", content=b"deep", headers={
        "X-Container-Name": "web", "X-File-Path": path})
    assert response.status_code == 202, response.text
    info = server.wait_job(response.json()["id"])
    assert info["state"] == "succeeded", info
    assert (server.containers / "web" / path.lstrip("/")).read_bytes() == b"deep"


def test_a_symlink_in_the_container_fails_the_push_job_for_good(server: Server) -> None:
    web = server.containers / "web"
    (web / "linked").symlink_to(server.root)
    response = server.client.post("/uploads", content=b"x", headers={
        "X-Container-Name": "web", "X-File-Path": "/linked/new/f"})
    assert response.status_code == 202, response.text
    info = server.wait_job(response.json()["id"])
    assert info["state"] == "dead", info
    assert info["attempts"] == 1, info  # permanent: never retried
    assert "/linked is a symbolic link" in info["error"], info
    assert not (server.root / "new").exists()

