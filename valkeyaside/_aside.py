"""The cache-aside algorithm of SPEC.md, once, for both front ends.

``Aside.get`` is a generator of effects (see ``_effects``): the threaded
``Client`` drives it by blocking, the ``AsyncClient`` by awaiting. Only the
hit path is written in each front end, inline, because it must not pay for a
generator: a fresh local entry is returned before ``Aside`` is involved.

The rest: a tracked read; on a miss, the first caller locks the key with a
placeholder naming its marker and loads, and everyone else waits for the
invalidation that the fill (or the holder's death) causes.
"""

from __future__ import annotations

import codecs
import contextvars
import datetime
import logging
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from ._effects import Load, Park, Steps, receive_all, send_all
from .cache import TrackedCache, Waiter
from .errors import ConnectionError, TimeoutError, ValkeyError
from .lock import PLACEHOLDER_PREFIX, KeyGates, Locks, Marker, StartKeeper
from .resp3 import Arg, Request, encode_command
from .resp3._transport import Transport

__all__ = ["TOMBSTONE", "Aside", "Seconds", "Value", "override_cache_ttl", "seconds"]

log = logging.getLogger("valkeyaside")

Seconds = Union[int, float, datetime.timedelta]
Value = Union[str, bytes]

_PLACEHOLDER = PLACEHOLDER_PREFIX.encode()
_monotonic = time.monotonic
_INF = float("inf")
#: What a negative-cached key holds on the server: "the loader found nothing".
TOMBSTONE = b"\x00valkeyaside:none\x00"

#: Without tracking nothing pushes a change: waiters re-read after these pauses,
#: doubling from the first to the last.
POLL_FIRST = 0.005
POLL_MAX = 0.1
#: On a cluster, a waiter that cannot reach its holder's marker looks again after this.
MARKER_RETRY = 0.1

# Commands that would change the shared connection's state under every other
# caller (its db, its protocol, its tracking, a transaction or a subscription).
_TRANSACTION = "transactions would interleave with other callers on the shared connection"
_SUBSCRIPTION = "subscriptions are not supported on the cache connection"
_REFUSED = {
    "SELECT": "set db= on the client instead",
    "HELLO": "the connection must stay on RESP3",
    "AUTH": "set username=/password= on the client instead",
    "MULTI": _TRANSACTION,
    "EXEC": _TRANSACTION,
    "DISCARD": _TRANSACTION,
    "WATCH": _TRANSACTION,
    "UNWATCH": _TRANSACTION,
    "SUBSCRIBE": _SUBSCRIPTION,
    "PSUBSCRIBE": _SUBSCRIPTION,
    "SSUBSCRIBE": _SUBSCRIPTION,
    "UNSUBSCRIBE": _SUBSCRIPTION,
    "PUNSUBSCRIBE": _SUBSCRIPTION,
    "SUNSUBSCRIBE": _SUBSCRIPTION,
    "MONITOR": "MONITOR would take over the shared connection",
    "QUIT": "close the client instead",
    "SYNC": "replication would take over the shared connection",
    "PSYNC": "replication would take over the shared connection",
}
_REFUSED_CLIENT = {"TRACKING", "CACHING", "REPLY", "SETNAME"}

_NO_OVERRIDE: Any = object()
_OUTSIDE_LOADER: Any = object()
_cache_ttl_override: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "valkeyaside_cache_ttl_override", default=_OUTSIDE_LOADER
)


def override_cache_ttl(ttl: Seconds) -> None:
    """Inside a loader: store the value it returns for ``ttl`` instead of ``get``'s ttl."""
    if _cache_ttl_override.get() is _OUTSIDE_LOADER:
        raise RuntimeError("override_cache_ttl() works only inside a loader called by get()")
    _cache_ttl_override.set(seconds(ttl, "ttl"))


