"""Performance shape (issue 13): the bench's data generator, the plans of the feed, the search, the
catalogue and the cabinets on a data set big enough for the planner to prefer indexes, and the
number of SQL statements each main page runs as its data grows."""
import json
import re
import sys
from pathlib import Path

import psycopg
import pytest

import db as database
from db import Q
import orders as orders_module
import web
from orders import END_OF_TIME, LAST_ID, TOP_BUDGET

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import run as bench_run  # noqa: E402
import seed as bench_seed  # noqa: E402

STATUSES = {"open", "in_progress", "delivered", "disputed", "done", "cancelled"}


@pytest.fixture
def bench_data(db, db_url):
    """The bench's generator at a small size: 20,000 orders, 20,000 users (VACUUM ANALYZE'd)."""
    bench_seed.seed(db_url, orders=20000, users=20000, quiet=True)
    return db


def test_the_bench_generator_makes_every_status_offers_all_ratings_both_languages_and_exact_counters(bench_data):
    db = bench_data
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 20000
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 20000
    assert {r["status"] for r in db.execute("SELECT DISTINCT status::text FROM orders")} == STATUSES
    assert {r["mode"] for r in db.execute("SELECT DISTINCT mode::text FROM orders")} == {"take", "offers"}
    ratings = {r["rating"] for r in db.execute("SELECT DISTINCT rating FROM orders WHERE rating IS NOT NULL")}
    assert ratings == set(range(1, 11))
    assert db.execute("SELECT count(*) AS n FROM orders WHERE review IS NOT NULL").fetchone()["n"] > 0
    # offers: active ones on open offers-mode orders, accepted and declined ones on the others
    offers = {r["status"]: r["n"] for r in db.execute("SELECT status::text, count(*) AS n FROM offers GROUP BY 1")}
    assert set(offers) == {"active", "accepted", "declined"}
    assert db.execute("SELECT count(*) AS n FROM orders WHERE status = 'open' AND mode = 'offers' "
                      "AND offers_active > 0").fetchone()["n"] > 0
    assert db.execute("SELECT count(*) AS n FROM order_deliveries").fetchone()["n"] > 0
    # Russian and English text
    for column in ("title", "description"):
        assert db.execute(f"SELECT count(*) AS n FROM orders WHERE {column} ~ '[а-яА-Я]'").fetchone()["n"] > 0
        assert db.execute(f"SELECT count(*) AS n FROM orders WHERE {column} !~ '[а-яА-Я]'").fetchone()["n"] > 0
    # the heavy accounts the bench's cabinet and profile pages use
    assert db.execute("SELECT max(n) AS n FROM (SELECT count(*) AS n FROM orders GROUP BY customer_id) c"
                      ).fetchone()["n"] == 500
    assert db.execute("SELECT max(n) AS n FROM (SELECT count(*) AS n FROM orders WHERE performer_id IS NOT NULL "
                      "GROUP BY performer_id) c").fetchone()["n"] >= 1000
    assert db.execute("SELECT count(*) AS n FROM audit_counters()").fetchone()["n"] == 0


# ---------------------------------------------------------------------------------------------
# Plans

