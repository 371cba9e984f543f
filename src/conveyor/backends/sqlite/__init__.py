"""The embedded SQLite backend."""

from conveyor.backends.sqlite.broker import SQLiteBroker

__all__ = ["SQLiteBroker"]
