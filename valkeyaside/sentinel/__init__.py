"""A primary found through Valkey Sentinel, and followed across failovers."""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncSentinelConnection", "SentinelConnection"]


class SentinelConnection:
    def __init__(self, topology: Any) -> None:
        raise NotImplementedError("Sentinel support is not built yet")


class AsyncSentinelConnection:
    def __init__(self, topology: Any) -> None:
        raise NotImplementedError("Sentinel support is not built yet")
