"""Schemathesis against a real ``conveyor serve``: requests generated from the server's own
``/openapi.json`` (valid ones and invalid ones) never get a 5xx answer.

One test per operation of the document, each with a bounded number of examples and no
shrinking, so the whole module stays well under a minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from http_server import TOKEN, Server

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: jobs of httpjobs' queue "capped" (one job waiting at most): 503 is their expected answer
CAPPED = {"hold", "capped_count"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http-schemathesis"), "--max-upload-bytes",
                 str(1 << 20), "--max-workers", "4")
    srv.start()
    (srv.containers / "web").mkdir()
    yield srv
    assert srv.stop() == 0, srv.output()


def operations(server: Server) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    return [result.ok() for result in schema.get_all_operations()]


def exercise(strategy: Any, statuses: Counter[int], max_examples: int = 20,
             excuse: Callable[[Any], bool] | None = None) -> None:
    """Send every case ``strategy`` generates; none may get a server error, unless
    ``excuse(response)`` says it is a documented answer. Counts statuses in ``statuses``.

    pytest 9 breaks schemathesis' own pytest integration (``from_fixture``), so the
    strategies are driven with Hypothesis directly.
    """

    @settings(max_examples=max_examples, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH, timeout=20)
        statuses[response.status_code] += 1
        if excuse is None or not excuse(response):
            case.validate_response(response, checks=[not_a_server_error])

    check()



@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_server_error(server: Server, mode: schemathesis.GenerationMode) -> None:
    ops = operations(server)
    assert {f"{op.method.upper()} {op.path}" for op in ops} >= {
        "POST /uploads", "GET /jobs", "POST /jobs/{job}", "GET /jobs/{job}",
        "DELETE /jobs/{job}", "POST /jobs/{id}/retry", "GET /queues", "GET /healthz"}
    statuses: Counter[int] = Counter()
    no_invalid_form = []
    for op in ops:
        try:
            exercise(op.as_strategy(generation_mode=mode), statuses)
        except Unsatisfiable:
            # nothing in the operation can be made invalid (GET /healthz: no parameters)
            assert mode is schemathesis.GenerationMode.NEGATIVE, op.label
            no_invalid_form.append(op.label)
    print(f"{mode}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}"
          f"; no invalid form: {no_invalid_form}")
    assert sum(statuses.values()) >= 3 * len(ops)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
@pytest.mark.parametrize("job", ["add", "boom", "nap", "count", "analyze", "hold",
                                 "capped_count", "conveyor.push"])
def test_submit_registered_jobs(server: Server, mode: schemathesis.GenerationMode,
                                job: str) -> None:
    """``POST /jobs/{job}`` with the name of a real job: generated JSON calls, and raw bodies
    with generated query strings for the jobs that take an Upload."""
    (op,) = [op for op in operations(server) if op.label == "POST /jobs/{job}"]
    statuses: Counter[int] = Counter()

    def full_queue(response: Any) -> bool:
        """The documented back-pressure answer of a full queue, not a failure."""
        if job not in CAPPED or response.status_code != 503:
            return False
        assert "is full" in response.text, response.text
        # (schemathesis's headers: a plain dict of lower-case names, each to a list)
        headers = {name.lower(): value for name, value in dict(response.headers).items()}
        assert headers.get("retry-after"), headers
        return True

    exercise(op.as_strategy(generation_mode=mode, path_parameters={"job": job}), statuses,
             excuse=full_queue)
    print(f"{mode} {job}: statuses {dict(sorted(statuses.items()))}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("label", ["GET /jobs/{job}", "DELETE /jobs/{job}",
                                   "POST /jobs/{id}/retry"])
def test_operations_on_a_real_job(server: Server, label: str) -> None:
    """The operations on one job, given the id of a dead one (retry brings it back)."""
    response = server.client.post("/jobs/boom", json={})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    server.wait_job(job_id)
    (op,) = [op for op in operations(server) if op.label == label]
    name = "id" if "{id}" in label else "job"
    statuses: Counter[int] = Counter()
    for mode in schemathesis.GenerationMode:
        try:
            exercise(op.as_strategy(generation_mode=mode, path_parameters={name: job_id}),
                     statuses, max_examples=10)
        except Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE, label
    print(f"{label}: statuses {dict(sorted(statuses.items()))}")
    assert statuses.keys() & {200, 202, 409}