def seconds(value: Seconds, name: str) -> float:
    """``value`` as positive, finite seconds, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, datetime.timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise TypeError(f"{name} must be seconds (int or float) or a timedelta, "
                        f"not {type(value).__name__}")
    if not result > 0 or result == float("inf"):
        raise ValueError(f"{name} must be a positive, finite duration, not {value!r}")
    return result


def _millis(duration: float) -> int:
    return max(1, int(duration * 1000))


def _word(arg: object) -> str:
    """A command word, upper-cased, whatever form the encoder accepts it in."""
    if isinstance(arg, str):
        return arg.upper()
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("latin-1").upper()
    return ""


def _values_of(keys: list[str], mapping: Any) -> list[tuple[str, Any]]:
    """The values a ``get_many`` loader returned for ``keys``; a key it left out
    is None (negative caching)."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"the loader of get_many must return a mapping of keys to values, "
                        f"not {type(mapping).__name__}")
    return [(key, mapping.get(key)) for key in keys]


def command_name(args: tuple[Arg, ...]) -> str:
    """The upper-cased name of a command for ``execute``, refused with ValueError when
    it would change the connection that every caller shares."""
    if not args:
        raise TypeError("execute() needs a command")
    first = args[0]
    name = first.upper() if type(first) is str else _word(first)
    reason = _REFUSED.get(name)
    if reason is None and name == "CLIENT" and len(args) > 1 and (
        _word(args[1]) in _REFUSED_CLIENT
    ):
        reason = "it would change the connection that the cache depends on"
    if reason is not None:
        raise ValueError(f"execute({name}) is refused: {reason}")
    return name


