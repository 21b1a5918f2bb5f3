"""@client.cached_many: a function of many ids kept through get_many, against a
real server, on the threaded Client and (with an async def) on AsyncClient."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any, Iterator, Optional

import pytest
from helpers import command_calls, diff
from server import RawConnection

from valkeyaside import PLACEHOLDER_PREFIX, TOMBSTONE, AsyncClient, Client


class Products:
    """A function of many ids: records each call's ids; leaves out ``absent`` ones."""

    def __init__(self, absent: tuple[int, ...] = ()) -> None:
        self.absent = set(absent)
        self.calls: list[list[int]] = []
        self._lock = threading.Lock()

    def __call__(self, ids: list[int]) -> dict[int, str]:
        with self._lock:
            self.calls.append(list(ids))
        return {i: f"product {i}" for i in ids if i not in self.absent}

    @property
    def loaded(self) -> Counter[int]:
        return Counter(i for call in self.calls for i in call)


def no_locks_left(raw: RawConnection) -> bool:
    """Whether no key of the server holds a placeholder."""
    return not any(isinstance(value, bytes) and value.startswith(PLACEHOLDER_PREFIX.encode())
                   for value in (raw.execute("GET", key) for key in raw.execute("KEYS", "*")))


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as made:
        yield made


def test_missing_ids_are_loaded_in_one_call_and_the_rest_answered_locally(
        client: Client, raw: RawConnection) -> None:
    products = Products(absent=(5,))
    load = client.cached_many(30, key="product:{}")(products)

    assert load([1, 2, 3]) == {1: "product 1", 2: "product 2", 3: "product 3"}
    assert products.calls == [[1, 2, 3]]
    assert raw.execute("GET", "product:2") == b"product 2"
    assert 29_000 < raw.execute("PTTL", "product:2") <= 30_000

    before = command_calls(raw)
    found = load(iter([3, 2, 1, 2]))  # any iterable; duplicates come back once
    assert list(found.items()) == [(3, "product 3"), (2, "product 2"), (1, "product 1")]
    assert diff(before, command_calls(raw)) == {}  # every key a local hit
    assert products.calls == [[1, 2, 3]]

    assert load([1, 4, 5]) == {1: "product 1", 4: "product 4", 5: None}
    assert products.calls == [[1, 2, 3], [4, 5]]  # only the missing ids
    assert raw.execute("GET", "product:5") == TOMBSTONE  # left out: remembered as None
    assert load([5]) == {5: None}
    assert load([]) == {}
    assert products.calls == [[1, 2, 3], [4, 5]]
    assert load.__wrapped__ is products  # type: ignore[attr-defined]


def test_keys_from_templates_callables_and_the_default(client: Client,
                                                       raw: RawConnection) -> None:
    def load_items(ids: list[Any]) -> dict[Any, str]:
        return {i: f"item {i}" for i in ids}

    named = client.cached_many(30, key="item:{item_id}")(load_items)
    spec = client.cached_many(30, key="item:{:03d}")(load_items)
    called = client.cached_many(30, key=lambda i: f"item:{i * 2}")(load_items)
    default = client.cached_many(30)(load_items)
    assert named.key(7) == "item:7"
    assert spec.key(7) == "item:007"
    assert called.key(7) == "item:14"
    prefix = f"{__name__}.test_keys_from_templates_callables_and_the_default.<locals>.load_items:"
    assert default.key(7) == prefix + "7"
    assert default.key("7") == prefix + "'7'"  # the repr: 7 and "7" have keys of their own

    assert named([1]) == {1: "item 1"}
    assert spec([2]) == {2: "item 2"}
    assert called([3]) == {3: "item 3"}
    assert default([4, "4"]) == {4: "item 4", "4": "item 4"}
    assert raw.execute("GET", "item:1") == b"item 1"
    assert raw.execute("GET", "item:002") == b"item 2"
    assert raw.execute("GET", "item:6") == b"item 3"
    assert raw.execute("GET", prefix + "'4'") == b"item 4"

    for wrong in ("item", "item:{}:{}", "{a}{b}"):
        with pytest.raises(ValueError, match="exactly one field"):
            client.cached_many(30, key=wrong)(load_items)
    with pytest.raises(TypeError, match="format string, a callable, or None"):
        client.cached_many(30, key=42)(load_items)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.cached_many(0)(load_items)