def explain(db, name, params):
    plan = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + Q[name], params).fetchone()["QUERY PLAN"][0]["Plan"]
    nodes, stack = [], [plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack += node.get("Plans", [])
    return nodes


def assert_shape(nodes, index, cursor_in_index=True):
    seq = [n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"]
    assert not {"orders", "users", "performer_stats"} & set(seq), seq
    scans = [n for n in nodes if n.get("Index Name") == index]
    assert scans, (index, [(n["Node Type"], n.get("Index Name")) for n in nodes])
    # no sort of more than a page (a page's rows put in order after their joins are fine)
    assert not [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")
                and "Limit" not in n.get("Parent Relationship", "")
                and n["Plans"][0]["Actual Rows"] > 21
                and n.get("Sort Key", [""])[0].startswith(("o.", "s.", "coalesce", "COALESCE"))], nodes[0]
    if cursor_in_index:
        assert "ROW(" in scans[0].get("Index Cond", ""), scans[0]
    return scans[0]


FEED = {"q": None, "category_id": None, "min_budget": None, "max_budget": None, "sort": "new",
        "after_time": END_OF_TIME, "after_budget": TOP_BUDGET, "after_deadline": "-infinity", "after_id": LAST_ID,
        "edge_id": None, "edge_time": None, "edge_budget": None, "edge_deadline": None, "window": 500, "limit": 21}


def test_the_feed_walks_its_partial_index_without_scanning_orders_or_users(bench_data):
    scan = assert_shape(explain(bench_data, "orders_feed", FEED), "orders_feed_new_idx")
    assert scan["Actual Rows"] <= 21
    assert_shape(explain(bench_data, "orders_feed", dict(FEED, sort="budget")), "orders_feed_budget_idx")


def test_no_index_gives_every_order_in_date_order(db):
    """At a million orders the generic plan of the newest-first feed (orders_feed_newest) walked a
    B-tree on orders.created_at backwards, past every closed order, with an incremental sort (8.7
    ms against 0.05 by orders_feed_new_idx); at this suite's sizes the planner does not make that
    choice, so the index itself is what is checked. Date ranges have a BRIN index, which cannot
    give rows in order."""
    ordered = db.execute("""
        SELECT i.indexrelid::regclass::text AS name
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_am am ON am.oid = c.relam
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'orders'::regclass
          AND a.attname = 'created_at'
          AND i.indpred IS NULL
          AND pg_indexam_has_property(am.oid, 'can_order')""").fetchall()
    assert ordered == []
    assert db.execute("SELECT amname FROM pg_class JOIN pg_am ON pg_am.oid = relam "
                      "WHERE relname = 'orders_created_at_brin'").fetchone()["amname"] == "brin"


@pytest.mark.parametrize("sort, index", [("new", "orders_feed_new_idx"), ("budget", "orders_feed_budget_idx")])
def test_the_search_window_is_an_index_only_walk_of_the_feed_index_of_its_sort(bench_data, sort, index):
    db = bench_data
    params = dict(FEED, sort=sort, q="логотип")
    nodes = explain(db, "orders_feed_window_edge", params)
    scan = assert_shape(nodes, index)
    assert scan["Node Type"] == "Index Only Scan", scan
    edge = db.execute(Q["orders_feed_window_edge"], params).fetchone()
    # the edge is the window-th open order of the sort, and it carries that sort's key
    key = "created_at" if sort == "new" else "budget"
    expected = db.execute(f"SELECT id, {key} FROM orders WHERE status = 'open' ORDER BY {key} DESC, id DESC "
                          "OFFSET 499 LIMIT 1").fetchone()
    assert (edge["id"], edge[key]) == (expected["id"], expected[key])
    params.update(edge_id=edge["id"], edge_time=edge["created_at"], edge_budget=edge["budget"])
    assert_shape(explain(db, "orders_feed", params), index)
    # beyond the edge: the GIN index (a rare term: the number in one old open order's title)
    title = db.execute("SELECT title FROM orders WHERE status = 'open' ORDER BY created_at LIMIT 1").fetchone()["title"]
    params["q"] = title.rsplit("#", 1)[1]
    older = explain(db, "orders_feed_search_older", params)
    assert [n for n in older if n.get("Index Name") == "orders_search_idx"]
    assert not [n["Relation Name"] for n in older if n["Node Type"] == "Seq Scan"
                and n["Relation Name"] in ("orders", "users")]


def test_a_common_words_count_reads_the_window_by_the_feed_index_and_nothing_older(bench_data):
    """The feed's count (up to 100) looks among the newest open orders first, by the feed index:
    a common word is counted there, and the older orders are not read at all (counted in one pass,
    it was a sequential scan of orders); a rare one is counted past the window by the GIN index."""
    db = bench_data
    edge = db.execute(Q["orders_feed_window_edge"], FEED).fetchone()
    params = dict(FEED, q="логотип", edge_id=edge["id"], edge_time=edge["created_at"])
    nodes = explain(db, "orders_feed_count", params)
    # orders read only within the window (an index range of the feed index, or its bitmap)
    read = [n for n in nodes if n.get("Relation Name") == "orders" and n["Actual Loops"] > 0]
    assert read and all("ROW(created_at, id) >= ROW(" in n.get("Index Cond", n.get("Recheck Cond", ""))
                        for n in read), nodes[0]
    assert [n for n in nodes if n.get("Index Name") == "orders_feed_new_idx" and n["Actual Loops"] > 0]
    assert db.execute(Q["orders_feed_count"], params).fetchone()["n"] == 101
    title = db.execute("SELECT title FROM orders WHERE status = 'open' ORDER BY created_at LIMIT 1").fetchone()["title"]
    params["q"] = title.rsplit("#", 1)[1]
    nodes = explain(db, "orders_feed_count", params)
    assert [n for n in nodes if n.get("Index Name") == "orders_search_idx" and n["Actual Loops"] > 0]
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] in ("orders", "users")
                and n["Actual Loops"] > 0]
    assert db.execute(Q["orders_feed_count"], params).fetchone()["n"] == 1


