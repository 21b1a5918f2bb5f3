"""The stampede benchmark's harness, which judges issue 11's tail targets: it
runs (pinned by default, or not) and reports one load and one value per
round. Its timings are the benchmark's to judge, not this test's."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import stampede

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                                    reason="no CPU affinity on this platform")


@needs_affinity
def test_placement_puts_the_server_beside_the_pinned_workers() -> None:
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    workers, server = stampede.placement(cpu)
    assert workers == {cpu}
    assert server == ((allowed - {cpu}) or {cpu})
    assert stampede.placement(None) == (None, None)
    with pytest.raises(SystemExit, match="may use CPUs"):
        stampede.placement(max(allowed) + 1)


@needs_affinity
def test_by_default_the_threads_are_pinned_where_the_server_can_go_elsewhere() -> None:
    allowed = os.sched_getaffinity(0)
    assert stampede.default_cpu() == (min(allowed) if len(allowed) >= 2 else None)
    with pytest.raises(SystemExit):  # one or the other
        stampede.main(["--pin", str(min(allowed)), "--no-pin"])


@needs_affinity
@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", [[], ["--no-pin"]], ids=["default", "no-pin"])
def test_a_run_reports_one_load_and_one_value(where: list[str], server_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    stampede.main(["--rounds", "1", "--load-ms", "20", "--only", stampede.OURS,
                   "--url", server_url, *where])
    out = capsys.readouterr().out
    cpu = None if where else stampede.default_cpu()
    if cpu is None:
        assert f"placement: unpinned (CPUs {sorted(os.sched_getaffinity(0))})" in out
    else:
        assert f"placement: one process's threads on CPU {cpu} (eight processes unpinned)" in out
    assert len(re.findall(r"^exactly 1 load +1 +met$", out, re.M)) == 2  # both scenarios
    assert len(re.findall(r"^every caller got the one value +yes +met$", out, re.M)) == 2
    assert re.search(r"^  1x50 round 1: valkeyaside 1 load\(s\)", out, re.M)
    assert re.search(r"^  8x20 round 1: valkeyaside 1 load\(s\)", out, re.M)
