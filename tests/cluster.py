"""Start real Valkey Clusters and Sentinel setups for the test suite.

Importable without pytest, like ``server.py``, whose pieces it reuses: the
binary (``find_binary``), free ports, the raw RESP2 connection and stop by
PID. Nothing here needs ``valkey-cli``.

``ValkeyCluster(primaries=3, replicas=1).start()`` starts ``primaries * (1 +
replicas)`` ``valkey-server`` processes with ``cluster-enabled yes`` (each in
its own temporary directory with its ``cluster-config-file``, on 127.0.0.1
only, persisting nothing else, ``cluster-node-timeout`` 1000 ms), assigns
the 16384 slots evenly with ``CLUSTER ADDSLOTSRANGE``, gives every node its
own ``CLUSTER SET-CONFIG-EPOCH``, joins them with ``CLUSTER MEET``, attaches
the replicas with ``CLUSTER REPLICATE`` and waits until every node reports
``cluster_state:ok``, every node sees the same shards, and every replica's
link to its primary is up. The server offers no event for any of this, so
the harness polls the nodes' state (every 20 ms, with a bound).

Then: ``shards()`` / ``slot_owner()`` (from ``CLUSTER SHARDS``), ``kill()``
(SIGKILL) and ``restart()`` a node, ``failover()`` (``CLUSTER FAILOVER`` on a
replica, waited for), ``wait_failover_of()`` (after a primary was killed),
``migrate_slot()`` the legacy way with a hook between the steps, and
``migrate_slots_atomic()`` (Valkey 9's ``CLUSTER MIGRATESLOTS``).

``SentinelSetup().start()``: one primary, one replica and three sentinels
(``valkey-server <conf> --sentinel``, ``sentinel monitor mymaster ... 2``,
``down-after-milliseconds`` 1000, ``failover-timeout`` 5000); ``primary()``
asks a sentinel, ``failover()`` sends ``SENTINEL FAILOVER mymaster`` and
waits for ``+switch-master``.

Every node and sentinel shares one admin password for the harness user, so
that replicas, sentinels and ``MIGRATE`` authenticate as ``harness`` and keep
working when a test changes the default user.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from server import (
    HARNESS_USER,
    RawConnection,
    RespError,
    ServerStartError,
    ValkeyServer,
    find_binary,
    free_port,
    server_product,
    server_version,
)

__all__ = [
    "MIGRATION_STEPS",
    "SLOT_COUNT",
    "ClusterError",
    "ClusterNode",
    "SentinelServer",
    "SentinelSetup",
    "Shard",
    "ValkeyCluster",
    "cluster_unsupported",
    "migrateslots_unsupported",
    "slot_ranges",
]

SLOT_COUNT = 16384
# Cluster mode as the harness drives it: CLUSTER ADDSLOTSRANGE, CLUSTER
# SHARDS, cluster-port (a bus port of its own) and CLUSTER MEET's bus port.
MIN_CLUSTER_VERSION = (7, 0, 0)
MIGRATESLOTS_VERSION = (9, 0, 0)
NODE_TIMEOUT_MS = 1000
FORM_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0
MIGRATE_TIMEOUT = 30.0
POLL_INTERVAL = 0.02
SENTINEL_MASTER = "mymaster"
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 5000
SENTINEL_TIMEOUT = 30.0
# The steps of a legacy migration at which ``migrate_slot``'s hook is called.
MIGRATION_STEPS = ("importing", "migrating", "keys_moved")


# A replica's full sync starts at once (diskless, without the default 5 s
# wait for more replicas), and a primary pings its replicas every second, not
# every 10 s: until the replication offset moves, CLUSTER SHARDS of Valkey 8
# calls a fresh replica "loading" rather than "online".
_REPLICATION_ARGS = (
    "--repl-diskless-sync", "yes",
    "--repl-diskless-sync-delay", "0",
    "--repl-ping-replica-period", "1",
)  # fmt: skip


class ClusterError(RuntimeError):
    """The cluster did not reach a wanted state in time, or refused a step."""


def cluster_unsupported(binary: str | None = None) -> str | None:
    """None when the server binary can run the cluster harness, else why not."""
    binary = binary or find_binary()
    version = server_version(binary)
    if version < MIN_CLUSTER_VERSION:
        have = f"{server_product(binary)} {'.'.join(map(str, version))}"
        return (
            "the cluster harness needs CLUSTER ADDSLOTSRANGE and SHARDS: "
            f"7.0 or newer (this server: {have})"
        )
    return None


def migrateslots_unsupported(binary: str | None = None) -> str | None:
    """None when the binary has ``CLUSTER MIGRATESLOTS`` (Valkey 9), else why not."""
    binary = binary or find_binary()
    product, version = server_product(binary), server_version(binary)
    if product != "Valkey" or version < MIGRATESLOTS_VERSION:
        return (
            "CLUSTER MIGRATESLOTS needs Valkey 9.0 "
            f"(this server: {product} {'.'.join(map(str, version))})"
        )
    return None


def slot_ranges(primaries: int) -> List[Tuple[int, int]]:
    """The 16384 slots split into ``primaries`` contiguous inclusive ranges."""
    if primaries < 1:
        raise ValueError("a cluster needs at least one primary")
    bounds = [SLOT_COUNT * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


def _wait(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), at most
    ``timeout`` seconds; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except (OSError, RespError, ClusterError) as exc:
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = describe() if describe is not None else ""
            if last_error is not None:
                detail += f"\nlast error: {last_error!r}"
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(POLL_INTERVAL)


def _info(server: Any, section: str) -> Dict[str, str]:
    """``INFO section`` of a server (anything with ``command``) as a dict."""
    raw = server.command("INFO", section)
    fields: Dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            name, _, value = line.partition(":")
            fields[name] = value
    return fields


def _pairs(flat: Sequence[Any]) -> Dict[str, Any]:
    """A RESP2 flat key/value array as a dict with str keys (bytes values decoded)."""
    out: Dict[str, Any] = {}
    for i in range(0, len(flat) - 1, 2):
        value = flat[i + 1]
        out[flat[i].decode()] = value.decode() if isinstance(value, bytes) else value
    return out


# -- the cluster -----------------------------------------------------------------


class ClusterNode:
    """One cluster node: a ``ValkeyServer`` with ``cluster-enabled yes``.

    ``server`` is the process (``port``, ``pid``, ``kill()``, ``command()``,
    ``connect()``); ``node_id`` is its cluster id, kept across restarts (its
    ``nodes.conf`` stays in its directory).
    """

    def __init__(self, server: ValkeyServer, bus_port: int) -> None:
        self.server = server
        self.bus_port = bus_port
        self.node_id = ""

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.server.running

    def command(self, *args: Any) -> Any:
        return self.server.command(*args)

    def connect(self) -> RawConnection:
        return self.server.connect()

    def info(self, section: str) -> Dict[str, str]:
        return _info(self.server, section)

    def role(self) -> str:
        """``"master"`` or ``"slave"``, from ``ROLE``."""
        reply = self.command("ROLE")
        return str(reply[0].decode())

    def __repr__(self) -> str:
        return f"<ClusterNode {self.address} {self.node_id[:8]} pid={self.server.pid}>"


class Shard(NamedTuple):
    """One shard as a node reports it in ``CLUSTER SHARDS``."""

    slots: Tuple[Tuple[int, int], ...]  # inclusive ranges
    primary: Optional[str]  # node id of the primary (None while it has none)
    replicas: Tuple[str, ...]  # node ids of its replicas
    health: Dict[str, str]  # node id -> "online", "failed" or "loading"


class ValkeyCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on 127.0.0.1.

    ``with ValkeyCluster(3, 1) as cluster: ...`` or ``start()`` / ``close()``.
    ``nodes`` lists every node, the initial primaries first (in slot order),
    then the replicas (those of primary 0 first).
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary or find_binary()
        reason = cluster_unsupported(self.binary)
        if reason is not None:
            raise ServerStartError(reason)
        self.primary_count = primaries
        self.replica_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = list(extra_args)
        self.admin_password = secrets.token_hex(16)
        self.nodes: List[ClusterNode] = []
        self.layout = slot_ranges(primaries)
        # The node id each initial range was assigned to (for ``reset``).
        self.initial_owner: Dict[Tuple[int, int], str] = {}

    # -- lifecycle

    def _new_node(self) -> ClusterNode:
        last: ServerStartError | None = None
        for _ in range(3):  # a port may be taken between free_port() and bind()
            port, bus_port = free_port(), free_port()
            if port == bus_port:
                continue
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(bus_port),
                # A replica fails over whatever its lag, and stays with its primary.
                "--cluster-replica-validity-factor", "0",
                "--cluster-allow-replica-migration", "no",
                *_REPLICATION_ARGS,
                "--masteruser", HARNESS_USER,
                "--masterauth", self.admin_password,
                *self.extra_args,
            ]  # fmt: skip
            server = ValkeyServer(args, binary=self.binary, port=port)
            server.admin_password = self.admin_password
            try:
                server.start()
            except ServerStartError as exc:
                server.close()
                last = exc
                if "Address already in use" in str(exc):
                    continue
                raise
            node = ClusterNode(server, bus_port)
            node.node_id = node.command("CLUSTER", "MYID").decode()
            return node
        raise last or ServerStartError("no free port pair for a cluster node")

    def start(self) -> ValkeyCluster:
        """Start every node, form the cluster and wait until it is healthy."""
        if self.nodes:
            return self
        try:
            total = self.primary_count * (1 + self.replica_count)
            for _ in range(total):
                self.nodes.append(self._new_node())
            primaries = self.nodes[: self.primary_count]
            for node, (first, last) in zip(primaries, self.layout):
                node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
                self.initial_owner[(first, last)] = node.node_id
            # Distinct config epochs, set while each node knows only itself.
            for epoch, node in enumerate(self.nodes, start=1):
                node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                seed.command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
            _wait(
                lambda: all(self._knows_all(node) for node in self.nodes),
                FORM_TIMEOUT,
                "every node to know every other (CLUSTER MEET)",
                self.describe,
            )
            for i, replica in enumerate(self.nodes[self.primary_count :]):
                primary = primaries[i // self.replica_count]
                replica.command("CLUSTER", "REPLICATE", primary.node_id)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every node by PID and remove their directories."""
        for node in self.nodes:
            node.server.kill()
        for node in self.nodes:
            node.server.close()
        self.nodes = []

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state

    def _knows_all(self, node: ClusterNode) -> bool:
        lines = node.command("CLUSTER", "NODES").decode().strip().splitlines()
        if len(lines) != len(self.nodes):
            return False
        return not any("handshake" in line or "noaddr" in line for line in lines)

    @property
    def running_nodes(self) -> List[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def node(self, node_id: str) -> ClusterNode:
        """The node with this cluster id."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def node_at(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def shards(self, via: ClusterNode | None = None) -> List[Shard]:
        """The shards as ``via`` (default: the first running node) sees them."""
        via = via or self.running_nodes[0]
        shards = []
        for raw in via.command("CLUSTER", "SHARDS"):
            entry = dict(zip(raw[::2], raw[1::2]))
            flat = [int(slot) for slot in entry[b"slots"]]
            slots = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
            primary, replicas, health = None, [], {}
            for node_raw in entry[b"nodes"]:
                fields = _pairs(node_raw)
                health[fields["id"]] = fields["health"]
                if fields["role"] == "master":
                    primary = fields["id"]
                else:
                    replicas.append(fields["id"])
            shards.append(Shard(slots, primary, tuple(replicas), health))
        return shards

    def slot_map(self, via: ClusterNode | None = None) -> List[Optional[str]]:
        """Owner node id of each of the 16384 slots (None: unassigned), as
        ``via`` sees it (``CLUSTER SHARDS``)."""
        owners: List[Optional[str]] = [None] * SLOT_COUNT
        for shard in self.shards(via):
            for first, last in shard.slots:
                for slot in range(first, last + 1):
                    owners[slot] = shard.primary
        return owners

    def slot_owner(self, slot: int, via: ClusterNode | None = None) -> ClusterNode:
        """The primary that owns ``slot``, as ``via`` sees it."""
        for shard in self.shards(via):
            if shard.primary and any(a <= slot <= b for a, b in shard.slots):
                return self.node(shard.primary)
        raise ClusterError(f"slot {slot} has no owner\n{self.describe()}")

    def key_owner(self, key: str | bytes) -> ClusterNode:
        """The primary owning ``key``'s slot (the slot from ``CLUSTER KEYSLOT``)."""
        return self.slot_owner(self.keyslot(key))

    def keyslot(self, key: str | bytes) -> int:
        return int(self.running_nodes[0].command("CLUSTER", "KEYSLOT", key))

    def primaries(self, via: ClusterNode | None = None) -> List[ClusterNode]:
        """The primaries now (they change on failover), in slot order."""
        shards = sorted(
            (s for s in self.shards(via) if s.slots and s.primary), key=lambda s: s.slots[0][0]
        )
        return [self.node(s.primary) for s in shards if s.primary is not None]

    def replicas_of(
        self, primary: ClusterNode, via: ClusterNode | None = None
    ) -> List[ClusterNode]:
        for shard in self.shards(via):
            if shard.primary == primary.node_id:
                return [self.node(node_id) for node_id in shard.replicas]
        raise ClusterError(f"{primary} is not a primary\n{self.describe()}")

    def describe(self) -> str:
        """Every node's view (``CLUSTER NODES`` and state), for error messages."""
        parts = []
        for node in self.nodes:
            if not node.running:
                parts.append(f"{node}: not running")
                continue
            try:
                state = node.info("cluster").get("cluster_enabled", "?")
                info = node.command("CLUSTER", "INFO").decode()
                ok = "cluster_state:ok" in info
                view = node.command("CLUSTER", "NODES").decode().strip()
            except (OSError, RespError) as exc:
                parts.append(f"{node}: {exc!r}")
                continue
            parts.append(f"{node} (enabled={state}, state ok={ok}):\n{view}")
        return "\n".join(parts)

    def _healthy(self) -> bool:
        nodes = self.running_nodes
        if len(nodes) != len(self.nodes):
            return False
        reference: Optional[List[Tuple[Any, ...]]] = None
        for node in nodes:
            info = node.command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info or f"cluster_slots_assigned:{SLOT_COUNT}" not in info:
                return False
            if f"cluster_slots_ok:{SLOT_COUNT}" not in info:
                return False
            shards = self.shards(node)
            view = sorted(
                (s.slots, s.primary, tuple(sorted(s.replicas))) for s in shards if s.primary
            )
            if reference is None:
                reference = view
            elif view != reference:
                return False
            for shard in shards:
                if shard.primary is None or len(shard.replicas) != self.replica_count:
                    return False
                if any(health != "online" for health in shard.health.values()):
                    return False
        for node in nodes:
            fields = node.info("replication")
            if fields.get("role") == "slave" and (
                fields.get("master_link_status") != "up"
                or fields.get("master_sync_in_progress") != "0"
            ):
                return False
        return True

    def wait_healthy(self, timeout: float = FORM_TIMEOUT) -> None:
        """Wait until every node is running and says ``cluster_state:ok`` with
        all slots ok, every node sees the same shards, each with one primary
        and all its replicas online, and every replica's link is up."""
        _wait(self._healthy, timeout, "a healthy cluster", self.describe)

    def wait_agreement(
        self, predicate: Callable[[ClusterNode], bool], what: str, timeout: float = MIGRATE_TIMEOUT
    ) -> None:
        """Wait until ``predicate(node)`` holds on every running node."""
        _wait(lambda: all(predicate(n) for n in self.running_nodes), timeout, what, self.describe)

    # -- data

    def flushall(self) -> None:
        """FLUSHALL on every primary, then WAIT for its replicas to apply it."""
        for primary in self.primaries():
            with primary.connect() as conn:
                conn.execute("FLUSHALL")
                if self.replica_count:
                    conn.execute("WAIT", self.replica_count, 5000)

    def reset(self) -> None:
        """Bring a shared cluster back between tests: restart dead nodes, wait
        for health, give every initial slot range back to its initial shard
        (moved empty, the legacy way), FLUSHALL on the primaries. Roles changed
        by a failover are kept."""
        restarted = False
        for node in self.nodes:
            if not node.running:
                node.server.start()
                restarted = True
        if restarted:
            self.wait_healthy()
        else:
            with contextlib.suppress(ClusterError):
                self.wait_healthy(timeout=0.5)
            if not self._healthy():
                self.wait_healthy()
        self.flushall()
        owners = self.slot_map()
        for (first, last), initial in self.initial_owner.items():
            shard = self._shard_of(initial)
            if shard is None or shard.primary is None:
                continue
            target = self.node(shard.primary)
            for slot in range(first, last + 1):
                if owners[slot] != target.node_id:
                    self.migrate_slot(slot, target)
        self.flushall()

    def _shard_of(self, node_id: str) -> Optional[Shard]:
        for shard in self.shards():
            if shard.primary == node_id or node_id in shard.replicas:
                return shard
        return None

    # -- faults

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL the node by PID: it dies at once, as in a crash."""
        node.server.kill()

    def restart(self, node: ClusterNode, *, wait: bool = True) -> None:
        """Start a stopped node again (same port, bus port and node id); wait
        until the cluster is healthy again (a killed primary that lost its
        slots meanwhile comes back as a replica)."""
        node.server.start()
        if wait:
            self.wait_healthy()

    def wait_failover_of(
        self, primary: ClusterNode, timeout: float = FAILOVER_TIMEOUT
    ) -> ClusterNode:
        """After ``primary`` was killed: wait until every running node agrees that
        one of its former replicas owns its slots and says ``cluster_state:ok``;
        return that replica."""
        view = next(
            s
            for s in self.shards()
            if s.primary == primary.node_id or primary.node_id in s.replicas
        )
        candidates = set(view.replicas)
        slot = view.slots[0][0]

        def promoted() -> Optional[ClusterNode]:
            winner = None
            for node in self.running_nodes:
                if "cluster_state:ok" not in node.command("CLUSTER", "INFO").decode():
                    return None
                owner = self.slot_owner(slot, via=node).node_id
                if owner not in candidates or (winner is not None and owner != winner):
                    return None
                winner = owner
            if winner is None:
                return None
            node = self.node(winner)
            return node if node.role() == "master" else None

        result: ClusterNode = _wait(
            promoted, timeout, f"a replica of {primary} to take over", self.describe
        )
        return result

    def failover(
        self, replica: ClusterNode, mode: str | None = None, timeout: float = FAILOVER_TIMEOUT
    ) -> ClusterNode:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on ``replica``; wait until it is
        the primary of its shard on every running node and, when every node
        runs, until the cluster is healthy (the old primary a replica with a
        live link). Returns the old primary."""
        old_primary = next(
            self.node(s.primary)
            for s in self.shards(replica)
            if replica.node_id in s.replicas and s.primary
        )
        args = ["CLUSTER", "FAILOVER"] + ([mode] if mode else [])
        replica.command(*args)

        def done() -> bool:
            if replica.role() != "master":
                return False
            for node in self.running_nodes:
                shard = self._shard_of_via(replica.node_id, node)
                if shard is None or shard.primary != replica.node_id:
                    return False
            return True

        _wait(done, timeout, f"{replica} to take over from {old_primary}", self.describe)
        if all(node.running for node in self.nodes):
            self.wait_healthy(timeout)
        return old_primary

    def _shard_of_via(self, node_id: str, via: ClusterNode) -> Optional[Shard]:
        for shard in self.shards(via):
            if shard.primary == node_id or node_id in shard.replicas:
                return shard
        return None

    # -- slot migration

    def _owner_everywhere(self, slot: int, target: ClusterNode) -> bool:
        return all(
            self.slot_owner(slot, via=node).node_id == target.node_id for node in self.running_nodes
        )

    def migrate_slot(
        self,
        slot: int,
        target: ClusterNode,
        hook: Callable[[str], None] | None = None,
        *,
        batch: int = 100,
        timeout: float = MIGRATE_TIMEOUT,
    ) -> ClusterNode:
        """Move ``slot`` to the primary ``target`` the legacy way; return the
        source primary.

        1. ``CLUSTER SETSLOT slot IMPORTING <source>`` on the target, then
           ``hook("importing")``;
        2. ``CLUSTER SETSLOT slot MIGRATING <target>`` on the source, then
           ``hook("migrating")`` (the source answers ASK for absent keys);
        3. ``MIGRATE`` every key of the slot (``CLUSTER GETKEYSINSLOT``, database
           0), then ``hook("keys_moved")``;
        4. ``CLUSTER SETSLOT slot NODE <target>`` on the target, the source and
           every other primary; wait until every node sees the target as the
           owner.
        """
        source = self.slot_owner(slot)
        if source.node_id == target.node_id:
            raise ClusterError(f"slot {slot} already belongs to {target}")
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        if hook is not None:
            hook("importing")
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        if hook is not None:
            hook("migrating")
        with source.connect() as conn:
            while True:
                keys = conn.execute("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                conn.execute(
                    "MIGRATE", target.host, target.port, "", 0, 5000,
                    "AUTH2", HARNESS_USER, self.admin_password, "KEYS", *keys,
                )  # fmt: skip
        if hook is not None:
            hook("keys_moved")
        target.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for primary in self.primaries():
            if primary.node_id not in (source.node_id, target.node_id):
                primary.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        self.wait_agreement(
            lambda node: self.slot_owner(slot, via=node).node_id == target.node_id,
            f"every node to see slot {slot} on {target}",
            timeout,
        )
        return source

    def migrate_slots_atomic(
        self,
        first: int,
        last: int,
        target: ClusterNode,
        *,
        timeout: float = MIGRATE_TIMEOUT,
    ) -> ClusterNode:
        """Move slots ``first..last`` (all of one source) to ``target`` with
        Valkey 9's ``CLUSTER MIGRATESLOTS SLOTSRANGE first last NODE <target>``,
        sent to the source primary; wait until every node sees the target as
        their owner (or raise if ``CLUSTER GETSLOTMIGRATIONS`` says the job
        failed or was cancelled). Returns the source primary."""
        reason = migrateslots_unsupported(self.binary)
        if reason is not None:
            raise ClusterError(reason)
        source = self.slot_owner(first)
        for slot in (first, last):
            if self.slot_owner(slot).node_id != source.node_id:
                raise ClusterError(f"slots {first}..{last} do not all belong to {source}")
        source.command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", first, last, "NODE", target.node_id)

        def finished() -> bool:
            for job in source.command("CLUSTER", "GETSLOTMIGRATIONS"):
                fields = _pairs(job)
                state = str(fields.get("state", "")).lower()
                if state in ("failed", "cancelled", "canceled"):
                    raise AssertionError(f"CLUSTER MIGRATESLOTS {state}: {fields}")
            return all(
                self._owner_everywhere(slot, target) for slot in {first, (first + last) // 2, last}
            )

        _wait(finished, timeout, f"slots {first}..{last} to move to {target}", self.describe)
        return source


# -- Sentinel ----------------------------------------------------------------------


class SentinelServer(ValkeyServer):
    """``valkey-server <sentinel.conf> --sentinel`` on 127.0.0.1 and a free port.

    The configuration file (which Sentinel rewrites as it learns) is written
    in the server's directory before the first start, from ``config_lines``.
    """

    def __init__(self, config_lines: Iterable[str], *, binary: str | None = None) -> None:
        super().__init__((), binary=binary, debug_command=False)
        self.config_path = os.path.join(self.dir, "sentinel.conf")
        self._config_lines = list(config_lines)

    def _argv(self, port: int) -> List[str]:
        if not os.path.exists(self.config_path):
            with open(self.config_path, "w") as f:
                f.write("\n".join(self._config_lines) + "\n")
        argv = super()._argv(port)
        # The configuration file must come first, then --sentinel; Sentinel
        # has no RDB or AOF to turn off.
        rest = argv[1:]
        for option in ("--save", "--appendonly"):
            index = rest.index(option)
            del rest[index : index + 2]
        return [argv[0], self.config_path, "--sentinel", *rest]

    def config_snapshot(self) -> Dict[str, bytes]:
        return {}  # a sentinel has no CONFIG GET *


class SentinelSetup:
    """One primary, one replica and ``sentinels`` sentinels monitoring them as
    ``mymaster`` with a quorum of 2.

    ``primary_server`` / ``replica_server`` are the two data nodes as
    started; after a failover ``primary()`` says which is the primary.
    """

    def __init__(self, sentinels: int = 3, *, binary: str | None = None) -> None:
        self.binary = binary or find_binary()
        self.master_name = SENTINEL_MASTER
        self.admin_password = secrets.token_hex(16)
        auth = [
            *_REPLICATION_ARGS,
            "--masteruser",
            HARNESS_USER,
            "--masterauth",
            self.admin_password,
        ]
        self.primary_server = ValkeyServer(auth, binary=self.binary)
        self.replica_server = ValkeyServer(auth, binary=self.binary)
        for server in (self.primary_server, self.replica_server):
            server.admin_password = self.admin_password
        self.sentinel_count = sentinels
        self.sentinels: List[SentinelServer] = []

    @property
    def data_servers(self) -> List[ValkeyServer]:
        return [self.primary_server, self.replica_server]

    def start(self) -> SentinelSetup:
        """Start the data nodes, attach the replica, start the sentinels and
        wait until each knows the replica and the other sentinels."""
        try:
            self.primary_server.start()
            self.replica_server.start()
            self.replica_server.command(
                "REPLICAOF", self.primary_server.host, self.primary_server.port
            )
            _wait(
                lambda: _info(self.replica_server, "replication").get("master_link_status") == "up",
                SENTINEL_TIMEOUT,
                "the replica to attach",
            )
            name = self.master_name
            lines = [
                f"sentinel monitor {name} {self.primary_server.host} {self.primary_server.port} 2",
                f"sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}",
                f"sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {name} 1",
                f"sentinel auth-user {name} {HARNESS_USER}",
                f"sentinel auth-pass {name} {self.admin_password}",
            ]
            for _ in range(self.sentinel_count):
                sentinel = SentinelServer(lines, binary=self.binary)
                self.sentinels.append(sentinel)
                sentinel.start()
            self.wait_settled()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every sentinel and data node by PID; remove their directories."""
        for server in [*self.sentinels, *self.data_servers]:
            server.kill()
        for server in [*self.sentinels, *self.data_servers]:
            server.close()
        self.sentinels = []

    def __enter__(self) -> SentinelSetup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- asking the sentinels

    def sentinel_command(self, sentinel: SentinelServer, *args: Any) -> Any:
        return sentinel.command(*args)

    def primary_address(self, sentinel: SentinelServer | None = None) -> Tuple[str, int]:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME mymaster`` on one sentinel."""
        sentinel = sentinel or self.sentinels[0]
        host, port = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return host.decode(), int(port)

    def server_at(self, port: int) -> ValkeyServer:
        for server in self.data_servers:
            if server.port == port:
                return server
        raise KeyError(port)

    def primary(self) -> ValkeyServer:
        """The data node that the first sentinel names as the primary."""
        return self.server_at(self.primary_address()[1])

    def replica(self) -> ValkeyServer:
        """The data node that is not the primary."""
        primary = self.primary()
        return next(server for server in self.data_servers if server is not primary)

    def _settled(self) -> bool:
        addresses = {self.primary_address(sentinel) for sentinel in self.sentinels}
        if len(addresses) != 1:
            return False
        ((_, port),) = addresses
        primary, replica = self.server_at(port), None
        for server in self.data_servers:
            if server is not primary:
                replica = server
        if primary.command("ROLE")[0] != b"master" or replica is None:
            return False
        replication = _info(replica, "replication")
        if replication.get("master_link_status") != "up" or replication.get("master_port") != str(
            port
        ):
            return False
        for sentinel in self.sentinels:
            master = _pairs(sentinel.command("SENTINEL", "MASTER", self.master_name))
            if "s_down" in master["flags"] or "o_down" in master["flags"]:
                return False
            if "failover_in_progress" in master["flags"]:
                return False
            if int(master["num-other-sentinels"]) != self.sentinel_count - 1:
                return False
            replicas = [
                _pairs(r) for r in sentinel.command("SENTINEL", "REPLICAS", self.master_name)
            ]
            live = [
                r
                for r in replicas
                if r["port"] == str(replica.port)
                and "s_down" not in r["flags"]
                and "disconnected" not in r["flags"]
            ]
            if not live or live[0].get("master-link-status") != "ok":
                return False
        return True

    def describe(self) -> str:
        parts = []
        for sentinel in self.sentinels:
            try:
                master = _pairs(sentinel.command("SENTINEL", "MASTER", self.master_name))
                replicas = [
                    _pairs(r) for r in sentinel.command("SENTINEL", "REPLICAS", self.master_name)
                ]
                parts.append(f"sentinel :{sentinel.port}: master={master} replicas={replicas}")
            except (OSError, RespError) as exc:
                parts.append(f"sentinel :{sentinel.port}: {exc!r}")
        return "\n".join(parts)

    def wait_settled(self, timeout: float = SENTINEL_TIMEOUT) -> ValkeyServer:
        """Wait until every sentinel names the same primary, sees it up, knows
        the other sentinels and the replica (attached, link ok), and no
        failover is under way; return the primary."""
        _wait(self._settled, timeout, "the sentinels to settle", self.describe)
        return self.primary()

    def reset(self) -> None:
        """Between tests: restart stopped nodes, wait until settled, FLUSHALL on
        the primary (waited for on the replica)."""
        for server in [*self.data_servers, *self.sentinels]:
            if not server.running:
                server.start()
        primary = self.wait_settled()
        with primary.connect() as conn:
            conn.execute("FLUSHALL")
            conn.execute("WAIT", 1, 5000)

    def failover(self, timeout: float = SENTINEL_TIMEOUT, *, settle: bool = False) -> ValkeyServer:
        """``SENTINEL FAILOVER mymaster``; wait for ``+switch-master`` on a
        subscribed sentinel connection and for every sentinel to name the new
        primary, whose ``ROLE`` is master. Returns the new primary.

        ``settle=True`` also waits until the old primary has been turned into
        the new one's replica (Sentinel waits about 8 s before it does so)."""
        old = self.primary()
        deadline = time.monotonic() + timeout
        watcher = self.sentinels[-1]
        with RawConnection(
            watcher.host,
            watcher.port,
            timeout=timeout,
            username=HARNESS_USER,
            password=watcher.admin_password,
        ) as sub:
            sub.execute("SUBSCRIBE", "+switch-master")
            self.sentinels[0].command("SENTINEL", "FAILOVER", self.master_name)
            while True:
                if time.monotonic() >= deadline:
                    raise ClusterError(
                        f"no +switch-master within {timeout:.0f} s\n{self.describe()}"
                    )
                try:
                    message = sub.read_reply()
                except OSError as exc:
                    raise ClusterError(
                        f"no +switch-master within {timeout:.0f} s ({exc!r})\n{self.describe()}"
                    ) from exc
                if message[0] == b"message" and message[1] == b"+switch-master":
                    # "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    parts = message[2].decode().split()
                    if parts[0] == self.master_name:
                        new_port = int(parts[4])
                        break
        new = self.server_at(new_port)
        if new is old:
            raise ClusterError(f"+switch-master named the old primary :{new_port}")

        def switched() -> bool:
            ports = {self.primary_address(sentinel)[1] for sentinel in self.sentinels}
            return ports == {new_port} and new.command("ROLE")[0] == b"master"

        _wait(
            switched,
            max(0.1, deadline - time.monotonic()),
            "every sentinel to name the new primary",
            self.describe,
        )
        if settle:
            self.wait_settled(timeout)
        return new
