"""A Valkey Cluster behind one transport: the slot map, routing, redirections.

No I/O here. The threaded and asyncio cluster transports (``_connection``,
``_aio``) own one node connection per primary and do the sending; this
module decides where each request goes and what a reply means:

- a request goes to the node that owns its key's slot (keyless: any node);
  a batch is split by node, one write per node;
- ``MOVED`` updates the slot's owner and sends the request there, ``ASK``
  sends it once more behind ``ASKING``, ``TRYAGAIN``/``CLUSTERDOWN``/
  ``LOADING`` send it again after a backoff, all at most ``REDIRECT_LIMIT``
  times, and before the request completes, so whoever waits on it (a single
  flight included) sees only the final answer;
- a local entry is good while the link it was read through lives and its
  node still owns the key's slot (``still_good``); when a link is lost or a
  refresh changes the map, the disconnect handlers get that test and drop
  what fails it.

A cached read that follows ``ASK`` is sent untracked (``ASKING`` would
clear ``CLIENT CACHING YES``), so its answer is used once and not kept.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Generator, Generic, Optional, TypeVar

from .._topology import Address, Topology
from ..errors import ConnectionError, ResponseError
from ..resp3 import Arg, Batch, ConnectionOptions, Push, Request, encode_command
from ..resp3._base import ConnectionBase
from ._slots import SLOT_COUNT, key_slot

__all__ = ["QUERIES", "REDIRECTED", "REDIRECT_LIMIT", "REFRESH_PAUSE", "RETIRE_GRACE", "Router",
           "SlotMap", "command_key"]

log = logging.getLogger("valkeyaside")

#: Redirections and retries one request follows before its error is the answer.
REDIRECT_LIMIT = 16
#: Backoff of TRYAGAIN / CLUSTERDOWN / LOADING retries: doubling up to the last.
RETRY_FIRST = 0.01
RETRY_MAX = 0.5
#: Seconds between background refreshes of the slot map.
REFRESH_INTERVAL = 5.0
#: Refreshes follow one another at least this far apart (a storm of MOVED).
REFRESH_PAUSE = 0.05
#: A node that owns no slot any more is closed this long after: calls in flight
#: to it are answered meanwhile (with MOVED, mostly) and followed.
RETIRE_GRACE = 5.0
#: While a primary is out of reach (a failover under way), refreshes come this often.
REFRESH_FAILING = 0.25
#: What gives the slot map: ``CLUSTER SLOTS`` for servers before 7.0.
QUERIES = (("CLUSTER", "SHARDS"), ("CLUSTER", "SLOTS"))

_RETRIED = {"TRYAGAIN", "CLUSTERDOWN", "LOADING"}
#: The error codes that the router follows rather than reports.
REDIRECTED = frozenset({"MOVED", "ASK", *_RETRIED})
#: What a server outside cluster mode answers to CLUSTER SHARDS / SLOTS.
_NOT_A_CLUSTER = "cluster support disabled"

#: Commands without keys: they go to one primary (the first of the map).
_KEYLESS = {
    "ACL", "BGREWRITEAOF", "BGSAVE", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DBSIZE",
    "DEBUG", "ECHO", "FLUSHALL", "FLUSHDB", "FUNCTION", "INFO", "KEYS", "LASTSAVE", "LATENCY",
    "LOLWUT", "MEMORY", "MODULE", "PING", "PUBLISH", "PUBSUB", "RANDOMKEY", "READONLY",
    "READWRITE", "ROLE", "SAVE", "SCAN", "SCRIPT", "SLOWLOG", "TIME", "WAIT", "WAITAOF",
}
#: Commands whose first key is not their first argument: its index.
_KEY_AT = {"OBJECT": 2, "XINFO": 2, "XGROUP": 2}
_NUMKEYS_AT = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def command_key(args: tuple[Arg, ...]) -> Optional[str]:
    """The key that routes ``execute(*args)``: None for a keyless command.

    A command over several keys goes where its first key lives; keys in other
    slots get the server's ``CROSSSLOT`` error.
    """
    name = _text(args[0]).upper()
    if name in _KEYLESS:
        if name == "MEMORY" and len(args) > 2 and _text(args[1]).upper() == "USAGE":
            return _text(args[2])
        return None
    if name in _NUMKEYS_AT:
        return _text(args[3]) if len(args) > 3 and _text(args[2]) not in ("0", "") else None
    if name in ("XREAD", "XREADGROUP"):
        words = [_text(arg).upper() for arg in args]
        return _text(args[words.index("STREAMS") + 1]) if "STREAMS" in words[:-1] else None
    index = _KEY_AT.get(name, 1)
    return _text(args[index]) if len(args) > index else None


class SlotMap:
    """Which primary owns each slot; ``primaries`` in the order the server listed them."""

    def __init__(self, owners: list[Optional[Address]]) -> None:
        self.owners = owners
        self.primaries = list(dict.fromkeys(owner for owner in owners if owner is not None))

    @classmethod
    def single(cls, address: Address) -> SlotMap:
        """One server outside cluster mode: it owns everything."""
        return cls([address] * SLOT_COUNT)

    @classmethod
    def from_shards(cls, reply: Any, asked: Address, tls: bool) -> SlotMap:
        """From ``CLUSTER SHARDS``: each shard's slot ranges and its primary."""
        owners: list[Optional[Address]] = [None] * SLOT_COUNT
        for shard in reply:
            shard = {_text(k): v for k, v in shard.items()}
            primary = None
            for node in shard.get("nodes") or []:
                node = {_text(k): v for k, v in node.items()}
                # A failed primary stays listed (as a master) next to its successor.
                if _text(node.get("role", "")) in ("master", "primary") and (
                    _text(node.get("health", "online")) not in ("fail", "failed")
                ):
                    port = (node.get("tls-port") if tls and node.get("tls-port")
                            else node.get("port"))
                    primary = (_host(node.get("endpoint"), node.get("ip"), asked), int(port or 0))
            ranges = shard.get("slots") or []
            if primary is None:
                continue
            for start, end in zip(ranges[::2], ranges[1::2]):
                owners[int(start):int(end) + 1] = [primary] * (int(end) - int(start) + 1)
        return cls(owners)

    @classmethod
    def from_slots(cls, reply: Any, asked: Address) -> SlotMap:
        """From ``CLUSTER SLOTS`` (servers before 7.0): ``[start, end, primary, ...]``."""
        owners: list[Optional[Address]] = [None] * SLOT_COUNT
        for start, end, primary, *_replicas in reply:
            address = (_host(primary[0], None, asked), int(primary[1]))
            owners[int(start):int(end) + 1] = [address] * (int(end) - int(start) + 1)
        return cls(owners)


