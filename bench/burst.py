"""The search window right after a burst of writes, without a manual VACUUM (issue 13).

Runs WRITES writes the way the API makes them (order_create, order_take, order_deliver,
order_accept: 4 per order, each its own transaction) in chunks of 5,000 with a pause between, then
EXPLAINs the search window edge (q=логотип) at once, and again after autovacuum has had a minute;
--queries FILE compares another queries.sql (e.g. the one before the window became index-only).
Usage: python bench/burst.py [--orders N] [--writes 20000] [--queries FILE]
"""
import argparse
import sys
import time
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from common import bench_database
from explain import cases, explain

import db  # noqa: E402


def window(connection, queries):
    label, name, params = cases(connection)[1]
    ms, buffers, used, text = explain(connection, queries[name], params)
    heap = [line.strip() for line in text.splitlines() if "Heap Fetches" in line or "Rows Removed" in line]
    dead = connection.execute("SELECT n_dead_tup, last_autovacuum FROM pg_stat_user_tables "
                              "WHERE relname = 'orders'").fetchone()
    return f"{ms:.2f} ms, {buffers} buffers, {', '.join(used)}; {'; '.join(heap)}; dead rows {dead['n_dead_tup']}, " \
           f"last autovacuum {dead['last_autovacuum']:%H:%M:%S}" if dead["last_autovacuum"] else \
           f"{ms:.2f} ms, {buffers} buffers, {', '.join(used)}; {'; '.join(heap)}; dead rows {dead['n_dead_tup']}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--queries", type=Path, action="append", default=[])
    args = parser.parse_args()
    _server, url = bench_database(args.orders)
    versions = [("this branch", db.Q)] + [(str(path), db.load_queries(path)) for path in args.queries]
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as c:
        pairs = c.execute("""SELECT cu.id AS customer, pe.id AS performer
                             FROM (SELECT id, row_number() OVER () AS n FROM users WHERE role = 'customer'
                                   AND NOT is_blocked AND NOT is_staff ORDER BY id LIMIT 50) cu
                             JOIN (SELECT id, row_number() OVER () AS n FROM users WHERE role = 'performer'
                                   ORDER BY id LIMIT 50) pe USING (n)""").fetchall()
        for label, queries in versions:
            print(f"before the burst ({label}): {window(c, queries)}")
        started, done = time.monotonic(), 0
        while done < args.writes:
            chunk_end = done + 5000
            while done < chunk_end:
                pair = pairs[done % len(pairs)]
                order = c.execute(db.Q["order_create"], {"customer_id": pair["customer"], "category": "design",
                                                         "title": "Логотип для бенча", "description": "burst",
                                                         "budget": 1000, "deadline": None, "mode": "take"}).fetchone()
                c.execute(db.Q["order_take"], {"order_id": order["id"], "performer_id": pair["performer"]})
                c.execute(db.Q["order_deliver"], {"order_id": order["id"], "performer_id": pair["performer"],
                                                  "message": "готово"})
                c.execute(db.Q["order_accept"], {"order_id": order["id"], "customer_id": pair["customer"],
                                                 "rating": 7, "review": ""})
                done += 4
            time.sleep(2)
        print(f"{done} writes in {time.monotonic() - started:.0f} s")
        for label, queries in versions:
            print(f"right after ({label}): {window(c, queries)}")
        time.sleep(70)
        for label, queries in versions:
            print(f"70 s later, no manual VACUUM ({label}): {window(c, queries)}")
        print("audit_counters():", c.execute("SELECT count(*) AS n FROM audit_counters()").fetchone()["n"], "rows")


if __name__ == "__main__":
    sys.exit(main())
