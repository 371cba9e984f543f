"""Conveyor: durable background jobs for Python, on embedded SQLite or a shared Redis."""

import logging

from conveyor.app import Conveyor
from conveyor.context import JobContext
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    DuplicateJob,
    InvalidArguments,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobNotWaiting,
    JobTimeout,
    NewerStore,
    PermanentError,
    QueueFull,
    RateLimited,
    ReentrantWrite,
    Retry,
    StoreDamaged,
    StoreUnavailable,
    TooManyQueues,
    UnknownJob,
)
from conveyor.functions import JobFunction
from conveyor.handle import JobHandle
from conveyor.job import Backoff, JobRecord, JobState
from conveyor.options import EnqueueOptions
from conveyor.priority import QueueWeights
from conveyor.schedules import Schedule
from conveyor.uploads import Upload

__all__ = [
    "Backoff",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "DuplicateJob",
    "EnqueueOptions",
    "InvalidArguments",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobFunction",
    "JobHandle",
    "JobNotFound",
    "JobNotWaiting",
    "JobRecord",
    "JobState",
    "JobTimeout",
    "NewerStore",
    "PermanentError",
    "QueueFull",
    "QueueWeights",
    "RateLimited",
    "ReentrantWrite",
    "Retry",
    "Schedule",
    "StoreDamaged",
    "StoreUnavailable",
    "TooManyQueues",
    "UnknownJob",
    "Upload",
]
__version__ = "0.1.1"

# a library logs only where its user configured logging (the CLI does): no stray lines
logging.getLogger("conveyor").addHandler(logging.NullHandler())
