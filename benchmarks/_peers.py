"""valkey-py as the benchmarks' peer: on its pure-Python code path, like valkeyaside.

valkey-py picks libvalkey's C parser and C command packer whenever the
``libvalkey`` package is importable, so the pool is built with its
``_RESP3Parser`` and ``PythonRespSerializer``, and a live connection is
checked to use them. It speaks RESP3 and returns bytes, as valkeyaside does.
"""

from __future__ import annotations

from typing import Any

from benchmarks._server import Server

__all__ = ["pure_python_valkey"]


def pure_python_valkey(server: Server, **pool_options: Any) -> Any:
    """A ``valkey.Valkey`` over a ``ConnectionPool`` to ``server``, checked to run on
    the pure-Python parser and packer (and with its client-side cache, when
    ``cache_enabled=True`` is among ``pool_options``)."""
    import valkey
    from valkey._parsers import Encoder, _RESP3Parser
    from valkey.connection import PythonRespSerializer

    encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]
    pool = valkey.ConnectionPool(
        host=server.host,
        port=server.port,
        db=server.db,
        protocol=3,
        parser_class=_RESP3Parser,
        command_packer=PythonRespSerializer(6000, encoder.encode),
        **pool_options,
    )
    client = valkey.Valkey(connection_pool=pool)
    conn: Any = pool.get_connection("GET")
    try:
        conn.connect()
        parser, packer = type(conn._parser), type(conn._command_packer)
        has_cache = getattr(conn, "client_cache", None) is not None
    finally:
        pool.release(conn)
    wants_cache = bool(pool_options.get("cache_enabled"))
    if parser is not _RESP3Parser or packer is not PythonRespSerializer or (
        wants_cache and not has_cache
    ):
        raise RuntimeError(f"valkey-py uses {parser.__name__} / {packer.__name__}, "
                           f"cache {'on' if has_cache else 'off'}")
    return client
