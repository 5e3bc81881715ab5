"""The database: the named queries, one connection pool per process, and the one place where a
connection is taken from that pool and given back (`Lease`).

It is told its URL and imports nothing of ours.
"""
import math
import os
import re
import select
import threading
import time
from pathlib import Path

import psycopg
import psycopg_pool
from psycopg.rows import dict_row, tuple_row

ROOT = Path(__file__).resolve().parent
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
# When this process last found its database unreachable: {"pid", "url", "at"}.
_unreachable = {"pid": None, "url": None, "at": 0.0}
# How long a pool may fail to reconnect before it is dropped, and how often, while the database is
# unreachable, one request tries to reach it again: the app serves again within about this long
# of the server accepting connections, however long the outage was.
RECONNECT_SECONDS = 0.5


def pool(url):
    """This process's open pool for `url`: made after a fork (gunicorn), a change of URL (tests),
    or an outage that dropped the last one.

    psycopg_pool reconnects with a back-off that grows the longer the database is away (attempts
    1, 3, 7, 15, 31 s after the first failure), so after a long outage the app would wait for
    the next attempt. Here a pool that cannot reconnect for RECONNECT_SECONDS is dropped (see
    `forget`), and a new one is made only after one direct connection to the server succeeds:
    one request at a time tries, at most every RECONNECT_SECONDS, and the others are answered
    at once (PoolTimeout: a 503). A pool is kept only once open with its first connection ready.
    """
    pid = os.getpid()
    current = _current
    if current["pid"] == pid and current["url"] == url:
        return current["pool"]
    if not _lock.acquire(timeout=POOL_TIMEOUT):
        raise psycopg_pool.PoolTimeout("another request of this process is connecting to the database")
    try:
        if current["pid"] == pid and current["url"] == url:
            return current["pool"]
        if current["pid"] == pid and current["pool"] is not None:
            current["pool"].close()  # another URL: tests point the app at a fresh database
        current.update(pid=None, url=None, pool=None)
        down = _unreachable
        if down["pid"] == pid and down["url"] == url and time.monotonic() - down["at"] < RECONNECT_SECONDS:
            raise psycopg_pool.PoolTimeout("the database was unreachable a moment ago")
        try:
            reachable(url)
        except psycopg.OperationalError as exc:
            down.update(pid=pid, url=url, at=time.monotonic())
            raise psycopg_pool.PoolTimeout(f"the database is unreachable: {exc}") from exc
        fresh = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=POOL_SIZE, timeout=POOL_TIMEOUT, open=False,
            check=check_connection, configure=speak_utc,
            reconnect_timeout=RECONNECT_SECONDS, reconnect_failed=forget,
            kwargs={"row_factory": dict_row}, name="birzha")
        try:
            fresh.open(wait=True, timeout=POOL_TIMEOUT)
        except BaseException:
            fresh.close()
            down.update(pid=pid, url=url, at=time.monotonic())
            raise
        down.update(pid=None, url=None, at=0.0)
        current.update(pid=pid, url=url, pool=fresh)
        return fresh
    finally:
        _lock.release()


