"""What the threaded and the asyncio Sentinel transports share, without I/O.

Finding the primary (:class:`PrimarySearch`): ask the sentinels in order,
the one that answered last first, ``SENTINEL GET-MASTER-ADDR-BY-NAME``;
connect to the address given; keep the link only if ``ROLE`` says
``master``. Rounds repeat with a growing pause until ``connect_timeout``
runs out; a name that no sentinel knows fails at once.

Following failovers (:class:`Watch`): one connection to one sentinel,
subscribed to ``+switch-master``, which also asks the primary's address
again each time it subscribes (a switch may have been missed meanwhile).
Each address learnt is handed to :meth:`SentinelState._follow`, which kills
the current link when it leads elsewhere: its disconnect handlers drop the
local cache, and the next call connects to the new primary.

:class:`Chat` is one short exchange with a sentinel: the bytes to write,
then the frames read, fed in as they come.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple, Optional

from .._topology import Address, Topology
from ..errors import ConnectionError, ProtocolError, ResponseError, TimeoutError
from ..resp3 import ConnectionOptions, Parser, Push, encode_command, encode_commands
from ..resp3._base import BACKOFF_FIRST, BACKOFF_MAX
from ..resp3._handshake import check_handshake, handshake_commands
from ..resp3._parser import NEED_DATA

__all__ = ["Chat", "PrimarySearch", "SentinelState", "Sentinels", "Step", "Watch"]

log = logging.getLogger("valkeyaside")

SWITCH_CHANNEL = b"+switch-master"
ROLE = encode_command("ROLE")
PING = encode_command("PING")
#: A silent subscription is PINGed after this many seconds.
WATCH_IDLE = 1.0
#: An unanswered PING on the subscription gives up after this many seconds.
WATCH_DEAD = 3.0


def where(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class Sentinels:
    """The sentinels, the one that answered last first (the order of the
    Sentinel client guidelines). Swapped whole, so threads may share it."""

    def __init__(self, addresses: tuple[Address, ...]) -> None:
        self.order = addresses

    def prefer(self, address: Address) -> None:
        order = self.order
        if order[0] != address and address in order:
            self.order = (address, *(other for other in order if other != address))

    def after(self, address: Optional[Address]) -> Address:
        """The sentinel to try after ``address`` (the first one after None)."""
        order = self.order
        if address not in order:
            return order[0]
        return order[(order.index(address) + 1) % len(order)]

    def __str__(self) -> str:
        return ", ".join(where(address) for address in self.order)


class Chat:
    """One exchange with a sentinel: ``HELLO 3`` (with its own credentials)
    and ``commands``, written as ``payload``; the frames read are fed in."""

    def __init__(self, options: ConnectionOptions, sentinel: Address, *commands: tuple[Any, ...]):
        self.sentinel = sentinel
        self.options = options.replace(host=sentinel[0], port=sentinel[1])
        hello = handshake_commands(self.options)
        self.payload = encode_commands([*hello, *commands])
        self.expected = len(hello) + len(commands)
        self.replies: list[Any] = []
        self._parser = Parser()

    @property
    def done(self) -> bool:
        return len(self.replies) >= self.expected

    def feed(self, data: bytes) -> list[Any]:
        """The frames completed by ``data``, in order (pushes too; replies are
        also kept in ``replies``)."""
        if not data:
            raise ConnectionResetError(f"sentinel {where(self.sentinel)} closed the connection")
        parser = self._parser
        parser.feed(data)
        frames = []
        frame = parser.next_frame()
        while frame is not NEED_DATA:
            frames.append(frame)
            if type(frame) is not Push:
                self.replies.append(frame)
            frame = parser.next_frame()
        return frames

    def hello(self) -> None:
        """Raise ConnectionError if the sentinel refused the handshake (its credentials)."""
        check_handshake(self.options, (), self.replies[:1])

    def answer(self) -> Any:
        """The reply to the first command after the handshake."""
        self.hello()
        return self.replies[1]


def master_address(reply: Any, master: str, sentinel: Address) -> Optional[Address]:
    """The address in a ``GET-MASTER-ADDR-BY-NAME`` reply; None: the name is unknown there."""
    if reply is None:
        return None
    if isinstance(reply, ResponseError):
        raise ConnectionError(f"sentinel {where(sentinel)} refused to name the primary "
                              f"{master!r}: {reply}")
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bytes):
        port = reply[1]
        if isinstance(port, bytes) and port.isdigit():
            port = int(port)
        if isinstance(port, int) and 0 < port < 65536:
            return reply[0].decode("utf-8", "replace"), port
    raise ProtocolError(f"sentinel {where(sentinel)} named the primary {master!r} as "
                        f"{reply!r:.100}")


def switch_address(push: Push, master: str) -> Optional[Address]:
    """The new address in a ``+switch-master`` message about ``master``
    (``<name> <old ip> <old port> <new ip> <new port>``), else None."""
    if len(push) != 3 or push[0] != b"message" or push[1] != SWITCH_CHANNEL:
        return None
    payload = push[2]
    parts = payload.decode("utf-8", "replace").split() if isinstance(payload, bytes) else []
    if len(parts) != 5 or parts[0] != master or not parts[4].isdigit():
        return None
    return parts[3], int(parts[4])


class Step(NamedTuple):
    """What to do next while searching: after ``pause`` seconds, ask
    ``sentinel`` (``primary`` None) or connect to ``primary``, within ``timeout``."""

    sentinel: Address
    primary: Optional[Address]
    pause: float
    timeout: Optional[float]


class PrimarySearch:
    """The search for the primary, one step at a time: the driver does the
    step's I/O and reports with :meth:`heard` or :meth:`failed`."""

    def __init__(self, master: str, sentinels: Sentinels, timeout: Optional[float]) -> None:
        self.master = master
        self.question = ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
        self._sentinels = sentinels
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._queue = list(sentinels.order)
        self._rounds = 0
        self._sentinel: Optional[Address] = None
        self._primary: Optional[Address] = None
        self._unknown: set[Address] = set()
        self._errors: dict[str, str] = {}

    def next(self) -> Step:
        """The next step; raises ConnectionError when the search is over."""
        if self._primary is not None and self._sentinel is not None:
            return Step(self._sentinel, self._primary, 0.0, self._remaining(0.0))
        pause = 0.0
        if not self._queue:
            if self._unknown == set(self._sentinels.order):
                raise ConnectionError(f"no sentinel knows a primary named {self.master!r} "
                                      f"(asked {self._sentinels})")
            self._rounds += 1
            pause = min(BACKOFF_FIRST * 2.0 ** (self._rounds - 1), BACKOFF_MAX)
            if self._deadline is not None and time.monotonic() + pause >= self._deadline:
                raise ConnectionError(self._failure())
            self._queue = list(self._sentinels.order)
            self._unknown.clear()
        self._sentinel = self._queue.pop(0)
        return Step(self._sentinel, None, pause, self._remaining(pause))

    def heard(self, reply: Any) -> None:
        """The sentinel of the last step answered ``reply``."""
        assert self._sentinel is not None
        address = master_address(reply, self.master, self._sentinel)
        if address is None:
            self._unknown.add(self._sentinel)
            self._errors[where(self._sentinel)] = f"knows no primary named {self.master!r}"
        self._primary = address

    def failed(self, error: BaseException) -> None:
        """The last step failed: try the next sentinel."""
        assert self._sentinel is not None
        self._errors[where(self._primary or self._sentinel)] = str(error) or repr(error)
        self._primary = None

    def found(self) -> Address:
        """The last step connected: its sentinel is asked first next time."""
        assert self._sentinel is not None and self._primary is not None
        self._sentinels.prefer(self._sentinel)
        return self._primary

    def _remaining(self, pause: float) -> Optional[float]:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic() - pause, 0.001)

    def _failure(self) -> str:
        errors = "; ".join(f"{name}: {text}" for name, text in self._errors.items())
        within = "" if self._timeout is None else f" within {self._timeout:.3g} s"
        return (f"no primary named {self.master!r} found through the sentinels "
                f"{self._sentinels}{within} ({errors})")


