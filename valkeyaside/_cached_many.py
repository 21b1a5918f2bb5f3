"""``@client.cached_many(ttl, key=...)``: a function of many ids kept through ``get_many``.

The function takes a list of ids and returns a mapping of (some of) them to
their values; the wrapper takes any iterable of ids and returns
``{id: value or None}`` in the order given. Each id has a key of its own:

- a format template with one field, which the id fills: ``"product:{}"``,
  ``"product:{0}"`` or ``"product:{product_id}"`` (a format spec or an
  attribute of the id, ``"product:{.sku}"``, is allowed too);
- or a callable taking one id and returning its key;
- or, when omitted, ``module.qualname:`` followed by the ``repr`` of the id
  (``"app.shop.load_products:42"``). Give a template when an id's ``repr``
  is not stable.

A call is one ``get_many``: the ids whose keys are cached locally cost no
round trip, and the function runs once, with exactly the ids whose keys
this call locked (as a ``get_many`` loader, it runs again only for ids whose
holder died or gave up while this call waited for them); an id it leaves out
is stored as None (negative caching). Two different ids that
make one key are refused (``ValueError``) before anything is sent: their
values could not be told apart.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Awaitable, Callable, Optional, Protocol, TypeVar, Union

from ._aside import Seconds, Value, seconds
from ._cached import KEYS_KEPT, Conversions, checked_key, dressed, plain, qualified_name

__all__ = ["AsyncCachedManyFunction", "CachedManyFunction", "cached_many", "cached_many_async"]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
ManyKeySpec = Union[str, Callable[[Any], str], None]


def id_key_maker(func: Callable[..., Any], key: ManyKeySpec) -> Callable[[Any], str]:
    """``make(id) -> str`` for ``func``'s ids (see the module's doc); a template
    that has not exactly one field is refused now, not at the first call."""
    if callable(key):
        custom = key

        def from_callable(id_: Any) -> str:
            return checked_key(func, custom(id_))

        return from_callable
    if key is None:
        prefix = f"{func.__module__}.{qualified_name(func)}:"
        return lambda id_: prefix + repr(id_)
    if not isinstance(key, str):
        raise TypeError("key must be a format string, a callable, or None")
    fields = [name for _, name, _, _ in string.Formatter().parse(key) if name is not None]
    if len(fields) != 1:
        raise ValueError(f"the key template {key!r} must have exactly one field, which the id "
                         f"fills (such as 'product:{{}}'); it has {len(fields)}")
    # The field's own name: before any attribute or index of the id it asks for.
    name = fields[0].partition(".")[0].partition("[")[0]
    if name in ("", "0"):
        return key.format
    return lambda id_: key.format_map({name: id_})


class _ManyCalls(Conversions):
    """What a function decorated with ``cached_many`` keeps, and its calls."""

    def __init__(self, client: Any, func: Callable[..., Any], ttl: Seconds, key: ManyKeySpec,
                 serializer: Optional[Callable[[Any], Value]],
                 deserializer: Optional[Callable[[Value], Any]]) -> None:
        super().__init__(serializer, deserializer)
        self.client = client
        self.func = func
        self.name = qualified_name(func)
        seconds(ttl, "ttl")  # refused now, not at the first call
        self.ttl = ttl
        self.key = id_key_maker(func, key)
        # The keys of str and int ids, remembered (making one from a template
        # costs several times the lookup). A key function may depend on more
        # than the id: it is asked every time.
        self.known: Optional[dict[Any, str]] = None if callable(key) else {}

    def _remembered(self, id_: Any) -> str:
        """The key of a str or int id, made once."""
        known = self.known
        assert known is not None
        key = known.get(id_)
        if key is None:
            if len(known) >= KEYS_KEPT:
                known.clear()
            key = known[id_] = self.key(id_)
        return key

    def keys_of(self, ids: Iterable[Any]) -> tuple[list[tuple[Any, str]], dict[str, Any]]:
        """``([(id, its key)] in order, {key: its id})``; duplicates are allowed,
        two different ids of one key are refused."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{self.name} takes an iterable of ids, not one "
                            f"{type(ids).__name__} (wrap a single id in a list)")
        listed = list(ids)
        if self.known is not None and plain(listed):
            # Only str and int ids: equal ones make one key (1.0 and True, equal
            # to 1, would not), so a remembered key is looked up by the id.
            known = self.known
            try:
                pairs = [(id_, known[id_]) for id_ in listed]
            except KeyError:
                pairs = [(id_, self._remembered(id_)) for id_ in listed]
        else:
            make = self.key
            pairs = [(id_, make(id_)) for id_ in listed]
        id_of: dict[str, Any] = {}
        for id_, key in pairs:
            first = id_of.setdefault(key, id_)
            if first is not id_ and first != id_:
                raise ValueError(f"the ids {first!r} and {id_!r} of {self.name} "
                                 f"make one key, {key!r}")
        return pairs, id_of

    def by_key(self, missing: list[str], id_of: dict[str, Any], got: Any) -> dict[str, Any]:
        """The function's ``{id: value}`` for the ids of ``missing``, as a
        ``get_many`` loader's ``{key: stored value}``."""
        if not isinstance(got, Mapping):
            raise TypeError(f"{self.name} must return a mapping of ids to values, "
                            f"not {type(got).__name__}")
        return {key: self.stored(got.get(id_of[key])) for key in missing}

    def by_id(self, pairs: list[tuple[Any, str]],
              raw: dict[str, Optional[Value]]) -> dict[Any, Any]:
        """``get_many``'s ``{key: value}`` as ``{id: value}``, in the order of ``pairs``."""
        if self.deserializer is None:
            return {id_: raw[key] for id_, key in pairs}
        return {id_: self.returned(raw[key]) for id_, key in pairs}

    def call(self, ids: Iterable[Any]) -> dict[Any, Any]:
        pairs, id_of = self.keys_of(ids)
        func = self.func

        def load(missing: list[str]) -> dict[str, Any]:
            return self.by_key(missing, id_of, func([id_of[key] for key in missing]))

        return self.by_id(pairs, self.client.get_many(list(id_of), self.ttl, load))

    async def call_async(self, ids: Iterable[Any]) -> dict[Any, Any]:
        pairs, id_of = self.keys_of(ids)
        func = self.func

        async def load(missing: list[str]) -> dict[str, Any]:
            got = func([id_of[key] for key in missing])
            if inspect.isawaitable(got):
                got = await got
            return self.by_key(missing, id_of, got)

        return self.by_id(pairs, await self.client.get_many(list(id_of), self.ttl, load))

    def invalidate(self, ids: Iterable[Any]) -> int:
        """Delete the keys of these ids; how many there were."""
        return self.client.delete(*self.keys_of(ids)[1])  # type: ignore[no-any-return]

    async def invalidate_async(self, ids: Iterable[Any]) -> int:
        return await self.client.delete(*self.keys_of(ids)[1])  # type: ignore[no-any-return]

    def uncached(self, ids: Iterable[Any]) -> Any:
        """Call the function itself, bypassing the cache."""
        return self.func(list(ids))


