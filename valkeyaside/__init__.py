"""valkeyaside: a Cache-Aside client for Valkey.

Fast because of RESP3 client-side caching, stampede-proof because a missing
key is locked with a placeholder so only one caller loads it. Standard
library only. Start with :class:`Client` and its ``get(key, ttl, fn)``, or
:class:`AsyncClient` and ``await client.get(key, ttl, fn)`` under asyncio.
"""

from .aio import AsyncClient, AsyncTypedClient
from .client import TOMBSTONE, Client, TypedClient, override_cache_ttl
from .errors import ConnectionError, ProtocolError, ResponseError, TimeoutError, ValkeyError
from .lock import PLACEHOLDER_PREFIX

__version__ = "0.1.0"

__all__ = [
    "PLACEHOLDER_PREFIX",
    "AsyncClient",
    "AsyncTypedClient",
    "TOMBSTONE",
    "Client",
    "ConnectionError",
    "ProtocolError",
    "ResponseError",
    "TimeoutError",
    "TypedClient",
    "ValkeyError",
    "__version__",
    "override_cache_ttl",
]