def test_remembered_keys_tell_equal_ids_of_other_types_apart(client: Client,
                                                            raw: RawConnection) -> None:
    calls: list[list[Any]] = []

    @client.cached_many(30, key="n:{}")
    def numbers(ids: list[Any]) -> dict[Any, str]:
        calls.append(ids)
        return {i: f"{type(i).__name__} {i}" for i in ids}

    assert numbers([1, "1x"]) == {1: "int 1", "1x": "str 1x"}
    assert numbers([1, "1x"]) == {1: "int 1", "1x": "str 1x"}  # keys remembered, values local
    assert numbers([True]) == {True: "bool True"}  # equal to 1, yet a key of its own
    assert numbers([1.0]) == {1.0: "float 1.0"}
    assert calls == [[1, "1x"], [True], [1.0]]
    assert raw.execute("GET", "n:True") == b"bool True"
    assert raw.execute("GET", "n:1.0") == b"float 1.0"

    from valkeyaside._cached import KEYS_KEPT

    many = list(range(KEYS_KEPT + 10))
    numbers(many)
    assert calls[-1] == [i for i in many if i != 1]  # the missing ids, in one call
    kept = numbers.uncached.__self__.known  # type: ignore[attr-defined]
    assert 0 < len(kept) <= KEYS_KEPT  # bounded: started over once full
    found = numbers(many)  # answered locally, though the remembered keys started over
    assert found == {i: f"int {i}" for i in many}
    assert len(calls) == 4


