"""CPU per request of one page, in process (no HTTP, no gunicorn): the app's own cost and a
cProfile of it. `python bench/cpu.py /orders [--cookie …] [--orders 10000] [--n 2000] [--top 30]`
against the bench database (bench/out/pgdata). SORT=cumulative sorts the profile by cumulative time."""
import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_database  # noqa: E402


def call(app, path, cookie=""):
    target, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": target, "QUERY_STRING": query,
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1", "HTTP_COOKIE": cookie,
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
    status = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    if not status[0].startswith("200"):
        raise SystemExit(f"{path}: {status[0]}")
    return body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--cookie", default="")
    parser.add_argument("--orders", type=int, default=1_000_000, help="the data set (bench/run.py --orders)")
    args = parser.parse_args()
    _server, url = bench_database(args.orders)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "bench-secret")
    import app as birzha
    for _ in range(200):
        call(birzha.app, args.path, args.cookie)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.n):
        call(birzha.app, args.path, args.cookie)
    wall = (time.perf_counter() - started) / args.n * 1000
    own = (time.process_time() - cpu) / args.n * 1000
    print(f"{args.path}: {own:.3f} ms of app CPU, {wall:.3f} ms wall per request")
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for _ in range(args.n // 4):
        call(birzha.app, args.path, args.cookie)
    profile.disable()
    stats = pstats.Stats(profile)
    stats.sort_stats(os.environ.get("SORT", "tottime")).print_stats(args.top)


if __name__ == "__main__":
    main()
