"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temporary folder, ``pg_ctl`` on a
unix socket in that folder (no TCP port), removed at the end.

The binaries come from ``LLAMAHUB_PG_BIN``, else Debian's newest ``/usr/lib/postgresql/*/bin``, else
the PATH. PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` user
(which Debian's package creates) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# CI sets this: there the tests must run, never skip (.ci/run installs PostgreSQL)
REQUIRE_ENV = "LLAMAHUB_REQUIRE_POSTGRES"


def bin_dir() -> Path | None:
    if os.environ.get("LLAMAHUB_PG_BIN"):
        return Path(os.environ["LLAMAHUB_PG_BIN"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set: PostgreSQL must be available)")
    pytest.skip(reason)


class Cluster:
    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir, self.durable = bindir, durable
        self.dir = Path(tempfile.mkdtemp(prefix="llamahub-pg-"))
        self.data = self.dir / "data"
        self.port = 5432 + secrets.randbelow(20000)  # names the socket file only
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.dir, pg.pw_uid, pg.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bindir / tool), *args], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")

    def start(self) -> None:
        """Start (or restart) the server; tests run it without fsync, benchmarks with (``durable``)."""
        fsync = "on" if self.durable else "off"
        options = (f"-k {self.dir} -c listen_addresses='' -p {self.port} -c fsync={fsync} "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.dir}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(host=str(self.dir), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> Cluster:
    """A running cluster, or a skip (a failure under ``LLAMAHUB_REQUIRE_POSTGRES``)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg is not installed (pip install -e '.[test]')")
    bindir = bin_dir()
    if bindir is None or not (bindir / "initdb").exists():
        skip_or_fail("no PostgreSQL binaries (apt-get install postgresql, or set LLAMAHUB_PG_BIN)")
    assert bindir is not None
    cluster = Cluster(bindir, durable=durable)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    return cluster