def test_the_search_window_edge_is_absent_when_fewer_orders_are_left(bench_data):
    deep = bench_data.execute("SELECT created_at, id FROM orders WHERE status = 'open' "
                              "ORDER BY created_at DESC, id DESC LIMIT 1 "
                              "OFFSET (SELECT count(*) - 1000 FROM orders WHERE status = 'open')").fetchone()
    params = dict(FEED, q="x", after_time=deep["created_at"], after_id=deep["id"], window=2000)
    assert bench_data.execute(Q["orders_feed_window_edge"], params).fetchone() is None


def catalogue_order(db):
    return [r["id"] for r in db.execute(
        "SELECT s.performer_id AS id FROM performer_stats s JOIN users u ON u.id = s.performer_id "
        "WHERE NOT u.is_blocked ORDER BY s.rating_avg DESC NULLS LAST, s.orders_completed DESC, s.performer_id")]


def test_the_catalogue_cursor_is_a_row_comparison_on_the_rank_index_at_any_depth(bench_data):
    db = bench_data
    order = catalogue_order(db)
    for after in (None, order[99], order[len(order) - 30]):
        params = {"after": after, "category_id": None, "limit": 21}
        scan = assert_shape(explain(db, "performers_catalogue", params), "performer_stats_rank_idx",
                            cursor_in_index=after is not None)
        assert scan["Actual Rows"] <= 30, scan
        ids = [r["id"] for r in db.execute(Q["performers_catalogue"], params)]
        start = 0 if after is None else order.index(after) + 1
        assert ids == order[start:start + 21]


def test_the_catalogue_pages_walk_every_performer_once_in_rank_order(bench_data):
    db = bench_data
    seen, after = [], None
    while True:
        ids = [r["id"] for r in db.execute(Q["performers_catalogue"], {"after": after, "category_id": None,
                                                                        "limit": 100})]
        if not ids:
            break
        seen += ids
        after = ids[-1]
    assert seen == catalogue_order(db)


