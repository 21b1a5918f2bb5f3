"""Benchmarks for valkeyaside, run as ``python -m benchmarks.<name>``.

They compare valkeyaside with other Valkey clients on the same data, in the
same run, interleaving the variants round by round and reporting medians.
Their extra dependencies come from the ``bench`` extra
(``pip install -e '.[bench]'``); the library itself never needs them.

- ``benchmarks.parser``: RESP3 parser throughput on in-memory corpora.
- ``benchmarks.roundtrip``: GET latency and multi-thread throughput against
  a real valkey-server.
- ``benchmarks.hit``: a local hit against the floor, valkey-py's client-side
  cache and a round trip; 4 threads against 1.
- ``benchmarks.stampede``: many callers on one cold key, against dogpile.cache.
- ``benchmarks.miss``: round trips and time of a miss-and-fill.
- ``benchmarks.soak``: the staleness checker (writers, readers in processes).
- ``benchmarks.fuzz_parser``: random and mutated inputs through the parser.
- ``benchmarks.memory``: 1,000,000 gets over 100,000 keys under a 10 MiB bound.
"""
