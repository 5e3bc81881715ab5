"""EXPLAIN (ANALYZE, BUFFERS) of the queries issue 13 names, on the bench database.

Prints, per case, the median execution time of 5 runs, the shared buffers hit/read and the plan's
scan nodes; --plans prints the full text plans too. --queries FILE reads another queries.sql
(e.g. the one of an older commit, for a before/after).
Usage: python bench/explain.py [--orders N] [--queries FILE] [--plans]
"""
import argparse
import datetime
import statistics
import sys
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from common import bench_database
from run import new_session

import db  # noqa: E402
import orders as orders_module  # noqa: E402
import web  # noqa: E402


def scans(plan):
    found = []
    if "Scan" in plan["Node Type"]:
        found.append(f'{plan["Node Type"]} {plan.get("Index Name") or plan.get("Relation Name", "")}'.strip())
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


def explain(connection, sql, params, runs=5):
    times, plan = [], None
    for _ in range(runs):
        plan = connection.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()["QUERY PLAN"][0]
        times.append(plan["Execution Time"])
    text = "\n".join(row["QUERY PLAN"] for row in connection.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params))
    top = plan["Plan"]
    return statistics.median(times), top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0), scans(top), text


def cases(connection):
    end = orders_module.END_OF_TIME
    feed = {"q": None, "category_id": None, "min_budget": None, "max_budget": None, "sort": "new",
            "after_time": end, "after_budget": orders_module.TOP_BUDGET, "after_deadline": "-infinity",
            "after_id": orders_module.LAST_ID, "edge_id": None, "edge_time": None, "edge_budget": None,
            "edge_deadline": None, "window": orders_module.SEARCH_WINDOW,
            "limit": 21}
    one = lambda sql: connection.execute(sql).fetchone()  # noqa: E731
    customer = one("SELECT customer_id AS id FROM orders GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")["id"]
    performer = one("""SELECT performer_id AS id FROM orders WHERE performer_id IS NOT NULL
                       GROUP BY 1 ORDER BY count(*) DESC LIMIT 1""")["id"]
    # the performer the catalogue's 100th page (of 20) starts after
    deep = one("""SELECT s.performer_id AS id FROM performer_stats s JOIN users u ON u.id = s.performer_id
                  WHERE NOT u.is_blocked
                  ORDER BY s.rating_avg DESC NULLS LAST, s.orders_completed DESC, s.performer_id
                  OFFSET 1979 LIMIT 1""")["id"]
    quiet = one("""SELECT performer_id AS id FROM orders WHERE performer_id IS NOT NULL
                   ORDER BY created_at LIMIT 1""")["id"]
    cabinet = {"status": None, "after_time": end, "after_id": orders_module.LAST_ID, "limit": 21, "lang": "ru"}

    def signed_in(user_id, key):
        """A cabinet reads its viewer by the session (the id too, for the statements of before)."""
        return dict(cabinet, token_hash=web.token_hash(new_session(connection, user_id)), **{key: user_id})
    customer_page, performer_page = signed_in(customer, "customer_id"), signed_in(performer, "performer_id")
    return [
        ("feed, first page", "orders_feed", feed),
        ("search window edge (q=логотип)", "orders_feed_window_edge", dict(feed, q="логотип")),
        ("catalogue, first page", "performers_catalogue", {"after": None, "category_id": None, "limit": 21}),
        ("catalogue, 100th page", "performers_catalogue", {"after": deep, "category_id": None, "limit": 21}),
        (f"customer cabinet, all ({customer})", "customer_cabinet_page", customer_page),
        (f"performer cabinet, all ({performer})", "performer_cabinet_page", performer_page),
        (f"performer cabinet, all, only old orders ({quiet})", "performer_cabinet_page", signed_in(quiet, "performer_id")),
        (f"performer cabinet, done tab ({performer})", "performer_cabinet_page",
         dict(performer_page, status="done")),
        (f"performer's offers tab, the aside and reviews alone ({performer})", "performer_cabinet_page",
         dict(performer_page, limit=0)),
    ]


V6_INDEXES = """
DROP INDEX performer_stats_rank_idx;
CREATE INDEX performer_stats_rank_idx ON performer_stats (rating_avg DESC NULLS LAST, orders_completed DESC, performer_id);
DROP INDEX orders_customer_idx;
DROP INDEX orders_performer_idx;
CREATE INDEX orders_customer_idx ON orders (customer_id, status, created_at DESC);
CREATE INDEX orders_performer_idx ON orders (performer_id, status, created_at DESC) WHERE performer_id IS NOT NULL;
ANALYZE orders;
ANALYZE performer_stats;
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--queries", type=Path)
    parser.add_argument("--plans", action="store_true")
    parser.add_argument("--only")
    parser.add_argument("--v6-indexes", action="store_true",
                        help="explain with the indexes of schema version 6 (in a transaction rolled back)")
    args = parser.parse_args()
    queries = db.load_queries(args.queries) if args.queries else db.Q
    _server, url = bench_database(args.orders)
    print(f"# EXPLAIN (ANALYZE, BUFFERS), {datetime.date.today()}, {args.orders} orders\n")
    print("| query | median ms | buffers | scans |\n|---|---|---|---|")
    with psycopg.connect(url, row_factory=dict_row, autocommit=not args.v6_indexes) as connection:
        if args.v6_indexes:
            connection.execute(V6_INDEXES)
        plans = []
        for label, name, params in cases(connection):
            if args.only and args.only not in label:
                continue
            ms, buffers, used, text = explain(connection, queries[name], params)
            print(f"| {label} | {ms:.2f} | {buffers} | {', '.join(used)} |")
            plans.append(f"-- {label}\n{text}")
        if args.plans:
            print("\n" + "\n\n".join(plans))
        if args.v6_indexes:
            connection.rollback()


if __name__ == "__main__":
    sys.exit(main())
