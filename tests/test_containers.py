"""Container targets: ``dir:`` on real directories, ``incus`` against a fake Incus API.

The Incus tests talk real HTTP over a real unix socket to :class:`fake_incus.FakeIncus`, a
FAKE of the daemon's file API written for these tests, because no Incus daemon can run on
these machines. Everything else is real: files, directories, symlinks, sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.containers import (
    DEFAULT_TARGET,
    ContainerNotFound,
    DirectoryTarget,
    IncusTarget,
    PushFailed,
    UnsafeDestination,
    open_target,
)
from conveyor.containers.incus import DEFAULT_SOCKET
from conveyor.errors import ConfigurationError, PermanentError
from fake_incus import FakeIncus


def push(target: DirectoryTarget | IncusTarget, container: str, source: Path, dest: str) -> None:
    asyncio.run(target.push(container, source, dest))


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "upload.bin"
    path.write_bytes(os.urandom(100_000))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``containers/web`` exists; ``outside`` is a directory next to the containers."""
    (tmp_path / "containers" / "web").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "containers"


# -- dir: ---------------------------------------------------------------------------------------
def test_directory_push_writes_the_file(root: Path, source: Path) -> None:
    target = DirectoryTarget(root)
    push(target, "web", source, "/etc/app.conf")
    assert (root / "web" / "etc" / "app.conf").read_bytes() == source.read_bytes()
    assert files_under(root) == ["web/etc/app.conf"]  # no temporary file left behind
    assert target.describe() == f"dir:{root}"


def test_directory_push_creates_nested_directories(root: Path, source: Path) -> None:
    push(DirectoryTarget(root), "web", source, "/srv/data/2024/06/report.bin")
    assert (root / "web/srv/data/2024/06/report.bin").read_bytes() == source.read_bytes()


