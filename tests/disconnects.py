"""Observing a client's lost connections from a test."""

from __future__ import annotations

import threading

import valkeyaside


def disconnect_event(c: valkeyaside.Client) -> tuple[threading.Event, list[BaseException]]:
    """An event set when the client's connection is lost, and the causes seen."""
    lost = threading.Event()
    causes: list[BaseException] = []

    def on_lost(cause: BaseException) -> None:
        causes.append(cause)
        lost.set()

    c.connection.add_disconnect_handler(on_lost)
    return lost, causes