def test_the_catalogue_is_planned_once_and_its_plan_kept_for_every_page(bench_data, db_url):
    """After psycopg prepares the catalogue's statement, PostgreSQL keeps its generic plan
    (planning was over half of the page's query at a million orders), which walks the rank index:
    the first page, a deep one and an unknown cursor, each still the right page. A category's page
    is planned for its values (performers_catalogue_in_category) and pages the same way."""
    order = catalogue_order(bench_data)
    category = bench_data.execute("SELECT category_id AS id FROM performer_categories "
                                  "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()["id"]
    in_category = set(r["id"] for r in bench_data.execute(
        "SELECT performer_id AS id FROM performer_categories WHERE category_id = %s", (category,)))
    ranked = {None: order, category: [performer for performer in order if performer in in_category]}
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:  # its own prepared statements
        for name, category_id in [("performers_catalogue", None), ("performers_catalogue_in_category", category)]:
            expected = ranked[category_id]
            for after in [None, expected[99], 10**15] * 7:  # planned for its values five times, then kept
                rows = conn.execute(Q[name], {"after": after, "category_id": category_id}, prepare=True).fetchall()
                start = 0 if after is None else len(expected) if after == 10**15 else expected.index(after) + 1
                assert [row["id"] for row in rows] == expected[start:start + 21]
        plans = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                             "WHERE statement LIKE '%%WITH cursor AS%%'").fetchall()
    # psycopg prepares a statement per type of its values (None, int4, int8): each keeps its plan
    assert len(plans) >= 2 and all(plan["generic_plans"] == 2 for plan in plans), plans
    # and the plan kept walks the rank index, as the ones planned for the values do
    generic = Q["performers_catalogue"].replace("%(after)s", "$1")
    plan = "\n".join(row["QUERY PLAN"] for row in bench_data.execute("EXPLAIN (GENERIC_PLAN) " + generic))
    assert "Index Scan using performer_stats_rank_idx on performer_stats s" in plan and "Seq Scan" not in plan, plan
    # a category's first page too (through subqueries the cursor made it start from the category's
    # performers, with a sort: 5.4 ms against 0.8 at this size)
    first = {"after": None, "category_id": category}
    assert_shape(explain(bench_data, "performers_catalogue_in_category", first), "performer_stats_rank_idx",
                 cursor_in_index=False)


def session_hash(db, user_id):
    """The token hash of a new session of the user: the cabinets' statements read their viewer by it."""
    return web.token_hash(bench_run.new_session(db, user_id))


@pytest.mark.parametrize("name, key, index", [("customer_cabinet_page", "customer_id", "orders_customer_idx"),
                                              ("performer_cabinet_page", "performer_id", "orders_performer_idx")])
def test_a_cabinet_reads_one_page_of_its_index_not_every_order_of_the_user(bench_data, name, key, index):
    db = bench_data
    # a user with a few orders spread over the table (the heaviest one's are the newest, where
    # walking the orders by date is as good)
    user = db.execute(f"SELECT {key} AS id FROM orders WHERE {key} IS NOT NULL GROUP BY 1 "
                      "ORDER BY count(*) DESC LIMIT 1 OFFSET 1").fetchone()["id"]
    params = {"token_hash": session_hash(db, user), "status": None, "lang": "ru", "after_time": END_OF_TIME,
              "after_id": LAST_ID, "limit": 21}
    scan = assert_shape(explain(db, name, params), index)
    assert scan["Actual Rows"] <= 21


def test_the_inbox_reads_one_page_of_the_users_conversations_not_all_of_them(bench_data):
    """The inbox finds its page by walking the user's side's index, then joins only that page (with
    "customer or performer" in one condition it joined and sorted every conversation of the user)."""
    db = bench_data
    customer = db.execute("SELECT customer_id AS id FROM orders WHERE performer_id IS NOT NULL GROUP BY 1 "
                          "ORDER BY count(*) DESC LIMIT 1").fetchone()["id"]
    assert bench_run.inbox_for(db, customer, 60) == 60
    params = {"user_id": customer, "after_at": END_OF_TIME, "after_id": LAST_ID, "limit": 21}
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")  # 60 conversations fit a page or two: read them all
        nodes = explain(db, "conversations_inbox", params)
    walks = [n for n in nodes if n.get("Index Name") == "conversations_customer_idx"]
    assert walks and walks[0]["Actual Rows"] <= 21 and "ROW(" in walks[0]["Index Cond"]
    # the page's conversations are not looked up again, and no message is read: each conversation
    # keeps its last one's excerpt (looked up per row, it was 6% of the inbox's CPU under load)
    reads = [(n["Node Type"], n.get("Index Name"), n["Actual Rows"], n["Actual Loops"]) for n in nodes
             if n.get("Relation Name") in ("messages", "conversations")]
    assert sorted(reads) == [("Index Scan", "conversations_customer_idx", 21, 1),
                             ("Index Scan", "conversations_performer_idx", 0, 1)], reads
    everything = db.execute("SELECT id FROM conversations WHERE customer_id = %s AND message_count > 0 "
                            "ORDER BY last_message_at DESC, id DESC", (customer,)).fetchall()
    shown, params["after_at"], params["after_id"] = [], END_OF_TIME, LAST_ID
    while True:
        page = db.execute(Q["conversations_inbox"], params).fetchall()
        shown += [row["id"] for row in page[:20]]
        if len(page) <= 20:
            break
        params["after_at"], params["after_id"] = page[19]["last_message_at"], page[19]["id"]
    assert shown == [row["id"] for row in everything]


