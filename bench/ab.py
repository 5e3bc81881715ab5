"""Two checkouts of the app on the same pages, measured by turns: is a change faster?

The machine's speed drifts by ±10% over minutes, more than most changes move a page, so a change
measured in one run of `make bench` and its base in another tell nothing. Here both run side by
side (gunicorn, 2 sync workers each, on the bench database), and each round measures every page
on one then the other, in A B B A order, for a few seconds each: the drift is shared by the two.
Prints per page the median req/s and CPU ms per request (app + PostgreSQL, from /proc) of each,
and the median of the rounds' ratios, of the CPU also the app's and PostgreSQL's apart.

Usage: python bench/ab.py BASE_DIR [--rounds 8] [--seconds 3] PAGE… where BASE_DIR is another
checkout (a `git worktree` of the base commit) and a PAGE is a path, or `path cookie` in one
argument ("/cabinet birzha_session=…"). This checkout is B. The database's schema must suit both.
"""
import argparse
import statistics
import sys
from pathlib import Path

from common import Gunicorn, bench_database
from run import Cpu, wrk

HERE = Path(__file__).resolve().parent.parent


def measure(server, page, seconds, connections):
    path, _, cookie = page.partition(" ")
    cpu = Cpu(server.process.pid)
    before = cpu.snapshot()
    result = wrk(server.base + path, seconds, connections, ("Cookie: " + cookie,) if cookie else ())
    after = cpu.snapshot()
    served = max(result["requests"], 1)
    if result["errors"]:
        raise SystemExit(f"{page}: {result['errors']} errors")
    app, postgres = (Cpu.spent(before[i], after[i]) / served * 1000 for i in (0, 1))
    return result["rps"], app + postgres, app, postgres


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base", type=Path)
    parser.add_argument("pages", nargs="+")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--orders", type=int, default=1_000_000)
    args = parser.parse_args()
    _server, url = bench_database(args.orders)
    with Gunicorn(url, port=8191, root=args.base.resolve()) as a, Gunicorn(url, port=8192, root=HERE) as b:
        seen = {page: {"A": [], "B": []} for page in args.pages}
        for round_ in range(args.rounds):
            for page in args.pages:
                for name, server in (("A", a), ("B", b), ("B", b), ("A", a)):
                    seen[page][name].append(measure(server, page, args.seconds, args.connections))
            print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr)
    print(f"A = {args.base.resolve()}, B = {HERE}; {args.rounds} rounds of A B B A, {args.seconds} s each")
    print("| page | A req/s | B req/s | B/A req/s: median of the rounds (lowest–highest) "
          "| A CPU ms (app + PostgreSQL) | B CPU ms (app + PostgreSQL) | B/A CPU ms | B/A app | B/A PostgreSQL |")
    print("|---|---|---|---|---|---|---|---|---|")
    for page, runs in seen.items():
        def median(name, field):
            return statistics.median(r[field] for r in runs[name])
        print(f"| {page.partition(' ')[0]} | {median('A', 0):.0f} | {median('B', 0):.0f} "
              f"| {spread(round_ratios(runs, 0))} "
              f"| {median('A', 2):.3f} + {median('A', 3):.3f} | {median('B', 2):.3f} + {median('B', 3):.3f} "
              f"| {spread(round_ratios(runs, 1))} | {spread(round_ratios(runs, 2))} "
              f"| {spread(round_ratios(runs, 3))} |")


def round_ratios(runs, field):
    """Per round, the mean of B's two turns over the mean of A's (field 0: req/s, 1: CPU ms per
    request, 2: the app's part of it, 3: PostgreSQL's)."""
    a, b = runs["A"], runs["B"]
    return [(b[2 * i][field] + b[2 * i + 1][field]) / (a[2 * i][field] + a[2 * i + 1][field])
            for i in range(len(a) // 2)]


def spread(ratios):
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"


if __name__ == "__main__":
    main()
