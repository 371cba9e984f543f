"""Redis Cluster URLs (see :mod:`.deploy`): not supported yet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError, redact_url

if TYPE_CHECKING:
    from conveyor.backends.redis.deploy import Scripts


def _unsupported(url: str) -> ConfigurationError:
    return ConfigurationError(f"{redact_url(url)}: Redis Cluster is not supported yet")


def check_url(url: str) -> None:
    """Raise :class:`ConfigurationError` for a URL that cannot be used."""
    raise _unsupported(url)


def async_client(url: str) -> Any:
    """An asyncio client for ``url``."""
    raise _unsupported(url)


def blocking_scripts(url: str) -> Scripts:
    """A runner of scripts on blocking connections to ``url``."""
    raise _unsupported(url)
