"""The web dashboard: queues, charts of the last hour, workers, jobs and their actions.

It is part of the HTTP API's app (:func:`conveyor.http.create_app`, ``dashboard=True`` by
default), so ``conveyor serve`` shows it at ``/`` and an app that mounts the API under a path
shows it there. It needs no file from elsewhere: its script, style sheet and icon are served
from this package.
"""

from conveyor.dashboard.routes import Dashboard, is_dashboard_path

__all__ = ["Dashboard", "is_dashboard_path"]
