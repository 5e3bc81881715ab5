"""The database: the named queries, one connection pool per process, and the one place where a
connection is taken from that pool and given back (`Lease`).

It is told its URL and imports nothing of ours.
"""
import os
import re
import threading
from pathlib import Path

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent
SCHEMA_VERSION = 3
POOL_SIZE = int(os.environ.get("POOL_SIZE", "8"))
POOL_TIMEOUT = float(os.environ.get("POOL_TIMEOUT", "3"))


# ---------------------------------------------------------------------------------------------
# Named queries (db/queries.sql)

def load_queries(path=ROOT / "db" / "queries.sql"):
    """Parses `-- name: x` blocks into {name: sql}; a duplicate name is an error."""
    queries, name, lines = {}, None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"--\s*name:\s*(\w+)\s*$", line)
        if match:
            if name:
                queries[name] = "\n".join(lines).strip()
            name, lines = match.group(1), []
            if name in queries:
                raise ValueError(f"duplicate query name {name!r} in {path}")
        elif name and not line.lstrip().startswith("--"):
            lines.append(line)
    if name:
        queries[name] = "\n".join(lines).strip()
    return queries


Q = load_queries()


# ---------------------------------------------------------------------------------------------
# The pool of this process

_lock = threading.Lock()
_current = {"pid": None, "url": None, "pool": None}


def pool(url):
    """This process's open pool for `url`: made after a fork (gunicorn) or a change of URL (tests).

    A pool is kept only once it is open with its first connection ready, so the first request
    never finds it empty and grows it; if the database is down, opening fails (PoolTimeout) and
    the next request tries again with a fresh pool rather than one stuck in a long back-off.
    """
    pid = os.getpid()
    current = _current
    if current["pid"] == pid and current["url"] == url:
        return current["pool"]
    with _lock:
        if current["pid"] == pid and current["url"] == url:
            return current["pool"]
        if current["pid"] == pid and current["pool"] is not None:
            current["pool"].close()  # another URL: tests point the app at a fresh database
        current.update(pid=None, url=None, pool=None)
        fresh = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=POOL_SIZE, timeout=POOL_TIMEOUT, open=False,
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={"row_factory": dict_row}, name="birzha")
        try:
            fresh.open(wait=True, timeout=POOL_TIMEOUT)
        except BaseException:
            fresh.close()
            raise
        current.update(pid=pid, url=url, pool=fresh)
        return fresh


def close_pool():
    """Closes this process's pool (tests, shutdown); a pool inherited through fork is left alone."""
    with _lock:
        if _current["pid"] == os.getpid() and _current["pool"] is not None:
            _current["pool"].close()
        _current.update(pid=None, url=None, pool=None)


class Lease:
    """A connection taken from a pool, given back to that same pool exactly once by `end`.

    The lease keeps the pool that gave the connection, so giving it back never looks a pool up
    (or makes one), even from a streamed body closed late or at interpreter exit.
    """

    def __init__(self, url):
        self.pool = pool(url)
        self.conn = self.pool.getconn()

    def end(self, commit):
        """Commits or rolls back, then gives the connection back. A failed COMMIT raises (after
        the connection is back); a failed rollback does not, the pool discards a broken connection."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if commit:
                conn.commit()
            else:
                try:
                    conn.rollback()
                except psycopg.Error:
                    pass
        finally:
            self.pool.putconn(conn)


# ---------------------------------------------------------------------------------------------
# The schema

def schema_status(connection):
    """'empty', 'current', or the unknown version number found in the database."""
    cur = connection.cursor(row_factory=dict_row)
    if cur.execute(Q["schema_has_tables"]).fetchone()["n"] == 0:
        return "empty"
    try:
        row = cur.execute(Q["schema_version_read"]).fetchone()
    except psycopg.errors.UndefinedTable:
        connection.rollback()
        return None
    return "current" if row and row["version"] == SCHEMA_VERSION else (row or {}).get("version")


def apply_schema(url):
    """Builds the schema on an empty database; leaves a current one alone; refuses anything else."""
    with psycopg.connect(url) as connection:
        status = schema_status(connection)
        if status == "empty":
            connection.execute((ROOT / "db" / "schema.sql").read_text(encoding="utf-8"))
            connection.commit()
            return "created"
        if status == "current":
            return "current"
        raise SystemExit(
            f"This database has schema version {status!r}, but this Birzha knows only version "
            f"{SCHEMA_VERSION}. Point DATABASE_URL at an empty database or at a Birzha database.")
