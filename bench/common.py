"""Shared pieces of the benches: the bench database and a gunicorn on 127.0.0.1."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
SHARED_BUFFERS = "1GB"


def bench_database(orders=1_000_000, users=None):
    """A local PostgreSQL in bench/out/pgdata with the schema and `orders` orders (built once;
    the million lives in the database bench, other sizes in bench_<orders>)."""
    import db
    import seed
    from devserver import LocalPostgres, ensure_database
    OUT.mkdir(exist_ok=True)
    server = LocalPostgres(OUT / "pgdata")
    with psycopg.connect(server.uri(), autocommit=True) as connection:
        shared_buffers = connection.execute("SHOW shared_buffers").fetchone()[0]
        if shared_buffers != SHARED_BUFFERS:
            # As a production server would be set: room for the data set's hot part (the orders
            # and their indexes are 860 MB at a million), not the default 128 MB.
            connection.execute(f"ALTER SYSTEM SET shared_buffers = '{SHARED_BUFFERS}'")
    if shared_buffers != SHARED_BUFFERS:
        server.restart()
    name = "bench" if orders == 1_000_000 else f"bench_{orders}"
    ensure_database(server.uri(), name)
    url = server.uri(name)
    db.migrate(url, log=lambda *a: None)
    seed.seed(url, orders, users or max(1000, orders // 10))
    return server, url


class Gunicorn:
    """The app under gunicorn on 127.0.0.1:port, stopped on exit."""

    def __init__(self, url, port=8181, workers=2, root=ROOT):
        # A server left on the port (an earlier run's) would answer in this one's place, and be
        # measured as it: its CPU not counted, its code not this checkout's.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: a closed connection's TIME_WAIT is no server
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise RuntimeError(f"127.0.0.1:{port} is taken: stop the server on it first") from None
        env = dict(os.environ, DATABASE_URL=url, SECRET_KEY="bench-secret")
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--no-control-socket", "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--timeout", "120", "--log-level", "warning", "app:app"],
            cwd=root, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("gunicorn did not start")
                time.sleep(0.2)

    def worker_pids(self):
        import psutil
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def machine():
    """One line about this machine for the README table."""
    import platform
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GiB, Python {platform.python_version()} "
            f"({os.path.realpath(sys.executable)}, {python_build()})")


def python_build():
    """Whether this interpreter runs from a shared libpython, as pyenv's default build does: the
    app's CPU depends on the build (README, production), so the table says which it measured."""
    try:
        with open("/proc/self/maps") as maps:
            shared = any("libpython" in line for line in maps)
    except OSError:
        return "libpython unknown"
    return "libpython shared" if shared else "libpython linked in"
