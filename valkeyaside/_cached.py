"""``@client.cached(ttl, key=...)``: a function's results kept through ``get``.

The wrapped function becomes the loader of its own key, so a miss is
stampede-proof like any ``get``. The key is:

- a format template over the bound arguments, defaults applied:
  ``key="user:{user_id}"``;
- or a callable taking the function's arguments and returning the key;
- or, when omitted, ``module.qualname:`` followed by the ``repr`` of each
  bound argument, comma-separated (``"app.users.load_user:42"``). Give a
  template when an argument's ``repr`` is not stable (objects without
  their own ``__repr__``).
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Iterable,
    NamedTuple,
    Optional,
    Protocol,
    TypeVar,
    Union,
)

from ._aside import Seconds, Value, seconds

__all__ = [
    "KEYS_KEPT", "AsyncCachedFunction", "CachedFunction", "Conversions", "cached",
    "cached_async", "checked_key", "dressed", "key_maker", "plain", "qualified_name",
]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    P = ParamSpec("P")
elif sys.version_info >= (3, 10):
    from typing import ParamSpec

    P = ParamSpec("P")
else:  # no ParamSpec before 3.10 (and no dependency to bring it): a stand-in at run time
    P = TypeVar("P")
KeySpec = Union[str, Callable[..., str], None]

_PLAIN = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_monotonic = time.monotonic
#: How many positional calls' keys a decorated function remembers (then starts over).
KEYS_KEPT = 4096
#: Arguments whose equal values make equal keys: the only ones a key is remembered by.
_PLAIN_TYPES = frozenset({str, int})
#: No first argument was given (``None`` may be one).
_NO_ARGUMENT: Any = object()


def plain(args: Iterable[Any]) -> bool:
    """Whether a call's key may be remembered by its arguments: only str and int
    ones, whose equal values make the same key (1 == 1.0 == True, 0.0 == -0.0,
    and an object equal to itself may change, yet their keys differ)."""
    return all(map(_PLAIN_TYPES.__contains__, map(type, args)))


def qualified_name(func: Callable[..., Any]) -> str:
    """``func``'s qualified name (a callable object's is its class's)."""
    return getattr(func, "__qualname__", None) or type(func).__qualname__


def checked_key(func: Callable[..., Any], made: object) -> str:
    """What a key function of ``func`` made, refused unless it is a str."""
    if type(made) is not str:
        raise TypeError(f"the key function of {qualified_name(func)} returned "
                        f"{type(made).__name__}, not str")
    return made


