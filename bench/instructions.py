"""Instructions per request of one page, in process (no HTTP, no gunicorn), counted by valgrind
(cachegrind): unlike CPU time they do not move with the machine's load, so a change of 2% in the
app's own work shows. PostgreSQL's side is not counted (another process).
`python bench/instructions.py PATH [--cookie …] [--orders 10000] [--n 120]` against the bench
database (bench/out/pgdata); needs valgrind. Two runs, of 30 requests to warm up and then none or
N more: the difference, divided by N."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def inner(args):
    """Under valgrind: warm up, then serve the page `args.n` times."""
    from common import bench_database
    from cpu import call
    _server, url = bench_database(args.orders)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "bench-secret")
    import app as birzha
    for _ in range(30 + args.n):
        call(birzha.app, args.path, args.cookie)


def counted(args, n):
    """The instructions valgrind counted in a whole run serving the page 30 + n times."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               sys.executable, __file__, args.path, "--cookie", args.cookie, "--orders", str(args.orders),
               "--n", str(n), "--inner"]
    # one hash seed for both runs: dicts and sets then probe the same way
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    found = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
    if run.returncode or not found:
        raise SystemExit(f"valgrind failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--cookie", default="")
    parser.add_argument("--orders", type=int, default=1_000_000, help="the data set (bench/run.py --orders)")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        return inner(args)
    per_request = (counted(args, args.n) - counted(args, 0)) / args.n
    print(f"{args.path}: {per_request / 1000:,.0f} k instructions per request (the app's, in process)")


if __name__ == "__main__":
    main()