def _host(endpoint: Any, ip: Any, asked: Address) -> str:
    """A node's host: its endpoint, else its ip; unknown (``?``, empty): the node asked."""
    for value in (endpoint, ip):
        text = _text(value) if value is not None else ""
        if text and text != "?":
            return text
    return asked[0]


def _redirection(replies: list[Any]) -> Optional[tuple[str, int, Optional[Address]]]:
    """``(code, slot, address)`` when the replies hold a redirection or a retryable
    cluster error (the first error decides: EXECABORT follows a queued MOVED)."""
    for reply in replies:
        if type(reply) is ResponseError:
            code = reply.code
            if code in ("MOVED", "ASK"):
                words = str(reply).split()
                if len(words) < 3:
                    return None
                host, _, port = words[2].rpartition(":")
                return code, int(words[1]), (host, int(port))
            if code in _RETRIED:
                return code, -1, None
            return None
    return None


N = TypeVar("N", bound=ConnectionBase)


class _Routing:
    """What one routed request needs to follow redirections: its own form, the
    attempts so far, and whether ``ASKING`` leads its next replies."""

    __slots__ = ("asking", "attempts", "expected", "payload", "router")

    def __init__(self, router: Router[Any], request: Request) -> None:
        self.router = router
        self.payload = request.payload
        self.expected = request.expected
        self.attempts = 0
        self.asking = False

    def redirected(self, request: Request) -> bool:
        """Where frames are read: send ``request`` on if its replies redirect it."""
        replies = request.replies
        if self.asking:  # ASKING's own reply is not the request's
            self.asking = False
            del replies[0]
            request.expected -= 1
        found = _redirection(replies)
        if found is None or self.attempts >= REDIRECT_LIMIT:
            return False
        code, slot, address = found
        router = self.router
        router.redirections[code] = router.redirections.get(code, 0) + 1
        request.payload, expected = self.payload, self.expected
        if code == "ASK":
            form = request.asking_form()
            if form is None:
                return False  # several commands cannot each be preceded by ASKING
            request.payload, expected = form
            self.asking = True
        self.attempts += 1
        request.replies = []
        request.expected = expected
        request.link = None
        if code == "MOVED":
            assert address is not None
            router.moved(slot, address)
        if address is None:
            delay = min(RETRY_FIRST * 2 ** (self.attempts - 1), RETRY_MAX)
            router.resend(request, router.address_of(request.key), delay)
        else:
            router.resend(request, address, 0.0)
        return True


