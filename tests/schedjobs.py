"""The app of tests/test_schedules_http.py: a schedule firing every second and one that
fires once a year, served by ``conveyor serve`` (its worker fires them)."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor(url="sqlite:///unused.db")


@app.job
def noop() -> None:
    pass


@app.job(cron="0 0 1 1 *")
def yearly() -> None:
    pass


app.schedule("often", noop, every=1)