def test_directory_push_replaces_an_existing_file(root: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("old contents, longer than the new ones\n")
    second.write_text("new\n")
    target = DirectoryTarget(root)
    push(target, "web", first, "/etc/motd")
    inode = (root / "web/etc/motd").stat().st_ino
    push(target, "web", second, "/etc/motd")
    assert (root / "web/etc/motd").read_text() == "new\n"
    assert (root / "web/etc/motd").stat().st_ino != inode  # renamed over, not rewritten
    assert files_under(root) == ["web/etc/motd"]


def test_missing_container_is_permanent(root: Path, source: Path) -> None:
    with pytest.raises(ContainerNotFound, match=r"^container not found: db$") as caught:
        push(DirectoryTarget(root), "db", source, "/x")
    assert isinstance(caught.value, PermanentError)
    (root / "file").write_text("not a directory")
    for name in ("file", "../outside", "web/etc", "", ".."):
        with pytest.raises(ContainerNotFound):
            push(DirectoryTarget(root), name, source, "/x")
    with pytest.raises(ContainerNotFound):
        push(DirectoryTarget(root.parent / "nowhere"), "web", source, "/x")


@pytest.mark.parametrize(
    ("destination", "lands_at"),
    [
        ("/../../etc/x", "etc/x"),
        ("/a/../../../../x", "x"),
        ("//..//..//outside/x", "outside/x"),
        ("/./etc/./../etc/y", "etc/y"),
    ],
)
def test_dotdot_cannot_climb_out(
    root: Path, source: Path, tmp_path: Path, destination: str, lands_at: str
) -> None:
    push(DirectoryTarget(root), "web", source, destination)
    assert files_under(root) == [f"web/{lands_at}"]
    assert files_under(tmp_path / "outside") == []


def test_symlinked_directory_pointing_outside_is_refused(
    root: Path, source: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (root / "web" / "escape").symlink_to(outside)
    (root / "web" / "etc").mkdir()
    (root / "web" / "etc" / "sneaky").symlink_to("../../../outside")  # relative, two levels
    target = DirectoryTarget(root)
    for destination in ("/escape/x", "/escape/deeper/x", "/etc/sneaky/x"):
        with pytest.raises(UnsafeDestination, match="outside the container") as caught:
            push(target, "web", source, destination)
        assert isinstance(caught.value, PermanentError)
    assert files_under(outside) == []


def test_symlinks_that_stay_inside_are_followed(root: Path, source: Path) -> None:
    (root / "web" / "real").mkdir()
    (root / "web" / "data").symlink_to("real")
    push(DirectoryTarget(root), "web", source, "/data/sub/f")
    assert (root / "web/real/sub/f").read_bytes() == source.read_bytes()


def test_a_symlink_at_the_destination_is_replaced_not_followed(
    root: Path, source: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "outside" / "victim"
    victim.write_text("keep me")
    (root / "web" / "link").symlink_to(victim)
    push(DirectoryTarget(root), "web", source, "/link")
    assert victim.read_text() == "keep me"
    assert not (root / "web" / "link").is_symlink()
    assert (root / "web" / "link").read_bytes() == source.read_bytes()


def test_destinations_that_cannot_be_files_are_refused(root: Path, source: Path) -> None:
    (root / "web" / "etc").mkdir()
    (root / "web" / "plain").write_text("a file")
    target = DirectoryTarget(root)
    for destination in ("/etc", "/plain/x", "relative/x", "/", "/x/", "/a\x00b"):
        with pytest.raises(UnsafeDestination):
            push(target, "web", source, destination)
    assert (root / "web" / "plain").read_text() == "a file"


def test_a_name_too_long_is_permanent(root: Path, source: Path) -> None:
    with pytest.raises(PermanentError, match="File name too long"):
        push(DirectoryTarget(root), "web", source, "/" + "n" * 300)
    assert files_under(root) == []


# -- open_target ----------------------------------------------------------------------------------
def test_open_target_parses_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = open_target(DEFAULT_TARGET)
    assert isinstance(default, DirectoryTarget)
    assert default.root == tmp_path / "containers"
    assert default.describe() == f"dir:{tmp_path / 'containers'}"
    assert open_target("dir:/srv/c").describe() == "dir:/srv/c"
    incus = open_target("incus")
    assert isinstance(incus, IncusTarget) and incus.socket_path == DEFAULT_SOCKET
    assert incus.describe() == "incus:/var/lib/incus/unix.socket"
    assert open_target("incus:/run/incus.sock").describe() == "incus:/run/incus.sock"


@pytest.mark.parametrize("spec", ["", "dir:", "dir", "incus:", "docker", "lxd:/x", "DIR:/x"])
def test_open_target_refuses_unknown_specs(spec: str) -> None:
    with pytest.raises(ConfigurationError, match=r"(dir|incus):\S*PATH|needs a"):
        open_target(spec)


# -- incus (against the fake) ---------------------------------------------------------------------
@pytest.fixture
def incus_socket(tmp_path: Path) -> Path:
    path = tmp_path / "incus.sock"
    assert len(str(path)) < 100, "unix socket paths are limited to 107 bytes"
    return path


@pytest.fixture
def fake(incus_socket: Path) -> Iterator[FakeIncus]:
    server = FakeIncus(incus_socket, instances=("web", "db")).start()
    yield server
    server.stop()


def test_incus_push_sends_the_file_api_call(fake: FakeIncus, source: Path) -> None:
    target = IncusTarget(str(fake.socket_path))
    push(target, "web", source, "/etc/app/app.conf")
    *directories, pushed = fake.requests  # like `incus file push -p`: parents first
    assert [d.target for d in directories] == [
        "/1.0/instances/web/files?path=%2Fetc",  # exists: Incus answers 200 all the same
        "/1.0/instances/web/files?path=%2Fetc%2Fapp",
    ]
    for directory in directories:
        assert directory.method == "POST"
        assert directory.headers["x-incus-type"] == "directory"
        assert directory.headers["x-incus-mode"] == "0755"
        assert directory.body == b""
    assert (pushed.method, pushed.version) == ("POST", "HTTP/1.1")
    assert pushed.target == "/1.0/instances/web/files?path=%2Fetc%2Fapp%2Fapp.conf"
    assert pushed.headers["content-type"] == "application/octet-stream"
    assert pushed.headers["content-length"] == str(source.stat().st_size)
    assert pushed.headers["x-incus-type"] == "file"
    assert pushed.headers["x-incus-write"] == "overwrite"
    assert (pushed.headers["x-incus-uid"], pushed.headers["x-incus-gid"]) == ("0", "0")
    assert pushed.headers["x-incus-mode"] == "0644"
    assert pushed.headers["expect"] == "100-continue"
    assert pushed.body == source.read_bytes()
    assert fake.files == {("web", "/etc/app/app.conf"): source.read_bytes()}


def test_incus_push_encodes_the_path_and_streams_big_files(
    fake: FakeIncus, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks
    destination = "/root/my files/a+b&c=d%.bin"
    push(IncusTarget(str(fake.socket_path)), "db", big, destination)
    (pushed,) = fake.file_pushes()
    assert pushed.target == (
        "/1.0/instances/db/files?path=%2Froot%2Fmy+files%2Fa%2Bb%26c%3Dd%25.bin"
    )
    assert pushed.path == destination
    assert fake.files[("db", destination)] == big.read_bytes()


def test_incus_push_normalises_the_destination(fake: FakeIncus, source: Path) -> None:
    push(IncusTarget(str(fake.socket_path)), "web", source, "/../../root/./x/../y")
    assert list(fake.files) == [("web", "/root/y")]
    with pytest.raises(UnsafeDestination):
        push(IncusTarget(str(fake.socket_path)), "web", source, "root/y")


def test_incus_unknown_instance_is_container_not_found(
    fake: FakeIncus, source: Path, tmp_path: Path
) -> None:
    target = IncusTarget(str(fake.socket_path))
    with pytest.raises(ContainerNotFound, match=r"^container not found: gone$"):
        push(target, "gone", source, "/x")  # the file push itself gets the 404
    with pytest.raises(ContainerNotFound):
        push(target, "gone", source, "/a/b/x")  # the first directory does
    # Incus answers before reading the body; a body too big to be buffered must not turn
    # that answer into a broken pipe.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    with pytest.raises(ContainerNotFound):
        push(target, "gone", big, "/x")
    with pytest.raises(ContainerNotFound):
        push(target, "../web", source, "/x")


def test_incus_server_errors_are_transient(fake: FakeIncus, source: Path) -> None:
    target = IncusTarget(str(fake.socket_path))
    fake.fail_next = [500]
    with pytest.raises(PushFailed, match="fake failure 500"):
        push(target, "web", source, "/root/x")
    push(target, "web", source, "/root/x")  # the daemon recovered
    assert fake.files[("web", "/root/x")] == source.read_bytes()


def test_incus_other_client_errors_are_permanent(fake: FakeIncus, source: Path) -> None:
    fake.fail_next = [403]
    with pytest.raises(PermanentError, match="fake failure 403") as caught:
        push(IncusTarget(str(fake.socket_path)), "web", source, "/root/x")
    assert not isinstance(caught.value, ContainerNotFound)


def test_incus_server_ignoring_expect_still_gets_the_body(
    fake: FakeIncus, source: Path
) -> None:
    fake.ignore_expect = True
    push(IncusTarget(str(fake.socket_path), continue_timeout=0.05), "web", source, "/root/x")
    assert fake.files[("web", "/root/x")] == source.read_bytes()


def test_incus_chunked_answers_are_read(fake: FakeIncus, source: Path) -> None:
    fake.chunked = True
    push(IncusTarget(str(fake.socket_path)), "web", source, "/root/x")
    fake.fail_next = [500]
    with pytest.raises(PushFailed, match="fake failure 500"):
        push(IncusTarget(str(fake.socket_path)), "web", source, "/root/x")


def test_incus_missing_or_dead_socket_is_transient(incus_socket: Path, source: Path) -> None:
    with pytest.raises(PushFailed, match="no Incus socket"):
        push(IncusTarget(str(incus_socket)), "web", source, "/root/x")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(incus_socket))  # bound, never listening: connections are refused
    try:
        with pytest.raises(PushFailed, match="cannot connect"):
            push(IncusTarget(str(incus_socket)), "web", source, "/root/x")
    finally:
        stale.close()


def test_incus_that_never_answers_times_out(fake: FakeIncus, source: Path) -> None:
    fake.hang = True
    with pytest.raises(PushFailed):
        push(IncusTarget(str(fake.socket_path), timeout=0.3), "web", source, "/root/x")
