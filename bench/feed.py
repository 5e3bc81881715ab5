"""Bench: the feed at 1,000,000 orders.

1. The feed query inside PostgreSQL (EXPLAIN ANALYZE, median of 7) on the first page and on a page
   300,000 orders deep: keyset pagination must cost the same at any depth.
2. Throughput and latency over HTTP with wrk against gunicorn (2 workers) on 127.0.0.1, 10 s per URL.
Usage: python bench/feed.py   (builds bench/out/pgdata with 1M orders on the first run, ~1 min)
"""
import datetime
import json
import re
import statistics
import subprocess
import sys

import psycopg
from psycopg.rows import dict_row

from common import Gunicorn, bench_database, machine

import db  # noqa: E402  (common put the repo on sys.path)

END_OF_TIME = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)


def feed_params(**changes):
    params = {"q": None, "category_id": None, "min_budget": None, "max_budget": None, "sort": "new",
              "after_time": END_OF_TIME, "after_budget": 2**31 - 1, "after_id": 2**63 - 1,
              "after_deadline": "-infinity",
              "edge_id": None, "edge_time": None, "edge_budget": None, "edge_deadline": None}
    params.update(changes)
    return params


def explain(connection, name, params):
    plan = connection.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + db.Q[name], params).fetchone()["QUERY PLAN"][0]
    return plan["Execution Time"], set(re.findall(r'"Index Name": "(\w+)"', json.dumps(plan["Plan"])))


def feed_ms(connection, params):
    """One feed page as orders.feed_rows reads it: with a search, the window edge, the window,
    and (when the page is short) the GIN index beyond it. Returns (ms, indexes used)."""
    import orders
    params = dict(params, window=orders.SEARCH_WINDOW, limit=21)
    total, indexes = 0.0, set()
    if params["q"]:
        ms, used = explain(connection, "orders_feed_window_edge", params)
        total, indexes = total + ms, indexes | used
        edge = connection.execute(db.Q["orders_feed_window_edge"], params).fetchone()
        if edge:
            params.update(edge_id=edge["id"], edge_time=edge["created_at"], edge_budget=edge["budget"],
                          edge_deadline=edge["deadline_key"])
    ms, used = explain(connection, "orders_feed", params)
    total, indexes = total + ms, indexes | used
    if params["q"] and params["edge_id"] and len(connection.execute(db.Q["orders_feed"], params).fetchall()) <= 20:
        ms, used = explain(connection, "orders_feed_search_older", params)
        total, indexes = total + ms, indexes | used
    return total, indexes


def explain_ms(connection, params, runs=7):
    """Median time of a feed page in PostgreSQL (ms), and the indexes it used."""
    results = [feed_ms(connection, params) for _ in range(runs)]
    indexes = sorted(set().union(*(used for _ms, used in results)))
    return statistics.median(ms for ms, _used in results), ", ".join(indexes) or "no index"


def wrk(url, seconds=10):
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+\w+)", out).group(1)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def main():
    server, url = bench_database()
    print(f"# feed bench, {datetime.date.today()}, {machine()}")
    with psycopg.connect(url, row_factory=dict_row) as connection:
        total = connection.execute("SELECT count(*) AS n FROM orders").fetchone()["n"]
        open_total = connection.execute("SELECT count(*) AS n FROM orders WHERE status = 'open'").fetchone()["n"]
        deep = connection.execute("""SELECT created_at, id FROM orders WHERE status = 'open'
                                     ORDER BY created_at DESC, id DESC OFFSET 300000 LIMIT 1""").fetchone()
        deep_budget = connection.execute("""SELECT budget, id FROM orders WHERE status = 'open'
                                            ORDER BY budget DESC, id DESC OFFSET 300000 LIMIT 1""").fetchone()
        design = connection.execute("SELECT id FROM categories WHERE slug = 'design'").fetchone()["id"]
        order_id = connection.execute("SELECT max(id) AS id FROM orders WHERE status = 'done'").fetchone()["id"]
        print(f"{total} orders, {open_total} open\n")
        print("| feed query (in PostgreSQL) | median ms | indexes used |\n|---|---|---|")
        cases = [
            ("newest, first page", feed_params()),
            ("newest, 300,000 orders deep", feed_params(after_time=deep["created_at"], after_id=deep["id"])),
            ("by budget, first page", feed_params(sort="budget")),
            ("by budget, 300,000 orders deep", feed_params(sort="budget", after_budget=deep_budget["budget"],
                                                           after_id=deep_budget["id"])),
            ("category design, first page", feed_params(category_id=design)),
            ("budget 5,000–6,000", feed_params(min_budget=5000, max_budget=6000)),
            ("search q=логотип (a common word)", feed_params(q="логотип")),
            ("search q=landing, by budget", feed_params(q="landing", sort="budget")),
            ("search q=123457 (one order)", feed_params(q="123457")),
            ("search for an absent word", feed_params(q="несуществующееслово")),
            ("search for an absent word, by budget", feed_params(q="несуществующееслово", sort="budget")),
        ]
        for label, params in cases:
            ms, indexes = explain_ms(connection, params)
            print(f"| {label} | {ms:.2f} | {indexes} |")

    deep_cursor = f"{deep['created_at'].isoformat()}_{deep['id']}"
    with Gunicorn(url) as web:
        print("\n| HTTP (wrk -t2 -c8, 10 s, gunicorn 2 workers) | req/s | p50 | p99 | non-2xx |\n|---|---|---|---|---|")
        for label, path in [("/", "/"), ("/orders", "/orders"),
                            ("/orders 300,000 deep", "/orders?after=" + deep_cursor.replace("+", "%2B")),
                            ("/orders?q=логотип", "/orders?q=%D0%BB%D0%BE%D0%B3%D0%BE%D1%82%D0%B8%D0%BF"),
                            ("/orders?q=absentword", "/orders?q=absentword"),
                            ("/orders?category=design&sort=budget", "/orders?category=design&sort=budget"),
                            ("/orders/<id>", f"/orders/{order_id}"),
                            ("/performers", "/performers")]:
            rps, p50, p99, errors = wrk(web.base + path)
            print(f"| {label} | {rps:.0f} | {p50} | {p99} | {errors} |")
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
