"""The dashboard's schedules page in a real browser (see tests/test_dashboard_browser.py):
the listing refreshes by itself, and pause, resume and run now ask first, then act."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from http_server import Server
from test_dashboard_browser import browser, log_in, page, shoot  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("schedules-browser"), app="schedjobs:app")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


def test_schedules_page_pause_resume_and_run(page: Any, server: Server) -> None:  # noqa: F811
    log_in(page)
    page.click("nav >> text=Schedules")
    page.wait_for_url("**/ui/schedules")
    often = page.locator('#schedules tr[data-schedule="often"]')
    often.wait_for()
    assert "every 1s" in often.inner_text()
    # the last job's state appears once the worker fired a tick and ran its job
    page.wait_for_selector('#schedules tr[data-schedule="often"] .badge.succeeded')
    often.locator('button[data-action="pause"]').click()
    assert "Pause schedule “often”?" in page.locator("#confirm-text").inner_text()
    page.click("#confirm-yes")
    page.wait_for_selector("#flash .flash")
    assert page.locator("#flash").inner_text() == "Schedule often paused."
    assert server.client.get("/schedules").json()["schedules"][0]["paused"] is True
    often.locator('button[data-action="resume"]').click()
    page.click("#confirm-yes")
    page.wait_for_function("() => document.querySelector('#flash').textContent"
                           " === 'Schedule often resumed.'")
    page.locator('#schedules tr[data-schedule="yearly"] button[data-action="run"]').click()
    page.click("#confirm-yes")
    page.wait_for_function("() => document.querySelector('#flash').textContent"
                           ".startsWith('Enqueued job ')")
    job_id = page.locator("#flash").inner_text().removeprefix("Enqueued job ").rstrip(".")
    assert server.wait_job(job_id)["name"] == "yearly"
    shoot(page, "schedules")
