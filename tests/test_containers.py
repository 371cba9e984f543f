"""Container targets: ``dir:`` on real directories, ``incus`` against a fake Incus API.

The Incus tests talk real HTTP over a real unix socket to :class:`fake_incus.FakeIncus`, a
FAKE of the daemon's file API written for these tests, because no Incus daemon can run on
these machines; it is the only test double. Everything else is real: files, directories,
symlinks, sockets, locks, and a child process SIGKILLed in the middle of a copy.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
from conveyor.containers.directory import CHUNK, STALE_TEMPORARY_AGE, temporary_name
from conveyor.containers.incus import DEFAULT_SOCKET
from conveyor.errors import ConfigurationError, PermanentError
from conveyor.ids import new_id
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
    with pytest.raises(ContainerNotFound,
                       match=r"^container 'db' does not exist: no directory .*/db$") as caught:
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


def test_symlinks_that_stay_inside_are_refused_too(root: Path, source: Path) -> None:
    (root / "web" / "real").mkdir()
    (root / "web" / "data").symlink_to("real")
    with pytest.raises(UnsafeDestination, match=r"^/data/sub/f: /data is a symbolic link"):
        push(DirectoryTarget(root), "web", source, "/data/sub/f")
    assert not (root / "web/real/sub").exists()


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
    with pytest.raises(PermanentError, match="a component of 300 bytes"):
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
    with pytest.raises(ContainerNotFound, match=r"^container 'gone' does not exist: "
                       r"no instance of that name in Incus at "):
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


# -- dir: temporary files ---------------------------------------------------------------------
#: a child process that pushes ARGV[2] (a FIFO here) to container "web" for job ARGV[4]
PUSH_CHILD = """
import asyncio, sys
from pathlib import Path
from conveyor.containers import DirectoryTarget
root, source, destination, job_id = sys.argv[1:]
asyncio.run(DirectoryTarget(root).push("web", Path(source), destination, job_id=job_id))
"""


def push_job(target: DirectoryTarget, source: Path, destination: str, job_id: str) -> None:
    asyncio.run(target.push("web", source, destination, job_id=job_id))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def open_fifo_for_writing(fifo: Path, child: subprocess.Popen[bytes]) -> int:
    """The write end of ``fifo`` once the child opened the read end (no hang if it died)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            assert child.poll() is None, child.communicate()[1].decode()
            assert time.monotonic() < deadline, "the child never opened the pipe"
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def age(path: Path, seconds: float) -> None:
    """Make ``path`` last written ``seconds`` ago (a symlink itself, not its target)."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


def test_a_push_sigkilled_mid_copy_is_taken_over_by_its_retry(root: Path, tmp_path: Path) -> None:
    job_id = new_id()
    staged = tmp_path / "staging" / job_id  # staged uploads are named after their job
    staged.parent.mkdir()
    content = os.urandom(8 * CHUNK + 123)
    staged.write_bytes(content)
    (root / "web" / "srv").mkdir()
    final = root / "web" / "srv" / "data.bin"
    final.write_bytes(b"the old version")
    temporary = root / "web" / "srv" / f".conveyor-{job_id}.tmp"

    # The first attempt reads from a FIFO, so it is stopped for sure in the middle of the copy.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    child = subprocess.Popen(
        [sys.executable, "-c", PUSH_CHILD, str(root), str(fifo), "/srv/data.bin", job_id],
        stderr=subprocess.PIPE)
    try:
        pipe = open_fifo_for_writing(fifo, child)
        try:
            with open(pipe, "wb", closefd=False) as writer:
                writer.write(content[: 3 * CHUNK])  # returns once the child has read it all
            wait_for(lambda: temporary.exists() and temporary.stat().st_size == 3 * CHUNK,
                     "the child to write 3 MiB to its temporary file")
            child.send_signal(signal.SIGKILL)  # no except, no finally: nothing cleans up
            child.wait(30)
        finally:
            os.close(pipe)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    leftover = temporary.stat()  # what the bug report saw: the temporary file stays ...
    assert leftover.st_size == 3 * CHUNK
    assert final.read_bytes() == b"the old version"  # ... and the destination is untouched

    # The retry (same job, the staged file itself) takes the leftover over, truncated.
    push(DirectoryTarget(root), "web", staged, "/srv/data.bin")
    assert final.read_bytes() == content
    assert final.stat().st_ino == leftover.st_ino  # reused and renamed into place
    assert files_under(root) == ["web/srv/data.bin"]


def test_a_leftover_longer_than_the_file_is_truncated(root: Path, source: Path) -> None:
    job_id = new_id()
    temporary = root / "web" / f".conveyor-{job_id}.tmp"
    temporary.write_bytes(b"x" * 300_000)  # a killed attempt of a bigger file, say
    push_job(DirectoryTarget(root), source, "/f", job_id)
    assert (root / "web" / "f").read_bytes() == source.read_bytes()
    assert files_under(root) == ["web/f"]


def test_a_live_attempt_of_the_same_job_is_left_alone(root: Path, source: Path) -> None:
    job_id = new_id()
    temporary = root / "web" / f".conveyor-{job_id}.tmp"
    temporary.write_bytes(b"being written")
    age(temporary, STALE_TEMPORARY_AGE * 2)  # stalled, even: the lock is what counts
    target = DirectoryTarget(root)
    with temporary.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the push copying into it holds it
        with pytest.raises(PushFailed, match="another attempt of this job"):
            push_job(target, source, "/f", job_id)
        push(target, "web", source, "/g")  # another job's push sweeps the same directory
        assert temporary.read_bytes() == b"being written"
    push_job(target, source, "/f", job_id)  # the holder is gone: now it is taken over
    assert files_under(root) == ["web/f", "web/g"]


def test_stale_temporary_files_are_swept_fresh_ones_kept(
    root: Path, source: Path, tmp_path: Path
) -> None:
    web = root / "web"
    (web / "etc").mkdir()
    stale = web / "etc" / f".conveyor-{new_id()}.tmp"  # a job killed an hour ago, gone
    fresh = web / "etc" / f".conveyor-{new_id()}.tmp"  # another job's copy in flight
    recent = web / "etc" / f".conveyor-{new_id()}.tmp"  # idle, but not for long enough
    elsewhere = web / f".conveyor-{new_id()}.tmp"  # stale, in a directory not pushed to
    not_ours = web / "etc" / ".conveyor-notes.txt"
    for path in (stale, fresh, recent, elsewhere, not_ours):
        path.write_bytes(b"partial copy")
    victim = tmp_path / "outside" / "victim"
    victim.write_text("keep me")
    link = web / "etc" / ".conveyor-link.tmp"
    link.symlink_to(victim)
    for path in (stale, elsewhere, not_ours, link):
        age(path, STALE_TEMPORARY_AGE + 60)
    age(recent, STALE_TEMPORARY_AGE - 60)

    push(DirectoryTarget(root), "web", source, "/etc/app.conf")
    assert not stale.exists()
    assert fresh.read_bytes() == recent.read_bytes() == b"partial copy"
    assert elsewhere.exists() and not_ours.exists()
    assert link.is_symlink() and victim.read_text() == "keep me"  # not followed
    assert (web / "etc" / "app.conf").read_bytes() == source.read_bytes()


def test_a_planted_temporary_name_is_never_written_through(
    root: Path, source: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "outside" / "victim"
    victim.write_text("keep me")
    target = DirectoryTarget(root)
    hard, soft = new_id(), new_id()
    os.link(victim, root / "web" / f".conveyor-{hard}.tmp")
    with pytest.raises(UnsafeDestination, match="not a file of ours"):
        push_job(target, source, "/f", hard)
    (root / "web" / f".conveyor-{soft}.tmp").symlink_to(victim)
    with pytest.raises(PermanentError):
        push_job(target, source, "/f", soft)
    assert victim.read_text() == "keep me"
    assert not (root / "web" / "f").exists()


def test_temporary_names_derive_from_the_job_id() -> None:
    job_id = new_id()
    assert temporary_name(job_id) == f".conveyor-{job_id}.tmp"
    assert temporary_name("report-2024.csv") == ".conveyor-report-2024.csv.tmp"
    odd = temporary_name("../a b/" + "n" * 300)
    assert odd == temporary_name("../a b/" + "n" * 300)  # a digest, deterministic
    assert "/" not in odd and len(odd) == len(".conveyor-.tmp") + 32