class Aside:
    """The state and steps of cache-aside over one transport.

    ``new_waiter()`` makes a waiter that the calling thread or task can park
    on; ``start_keeper`` runs the marker's keep-alive in the background.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        new_waiter: Callable[[], Waiter],
        start_keeper: StartKeeper,
        client_ttl: Seconds,
        use_lua_lock: Optional[bool],
        encoding: Optional[str],
        cache_max_bytes: int,
        negative_ttl: Optional[Seconds],
        local_cache: bool,
    ) -> None:
        if encoding is not None:
            codecs.lookup(encoding)  # LookupError now rather than on the first get
        if use_lua_lock not in (None, True, False):
            raise TypeError("use_lua_lock must be None (chosen from the server), True or False")
        self.transport = transport
        #: Keys live on several nodes (a cluster): a command touches one key.
        self.sharded = bool(getattr(transport, "sharded", False))
        self.encoding = encoding
        self.client_ttl = seconds(client_ttl, "client_ttl")
        self.negative_ttl = None if negative_ttl is None else seconds(negative_ttl, "negative_ttl")
        self.new_waiter = new_waiter
        self.cache = TrackedCache(transport, cache_max_bytes, self.decode, bool(local_cache))
        marker = Marker(transport, self.client_ttl, start_keeper)
        self.locks = Locks(transport, marker, use_lua_lock, self.sharded)
        self.gates = KeyGates()
        transport.add_fork_handler(self.gates.after_fork)
        self.loads = 0
        self.lock_waits = 0
        self.takeovers = 0

    # -- get -----------------------------------------------------------------

    def prepare(self, key: str, ttl: Seconds, fn: Optional[Callable[..., Any]],
                timeout: Optional[Seconds]) -> tuple[float, float]:
        """Check ``get``'s arguments before anything is sent: (ttl in s, deadline)."""
        if type(key) is not str:
            raise TypeError(f"key must be str, not {type(key).__name__}")
        ttl_s = seconds(ttl, "ttl")
        limit = ttl_s if timeout is None else min(seconds(timeout, "timeout"), ttl_s)
        if fn is not None and not callable(fn):
            raise TypeError("fn must be callable (or None)")
        return ttl_s, _monotonic() + limit

    def get(self, key: str, ttl: float, fn: Optional[Callable[[str], Any]],
            deadline: float) -> Steps[Any]:
        """What ``get`` returns for ``key``: the local entry, the server's value, or
        ``fn(key)``'s, waiting (up to ``deadline``) while another caller loads it."""
        cache = self.cache
        entries = cache.store.entries
        polls = 0
        while True:
            entry = entries.get(key)  # after a wake: often there now (a fill handed over)
            if entry is not None and entry.plain and entry.expires > _monotonic():
                entry.used = True
                cache.hits += 1
                return entry.value
            waiter = self.new_waiter()
            cache.waiters.watch(waiter, key)  # before reading: no invalidation is missed
            try:
                entry = yield from cache.read(key, ttl, self._remaining(deadline, key))
                if entry.plain:
                    return entry.value
                wait_until = min(deadline, entry.expires)
                raw = entry.raw
                if raw is None:
                    if fn is None:
                        return None
                    loaded, result = yield from self._load(key, ttl, fn, deadline)
                    if loaded:
                        return result
                    raw = result  # someone else's placeholder, or a value that appeared
                    if not raw.startswith(_PLACEHOLDER):
                        return self.decode(raw)[0]
                if not cache.local_cache:  # nothing will push a change: poll, backing off
                    wait_until = min(wait_until, _monotonic() + min(POLL_FIRST * 2 ** polls,
                                                                    POLL_MAX))
                    polls += 1
                yield from self._await_holder(key, raw.decode(), waiter, wait_until, deadline)
            finally:
                cache.waiters.forget(waiter)

    def hits(self, keys: list[str], ttl: Seconds,
             timeout: Optional[Seconds]) -> Optional[dict[str, Any]]:
        """``get_many``'s answer when every key has a fresh local entry (and the
        arguments are of the common types), else None: no generator, no copy."""
        if timeout is not None or not (ttl.__class__ is int or ttl.__class__ is float) or not (
            0 < ttl < _INF
        ):
            return None
        entries = self.cache.store.entries
        now = _monotonic()
        found = {}
        for key in keys:
            entry = entries.get(key)
            if entry is None or not entry.plain or entry.expires <= now or (
                key.__class__ is not str
            ):
                return None
            entry.used = True
            found[key] = entry.value
        self.cache.hits += len(keys)
        return found

    @staticmethod
    def key_list(keys: Iterable[str]) -> list[str]:
        """``get_many``'s keys as a list (read once), refusing a lone str."""
        if isinstance(keys, (str, bytes)):
            raise TypeError(f"keys must be an iterable of str, not {type(keys).__name__}")
        return keys if type(keys) is list else list(keys)

    def prepare_many(self, keys: list[str], ttl: Seconds, fn: Optional[Callable[..., Any]],
                     timeout: Optional[Seconds]) -> tuple[list[str], float, float]:
        """Check ``get_many``'s arguments before anything is sent:
        (the keys, in order and without repeats; ttl in s; deadline)."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            if type(key) is not str:
                raise TypeError(f"keys must be str, not {type(key).__name__}")
        ttl_s, deadline = self.prepare("", ttl, fn, timeout)
        return unique, ttl_s, deadline

    def get_many(self, keys: list[str], ttl: float, fn: Optional[Callable[[list[str]], Any]],
                 deadline: float) -> Steps[dict[str, Any]]:
        """``get`` for many keys at once (distinct, from ``prepare_many``).

        Local entries answer at once; the other keys are read in one write,
        the missing ones locked in one write, loaded by one ``fn(missing)``
        call and filled in one write. Keys that others hold are awaited
        together (one wait on every key and holder's marker), dead holders
        taken over, and the keys read again in one write. ``fn`` is called
        again only for keys whose holder died or gave up during the call.
        """
        what = f"get_many({len(keys)} keys)"
        cache = self.cache
        found: dict[str, Any] = {}
        pending = keys
        polls = 0
        while pending:
            waiter = self.new_waiter()
            cache.waiters.watch_many(waiter, pending)  # before reading: no invalidation is missed
            try:
                entries = yield from cache.read_many(pending, ttl,
                                                     self._remaining(deadline, what=what))
                missing: list[str] = []
                held: dict[str, str] = {}
                for key in pending:
                    entry = entries[key]
                    if entry.plain:
                        found[key] = entry.value
                    elif entry.raw is not None:
                        held[key] = entry.raw.decode()
                    elif fn is None:
                        found[key] = None
                    else:
                        missing.append(key)
                wait_until = min([deadline, *(entries[key].expires for key in held)])
                if held:  # a dead holder's keys are taken over now, to load with the rest
                    wait_until, freed = yield from self._check_holders(held, waiter, wait_until,
                                                                       deadline, what)
                    if fn is None:
                        found.update(dict.fromkeys(freed))
                    else:
                        missing += freed
                if missing:
                    assert fn is not None
                    values, others = yield from self._load_many(missing, ttl, fn, deadline, what)
                    found.update(values)
                    mine = self.locks.marker.current
                    for key in [key for key, holder in others.items() if holder == mine]:
                        # this client loads it (maybe without a round trip since our
                        # read): its fill wakes the waiter; a re-read could spin
                        held[key] = others.pop(key)
                    if others:  # locked meanwhile: read them and their holders' markers first
                        pending = [*held, *others]
                        continue
                if not held:
                    break
                if not cache.local_cache:  # nothing will push a change: poll, backing off
                    wait_until = min(wait_until, _monotonic() + min(POLL_FIRST * 2 ** polls,
                                                                    POLL_MAX))
                    polls += 1
                self.lock_waits += 1
                woken = yield Park(waiter, wait_until)
                if not woken and _monotonic() >= deadline:
                    raise TimeoutError(f"{what}: {len(held)} still locked at the deadline")
                pending = list(held)
            finally:
                cache.waiters.forget(waiter)
        return {key: found[key] for key in keys}

    def _check_holders(self, held: dict[str, str], waiter: Waiter, wait_until: float,
                       deadline: float, what: str) -> Steps[tuple[float, list[str]]]:
        """Read the holders' markers (in one write) and take over the keys of dead
        ones, which leave ``held``: (when the live markers expire, the keys freed)."""
        cache = self.cache
        markers = list(dict.fromkeys(held.values()))
        for marker in markers:
            cache.waiters.watch(waiter, marker)
        try:
            found = yield from cache.read_many(markers, self.client_ttl,
                                               self._remaining(deadline, what=what))
        except ConnectionError:
            if not self.sharded:
                raise
            # A marker's cluster node is out of reach: no holder is known dead.
            return min(wait_until, _monotonic() + MARKER_RETRY), []
        freed = []
        for key, placeholder in list(held.items()):
            holder = found[placeholder]
            if holder.raw is None:  # its holder's marker expired: the holder is gone
                self.takeovers += 1
                yield from self.locks.release(key, placeholder,
                                              self._remaining(deadline, what=what))
                cache.drop([key])
                del held[key]
                freed.append(key)
            else:
                wait_until = min(wait_until, holder.expires)
        return wait_until, freed

    def _load_many(self, keys: list[str], ttl: float, fn: Callable[[list[str]], Any],
                   deadline: float, what: str) -> Steps[tuple[dict[str, Any], dict[str, str]]]:
        """Lock ``keys`` in one write and load the ones we got with one ``fn`` call:
        (values found or loaded, {key: placeholder} of keys someone else holds)."""
        marker = yield from self.locks.marker.ensure(self._remaining(deadline, what=what))
        turns = [f"{marker}\x00{key}" for key in keys]
        busy = self.gates.enter_many(turns)
        to_lock = keys
        held: dict[str, str] = {}
        if busy:  # this client loads them already: wait for those fills
            held = {key: marker for key, turn in zip(keys, turns) if turn in busy}
            to_lock = [key for key in keys if key not in held]
            turns = [turn for turn in turns if turn not in busy]
        values: dict[str, Any] = {}
        try:
            if not to_lock:
                return values, held
            replies = yield from self.locks.acquire_many(to_lock, marker, _millis(ttl),
                                                         self._remaining(deadline, what=what))
            locked = []
            for key, reply in zip(to_lock, replies):
                if reply is None:
                    locked.append(key)
                elif isinstance(reply, bytes) and reply.startswith(_PLACEHOLDER):
                    held[key] = reply.decode()
                else:
                    values[key] = self.decode(reply)[0]  # type: ignore[arg-type]
            if locked:
                values.update((yield from self._load_locked(
                    locked, marker, ttl, fn, list(locked), lambda mapping: _values_of(
                        locked, mapping))))
            return values, held
        finally:
            self.gates.leave_many(turns)

    def _await_holder(
        self, key: str, placeholder: str, waiter: Waiter, wait_until: float, deadline: float
    ) -> Steps[None]:
        """Someone holds ``key``: wait for its fill, or take over if it died.

        Invalidations of the key (filled, released) or of the holder's marker
        (refreshed, expired) wake the waiter. It also wakes when the marker or
        the lock would expire, in case the server's expiry sent no push.
        """
        cache = self.cache
        cache.waiters.watch(waiter, placeholder)
        try:
            marker = yield from cache.read(placeholder, self.client_ttl,
                                           self._remaining(deadline, key))
        except ConnectionError:
            if not self.sharded:
                raise
            # The marker's cluster node is out of reach (failing over, say): the
            # holder is not known dead. Wait for the fill, and look again soon.
            self.lock_waits += 1
            yield Park(waiter, min(wait_until, _monotonic() + MARKER_RETRY))
            return
        if marker.raw is None:  # its holder's marker expired: the holder is gone
            self.takeovers += 1
            yield from self.locks.release(key, placeholder,
                                          self._remaining(deadline, key))
            cache.drop([key])  # don't wait for the push to forget the dead placeholder
            return
        self.lock_waits += 1
        woken = yield Park(waiter, min(wait_until, marker.expires))
        if not woken and _monotonic() >= deadline:
            raise TimeoutError(f"get({key!r}): still locked by {placeholder} at the deadline")

    def _remaining(self, deadline: float, key: str = "", what: str = "") -> float:
        """Seconds left before ``deadline`` (at most a socket timeout); once none are,
        TimeoutError naming ``what``, or else the ``get`` of ``key``."""
        remaining = deadline - _monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what or f'get({key!r})'} ran out of time")
        socket_timeout = self.transport.options.socket_timeout
        return remaining if socket_timeout is None else min(remaining, socket_timeout)

    def _load(self, key: str, ttl: float, fn: Callable[[str], Any],
              deadline: float) -> Steps[tuple[bool, Any]]:
        """Lock and load: ``(True, value)`` when we loaded, else ``(False, what we found)``."""
        marker = yield from self.locks.marker.ensure(self._remaining(deadline, key))
        turn = f"{marker}\x00{key}"
        if not self.gates.enter(turn):  # this client loads it already: wait for that fill
            return False, marker.encode()
        try:
            return (yield from self._load_in_turn(key, marker, ttl, fn, deadline))
        finally:
            self.gates.leave(turn)

    def _load_in_turn(
        self, key: str, marker: str, ttl: float, fn: Callable[[str], Any], deadline: float
    ) -> Steps[tuple[bool, Any]]:
        current = yield from self.locks.acquire(key, marker, _millis(ttl),
                                                self._remaining(deadline, key))
        if current is not None:
            return False, current
        values = yield from self._load_locked([key], marker, ttl, fn, key,
                                              lambda value: [(key, value)])
        return True, values[key]

    def _load_locked(
        self, keys: list[str], marker: str, ttl: float, fn: Callable[[Any], Any], arg: Any,
        values_of: Callable[[Any], list[tuple[str, Any]]],
    ) -> Steps[dict[str, Any]]:
        """We hold ``keys``: call ``fn(arg)``, check every value (``values_of`` pairs
        them with their keys), fill them all; on any failure release them all."""
        self.loads += 1
        try:
            token = _cache_ttl_override.set(_NO_OVERRIDE)
            try:
                loaded = yield Load(fn, arg)
                override = _cache_ttl_override.get()
            finally:
                _cache_ttl_override.reset(token)
            fills = []
            values = {}
            # How long a fill lasts, in ms: a loader's override, else ttl (or, for
            # None, negative_ttl when set). Worked out once for all the keys.
            if override is not _NO_OVERRIDE:
                ttl_ms = none_ms = _millis(override)
            else:
                ttl_ms = _millis(ttl)
                none_ms = ttl_ms if self.negative_ttl is None else _millis(self.negative_ttl)
            text = self.encoding is not None
            for key, value in values_of(loaded):  # every value checked before any fill
                data = self.encode_value(key, value)
                fills.append((key, data, ttl_ms if value is not None else none_ms))
                # What get returns: a str as it came (it encoded, so it decodes back).
                values[key] = value if text and type(value) is str else self.decode(data)[0]
            yield from self._fill(fills, marker, ttl)
        except GeneratorExit:  # abandoned: nothing may be awaited any more
            for key in keys:
                self.locks.release_soon(key, marker)
            raise
        except Exception:
            try:
                yield from self.locks.release_many(keys, marker)
            except ValkeyError as exc:  # they expire after ttl anyway
                log.warning("could not release the locks on %r: %s", keys, exc)
            raise
        return values

    def _fill(self, fills: list[tuple[str, bytes, int]], marker: str, ttl: float) -> Steps[None]:
        """Fill each ``(key, value, ttl_ms)`` in one write, and hand the values over
        to this client's waiters.

        A tracked read of the keys goes out in the same write, right behind the
        fills (the server runs them in order, so it reads what the fills left);
        its values are kept locally, and only then are this client's waiters of
        those keys woken, so they find them there instead of each waiting for a
        read. Where the locks fill several keys in one transaction, the read
        joins it (see ``FilledRead``): the values kept are the ones sent.
        """
        cache = self.cache
        keys = [key for key, _, _ in fills]
        cache.filling(keys)
        reads, unread = cache.reads_behind(keys, ttl)

        def unsent() -> None:
            cache.abandon_behind(reads)

        try:
            payload = self.locks.transaction_fill(fills, marker) if reads else None
            if payload is not None:
                yield from self.locks.fill_in(cache.filled_read(reads, fills, payload), fills,
                                              marker, unsent)
            else:
                yield from self.locks.fill_many(fills, marker, cache.read_form(reads), unsent)
        finally:
            if unread:  # no read of ours wakes their waiters
                cache.filled(unread)

    # -- values --------------------------------------------------------------

    def encode_value(self, key: str, value: object) -> bytes:
        """What the server stores for a loader's value; refuses what ``get`` could not
        return as it was given."""
        if value is None:
            return TOMBSTONE
        if isinstance(value, str):
            data = value.encode(self.encoding or "utf-8")
        elif isinstance(value, bytes):
            data = value
            if self.encoding is not None:
                try:
                    data.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    raise ValueError(
                        f"the loader for {key!r} returned bytes that are not valid "
                        f"{self.encoding}; use encoding=None for binary values"
                    ) from exc
        else:
            raise TypeError(
                f"the loader for {key!r} returned {type(value).__name__}: "
                "it must return str, bytes or None"
            )
        if data.startswith(_PLACEHOLDER):
            raise ValueError(f"the loader for {key!r} returned a value that begins with "
                             f"{PLACEHOLDER_PREFIX!r}, which marks a lock")
        if data == TOMBSTONE:
            raise ValueError(f"the loader for {key!r} returned the negative-cache marker")
        return data

    def decode(self, raw: Optional[bytes]) -> tuple[Any, bool]:
        """(what get returns, whether that is final) for what the server holds."""
        if raw is None or raw.startswith(_PLACEHOLDER):
            return raw, False  # absent, or locked: get must act
        if raw == TOMBSTONE:
            return None, True
        return (raw if self.encoding is None else raw.decode(self.encoding)), True

    # -- other commands --------------------------------------------------------

    def delete(self, keys: tuple[str, ...]) -> Steps[int]:
        """DEL the keys; they leave the local cache as soon as the reply arrives."""
        for key in keys:
            if type(key) is not str:
                raise TypeError(f"keys must be str, not {type(key).__name__}")
        if not keys:
            return 0
        # A cluster spreads keys over nodes: one DEL per key, all in one write.
        groups = [[key] for key in keys] if self.sharded else [list(keys)]
        requests = [Request(encode_command("DEL", *group), key=group[0],
                            on_reply=self._dropper(group)) for group in groups]
        yield from send_all(requests)
        replies = yield from receive_all(requests)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return sum(map(int, replies))

    def _dropper(self, keys: list[str]) -> Callable[[Request], None]:
        """An ``on_reply`` that forgets ``keys`` locally once the server answered."""
        return lambda _request: self.cache.drop(keys)

    # -- lifecycle -----------------------------------------------------------

    def stats(self, fast_hits: int) -> dict[str, Any]:
        """Counters since the client was made (approximate under heavy concurrency)."""
        cache = self.cache
        return {
            "hits": fast_hits + cache.hits,
            "misses": cache.misses,
            "loads": self.loads,
            "lock_waits": self.lock_waits,
            "takeovers": self.takeovers,
            "invalidations": cache.invalidations,
            "flushes": cache.flushes,
            "evictions": cache.store.evictions,
            "entries": len(cache.store.entries),
            "bytes": cache.store.bytes,
            "local_cache": cache.local_cache,
        }

    def close(self) -> Steps[None]:
        """Stop the marker's keeper and delete the marker (the caller closes the link)."""
        yield from self.locks.marker.close()
