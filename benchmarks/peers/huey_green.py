"""The module Huey's greenlet consumers import: gevent's monkey-patch first, then the jobs.

Huey's docs: apply the monkey-patch at the very beginning of the module the consumer is
pointed at, before anything else is imported, then run ``huey_consumer main.huey -k greenlet``.
"""

from gevent import monkey

monkey.patch_all()

from huey_bench import huey  # noqa: E402  (after the patch, as Huey's docs show)

__all__ = ["huey"]
