"""The PostgreSQL the tests of the postgresql: store use: ACMEWS_TEST_POSTGRESQL names it
(``.ci/run`` starts a private one and sets it); without it those tests skip with one line."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import TestCase

#: the libpq URI of a database the tests may create schemas in, or None
URL = os.environ.get("ACMEWS_TEST_POSTGRESQL") or None

#: why the PostgreSQL tests skip (None: they run)
SKIP = (
    None
    if URL
    else "no PostgreSQL: set ACMEWS_TEST_POSTGRESQL=postgresql://USER@127.0.0.1:PORT/DBNAME "
    "(a database USER may create schemas in; .ci/run starts one) to run these tests"
)


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (their search_path)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"


def fresh_database(case: TestCase) -> str:
    """A URL of an empty schema of its own for ``case`` (dropped at its end): tests stay
    apart, with -j2 too."""
    import psycopg

    assert URL is not None
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    case.addCleanup(drop)
    return with_schema(URL, schema)


def sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of ``query`` on a connection of its own (a test's look at the database)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, args or None)
        return cursor.fetchall() if cursor.description else []


class PrivateServer:
    """A PostgreSQL server of a test's own, which it may stop and start (the fault tests):
    initdb in a temporary directory (as ``nobody`` when run as root), on a free port."""

    def __init__(self, port: int) -> None:
        self.bin = _bin_dir()
        self.dir = tempfile.mkdtemp(prefix="acmews-pg-test-")
        self.port = port
        self.user = "nobody" if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        self._as("initdb", "-D", f"{self.dir}/data", "-U", "acmews", "--auth=trust")
        self.url = f"postgresql://acmews@127.0.0.1:{port}/postgres"

    def _as(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bin, program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
        self._as("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w",
                 "-o", options, "start")  # fmt: skip

    def stop(self) -> None:
        self._as("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # (stopped already)
        shutil.rmtree(self.dir, ignore_errors=True)


def _bin_dir() -> str:
    found = os.environ.get("ACMEWS_TEST_POSTGRESQL_BIN")
    if found:
        return found
    root = "/usr/lib/postgresql"
    for version in sorted(os.listdir(root), reverse=True) if os.path.isdir(root) else ():
        if os.path.exists(os.path.join(root, version, "bin", "initdb")):
            return os.path.join(root, version, "bin")
    initdb = shutil.which("initdb")
    if initdb is None:
        raise FileNotFoundError("initdb")
    return os.path.dirname(initdb)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
