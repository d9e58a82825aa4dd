"""A throwaway PostgreSQL server for tests: initdb into a temp dir, pg_ctl on a free port.

Import the fixtures into a test module (not conftest.py)::

    from tests.pg import pg_server, pg_url  # noqa: F401  (pytest fixtures)

`pg_server` (session-scoped) is the running :class:`PgServer`; `pg_url` is the URL of a
database created on it. Each module that imports them gets its own server.

The server listens on 127.0.0.1 only, with its unix socket in the temp dir, fsync off
(a crash loses a throwaway database, nothing else), and password (SCRAM) authentication
over TCP, so URLs carry a real password that the store must never echo. initdb refuses
to run as root, so as root every server command runs as the `postgres` OS user.

Missing binaries fail the test run (never skip): run `sh scripts/system-deps.sh`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "secflow"
_INSTALL_HINT = "PostgreSQL server binaries (initdb, pg_ctl) were not found; run `sh scripts/system-deps.sh`"


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin with initdb and pg_ctl, else one on PATH."""

    def version(path: str) -> tuple[int, ...]:
        ver = Path(path).parent.parent.name
        return tuple(int(p) for p in ver.split(".") if p.isdigit())

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        bin_dir = Path(initdb).parent
        if os.access(initdb, os.X_OK) and os.access(bin_dir / "pg_ctl", os.X_OK):
            return bin_dir
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL server in its own temp dir. `start()`, `stop()`, `start()` again..."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.password = "pw-" + secrets.token_hex(12)
        self.port = 0
        self._as_root = os.geteuid() == 0
        base = Path(os.environ.get("SECFLOW_TEST_TMP", tempfile.gettempdir()))
        self.root = Path(tempfile.mkdtemp(prefix="secflow-pg-", dir=base))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self._initialised = False
        self.running = False

    # -- commands -------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n--- server log ---\n{log}"
            )
        return result

    def _initdb(self) -> None:
        self.sockets.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            try:
                pg = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the `postgres` OS user for initdb; run `sh scripts/system-deps.sh`")
            for path in (self.root, self.sockets, pwfile):
                os.chown(path, pg.pw_uid, pg.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        self._initialised = True

    def start(self) -> None:
        """Start (initdb first, the first time) on a free port; a restart keeps the port."""
        if not self._initialised:
            self._initdb()
        last: Exception | None = None
        for _ in range(3):
            port = self.port or free_port()
            opts = (
                f"-p {port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", opts)
            except RuntimeError as exc:  # most likely the port was taken meanwhile
                last = exc
                if self.port:
                    raise
                continue
            self.port = port
            self.running = True
            return
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
            self.running = False

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str | None = None) -> str:
        """A new, empty database; returns its URL (with the password)."""
        import psycopg

        dbname = dbname or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        return self.url(dbname)


def start_server() -> PgServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(_INSTALL_HINT, pytrace=False)
    server = PgServer(bin_dir)
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A server of one's own (for tests that stop and restart it)."""
    server = start_server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    return pg_server.create_database("secflow")
