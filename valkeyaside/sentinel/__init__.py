"""A primary found through Valkey Sentinel, and followed across failovers.

``Client("valkey+sentinel://s1:26379,s2:26379/mymaster/0")`` (or
``sentinel_master=`` and ``sentinels=``) connects through
:class:`SentinelConnection`, ``AsyncClient`` through
:class:`AsyncSentinelConnection`; both share their logic (``_core``).
"""

from ._aio import AsyncSentinelConnection
from ._sync import SentinelConnection

__all__ = ["AsyncSentinelConnection", "SentinelConnection"]
