"""A throwaway PostgreSQL cluster for the tests, and a fresh database per test.

Nothing runs when CI starts, so each pytest process (each xdist worker) starts its own cluster
with Debian's binaries (``apt-get install postgresql``) in a temporary folder. It listens on a
unix socket in that folder only (no TCP port, so parallel workers cannot collide) and is stopped
and removed at the end of the session. PostgreSQL refuses to run as root: as root, the cluster
belongs to the ``postgres`` system user and its commands run through ``runuser``.

``VOICEGATE_TEST_POSTGRES_URL`` (e.g. ``postgresql+psycopg://me@/postgres?host=/run/postgresql``)
uses a server of your own instead: a superuser URL, whose databases the tests create and drop.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

ROLE = "postgres"
FOLDER_PREFIX = "vg-pg-"  # then the pid of the test process that owns the cluster
# A throwaway cluster needs no durability; these spare the disk of a shared 2-core machine.
SETTINGS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200", "-c", "shared_buffers=32MB", "-c", "listen_addresses=''")


def bin_dir() -> Path:
    """Return the newest installed PostgreSQL's binary folder, or fail the test clearly."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)")
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """A running PostgreSQL server the tests may create databases on."""

    admin_url: str  # postgresql+psycopg:// URL of a superuser connection to the "postgres" database
    folder: Path | None = None  # the cluster's folder when this session started it
    _user: str | None = None

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        base, _, query = self.admin_url.partition("?")
        return base.rsplit("/", 1)[0] + "/" + database + ("?" + query if query else "")

    def execute(self, *statements: str) -> None:
        """Run statements outside a transaction (CREATE/DROP DATABASE need that) as the superuser."""
        import psycopg

        with psycopg.connect(self.libpq_url("postgres"), autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def libpq_url(self, database: str) -> str:
        """Return the plain libpq URL of ``database`` (for psycopg, psql and pg_dump)."""
        return self.url(database).replace("postgresql+psycopg://", "postgresql://", 1)

    def create_database(self, prefix: str = "vg") -> str:
        """Create an empty database and return its ``postgresql+psycopg://`` URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url``, ending the connections still open to it."""
        name = url.partition("?")[0].rsplit("/", 1)[1]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def run(self, program: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run one of PostgreSQL's programs (pg_dump, psql) against this server."""
        return subprocess.run([str(bin_dir() / program), *args], check=True, capture_output=True, **kwargs)

    def stop(self) -> None:
        """Stop the cluster this session started and remove its files."""
        if self.folder is None:
            return
        subprocess.run(_as_owner(self._user) + [str(bin_dir() / "pg_ctl"), "stop", "-D", str(self.folder / "data"),
                                                  "-m", "immediate", "-s"], check=False, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _as_owner(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


_count = itertools.count()


def _remove_abandoned(user: str | None) -> None:
    """Stop and remove clusters left by test processes that died without their teardown (kill -9)."""
    for folder in Path(tempfile.gettempdir()).glob(FOLDER_PREFIX + "*"):
        try:
            pid = int(folder.name.removeprefix(FOLDER_PREFIX).split("-")[0])
            os.kill(pid, 0)
            continue  # its test process still runs (another worker, or another checkout's run)
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        subprocess.run(_as_owner(user) + [str(bin_dir() / "pg_ctl"), "stop", "-D", str(folder / "data"),
                                          "-m", "immediate", "-s"], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def start() -> PostgresServer:
    """Start a throwaway cluster in a new temporary folder; return it running."""
    binaries = bin_dir()
    user = ROLE if os.geteuid() == 0 else None
    _remove_abandoned(user)
    # Short and outside pytest's root-only temporary tree: the socket path is limited to ~100
    # bytes, and the postgres user must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-{next(_count)}-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    owner = _as_owner(user)
    try:
        subprocess.run(owner + [str(binaries / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust",
                                "--encoding=UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True)
        options = " ".join(SETTINGS + ("-k", str(folder)))
        subprocess.run(owner + [str(binaries / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60",
                                "-l", str(folder / "server.log"), "-o", options],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {error.stderr.decode(errors='replace')}\n{log}")
    return PostgresServer(f"postgresql+psycopg://{ROLE}@/postgres?host={quote(str(folder))}", folder, user)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test process: a throwaway cluster, or VOICEGATE_TEST_POSTGRES_URL's."""
    configured = os.environ.get("VOICEGATE_TEST_POSTGRES_URL")
    if configured:
        yield PostgresServer(configured)
        return
    server = start()
    yield server
    server.stop()


@pytest.fixture
def postgres_database(postgres_server):
    """The ``postgresql+psycopg://`` URL of a fresh empty database, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