class Watch:
    """The subscription to ``+switch-master``, without I/O: which sentinel
    next (the one after a lost one), how long to pause (a growing backoff),
    what to write, what the frames read mean."""

    def __init__(self, master: str, sentinels: Sentinels, options: ConnectionOptions) -> None:
        self.master = master
        self.sentinel: Optional[Address] = None
        self._sentinels = sentinels
        self._options = options
        self._chat: Optional[Chat] = None
        self._subscribed = False
        self._failures = 0
        self._last_read = 0.0
        self._ping_sent: Optional[float] = None

    @property
    def subscribed(self) -> bool:
        """True once subscribed (and the address asked answered), until lost."""
        return self._subscribed

    def pause(self) -> float:
        """Seconds to wait before the next subscription."""
        return 0.0 if not self._failures else min(
            BACKOFF_FIRST * 2.0 ** (self._failures - 1), BACKOFF_MAX)

    def begin(self) -> Chat:
        """The next subscription: its sentinel, options and payload."""
        if self.sentinel is None:
            self.sentinel = self._sentinels.order[0]
        elif self._failures:
            self.sentinel = self._sentinels.after(self.sentinel)
        self._chat = Chat(self._options, self.sentinel, ("SUBSCRIBE", SWITCH_CHANNEL),
                          ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master))
        self._subscribed = False
        self._last_read = time.monotonic()
        self._ping_sent = None
        return self._chat

    def feed(self, data: bytes) -> list[Address]:
        """The primary's addresses learnt from ``data`` (the answer asked on
        subscribing, then each switch), in order."""
        chat = self._chat
        assert chat is not None
        self._last_read = time.monotonic()
        self._ping_sent = None
        learnt = []
        for frame in chat.feed(data):
            if type(frame) is Push:
                address = switch_address(frame, self.master)
            elif len(chat.replies) == 1:
                chat.hello()
                continue
            elif not self._subscribed and len(chat.replies) == 2:
                address = master_address(chat.replies[1], self.master, chat.sentinel)
                if address is None:
                    raise ConnectionError(f"sentinel {where(chat.sentinel)} knows no primary "
                                          f"named {self.master!r}")
                self._subscribed = True
                self._failures = 0
            else:
                continue  # a PONG
            if address is not None:
                learnt.append(address)
        return learnt

    def silent(self) -> bytes:
        """Nothing was read for ``WATCH_IDLE``: the PING to write; raises
        TimeoutError when the last one went unanswered too long."""
        now = time.monotonic()
        if self._ping_sent is not None and now - self._ping_sent >= WATCH_DEAD:
            raise TimeoutError(f"sentinel {where(self.sentinel or ('?', 0))} "
                               f"did not answer a PING in {WATCH_DEAD:g} s")
        if self._ping_sent is None:
            self._ping_sent = now
        return PING

    def lost(self, error: BaseException, closed: bool) -> None:
        """The subscription was lost (or could not be made): next time, the
        next sentinel, after a pause."""
        self._failures += 1
        self._chat = None
        self._subscribed = False
        if not closed:
            log.info("subscription to sentinel %s for %r lost: %s",
                     where(self.sentinel or ("?", 0)), self.master, error)