def key_maker(func: Callable[..., Any], key: KeySpec) -> Callable[[tuple[Any, ...],
                                                                  dict[str, Any]], str]:
    """``make(args, kwargs) -> str`` for ``func``'s calls (see the module's doc)."""
    if callable(key):
        custom = key

        def from_callable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return checked_key(func, custom(*args, **kwargs))

        return from_callable
    if key is not None and not isinstance(key, str):
        raise TypeError("key must be a format string, a callable, or None")
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    order = [p.name for p in params]
    names = set(order)
    positional = [p.name for p in params if p.kind in _PLAIN]
    defaults = {p.name: p.default for p in params if p.default is not p.empty}
    # No *args, **kwargs or positional-only parameter: bind without inspect (fast).
    simple = all(p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                            inspect.Parameter.KEYWORD_ONLY) for p in params)

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if simple and len(args) <= len(positional):
            bound = dict(defaults)
            bound.update(zip(positional, args))
            if not kwargs or not kwargs.keys() & set(positional[:len(args)]):
                bound.update(kwargs)
                if bound.keys() == names:  # every parameter, and no stranger
                    return bound
        checked = signature.bind(*args, **kwargs)  # the TypeError a wrong call deserves
        checked.apply_defaults()
        return checked.arguments

    if key is None:
        prefix = f"{func.__module__}.{func.__qualname__}:"

        def default(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            bound = arguments(args, kwargs)
            return prefix + ",".join(repr(bound[name]) for name in order)

        return default
    template = key

    def from_template(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return template.format_map(arguments(args, kwargs))

    return from_template


class Conversions:
    """A decorator's ``serializer``/``deserializer``: what is stored for a
    function's value, and what a call returns for a stored one (None is
    neither: it is a tombstone)."""

    def __init__(self, serializer: Optional[Callable[[Any], Value]],
                 deserializer: Optional[Callable[[Value], Any]]) -> None:
        self.serializer = serializer
        self.deserializer = deserializer

    def stored(self, obj: Any) -> Optional[Value]:
        return obj if obj is None or self.serializer is None else self.serializer(obj)

    def returned(self, raw: Optional[Value]) -> Any:
        return raw if raw is None or self.deserializer is None else self.deserializer(raw)


class _Calls(Conversions):
    """What a decorated function keeps: its key maker, its remembered keys, and
    the slow paths of its calls (the fast one is a closure: see ``cached``)."""

    def __init__(self, client: Any, func: Callable[..., Any], ttl: Seconds, key: KeySpec,
                 serializer: Optional[Callable[[Any], Value]],
                 deserializer: Optional[Callable[[Value], Any]]) -> None:
        super().__init__(serializer, deserializer)
        self.client = client
        self.func = func
        seconds(ttl, "ttl")  # refused now, not at the first call
        self.ttl = ttl
        self._make_key = key_maker(func, key)
        self.keys: dict[tuple[Any, ...], str] = {}  # positional calls' keys, remembered
        self.lone: dict[Any, str] = {}  # those of one-argument calls, by the argument
        # A key function may depend on more than the arguments: it is asked every time.
        self._remember = not callable(key)

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The key a call with these arguments reads."""
        if kwargs or not self._remember or not plain(args):
            return self._make_key(args, kwargs)
        # One argument: remembered by itself, which hashes faster than a tuple
        # (only str and int ones: 1 and "1" are told apart, True never comes).
        keys: dict[Any, str] = self.lone if len(args) == 1 else self.keys
        by = args[0] if len(args) == 1 else args
        try:
            return keys[by]
        except KeyError:
            pass
        if len(keys) >= KEYS_KEPT:
            keys.clear()
        made = keys[by] = self._make_key(args, kwargs)
        return made

    def uncached(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself, bypassing the cache."""
        return self.func(*args, **kwargs)

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call of the function through ``Client.get`` (the loader: the function)."""
        key = self.key(*args, **kwargs)
        client = self.client
        raw = client.get(key, self.ttl)
        if raw is None:  # absent (or None, remembered): the same get, with the loader
            func = self.func

            def load(_key: str) -> Optional[Value]:
                return self.stored(func(*args, **kwargs))

            raw = client.get(key, self.ttl, load)
        return self.returned(raw)

    def invalidate(self, *args: Any, **kwargs: Any) -> int:
        """Delete the key of a call with these arguments."""
        return self.client.delete(self.key(*args, **kwargs))  # type: ignore[no-any-return]

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call through ``AsyncClient.get``; the function may be an ``async def``."""
        key = self.key(*args, **kwargs)
        client = self.client
        raw = await client.get(key, self.ttl)
        if raw is None:
            func = self.func

            async def load(_key: str) -> Optional[Value]:
                obj = func(*args, **kwargs)
                if inspect.isawaitable(obj):
                    obj = await obj
                return self.stored(obj)

            raw = await client.get(key, self.ttl, load)
        return self.returned(raw)

    async def invalidate_async(self, *args: Any, **kwargs: Any) -> int:
        return await self.client.delete(self.key(*args, **kwargs))  # type: ignore[no-any-return]


class CachedFunction(Protocol[P, R_co]):
    """What ``@client.cached`` makes of a function: called as it was (through the
    cache), plus ``key``, ``invalidate`` and ``uncached``."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key a call with these arguments reads."""

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Delete the key of a call with these arguments."""

    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Call the function itself, bypassing the cache."""


class AsyncCachedFunction(Protocol[P, R_co]):
    """What ``@async_client.cached`` makes of a function: awaited as it was, plus
    ``key``, an awaited ``invalidate``, and ``uncached``."""

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key a call with these arguments reads."""

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Delete the key of a call with these arguments."""

    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the function itself, bypassing the cache."""


class _Miss(NamedTuple):
    """A call that the local cache does not answer, with its arguments."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _answering(client: Any, calls: _Calls,
               miss: Callable[[tuple[Any, ...], dict[str, Any]], Any]) -> Callable[..., Any]:
    """A decorated function's calls, answered from the local cache when it can,
    else by ``miss(args, kwargs)``.

    The hit path is inline, as in ``get``: a call of one str or int argument
    (``_PLAIN_TYPES``) whose key is remembered, with a fresh local entry for
    that key. The first argument has a parameter of its own, so that a
    one-argument call makes no tuple of its arguments.
    """
    entries, lone, deserializer = client._entries, calls.lone, calls.deserializer

    def answer(first: Any = _NO_ARGUMENT, /, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            kind = first.__class__
            if kind is str or kind is int:
                entry = entries.get(lone.get(first))
                if entry is not None and entry.plain and entry.expires > _monotonic():
                    entry.used = True
                    client._hits += 1
                    value = entry.value
                    return value if deserializer is None or value is None else deserializer(value)
        return miss(args if first is _NO_ARGUMENT else (first, *args), kwargs)

    return answer


def cached(client: Any, func: Callable[P, R], ttl: Seconds, key: KeySpec,
           serializer: Optional[Callable[[Any], Value]],
           deserializer: Optional[Callable[[Value], Any]]) -> CachedFunction[P, R]:
    """``func`` kept by the threaded ``client`` (see ``Client.cached``)."""
    calls = _Calls(client, func, ttl, key, serializer, deserializer)
    through_cache = _answering(client, calls, calls.call)
    wrapped: CachedFunction[P, R] = dressed(through_cache, func, calls, calls.invalidate)
    return wrapped


def cached_async(client: Any, func: Callable[P, Awaitable[R]], ttl: Seconds, key: KeySpec,
                 serializer: Optional[Callable[[Any], Value]],
                 deserializer: Optional[Callable[[Value], Any]]) -> AsyncCachedFunction[P, R]:
    """``func`` kept by the asyncio ``client`` (see ``AsyncClient.cached``)."""
    calls = _Calls(client, func, ttl, key, serializer, deserializer)
    answer = _answering(client, calls, _Miss)

    async def through_cache(first: Any = _NO_ARGUMENT, /, *args: Any, **kwargs: Any) -> Any:
        found = answer(first, *args, **kwargs) if args or kwargs else answer(first)
        if type(found) is _Miss:
            return await calls.call_async(found.args, found.kwargs)
        return found

    wrapped: AsyncCachedFunction[P, R] = dressed(through_cache, func, calls,
                                                 calls.invalidate_async)
    return wrapped


def dressed(wrapper: Callable[..., Any], func: Callable[..., Any], calls: Any,
            invalidate: Callable[..., Any]) -> Any:
    """``wrapper`` looking like ``func``, with ``key``, ``invalidate`` and ``uncached``
    (``calls``' own ``key`` and ``uncached``: a ``_Calls`` or ``cached_many``'s)."""
    functools.update_wrapper(wrapper, func)
    wrapper.key = calls.key  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.uncached = calls.uncached  # type: ignore[attr-defined]
    return wrapper