def test_bad_calls_are_refused_before_anything_is_sent(client: Client,
                                                       raw: RawConnection) -> None:
    products = Products()
    load = client.cached_many(30, key=lambda i: f"product:{i}")(products)
    not_a_str = client.cached_many(30, key=lambda i: i)(products)  # type: ignore[arg-type, return-value]
    before = command_calls(raw)
    with pytest.raises(ValueError, match=r"the ids 1 and '1' .* make one key, 'product:1'"):
        load([1, "1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="iterable of ids, not one str"):
        load("12")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned int, not str"):
        not_a_str([1])
    with pytest.raises(TypeError, match="iterable of ids, not one bytes"):
        load.invalidate(b"12")  # type: ignore[arg-type]
    assert diff(before, command_calls(raw)) == {}
    assert products.calls == []


def test_a_failing_function_leaves_no_lock(client: Client, raw: RawConnection) -> None:
    def broken(ids: list[int]) -> dict[int, str]:
        raise LookupError(f"no rows for {ids}")

    with pytest.raises(LookupError, match=r"no rows for \[1, 2\]"):
        client.cached_many(30, key="p:{}")(broken)([1, 2])
    assert no_locks_left(raw)

    def a_list(ids: list[int]) -> Any:
        return [f"product {i}" for i in ids]

    with pytest.raises(TypeError, match="must return a mapping of ids to values, not list"):
        client.cached_many(30, key="p:{}")(a_list)([1, 2])

    def a_number(ids: list[int]) -> Any:
        return {i: i for i in ids}

    with pytest.raises(TypeError, match="must return str, bytes or None"):
        client.cached_many(30, key="p:{}")(a_number)([1, 2])
    assert no_locks_left(raw)
    assert raw.execute("KEYS", "p:*") == []


def test_serializer_invalidate_and_uncached(client: Client, raw: RawConnection) -> None:
    calls: list[list[int]] = []

    @client.cached_many(30, key="obj:{}", serializer=json.dumps, deserializer=json.loads)
    def objects(ids: list[int]) -> dict[int, Optional[dict[str, Any]]]:
        calls.append(ids)
        return {i: None if i < 0 else {"id": i, "tags": ["a", i]} for i in ids}

    assert objects([1, -1, 2]) == {1: {"id": 1, "tags": ["a", 1]}, -1: None,
                                   2: {"id": 2, "tags": ["a", 2]}}
    assert json.loads(raw.execute("GET", "obj:1")) == {"id": 1, "tags": ["a", 1]}
    assert raw.execute("GET", "obj:-1") == TOMBSTONE  # None is not serialized
    assert objects([2, -1, 1]) == {2: {"id": 2, "tags": ["a", 2]}, -1: None,
                                   1: {"id": 1, "tags": ["a", 1]}}
    assert calls == [[1, -1, 2]]
    assert objects.__name__ == "objects"  # the wrapper looks like the function

    assert objects.invalidate([1, 3]) == 1  # 3 was never stored
    assert raw.execute("EXISTS", "obj:1") == 0
    assert objects([1, 2]) == {1: {"id": 1, "tags": ["a", 1]}, 2: {"id": 2, "tags": ["a", 2]}}
    assert calls == [[1, -1, 2], [1]]  # reloaded: only the invalidated one
    assert objects.invalidate([]) == 0
    assert objects.uncached([5]) == {5: {"id": 5, "tags": ["a", 5]}}  # the function as it is
    assert calls == [[1, -1, 2], [1], [5]]
    assert raw.execute("EXISTS", "obj:5") == 0


def test_threads_with_overlapping_ids_load_each_id_once(server_url: str,
                                                        raw: RawConnection) -> None:
    gate = threading.Event()

    class Slow(Products):
        def __call__(self, ids: list[int]) -> dict[int, str]:
            gate.wait(10)  # every caller is under way before the first load ends
            return super().__call__(ids)

    products = Slow()
    with Client(server_url) as one, Client(server_url) as other:
        loads = [c.cached_many(30, key="product:{}")(products) for c in (one, other)]
        wanted = [list(range(start, start + 10)) for start in range(0, 40, 5)]
        results: list[Any] = [None] * len(wanted)

        def call(n: int) -> None:
            results[n] = loads[n % 2](wanted[n])

        threads = [threading.Thread(target=call, args=(n,)) for n in range(len(wanted))]
        for t in threads:
            t.start()
        gate.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    assert results == [{i: f"product {i}" for i in ids} for ids in wanted]
    assert products.loaded == Counter(range(45))  # every id once, across both clients
    assert no_locks_left(raw)


def test_async_cached_many(server_url: str, raw: RawConnection) -> None:
    calls: list[list[int]] = []

    async def main() -> None:
        async with AsyncClient(server_url) as client:

            @client.cached_many(30, key="user:{user_id}")
            async def load_users(ids: list[int]) -> dict[int, str]:
                await asyncio.sleep(0.01)
                calls.append(ids)
                return {i: f"user {i}" for i in ids if i != 9}

            first, second = await asyncio.gather(load_users([1, 2, 3]), load_users([3, 4, 9]))
            assert first == {1: "user 1", 2: "user 2", 3: "user 3"}
            assert second == {3: "user 3", 4: "user 4", 9: None}
            assert Counter(i for call in calls for i in call) == Counter([1, 2, 3, 4, 9])
            assert raw.execute("GET", "user:4") == b"user 4"
            assert load_users.key(5) == "user:5"

            before = command_calls(raw)
            assert await load_users([9, 4, 1]) == {9: None, 4: "user 4", 1: "user 1"}
            assert diff(before, command_calls(raw)) == {}

            assert await load_users.invalidate([1, 2]) == 2
            assert await load_users([1, 2, 3]) == {1: "user 1", 2: "user 2", 3: "user 3"}
            assert calls[-1] == [1, 2]
            assert await load_users.uncached([7]) == {7: "user 7"}

            def plain(ids: list[int]) -> dict[int, str]:  # a plain function serves too
                return {i: f"plain {i}" for i in ids}

            plain_users = client.cached_many(30, key="plain:{}")(plain)  # type: ignore[arg-type]
            assert await plain_users([1]) == {1: "plain 1"}

            async def broken(ids: list[int]) -> dict[int, str]:
                raise LookupError("no rows")

            with pytest.raises(LookupError):
                await client.cached_many(30, key="broken:{}")(broken)([1, 2])
            with pytest.raises(ValueError, match="make one key"):
                await client.cached_many(30, key=lambda i: "same")(broken)([1, 2])

    asyncio.run(main())
    assert no_locks_left(raw)
