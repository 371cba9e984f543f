"""The built-in jobs on a real SQLite app and worker thread: push, analyze, sweep.

Files are staged the way ``POST /uploads`` stages them (``app.staging.receive`` under a
fresh id, then an enqueue with that ``job_id``). Pushes go to real directories (``dir:``) or,
for the retry test, to :class:`fake_incus.FakeIncus`, a fake of the Incus file API on a real
unix socket (no Incus daemon can run on these machines).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import WorkerThread
from conveyor import Conveyor, JobContext, JobFailed, JobRecord, JobState, Upload
from conveyor.analysis import analyze_file
from conveyor.builtin import ANALYZE_JOB, PUSH_JOB, install, sweep
from conveyor.containers import DirectoryTarget, IncusTarget
from conveyor.ids import new_id
from conveyor.uploads import StagingArea
from fake_incus import FakeIncus
from polling import wait_until


def stage(app: Conveyor, data: bytes, chunk: int = 64 * 1024) -> str:
    """Stage ``data`` under a fresh job id, in chunks, as the HTTP layer does."""
    job_id = new_id()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start:start + chunk]

    staged = app.run_sync(app.staging.receive(chunks(), job_id, max_bytes=64 * 1024 * 1024))
    assert staged.size == len(data) and staged.path.read_bytes() == data
    return job_id


def wait_final(app: Conveyor, job_id: str, timeout: float = 20.0) -> JobRecord:
    handle = app.handle(job_id)
    return wait_until(lambda: (r := handle.info()).is_final and r, timeout, f"{job_id} final")


def gone(path: Path) -> bool:
    return not path.exists()


def record_progress(app: Conveyor) -> list[tuple[float | None, str | None]]:
    """The last progress each job reported, as its context holds it when the job returns
    (the worker stores progress only while a job runs, so a quick job's never shows)."""
    seen: list[tuple[float | None, str | None]] = []

    @app.middleware
    async def last_progress(job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        result = await call_next()
        seen.append((job.record.progress, job.record.progress_message))
        return result

    return seen


@pytest.fixture
def containers(tmp_path: Path) -> Path:
    (tmp_path / "containers" / "web").mkdir(parents=True)
    return tmp_path / "containers"


@pytest.fixture
def uploads(app: Conveyor, tmp_path: Path, containers: Path) -> Conveyor:
    """The test app with its staging area in tmp_path and the built-in jobs on ``dir:``."""
    app.staging = StagingArea(tmp_path / "staging")
    install(app, DirectoryTarget(containers), push_backoff=0.05)
    return app


# -- push -----------------------------------------------------------------------------------------
def test_push_delivers_the_staged_file(
    uploads: Conveyor, containers: Path, start_worker: Callable[..., WorkerThread]
) -> None:
    data = os.urandom(300_000)
    job_id = stage(uploads, data)
    handle = uploads.enqueue_call(
        PUSH_JOB, ["web", "/srv/app/data.bin", "/home/ann/data.bin"], {}, job_id=job_id
    )
    assert handle.id == job_id and handle.info().queue == "uploads"
    reported = record_progress(uploads)
    start_worker(uploads)
    assert handle.result(timeout=20) == {
        "container": "web", "destination": "/srv/app/data.bin", "size": len(data),
        "host_path": "/home/ann/data.bin",
    }
    assert (containers / "web/srv/app/data.bin").read_bytes() == data
    info = handle.info()
    assert info.state is JobState.SUCCEEDED and info.attempts == 1
    assert reported == [(1.0, "pushed to web:/srv/app/data.bin")]
    wait_until(lambda: gone(uploads.staging.path_of(job_id)), 10, "the staged file removed")
    assert uploads.staging.staged_ids() == []


def test_missing_container_is_dead_at_once_and_the_file_removed(
    uploads: Conveyor, containers: Path, start_worker: Callable[..., WorkerThread]
) -> None:
    job_id = stage(uploads, b"hello\n")
    uploads.enqueue_call(PUSH_JOB, ["db", "/etc/x", None], {}, job_id=job_id)
    start_worker(uploads)
    info = wait_final(uploads, job_id)
    assert info.state is JobState.DEAD
    assert info.attempts == 1  # permanent: not retried
    assert info.error == ("ContainerNotFound: container 'db' does not exist: no directory "
                          f"{containers / 'db'}")
    wait_until(lambda: gone(uploads.staging.path_of(job_id)), 10, "the staged file removed")


def test_a_missing_staged_file_is_permanent(
    uploads: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    job_id = new_id()  # nothing staged under it
    handle = uploads.enqueue_call(PUSH_JOB, ["web", "/etc/x", None], {}, job_id=job_id)
    start_worker(uploads)
    with pytest.raises(JobFailed, match=r"staged file of job .* is missing"):
        handle.result(timeout=20)
    assert handle.info().attempts == 1


def test_transient_incus_failure_is_retried(
    app: Conveyor, tmp_path: Path, start_worker: Callable[..., WorkerThread]
) -> None:
    app.staging = StagingArea(tmp_path / "staging")
    fake = FakeIncus(tmp_path / "incus.sock").start()
    try:
        fake.fail_next = [500, 503]  # the daemon is restarting
        install(app, IncusTarget(str(fake.socket_path)), push_backoff=0.05)
        data = os.urandom(200_000)
        job_id = stage(app, data)
        handle = app.enqueue_call(PUSH_JOB, ["web", "/in.bin", None], {}, job_id=job_id)
        start_worker(app)
        assert handle.result(timeout=20)["size"] == len(data)
        assert handle.info().attempts == 3
        assert fake.files == {("web", "/in.bin"): data}
        # every attempt found the staged file: it is removed only once the job is final
        assert len(fake.file_pushes()) == 3
        wait_until(lambda: gone(app.staging.path_of(job_id)), 10, "the staged file removed")
    finally:
        fake.stop()


# -- analyze --------------------------------------------------------------------------------------
def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "inside")
    return buffer.getvalue()


def reader_lines(data: bytes) -> int:
    """Lines as a reader counts them: a last line without a newline counts too."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# name: (data, type, lines); None: count them (the bytes of zip and gzip vary with the time)
SAMPLES: dict[str, tuple[bytes, str, int | None]] = {
    "text": ("première ligne\nzweite Zeile\nlast line, no newline".encode(), "text/plain", 3),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png", 7),  # 6 \n, a tail
    "jpeg": (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", 1),
    "gif": (b"GIF89a" + b"\x01\x00" * 10, "image/gif", 1),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "application/pdf", 3),
    "zip": (_zip(), "application/zip", None),
    "gzip": (gzip.compress(b"x" * 1000), "application/gzip", None),
    "elf": (b"\x7fELF\x02\x01\x01" + b"\x00" * 57, "application/x-executable", 1),
    "binary": (b"\xff\xfe\x00\x80 not utf-8 \n", "application/octet-stream", 1),
    "empty": (b"", "text/plain", 0),
}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_analyze_reports_size_hash_lines_and_type(
    uploads: Conveyor, start_worker: Callable[..., WorkerThread], sample: str
) -> None:
    data, media_type, lines = SAMPLES[sample]
    job_id = stage(uploads, data)
    upload = Upload.describe(len(data), f"{sample}.dat", "application/x-test")
    handle = uploads.enqueue_call(ANALYZE_JOB, [], {"upload": upload}, job_id=job_id)
    reported = record_progress(uploads)
    start_worker(uploads)
    result = handle.result(timeout=20)
    assert result == {
        "filename": f"{sample}.dat", "content_type": "application/x-test", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "lines": reader_lines(data) if lines is None else lines,
        "type": media_type,
    }
    assert reported == [(1.0, f"read {len(data)} bytes")]
    wait_until(lambda: gone(uploads.staging.path_of(job_id)), 10, "the staged file removed")


def test_analyze_streams_big_files_in_chunks(tmp_path: Path) -> None:
    # 3.5 MiB of text whose two-byte characters straddle the 1 MiB chunk boundaries
    line = "é" * 99 + "\n"
    text = (line * (3_500_000 // len(line.encode()) + 1)).encode()
    path = tmp_path / "big.txt"
    path.write_bytes(text)
    reports: list[float] = []
    result = analyze_file(path, lambda value, message: reports.append(value))
    assert result == {"size": len(text), "sha256": hashlib.sha256(text).hexdigest(),
                      "lines": text.count(b"\n"), "type": "text/plain"}
    assert len(reports) == 4 and reports == sorted(reports) and reports[-1] == 1.0
    path.write_bytes(text[:-2])  # now it ends inside a character
    assert analyze_file(path)["type"] == "application/octet-stream"


# -- sweep and install ----------------------------------------------------------------------------
def test_sweep_removes_orphans_and_keeps_waiting_jobs(uploads: Conveyor) -> None:
    stage(uploads, b"nobody will ever push me")  # an orphan: no job
    waiting = stage(uploads, b"pushed in an hour")
    uploads.enqueue_call(PUSH_JOB, ["web", "/x", None], {}, job_id=waiting, delay=3600)
    cancelled = stage(uploads, b"cancelled before it ran")
    uploads.enqueue_call(PUSH_JOB, ["web", "/y", None], {}, job_id=cancelled, delay=3600)
    uploads.run_sync(uploads.broker.cancel(cancelled))  # as from a machine without the file
    assert uploads.handle(cancelled).info().state is JobState.CANCELLED
    (uploads.staging.incoming / f"{new_id()}.part").write_bytes(b"half an upload")
    (uploads.staging.root / "README").write_text("not a staged file: left alone")

    assert uploads.run_sync(sweep(uploads)) == 3  # the orphan, the cancelled one, the .part
    assert uploads.staging.staged_ids() == [waiting]
    assert list(uploads.staging.incoming.iterdir()) == []
    assert (uploads.staging.root / "README").exists()
    assert uploads.run_sync(sweep(uploads)) == 0


def test_cancel_removes_the_staged_file(uploads: Conveyor) -> None:
    job_id = stage(uploads, b"cancelled before it ran")
    uploads.enqueue_call(PUSH_JOB, ["web", "/y", None], {}, job_id=job_id, delay=3600)
    assert uploads.staging.staged_ids() == [job_id]
    assert uploads.cancel(job_id).state is JobState.CANCELLED
    assert uploads.staging.staged_ids() == []


def test_sweep_while_serving_looks_only_at_old_files(uploads: Conveyor) -> None:
    young = stage(uploads, b"its job is being enqueued right now")
    old = stage(uploads, b"its job ended through lease recovery")
    uploads.enqueue_call(PUSH_JOB, ["web", "/y", None], {}, job_id=old, delay=3600)
    uploads.run_sync(uploads.broker.cancel(old))
    partial = uploads.staging.incoming / f"{new_id()}.part"
    partial.write_bytes(b"an upload in flight")
    assert uploads.run_sync(sweep(uploads, min_age=600)) == 0  # nothing is old enough yet
    an_hour_ago = os.stat(uploads.staging.path_of(old)).st_mtime - 3600
    for job_id in (young, old):
        os.utime(uploads.staging.path_of(job_id), (an_hour_ago, an_hour_ago))
    os.utime(partial, (an_hour_ago, an_hour_ago))
    fresh = stage(uploads, b"staged a moment ago, no job yet")
    assert uploads.run_sync(sweep(uploads, min_age=600)) == 2  # young (now old) and old
    assert uploads.staging.staged_ids() == [fresh]
    assert partial.exists()  # partial uploads are left to the start-up sweep


def test_serve_sweeps_now_and_then(uploads: Conveyor) -> None:
    from conveyor.cli.serve import _sweep_staging

    orphan = stage(uploads, b"nobody will ever push me")
    kept = stage(uploads, b"pushed in an hour")
    uploads.enqueue_call(PUSH_JOB, ["web", "/x", None], {}, job_id=kept, delay=3600)
    an_hour_ago = os.stat(uploads.staging.path_of(orphan)).st_mtime - 3600
    for job_id in (orphan, kept):
        os.utime(uploads.staging.path_of(job_id), (an_hour_ago, an_hour_ago))

    async def a_few_sweeps() -> None:
        task = asyncio.create_task(_sweep_staging(uploads, interval=0.05))
        await asyncio.sleep(0.5)
        task.cancel()

    uploads.run_sync(a_few_sweeps())
    assert uploads.staging.staged_ids() == [kept]


def test_install_is_idempotent_and_keeps_jobs_of_the_same_name(tmp_path: Path) -> None:
    app = Conveyor(url=f"sqlite:///{tmp_path / 'c.db'}", staging_dir=str(tmp_path / "s"))
    try:
        @app.job(name=ANALYZE_JOB)
        def mine(x: int) -> int:
            return x

        install(app, DirectoryTarget(tmp_path))
        push = app.registry[PUSH_JOB]
        install(app, DirectoryTarget(tmp_path / "elsewhere"))
        assert app.registry[PUSH_JOB] is push
        assert app.registry[ANALYZE_JOB] is mine
        options: Any = push.options
        assert (options.queue, options.retries, options.staged) == ("uploads", 5, True)
        assert options.executor == "async" and push.context_parameter == "ctx"
        assert [str(p) for p in push.signature.parameters] == [
            "container", "destination", "host_path"
        ]
    finally:
        app.close()


@pytest.fixture
def fresh_app(tmp_path: Path) -> Iterator[Conveyor]:
    app = Conveyor(url=f"sqlite:///{tmp_path / 'fresh.db'}", staging_dir=str(tmp_path / "s"))
    yield app
    app.close()


def test_analyze_is_a_thread_job_taking_an_upload(fresh_app: Conveyor, tmp_path: Path) -> None:
    install(fresh_app, DirectoryTarget(tmp_path))
    analyze = fresh_app.registry[ANALYZE_JOB]
    assert analyze.options.executor == "thread"
    assert analyze.upload_parameters == ["upload"] and analyze.uses_staging