class SentinelState:
    """What both Sentinel transports keep and do, besides their I/O: a mixin
    in front of ``Connection`` or ``AsyncConnection``."""

    options: ConnectionOptions
    _link: Any
    _closed: bool

    def _setup(self, topology: Topology) -> ConnectionOptions:
        """Called first by ``__init__``; returns the data options to start with."""
        assert topology.sentinel_master is not None and topology.sentinel_options is not None
        #: The primary's name, as the sentinels know it.
        self.master = topology.sentinel_master
        self.sentinels = Sentinels(topology.sentinels)
        self._sentinel_options = topology.sentinel_options
        self._data_options = topology.options
        #: The address of the primary of the last connection made (None before).
        self.primary: Optional[Address] = None
        self._watch = Watch(self.master, self.sentinels, self._sentinel_options)
        # Switches learnt by the watcher, and the last address: a connection
        # made to another address after a switch learnt while connecting is
        # dropped (its sentinel may have lagged behind the watched one).
        self._switches = 0
        self._announced: Optional[Address] = None
        self._search_switches = 0
        return topology.options

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self.connected else "idle")
        primary = where(self.primary) if self.primary is not None else "unknown"
        return (f"<{type(self).__name__} {self.master!r} primary={primary} "
                f"sentinels={self.sentinels} {state}>")

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and bool(link.alive)

    @property
    def watching(self) -> Optional[Address]:
        """The sentinel whose ``+switch-master`` messages are followed now (None
        while not subscribed)."""
        watch = self._watch
        return watch.sentinel if watch.subscribed and not self._closed else None

    def _search(self, timeout: Optional[float]) -> PrimarySearch:
        self._search_switches = self._switches
        return PrimarySearch(self.master, self.sentinels, timeout)

    def _aim(self, primary: Address) -> None:
        """The next link goes to ``primary``."""
        self.options = self._data_options.replace(host=primary[0], port=primary[1])

    def _check_primary(self, role: Any) -> None:
        """After the handshake with the node aimed at: ``ROLE`` must say master,
        and no switch elsewhere may have been learnt meanwhile."""
        address = (self.options.host, self.options.port)
        if not isinstance(role, list) or not role or role[0] != b"master":
            said = role[0] if isinstance(role, list) and role else role
            raise ConnectionError(f"{where(address)}, named the primary {self.master!r} by a "
                                  f"sentinel, is not one (ROLE says {said!r:.60})")
        announced = self._announced
        if (self._switches != self._search_switches and announced is not None
                and announced != address):
            raise ConnectionError(f"the primary {self.master!r} moved to {where(announced)} "
                                  f"while connecting to {where(address)}")

    def _follow(self, address: Address) -> None:
        """The watcher learnt the primary's address: drop a link that leads elsewhere."""
        watched = self._watch.sentinel
        if watched is not None:
            self.sentinels.prefer(watched)  # it knows the switch; others may lag
        if address != self._announced:
            self._announced = address
            self._switches += 1
        link = self._link
        primary = self.primary
        if link is not None and link.alive and primary is not None and primary != address:
            log.info("the primary %r moved from %s to %s", self.master, where(primary),
                     where(address))
            link.die(ConnectionError(f"the primary {self.master!r} moved from {where(primary)} "
                                     f"to {where(address)}"))
