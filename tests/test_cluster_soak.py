"""The staleness soak (``benchmarks/soak.py``) on a cluster, with the cluster
changing under it: slots migrate live (the legacy way, with ASK in the
middle, and with Valkey 9's atomic ``CLUSTER MIGRATESLOTS``) and a primary
fails over, while a writer and threaded and asyncio reader processes run.
The checker must see no stale read, no impossible read and no error.
``python -m benchmarks.soak --cluster`` runs the long version."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import pytest
from cluster import ValkeyCluster, migrateslots_unsupported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_soak import summary

from benchmarks.soak import SoakConfig, cluster_chaos, run_soak


@pytest.mark.timeout(240)
def test_cluster_soak_with_migrations_and_a_failover(fresh_cluster: ValkeyCluster) -> None:
    cluster = fresh_cluster
    url = "valkey://" + ",".join(node.address for node in cluster.primaries()) + "/0"
    config = SoakConfig(url=url, seconds=15.0, processes=4, threads=2, tasks=8, front="mixed",
                        keys=32, write_rate=300.0, delete_share=0.5, seed=5,
                        prefix="soak:cluster:")
    done: List[str] = []
    atomic = migrateslots_unsupported(cluster.binary) is None
    result = run_soak(config, during=cluster_chaos(cluster, config, done, atomic=atomic))
    assert done == ["legacy migration", *(["atomic migration"] if atomic else []), "failover"]
    assert result.stale == 0, summary(result)
    assert result.impossible == 0, summary(result)
    assert result.unexpected_errors == 0, summary(result)
    assert result.reads >= 10_000 and result.writes >= 1_000, summary(result)
    stats = result.client_stats
    assert stats["hits"] > 0 and stats["loads"] > 0 and stats["invalidations"] > 0, stats
