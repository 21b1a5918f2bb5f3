"""Shared helpers for the benchmarks: interleaved rounds, medians, ratios, tables.

Every benchmark runs its variants one after another inside a round, rotating
the order from round to round, so that slow drifts of the machine (frequency
scaling, noisy neighbours, a warming cache) hit every variant alike. The
figure reported for a variant is the median over rounds, which ignores the
odd disturbed round.
"""

from __future__ import annotations

import math
import platform
import statistics
import threading
import time
from importlib import metadata
from typing import Callable, Dict, List, Mapping, Sequence, TypeVar

T = TypeVar("T")


def interleaved_rounds(
    variants: Mapping[str, Callable[[], T]],
    rounds: int,
    *,
    before_each: Callable[[], object] | None = None,
) -> Dict[str, List[T]]:
    """Run every variant once per round, rotating the order each round.

    Returns, per variant name, the list of results of its runs in round order.
    ``before_each`` (e.g. ``gc.collect``) is called, untimed, before every run.
    """
    names = list(variants)
    results: Dict[str, List[T]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotated(names, r):
            if before_each is not None:
                before_each()
            results[name].append(variants[name]())
    return results


def rotated(names: Sequence[str], step: int) -> List[str]:
    """``names`` in the order for round (or step) ``step``: each takes the lead in turn."""
    shift = step % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else math.nan


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ratio(ours: float, theirs: float) -> str:
    """``ours / theirs`` formatted as ``"2.41x"`` (``"n/a"`` when undefined)."""
    if not (math.isfinite(ours) and math.isfinite(theirs)) or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def fmt_num(value: float, digits: int = 1) -> str:
    """A rate or duration with thousands separators (``"n/a"`` for NaN)."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print an aligned text table: first column left-aligned, the rest right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    print()
    print(title)
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def verdict(value: float, target: float) -> str:
    """``"met"`` when ``value >= target``, else ``"NOT met"`` (for target ratios)."""
    return "met" if math.isfinite(value) and value >= target else "NOT met"


def environment(packages: Sequence[str]) -> str:
    """One line naming the Python and the versions of ``packages`` (for reproducibility)."""
    parts = [f"{platform.python_implementation()} {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def threaded_rate(step: Callable[[], int], threads: int, seconds: float) -> float:
    """``threads`` threads call ``step`` (which returns how many operations it
    did) for ``seconds``, all starting together; total operations per second."""
    stop = threading.Event()
    start = threading.Barrier(threads + 1)
    counts = [0] * threads
    errors: List[BaseException] = []

    def worker(i: int) -> None:
        start.wait()
        done = 0
        try:
            while not stop.is_set():
                done += step()
        except BaseException as exc:
            errors.append(exc)
        counts[i] = done

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed
