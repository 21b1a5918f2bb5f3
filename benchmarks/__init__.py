"""Benchmarks for valkeyaside, run as ``python -m benchmarks.<name>``.

They compare valkeyaside with other Valkey clients on the same data, in the
same run, interleaving the variants round by round and reporting medians.
Their extra dependencies come from the ``bench`` extra
(``pip install -e '.[bench]'``); the library itself never needs them.

- ``benchmarks.parser``: RESP3 parser throughput on in-memory corpora.
- ``benchmarks.roundtrip``: GET latency and multi-thread throughput against
  a real valkey-server.
"""
