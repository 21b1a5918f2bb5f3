"""``python -m valkeyaside demo [--url URL]``: see :mod:`valkeyaside._demo`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``COMMAND [OPTIONS]`` and run the command."""
    parser = argparse.ArgumentParser(
        prog="python -m valkeyaside",
        description="valkeyaside: a Cache-Aside client for Valkey.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    demo = commands.add_parser(
        "demo",
        help="show the client at work on a throwaway valkey-server",
        description="Start a throwaway valkey-server (or use --url) and show a stampede "
                    "of 200 threads, and one of 1,000 asyncio tasks, each served by one load; "
                    "the cost of a hit, a write reaching another client's local copy, and a "
                    "dead lock holder taken over.",
    )
    demo.add_argument("--url", help="use this server (valkey://host:port/db) instead of "
                                    "starting one; the demo's keys are deleted afterwards")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as run_demo

        return run_demo(args.url)
    parser.error(f"unknown command {args.command!r}")
    return 2  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
