"""valkey-py as the benchmarks' peer: on its pure-Python code path, like valkeyaside.

valkey-py picks libvalkey's C parser and C command packer whenever the
``libvalkey`` package is importable, so the pool is built with its
``_RESP3Parser`` and ``PythonRespSerializer``, and a live connection is
checked to use them. It speaks RESP3 and returns bytes, as valkeyaside does.
"""

from __future__ import annotations

from typing import Any

from benchmarks._server import Server

__all__ = ["pure_python_valkey", "pure_python_valkey_async_cluster", "pure_python_valkey_cluster"]


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


def _check_pure_python(conn: Any, parser: type, packer: type | None) -> None:
    """Fail unless ``conn`` (a connected valkey-py connection) parses with ``parser``
    and packs with ``packer`` (None: its asyncio connections pack in Python only)."""
    parser_type = type(conn._parser)
    packer_type = type(conn._command_packer) if packer is not None else None
    if not issubclass(parser_type, parser) or packer_type is not packer:
        packing = f" / {packer_type.__name__}" if packer_type is not None else ""
        raise RuntimeError(f"valkey-py uses {parser_type.__name__}{packing}")


def pure_python_valkey_cluster(host: str, port: int) -> Any:
    """A ``valkey.cluster.ValkeyCluster`` seeded at ``host:port``, speaking RESP3.

    Its nodes' connections would be built with its own ``ClusterParser``, which
    is libvalkey's when ``libvalkey`` imports (and, from 6.2 on, kept with
    ``protocol=3``), and with libvalkey's packer; a connection class of ours
    puts the pure-Python ones in their place. A live connection of every node
    is checked to use them.
    """
    from valkey._parsers import _RESP3Parser
    from valkey.cluster import ClusterParser, ValkeyCluster
    from valkey.connection import PythonRespSerializer

    class PureClusterParser(_RESP3Parser):
        EXCEPTION_CLASSES = ClusterParser.EXCEPTION_CLASSES  # MOVED, ASK, ... as typed errors

    class PureValkeyCluster(ValkeyCluster):  # type: ignore[misc]
        """From valkey-py 6.2 on, a cluster connection keeps libvalkey's parser and
        packer whenever libvalkey imports, even with ``protocol=3``."""

        def on_connect(self, connection: Any) -> None:
            connection._command_packer = PythonRespSerializer(connection._buffer_cutoff,
                                                              connection.encoder.encode)
            connection.set_parser(PureClusterParser)
            connection.on_connect()

    client: Any = PureValkeyCluster(host=host, port=port, protocol=3)
    for node in client.get_primaries():
        pool = node.valkey_connection.connection_pool
        conn: Any = pool.get_connection("GET")
        try:
            conn.connect()
            _check_pure_python(conn, _RESP3Parser, PythonRespSerializer)
        finally:
            pool.release(conn)
    return client


async def pure_python_valkey_async_cluster(host: str, port: int) -> Any:
    """A ``valkey.asyncio.cluster.ValkeyCluster`` seeded at ``host:port``, speaking
    RESP3, initialized, and checked as ``pure_python_valkey_cluster`` is."""
    from valkey._parsers import _AsyncRESP3Parser
    from valkey.asyncio.cluster import ClusterParser, ValkeyCluster

    class PureClusterParser(_AsyncRESP3Parser):
        EXCEPTION_CLASSES = ClusterParser.EXCEPTION_CLASSES  # MOVED, ASK, ... as typed errors

    client = ValkeyCluster(host=host, port=port, protocol=3)
    # Its own ClusterParser is libvalkey's whenever libvalkey imports, and from
    # 6.2 on it is kept with protocol=3: the nodes still to be made, and the
    # seed, take the pure-Python one (before any connection is made).
    client.connection_kwargs["parser_class"] = PureClusterParser
    for seed in client.nodes_manager.startup_nodes.values():
        seed.connection_kwargs["parser_class"] = PureClusterParser
    await client.initialize()
    for node in client.get_primaries():
        conn: Any = node.acquire_connection()
        try:
            await conn.connect()
            _check_pure_python(conn, _AsyncRESP3Parser, None)
        finally:
            node._free.append(conn)  # what its own commands do with a connection
    return client
