"""Count the commands a server ran, from ``INFO commandstats``, on a raw socket.

The counts come from the server itself, so they include every command any
client sent (the benchmarks run alone on their own server). The raw socket
keeps the counting independent of the clients being measured; its own
``INFO`` calls are counted too and subtracted by :func:`delta`.
"""

from __future__ import annotations

import socket
from typing import Dict

from benchmarks._server import Server, resp_command


def _info(server: Server, section: str) -> str:
    """The text of ``INFO <section>``."""
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(resp_command("INFO", section))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
            head, _, body = data.partition(b"\r\n")
            if head.startswith(b"$") and len(body) >= int(head[1:]) + 2:
                return body[: int(head[1:])].decode(errors="replace")


def commandstats(server: Server) -> Dict[str, int]:
    """Calls per command so far, e.g. ``{"get": 12, "evalsha": 1, "client|caching": 3}``."""
    calls: Dict[str, int] = {}
    for line in _info(server, "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_"):].partition(":")
        for item in fields.split(","):
            key, _, value = item.partition("=")
            if key == "calls":
                calls[name] = int(value)
    return calls


def delta(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    """Commands run between two :func:`commandstats` snapshots (the INFO between them excluded)."""
    changed = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    changed["info"] = changed.get("info", 0) - 1  # the INFO that took ``after``
    return {name: count for name, count in changed.items() if count > 0}
