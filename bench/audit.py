"""Bench: the counter audit at 1,000,000 orders, as the admin dashboard runs it on every view.

Usage: python bench/audit.py   (uses the bench database of bench/feed.py)
"""
import datetime
import statistics
import sys
import time
import urllib.request

import psycopg

from common import Gunicorn, bench_database, machine
from export import staff_session


def timed(function, runs=3):
    times = []
    for _ in range(runs):
        started = time.monotonic()
        function()
        times.append((time.monotonic() - started) * 1000)
    return statistics.median(times)


def main():
    server, url = bench_database()
    print(f"# audit bench, {datetime.date.today()}, {machine()}\n")
    print("| what | median ms |\n|---|---|")
    with psycopg.connect(url) as connection:
        audit = timed(lambda: connection.execute("SELECT count(*) FROM audit_counters()").fetchone())
        print(f"| SELECT audit_counters() | {audit:.0f} |")

        def recalc():
            connection.execute("SELECT recalc_counters()")
            connection.rollback()
        print(f"| SELECT recalc_counters() (nothing to fix) | {timed(recalc):.0f} |")
    token = staff_session(url)
    with Gunicorn(url, workers=1) as web:
        request = urllib.request.Request(web.base + "/admin", headers={"Cookie": f"birzha_session={token}"})
        print(f"| GET /admin (dashboard, audit included) | {timed(lambda: urllib.request.urlopen(request).read()):.0f} |")
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