def check_connection(conn):
    """The pool's check of a connection it is about to hand out, without a round trip when it can.

    A connection the server has ended (a restart, pg_terminate_backend, a crash) has the
    server's goodbye or the end of the stream waiting on its socket: then it is pinged, which
    raises and makes the pool take another. A quiet socket is a live connection: pinging it
    would cost every request a round trip to the server for nothing."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poll = select.poll()
    poll.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poll.poll(0):
        psycopg_pool.ConnectionPool.check_connection(conn)


# PostgreSQL's other names of UTC: initdb writes the machine's zone, often Etc/UTC.
UTC_ALIASES = {"Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu",
               "GMT", "Etc/GMT", "Greenwich", "Etc/Greenwich", "GMT0", "Etc/GMT0"}


def speak_utc(conn):
    """The pool's configure: a session whose zone is UTC by another name is told "UTC", the one name
    psycopg reads as datetime.timezone.utc; for any other it converts every time it reads to a
    ZoneInfo (0.3 µs a value, a seventh of reading a cabinet's rows). The same zone, so no date
    the database works out (current_date, a deadline) moves; a server in another zone keeps it."""
    if conn.info.parameter_status("TimeZone") in UTC_ALIASES:
        conn.autocommit = True  # a setting of the session, no transaction to end
        conn.execute(Q["session_timezone_utc"])
        conn.autocommit = False


def reachable(url):
    """One connection attempt, closed at once; raises OperationalError when it fails. Unlike a
    pool's, it fails as soon as the server refuses: no retries, no back-off."""
    psycopg.connect(url, connect_timeout=max(2, math.ceil(POOL_TIMEOUT))).close()


def forget(failed_pool):
    """The pool's reconnect_failed: it could not make a connection for RECONNECT_SECONDS, so the
    server is away. The pool is dropped (the next request makes a new one once the server
    answers) and closed, which answers the requests waiting on it at once (PoolClosed: a 503).

    psycopg_pool calls this from one of the pool's own threads, which closing the pool waits for,
    and which must not wait for `_lock` (pool() may hold it while opening): so a thread of its
    own does the work."""
    def drop():
        with _lock:
            if _current["pool"] is failed_pool:
                _current.update(pid=None, url=None, pool=None)
                _unreachable.update(pid=os.getpid(), url=failed_pool.conninfo, at=time.monotonic())
        failed_pool.close()
    threading.Thread(target=drop, name="birzha-pool-drop", daemon=True).start()


def close_pool():
    """Closes this process's pool (tests, shutdown); a pool inherited through fork is left alone."""
    with _lock:
        if _current["pid"] == os.getpid() and _current["pool"] is not None:
            _current["pool"].close()
        _current.update(pid=None, url=None, pool=None)
        _unreachable.update(pid=None, url=None, at=0.0)


def kept_cursors(conn):
    """The cursors of this connection's named queries, by name, made as first needed and kept with
    the connection. A cursor keeps what it worked out for the last query it ran (how to send each
    parameter and read each column) only while it runs that same query: so each named query has
    its own. One per statement was a third of psycopg's own time for a one-row read; one per lease
    looked up every column's type again every request (the arrays and json of a cabinet's
    statement), and one per lease for all its statements did so whenever the next statement was
    another (the feed's two)."""
    cursors = getattr(conn, "birzha_cursors", None)
    if cursors is None:
        cursors = conn.birzha_cursors = {}
    return cursors


class Lease:
    """A connection taken from a pool, given back to that same pool exactly once by `end`.

    The lease keeps the pool that gave the connection, so giving it back never looks a pool up
    (or makes one), even from a streamed body closed late or at interpreter exit.
    """

    def __init__(self, url, autocommit=False):
        """autocommit: each statement its own transaction, for requests that only read (no BEGIN
        and COMMIT round trips)."""
        self.pool = pool(url)
        self.conn = self.pool.getconn()
        try:
            if self.conn.autocommit != autocommit:  # a setter that runs psycopg's wait loop: only on a change
                self.conn.autocommit = autocommit
            self.cursors = kept_cursors(self.conn)
        except BaseException:  # a connection that broke since the pool checked it goes back
            self.pool.putconn(self.conn)
            raise

    def run(self, name, params, as_tuples=False):
        """Runs the named query through its own cursor on this connection and returns the cursor:
        its rows dicts, or with `as_tuples` plain tuples (through a cursor of their own)."""
        key = (name, True) if as_tuples else name
        cursor = self.cursors.get(key)
        if cursor is None:
            cursor = self.cursors[key] = self.conn.cursor(row_factory=tuple_row if as_tuples else dict_row)
        return cursor.execute(Q[name], params)

    def end(self, commit):
        """Commits or rolls back, then gives the connection back. A failed COMMIT raises (after
        the connection is back); a failed rollback does not, the pool discards a broken connection."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if conn.autocommit:  # each statement was its own transaction
                pass
            elif commit:
                conn.commit()
            else:
                try:
                    conn.rollback()
                except psycopg.Error:
                    pass
        finally:
            self.pool.putconn(conn)


# ---------------------------------------------------------------------------------------------
# The schema and its migrations

MIGRATIONS_DIR = ROOT / "db" / "migrations"


def migrations(directory=MIGRATIONS_DIR):
    """[(version, path)] of db/migrations/NNNN_name.sql, in order; a misnamed file is an error."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = re.fullmatch(r"(\d{4})_[a-z0-9_]+\.sql", path.name)
        if not match:
            raise ValueError(f"{path}: migrations are named NNNN_words.sql")
        found.append((int(match.group(1)), path))
    versions = [version for version, _path in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {directory}")
    return found


SCHEMA_VERSION = migrations()[-1][0]  # db/schema.sql builds this version


def schema_version(connection):
    """The version a database is at: 0 when it is empty, None when it is not Birzha's."""
    cur = connection.cursor(row_factory=dict_row)
    if cur.execute(Q["schema_has_tables"]).fetchone()["n"] == 0:
        return 0
    try:
        row = cur.execute(Q["schema_version_read"]).fetchone()
    except psycopg.errors.UndefinedTable:
        connection.rollback()
        return None
    return row["version"] if row else None


def refuse_unknown(version):
    if version is None or version > SCHEMA_VERSION:
        raise SystemExit(
            f"This database has schema version {version!r}, but this Birzha knows versions up to "
            f"{SCHEMA_VERSION}. Point DATABASE_URL at an empty database or at a Birzha database.")


def apply_schema(url):
    """`initdb`: builds db/schema.sql on an empty database, leaves a current one alone, and
    refuses an older one (that is `migrate`'s job) or one it does not know."""
    with psycopg.connect(url) as connection:
        version = schema_version(connection)
        refuse_unknown(version)
        if version == 0:
            connection.execute((ROOT / "db" / "schema.sql").read_text(encoding="utf-8"))
            connection.commit()
            return "created"
        if version < SCHEMA_VERSION:
            raise SystemExit(f"This database is at schema version {version}; "
                             f"run `python app.py migrate` to bring it to {SCHEMA_VERSION}.")
        return "current"


def migrate(url, log=print):
    """`migrate`: an empty database gets db/schema.sql; an older one each pending migration in
    order, each in one transaction that also records its version. Concurrent runs wait for each
    other (an advisory lock), so each migration runs once. Returns the versions applied."""
    applied = []
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(Q["migration_lock"])
        try:
            version = schema_version(connection)
            refuse_unknown(version)
            if version == 0:
                with connection.transaction():
                    connection.execute((ROOT / "db" / "schema.sql").read_text(encoding="utf-8"))
                log(f"Schema version {SCHEMA_VERSION} created.")
                return [SCHEMA_VERSION]
            for number, path in migrations():
                if number <= version:
                    continue
                with connection.transaction():
                    connection.execute(path.read_text(encoding="utf-8"))
                    connection.execute(Q["schema_version_set"], {"version": number})
                log(f"Applied {path.name}.")
                applied.append(number)
            if not applied:
                log(f"Schema version {version} is current.")
        finally:
            connection.execute(Q["migration_unlock"])
    return applied