class Router(Generic[N]):
    """The state shared by both cluster transports; a subclass makes the node
    connections (``_new_node``) and sends (``resend``, ``submit``, refreshing)."""

    #: Keys live on several nodes: a command touches one key (see ``Aside``).
    sharded = True

    def __init__(self, topology: Topology) -> None:
        self.options = topology.options
        self._seeds = list(topology.seeds)
        self._detect = topology.cluster is None
        self._nodes: dict[Address, N] = {}
        self._retiring: list[N] = []  # nodes that own no slot, closed after a grace
        self._map: Optional[SlotMap] = None
        self._map_lock = threading.Lock()
        self._stale_map = False  # owners changed since entries were last checked
        self._push_handlers: list[Callable[..., None]] = []
        self._disconnect_handlers: list[Callable[..., None]] = []
        self._fork_handlers: list[Callable[[], None]] = []
        self._connect_commands: list[tuple[tuple[Arg, ...], bool]] = []
        self._forked_in = 0
        self._closed = False
        #: Redirections and retries followed, by reply code (MOVED, ASK, TRYAGAIN, ...).
        self.redirections: dict[str, int] = {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.primaries)} primaries"
        seeds = ",".join(f"{host}:{port}" for host, port in self._seeds)
        return f"<{type(self).__name__} {seeds} {state}>"

    # -- what the shared algorithm asks of a transport -----------------------

    @property
    def connected(self) -> bool:
        return any(node.connected for node in list(self._nodes.values()))

    @property
    def server_version(self) -> Optional[tuple[int, ...]]:
        for node in list(self._nodes.values()):
            if node.server_version is not None:
                return node.server_version
        return None

    @property
    def server_name(self) -> Optional[str]:
        for node in list(self._nodes.values()):
            if node.server_name is not None:
                return node.server_name
        return None

    def add_push_handler(self, handler: Callable[..., None]) -> None:
        """``handler(push, link)``: ``link`` is the node link it came through."""
        self._push_handlers.append(handler)

    def add_disconnect_handler(self, handler: Callable[..., None]) -> None:
        """``handler(cause, still_good)``: drop what ``still_good(link, key)`` refuses."""
        self._disconnect_handlers.append(handler)

    def add_fork_handler(self, handler: Callable[[], None]) -> None:
        self._fork_handlers.append(handler)

    def add_connect_command(self, *args: Arg, optional: bool = False) -> None:
        self._connect_commands.append((args, optional))
        for node in list(self._nodes.values()):
            node.add_connect_command(*args, optional=optional)

    def submit_nowait(self, request: Request) -> bool:
        """Queue on live links without connecting; False unless every part went."""
        sent = True
        for address, part in self.plan(request):
            node = self._nodes.get(address)
            sent = node is not None and node.submit_nowait(part) and sent  # type: ignore[attr-defined]
        return sent

    # -- routing ---------------------------------------------------------------

    @property
    def primaries(self) -> list[Address]:
        slot_map = self._map
        return [] if slot_map is None else list(slot_map.primaries)

    def address_of(self, key: Optional[str | bytes]) -> Address:
        """The node for ``key``: its slot's owner; keyless (or an unowned slot):
        the first primary, else the first seed."""
        slot_map = self._map
        if slot_map is not None:
            if key is not None:
                owner = slot_map.owners[key_slot(key)]
                if owner is not None:
                    return owner
            if slot_map.primaries:
                return slot_map.primaries[0]
        return self._seeds[0]

    def plan(self, request: Request) -> list[tuple[Address, Request]]:
        """Where ``request`` goes: one request per node (a batch split by node),
        each part routed so that it follows redirections."""
        if not isinstance(request, Batch):  # the common case, without the grouping
            if request.route is None:
                request.route = _Routing(self, request)
            return [(self.address_of(request.key), request)]
        parts = request.sendable_parts()
        groups: dict[Address, list[Request]] = {}
        for part in parts:
            if part.route is None:
                part.route = _Routing(self, part)
            groups.setdefault(self.address_of(part.key), []).append(part)
        return [(address, group[0] if len(group) == 1 else Batch(group))
                for address, group in groups.items()]

    def refresh_interval(self) -> float:
        """How long the refresher may wait: short while a primary is out of reach."""
        return REFRESH_FAILING if any(map(self._failing, self.primaries)) else REFRESH_INTERVAL

    def each_primary(self, args: tuple[Arg, ...]) -> dict[Address, Request]:
        """One request of the command ``args`` per primary (``call_each_primary``)."""
        return {address: Request(encode_command(*args)) for address in self.primaries}

    def reachable(self, key: str) -> bool:
        """Whether ``key``'s node is not known to be failing (a marker's home)."""
        node = self._nodes.get(self.address_of(key))
        return node is None or node.connected or not node.failing

    def still_good(self, link: Any, key: str) -> bool:
        """Whether an entry read through ``link`` may be served for ``key``: the
        link lives and its node owns the key's slot."""
        if link is None or not link.alive:
            return False
        options: ConnectionOptions = link.owner.options
        return (options.host, options.port) == self.address_of(key)

    # -- nodes -------------------------------------------------------------------

    def _new_node(self, options: ConnectionOptions) -> N:
        raise NotImplementedError

    def node(self, address: Address) -> N:
        """The connection to ``address``, made (not connected) on first need."""
        node = self._nodes.get(address)
        if node is None:
            with self._map_lock:
                node = self._nodes.get(address)
                if node is None:
                    if self._closed:
                        raise ConnectionError("the client is closed")
                    node = self._new_node(self.options.replace(host=address[0], port=address[1]))
                    for args, optional in self._connect_commands:
                        node.add_connect_command(*args, optional=optional)
                    node.add_push_handler(self._push_handler(node))
                    node.add_disconnect_handler(lambda cause: self._node_lost(cause))
                    node.add_fork_handler(self._forked)
                    self._nodes[address] = node
        return node

    def _push_handler(self, node: N) -> Callable[[Push], None]:
        """Hands a node's pushes on with the link they came through."""
        def pushed(push: Push) -> None:
            link = node.link
            for handler in self._push_handlers:
                handler(push, link)

        return pushed

    def _node_lost(self, cause: BaseException) -> None:
        self._tell_handlers(cause)
        self.want_refresh()

    def _tell_handlers(self, cause: BaseException) -> None:
        for handler in self._disconnect_handlers:
            try:
                handler(cause, self.still_good)
            except Exception:  # one handler's bug must not hide the loss from the others
                log.exception("disconnect handler failed")

    def _forked(self) -> None:
        if self._forked_in != os.getpid():  # once per fork, whichever node runs first
            self._forked_in = os.getpid()
            self._map_lock = threading.Lock()
            self.after_fork()
            for handler in self._fork_handlers:
                handler()

    def after_fork(self) -> None:
        """In a forked child, before the nodes' links are dropped: replace what the
        parent's threads may have held, and forget its background work."""

    # -- the slot map -------------------------------------------------------------

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED``: the slot's owner now, until the refresh it asks for."""
        slot_map = self._map
        if slot_map is not None and slot_map.owners[slot] != address:
            slot_map.owners[slot] = address
            if address not in slot_map.primaries:
                slot_map.primaries.append(address)
            self._stale_map = True
        self.want_refresh()

    def want_refresh(self) -> None:
        """Ask the refresher for a refresh now (the slot map may be wrong)."""
        raise NotImplementedError

    def resend(self, request: Request, address: Address, delay: float) -> None:
        """Send ``request`` to ``address`` after ``delay`` seconds, without waiting."""
        raise NotImplementedError

    def refresh_candidates(self) -> list[Address]:
        """Whom to ask for the slot map, in order: the known primaries, then the
        seeds; each is asked ``QUERIES`` in turn until one gives a map."""
        candidates = list(dict.fromkeys([*self.primaries, *self._seeds]))
        return sorted(candidates, key=self._failing)  # a dead node last: it may hold us up

    def _failing(self, address: Address) -> bool:
        node = self._nodes.get(address)
        return node is not None and node.failing

    def refreshing(self) -> Generator[tuple[Address, tuple[str, ...]], Any, None]:
        """A refresh of the slot map, as a conversation: yields ``(node, query)`` and
        is sent the reply (an error reply, or the failure, as an exception value);
        returns once the map is known, raises ConnectionError if no node told."""
        errors: list[BaseException] = []
        for address in self.refresh_candidates():
            for query in QUERIES:
                reply = yield address, query
                if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                    errors.append(reply)
                    break
                learnt = self.learn(address, query, reply)
                if learnt:
                    return
                if learnt is None:
                    break
        raise self.refused(errors)

    def learn(self, address: Address, query: tuple[str, ...], reply: Any) -> Optional[bool]:
        """Take an answer to a refresh query: True when the map is now known,
        False to try the next query of this node, None to go to the next node."""
        if isinstance(reply, ResponseError):
            if _NOT_A_CLUSTER in str(reply) and (self._detect or self._map is None):
                if not self._detect:
                    raise ConnectionError(f"{address[0]}:{address[1]} is not in cluster mode")
                self.apply(SlotMap.single(address))  # several seeds, one plain server
                return True
            return False if query[1] == "SHARDS" else None
        if isinstance(reply, BaseException):
            return None
        try:
            new = (SlotMap.from_shards(reply, address, self.options.ssl) if query[1] == "SHARDS"
                   else SlotMap.from_slots(reply, address))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            log.warning("cannot read %s from %s:%s: %s", " ".join(query), *address, exc)
            return None
        if not new.primaries:
            return None  # a node that has not joined the cluster yet
        self.apply(new)
        return True

    def apply(self, new: SlotMap) -> None:
        """Use ``new``; if any owner changed, drop the entries it condemns, and
        close the links to nodes that own nothing now."""
        with self._map_lock:
            old, self._map = self._map, new
            changed = self._stale_map or (old is not None and old.owners != new.owners)
            self._stale_map = False
            gone = [address for address in self._nodes if address not in new.primaries]
        if changed:
            self._tell_handlers(ConnectionError("the cluster's slot map changed"))
        for address in gone:
            self._retire(address)

    def _retire(self, address: Address) -> None:
        """Forget the connection to a node that owns no slot (closed by the subclass)."""
        raise NotImplementedError

    def refused(self, errors: list[BaseException]) -> ConnectionError:
        seeds = ", ".join(f"{host}:{port}" for host, port in self._seeds)
        error = ConnectionError(f"no node of the cluster at {seeds} gave its slot map"
                                + (f": {errors[-1]}" if errors else ""))
        if errors:
            error.__cause__ = errors[-1]
        return error

