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
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from ._aside import Seconds, Value

__all__ = ["AsyncCachedFunction", "CachedFunction", "key_maker"]

R = TypeVar("R")
KeySpec = Union[str, Callable[..., str], None]

_PLAIN = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
#: How many positional calls' keys a decorated function remembers (then starts over).
_KEYS_KEPT = 4096
#: Arguments whose equal values make equal keys: the only ones a key is remembered by.
_PLAIN_TYPES = frozenset({str, int})


def _plain(args: tuple[Any, ...]) -> bool:
    """Whether a call's key may be remembered by its arguments: only str and int
    ones, whose equal values make the same key (1 == 1.0 == True, 0.0 == -0.0,
    and an object equal to itself may change, yet their keys differ)."""
    return all(map(_PLAIN_TYPES.__contains__, map(type, args)))


def key_maker(func: Callable[..., Any], key: KeySpec) -> Callable[[tuple[Any, ...],
                                                                  dict[str, Any]], str]:
    """``make(args, kwargs) -> str`` for ``func``'s calls (see the module's doc)."""
    if callable(key):
        custom = key

        def from_callable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            made = custom(*args, **kwargs)
            if type(made) is not str:
                raise TypeError(f"the key function of {func.__qualname__} returned "
                                f"{type(made).__name__}, not str")
            return made

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


class _Base(Generic[R]):
    def __init__(self, client: Any, func: Callable[..., Any], ttl: Seconds, key: KeySpec,
                 serializer: Optional[Callable[[Any], Value]],
                 deserializer: Optional[Callable[[Value], Any]]) -> None:
        self._client = client
        self._func = func
        self._ttl = ttl
        self._make_key = key_maker(func, key)
        self._serializer = serializer
        self._deserializer = deserializer
        self._keys: dict[tuple[Any, ...], str] = {}  # positional calls' keys, remembered
        # A key function may depend on more than the arguments: it is asked every time.
        self._remember = not callable(key)
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The key a call with these arguments reads."""
        if kwargs or not self._remember or not _plain(args):
            return self._make_key(args, kwargs)
        keys = self._keys
        try:
            return keys[args]
        except KeyError:
            pass
        if len(keys) >= _KEYS_KEPT:
            keys.clear()
        made = keys[args] = self._make_key(args, kwargs)
        return made

    def uncached(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself, bypassing the cache."""
        return self._func(*args, **kwargs)

    def _stored(self, obj: Any) -> Optional[Value]:
        return obj if obj is None or self._serializer is None else self._serializer(obj)

    def _returned(self, raw: Optional[Value]) -> Any:
        return raw if raw is None or self._deserializer is None else self._deserializer(raw)


class CachedFunction(_Base[R]):
    """A function whose results are kept by a :class:`valkeyaside.Client`."""

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        try:  # the hit path, inline: a remembered key, a get without a loader
            key = self._keys[args] if not kwargs and _plain(args) else self.key(*args, **kwargs)
        except KeyError:
            key = self.key(*args, **kwargs)
        client = self._client
        raw = client.get(key, self._ttl)
        if raw is None:  # absent (or None, remembered): the same get, with the loader
            func = self._func

            def load(_key: str) -> Optional[Value]:
                return self._stored(func(*args, **kwargs))

            raw = client.get(key, self._ttl, load)
        deserializer = self._deserializer
        return raw if raw is None or deserializer is None else deserializer(raw)  # type: ignore[no-any-return]

    def invalidate(self, *args: Any, **kwargs: Any) -> int:
        """Delete the key of a call with these arguments."""
        return self._client.delete(self.key(*args, **kwargs))  # type: ignore[no-any-return]


class AsyncCachedFunction(_Base[R]):
    """An ``async def`` (or plain) function whose results an ``AsyncClient`` keeps."""

    async def __call__(self, *args: Any, **kwargs: Any) -> R:
        key = self.key(*args, **kwargs)
        client = self._client
        raw = await client.get(key, self._ttl)
        if raw is None:
            func = self._func

            async def load(_key: str) -> Optional[Value]:
                obj = func(*args, **kwargs)
                if inspect.isawaitable(obj):
                    obj = await obj
                return self._stored(obj)

            raw = await client.get(key, self._ttl, load)
        return self._returned(raw)  # type: ignore[no-any-return]

    async def invalidate(self, *args: Any, **kwargs: Any) -> int:
        """Delete the key of a call with these arguments."""
        return await self._client.delete(self.key(*args, **kwargs))  # type: ignore[no-any-return]