@pytest.mark.parametrize("name, table, key", [("customer_cabinet_page", "orders", "customer_id"),
                                              ("performer_offers_page", "offers", "performer_id")])
def test_a_cabinet_joins_only_its_page_however_its_rows_are_read(bench_data, name, table, key):
    """Once psycopg has prepared it, PostgreSQL may keep a generic plan made for a user of average
    size: a bitmap scan of their rows and a sort. For the heaviest user that plan joined every row
    of theirs before sorting (1 ms instead of 0.07 at 10,000 orders); now only the page's ids are
    sorted, and only the page is joined. (Index scans off: the bitmap scan that plan used.)"""
    db = bench_data
    user = db.execute(f"SELECT {key} AS id FROM {table} GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()["id"]
    params = {key: user, "token_hash": session_hash(db, user), "status": None, "lang": "ru", "after_time": END_OF_TIME,
              "after_at": END_OF_TIME, "after_id": LAST_ID, "limit": 21}
    with db.transaction():
        db.execute("SET LOCAL enable_indexscan = off")
        nodes = explain(db, name, params)
    assert [n for n in nodes if n["Node Type"] == "Bitmap Heap Scan" and n["Actual Rows"] > 21]
    joins = [(n["Node Type"], n["Actual Rows"]) for n in nodes if n["Node Type"] in
             ("Nested Loop", "Hash Join", "Merge Join")]
    assert joins and all(rows <= 21 for _, rows in joins), joins


# ---------------------------------------------------------------------------------------------
# Statements per page

@pytest.fixture
def count_statements(monkeypatch):
    """Counts the SQL statements psycopg sends while the returned function's block runs."""
    counted = []
    original = psycopg.Cursor.execute
    original_server = psycopg.ServerCursor.execute

    def execute(self, query, params=None, **kwargs):
        counted.append(query if isinstance(query, str) else repr(query))
        return original(self, query, params, **kwargs)

    def execute_server(self, query, params=None, **kwargs):
        counted.append(query if isinstance(query, str) else repr(query))
        return original_server(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.ServerCursor, "execute", execute_server)

    def count(client, url):
        counted.clear()
        client.get(url, status=200)
        return list(counted)
    return count


def test_no_page_runs_more_statements_as_its_data_grows(db, make_client, make_user, make_order, sign_in,
                                                         count_statements):
    anna = make_user("customer")
    vera = make_user("performer", categories=["design"])
    staff = make_user("customer", staff=True)
    pitched = make_order(anna, title="Логотип для кофейни", mode="offers")  # gets offers from many performers
    rated = []

    def grow(n):
        """Up to n of everything: anna's orders, vera's rated orders (reviews), offers on one order,
        vera's offers, performers in the catalogue."""
        while len(rated) < n:
            k = len(rated)
            rated.append(make_order(anna, performer=vera, status="done", rating=1 + k % 10,
                                    review=f"Review {k}", title=f"Done order {k}"))
            other = make_user("performer", categories=["design"])
            db.execute(Q["offer_submit"], {"order_id": pitched["id"], "performer_id": other["id"],
                                           "price": 900 + k, "days": 3, "message": f"Offer {k}"})
            target = make_order(anna, title=f"Offers order {k}", mode="offers")
            db.execute(Q["offer_submit"], {"order_id": target["id"], "performer_id": vera["id"],
                                           "price": 500, "days": 2, "message": "Mine"})
        db.execute("ANALYZE")

    pages = {
        "anonymous": ["/", "/orders", "/orders?q=order", "/orders?sort=budget&category=design",
                      f"/orders/{pitched['id']}", "/performers", f"/performers/{vera['id']}",
                      "/api/v1/orders", "/api/v1/performers", f"/api/v1/performers/{vera['id']}"],
        "anna": ["/cabinet", "/cabinet?status=done", f"/orders/{pitched['id']}", f"/orders/{{last_rated}}"],
        "vera": ["/cabinet", "/cabinet/offers", f"/orders/{{last_rated}}"],
        "staff": ["/admin", "/admin/orders", "/admin/users", "/admin/reviews", f"/admin/users/{vera['id']}",
                  f"/admin/orders/{pitched['id']}"],
    }
    clients = {"anonymous": make_client("203.0.113.20")}
    for name, user in (("anna", anna), ("vera", vera), ("staff", staff)):
        clients[name] = sign_in(make_client("203.0.113.21"), user)

    def measure():
        counts = {}
        for who, urls in pages.items():
            for url in urls:
                url = url.replace("{last_rated}", str(rated[-1]["id"]))
                key = (who, re.sub(r"\d+", "N", url))
                counts[key] = count_statements(clients[who], url)
        return counts

    grow(1)
    small = measure()
    grow(30)
    large = measure()
    grown = {key: (len(small[key]), len(large[key]), large[key]) for key in small if len(large[key]) > len(small[key])}
    assert not grown, json.dumps({" ".join(k): v for k, v in grown.items()}, ensure_ascii=False, indent=1)
    assert all(small.values())  # the counter sees the app's statements
    # pages folded to their fewest round trips: the feed (its categories, its page), a search (its
    # categories, its page with its count); one statement that reads the session too: the
    # dashboard (the stored figures, audit, open disputes and top performers) and the cabinets
    # (the counters with the categories of the new order's form, or with the latest reviews, and
    # the page's orders)
    fewest = {("anonymous", "/orders"): 2, ("anonymous", "/orders?q=order"): 2, ("staff", "/admin"): 1,
              ("anna", "/cabinet"): 1, ("vera", "/cabinet"): 1}
    assert {key: len(large[key]) for key in fewest} == fewest, {key: large[key] for key in fewest}


@pytest.mark.parametrize("name, shown", [("home_performers_top", 6), ("admin_dashboard_read", 10)])
def test_the_top_performers_read_the_rank_index_instead_of_sorting_every_performer(bench_data, name, shown):
    params = {"token_hash": None}  # the dashboard reads its viewer too: none here
    nodes = explain(bench_data, name, params)
    assert [n for n in nodes if n.get("Index Name") == "performer_stats_rank_idx"], [n["Node Type"] for n in nodes]
    assert not [n for n in nodes if "Sort" in n["Node Type"]]
    rows = bench_data.execute(Q[name], params).fetchall()
    top = [r["id"] for r in (rows[0]["top_performers"] if name == "admin_dashboard_read" else rows)]
    expected = [r["id"] for r in bench_data.execute(
        "SELECT s.performer_id AS id FROM performer_stats s JOIN users u ON u.id = s.performer_id "
        + ("WHERE NOT u.is_blocked AND s.orders_completed > 0 " if name == "home_performers_top" else "")
        + "ORDER BY s.rating_avg DESC NULLS LAST, s.orders_completed DESC, s.performer_id LIMIT %s", (shown,))]
    assert top == expected


def test_the_statements_of_the_pages_served_most_are_planned_once_and_the_plan_kept(
        db_url, make_client, make_user, make_order, sign_in):
    """psycopg prepares a statement run five times; PostgreSQL then plans it for its values five
    times more and keeps one generic plan if it costs no more. A LIMIT or a cursor given as a
    parameter, or an optional filter, makes the generic plan look dearer, and every call is
    planned again (0.1-0.2 ms a statement at a million orders). Only the statements of feeds
    filtered by budget and of searches in other sorts than newest first are meant to be planned
    every call: they are not among these pages."""
    anna, boris = make_user("customer"), make_user("customer")
    vera = make_user("performer", categories=["design"])
    staff = make_user("customer", staff=True)
    order = make_order(anna, title="Логотип для кофейни")
    for n in range(3):
        make_order(boris, performer=vera, status="done", rating=7 + n, review=f"Review {n}", title=f"Done {n}")
    pages = {"anonymous": ["/", "/orders", "/orders?sort=budget", "/orders?sort=cheap", "/orders?sort=deadline",
                           "/orders?category=design", "/orders?q=%D0%BB%D0%BE%D0%B3%D0%BE%D1%82%D0%B8%D0%BF",
                           "/orders?q=logo&category=design",
                           "/performers", f"/performers/{vera['id']}",
                           f"/orders/{order['id']}"],
             "anna": ["/cabinet", "/messages"], "vera": ["/cabinet"], "staff": ["/admin"]}
    clients = {"anonymous": make_client("203.0.113.40")}
    for name, user in (("anna", anna), ("vera", vera), ("staff", staff)):
        clients[name] = sign_in(make_client("203.0.113.41"), user)
    for _n in range(14):
        for who, urls in pages.items():
            for url in urls:
                clients[who].get(url, status=200)
    pool = database.pool(db_url)
    assert pool.get_stats()["pool_size"] == 1  # one connection served every request: its statements are all
    with pool.connection() as conn:
        statements = conn.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements").fetchall()
    assert len(statements) >= 15
    planned_every_call = [s["statement"] for s in statements if s["custom_plans"] >= 5 and s["generic_plans"] == 0]
    assert planned_every_call == []


def test_the_pages_served_most_run_without_begin_and_commit_and_writes_keep_their_transaction(
        app, db, make_client, make_user, make_order, sign_in, monkeypatch):
    """Routes marked read_only (GETs that read, or write in one statement that stands alone) take
    their connection in autocommit: two round trips fewer per page. A form's write still commits
    once, as one transaction."""
    commits = []
    original = psycopg.Connection.commit
    monkeypatch.setattr(psycopg.Connection, "commit", lambda conn: commits.append(conn) or original(conn))
    marked = [route for route in app.routes if route.config.get("read_only")]
    assert {route.method for route in marked} == {"GET"} and len(marked) >= 7
    anna = make_user("customer")
    order = make_order(anna, title="Read-only page order")
    client = sign_in(make_client("203.0.113.30"), anna)
    for url in ("/", "/orders", f"/orders/{order['id']}", "/performers", "/cabinet", "/messages"):
        commits.clear()
        assert client.get(url).status_int == 200 and commits == [], url
    # The dashboard's first visit before any tick stores the figures, in a statement of its own
    assert db.execute("SELECT count(*) AS n FROM dashboard_figures").fetchone()["n"] == 0
    staff = sign_in(make_client("203.0.113.31"), make_user("customer", staff=True))
    assert "Top performers" in staff.get("/admin").text and commits == []
    assert db.execute("SELECT count(*) AS n FROM dashboard_figures").fetchone()["n"] == 1
    commits.clear()
    cancelled = client.post_form(f"/orders/{order['id']}/cancel", {"reason": "Not needed", "confirm": "yes"})
    assert cancelled.status_int == 303 and len(commits) == 1
    assert db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"] == "cancelled"