class CachedManyFunction(Protocol[K, R]):
    """What ``@client.cached_many`` makes of a function of a list of ids: called
    with any iterable of ids (through the cache), plus ``key``, ``invalidate``
    and ``uncached``."""

    def __call__(self, ids: Iterable[K]) -> dict[K, Optional[R]]: ...

    def key(self, id: K) -> str:
        """The key of one id."""

    def invalidate(self, ids: Iterable[K]) -> int:
        """Delete the keys of these ids."""

    def uncached(self, ids: Iterable[K]) -> Mapping[K, Optional[R]]:
        """Call the function itself, bypassing the cache."""


class AsyncCachedManyFunction(Protocol[K, R]):
    """What ``@async_client.cached_many`` makes of a function: awaited, as is
    ``invalidate``; ``key`` and ``uncached`` as on the threaded client."""

    async def __call__(self, ids: Iterable[K]) -> dict[K, Optional[R]]: ...

    def key(self, id: K) -> str:
        """The key of one id."""

    async def invalidate(self, ids: Iterable[K]) -> int:
        """Delete the keys of these ids."""

    def uncached(self, ids: Iterable[K]) -> Any:
        """Call the function itself, bypassing the cache."""


def cached_many(client: Any, func: Callable[[list[K]], Mapping[K, Optional[R]]], ttl: Seconds,
                key: ManyKeySpec, serializer: Optional[Callable[[Any], Value]],
                deserializer: Optional[Callable[[Value], Any]]) -> CachedManyFunction[K, R]:
    """``func`` kept by the threaded ``client`` (see ``Client.cached_many``)."""
    calls = _ManyCalls(client, func, ttl, key, serializer, deserializer)

    def through_cache(ids: Iterable[Any]) -> dict[Any, Any]:
        return calls.call(ids)

    wrapped: CachedManyFunction[K, R] = dressed(through_cache, func, calls, calls.invalidate)
    return wrapped


def cached_many_async(
    client: Any, func: Callable[[list[K]], Awaitable[Mapping[K, Optional[R]]]], ttl: Seconds,
    key: ManyKeySpec, serializer: Optional[Callable[[Any], Value]],
    deserializer: Optional[Callable[[Value], Any]],
) -> AsyncCachedManyFunction[K, R]:
    """``func`` kept by the asyncio ``client`` (see ``AsyncClient.cached_many``)."""
    calls = _ManyCalls(client, func, ttl, key, serializer, deserializer)

    async def through_cache(ids: Iterable[Any]) -> dict[Any, Any]:
        return await calls.call_async(ids)

    wrapped: AsyncCachedManyFunction[K, R] = dressed(through_cache, func, calls,
                                                     calls.invalidate_async)
    return wrapped
