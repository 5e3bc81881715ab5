"""The feed of open orders: search, filters, both sorts, keyset pages, blocked customers, indexes."""
import datetime
import html
import re
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
import pytest

from db import Q
import orders as orders_module
from conftest import text_of
from orders import END_OF_TIME, LAST_ID, TOP_BUDGET

CATEGORIES = ["design", "development", "texts"]
BUDGETS = [1000, 2500, 5000, 5000, 7000, 2500, 9000]  # few values, so the budget sort has many ties


def feed_ids(resp):
    return [int(n) for n in re.findall(r'class="card-title" href="/orders/(\d+)"', resp.text)]


def walk(client, url):
    """Every order id of every page, following the "Next page" links; pages of 20 at most."""
    ids, pages = [], 0
    while url:
        resp = client.get(url)
        page = feed_ids(resp)
        assert 0 < len(page) <= 20 or (pages == 0 and not page)
        ids += page
        pages += 1
        found = re.search(r'href="([^"]+)">Next page', resp.text)
        url = html.unescape(found.group(1)) if found else None
        assert url is None or len(page) == 20
    return ids, pages


@pytest.fixture
def catalogue(db, make_user, make_order):
    """45 open orders with known categories and budgets, some created in one transaction (equal
    times), plus orders the feed must leave out: not open, or of a blocked customer."""
    anna, boris, spammer = make_user("customer"), make_user("customer"), make_user("customer")
    vera = make_user("performer")
    orders = []
    for n in range(45):
        fields = {"customer": anna if n % 2 else boris, "category": CATEGORIES[n % 3],
                  "budget": BUDGETS[n % len(BUDGETS)], "title": f"Feed order {n:02}"}
        if 20 <= n < 30:
            continue  # created below, all in one transaction
        orders.append(dict(fields, id=make_order(fields.pop("customer"), **fields)["id"]))
    with db.transaction():
        for n in range(20, 30):
            fields = {"customer": anna, "category": CATEGORIES[n % 3], "budget": BUDGETS[n % len(BUDGETS)],
                      "title": f"Feed order {n:02}"}
            orders.append(dict(fields, id=make_order(fields.pop("customer"), **fields)["id"]))
    hidden = [make_order(spammer, title="Spam order", budget=99000, category="design")["id"],
              make_order(anna, title="Taken order", performer=vera, status="in_progress")["id"],
              make_order(boris, title="Cancelled order", status="cancelled")["id"]]
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (spammer["id"],))
    times = {row["id"]: row["created_at"] for row in db.execute("SELECT id, created_at FROM orders")}
    for order in orders:
        order["created_at"] = times[order["id"]]
    assert len({times[o["id"]] for o in orders if 20 <= int(o["title"][-2:]) < 30}) == 1
    return {"orders": orders, "hidden": hidden}


def newest_first(orders):
    return [o["id"] for o in sorted(orders, key=lambda o: (o["created_at"], o["id"]), reverse=True)]


def highest_budget_first(orders):
    return [o["id"] for o in sorted(orders, key=lambda o: (o["budget"], o["id"]), reverse=True)]


def test_walking_all_pages_newest_first_gives_every_open_order_once_in_order(client, catalogue):
    ids, pages = walk(client, "/orders")
    assert ids == newest_first(catalogue["orders"])
    assert pages == 3
    assert not set(ids) & set(catalogue["hidden"])


def test_walking_all_pages_by_budget_breaks_ties_by_id(client, catalogue):
    ids, pages = walk(client, "/orders?sort=budget")
    assert ids == highest_budget_first(catalogue["orders"])
    assert pages == 3
    # The page boundaries fall inside runs of equal budgets, so ties are really crossed.
    budgets = {o["id"]: o["budget"] for o in catalogue["orders"]}
    assert budgets[ids[19]] == budgets[ids[20]] or budgets[ids[39]] == budgets[ids[40]]


@pytest.mark.parametrize("sort, expected", [("new", newest_first), ("budget", highest_budget_first)])
def test_filters_combine_with_both_sorts_and_the_cursor(client, catalogue, sort, expected):
    orders = catalogue["orders"]
    ids, _pages = walk(client, f"/orders?sort={sort}&min_budget=2500")
    assert ids == expected([o for o in orders if o["budget"] >= 2500])
    ids, _pages = walk(client, f"/orders?sort={sort}&category=design&min_budget=2500&max_budget=5000")
    assert ids == expected([o for o in orders if o["category"] == "design" and 2500 <= o["budget"] <= 5000])
    ids, _pages = walk(client, f"/orders?sort={sort}&q=feed&category=development")
    assert ids == expected([o for o in orders if o["category"] == "development"])


@pytest.mark.parametrize("sort, expected", [("new", newest_first), ("budget", highest_budget_first)])
def test_search_past_the_window_finds_every_match_in_feed_order(client, catalogue, monkeypatch, sort, expected):
    """A search reads a window of the feed first, then the GIN index beyond it: same result."""
    monkeypatch.setattr(orders_module, "SEARCH_WINDOW", 7)
    orders = catalogue["orders"]
    ids, pages = walk(client, f"/orders?sort={sort}&q=feed")
    assert ids == expected(orders) and pages == 3
    rare = [o for o in orders if o["title"][-2:] in ("03", "24", "41")]
    assert walk(client, f"/orders?sort={sort}&q=03 or 24 or 41")[0] == expected(rare)
    ids, _pages = walk(client, f"/orders?sort={sort}&q=feed&category=texts&min_budget=2500")
    assert ids == expected([o for o in orders if o["category"] == "texts" and o["budget"] >= 2500])


def test_a_window_edge_kept_from_an_earlier_search_finds_and_counts_what_a_fresh_one_would(
        client, db, catalogue, make_user, make_order, monkeypatch):
    """A worker keeps a search's window edge for a few seconds (orders.window_edge). Orders
    created before it since, and orders gone from the feed after it, change nothing in what a
    search shows or counts: the edge only says where to look first."""
    monkeypatch.setattr(orders_module, "SEARCH_WINDOW", 7)
    edges_read = []
    read = orders_module.db_one
    monkeypatch.setattr(orders_module, "db_one", lambda name, /, **params: (
        edges_read.append(name) if name == "orders_feed_window_edge" else None) or read(name, **params))
    assert walk(client, "/orders?q=feed")[0] == newest_first(catalogue["orders"]) and edges_read
    # The feed moves on: twelve new matches, and the six newest of the window leave it.
    customer = make_user("customer")
    for n in range(12):
        make_order(customer, title=f"Feed order new {n}")
    gone = newest_first(catalogue["orders"])[:6]
    db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ANY(%s)", (gone,))
    now_open = db.execute("SELECT id, created_at FROM orders WHERE status = 'open' AND title LIKE 'Feed order%%' "
                          "AND customer_id NOT IN (SELECT id FROM users WHERE is_blocked)").fetchall()
    edges_read.clear()
    first = client.get("/orders?q=feed")
    assert edges_read == []  # the first page's edge, kept
    assert f">{len(now_open)} orders match<" in first.text and len(now_open) == 45 + 12 - 6
    assert walk(client, "/orders?q=feed")[0] == newest_first(now_open)


def test_a_search_for_an_absent_word_reads_the_window_and_the_gin_index_only(big_feed):
    db = big_feed
    params = dict(FEED_FILTERS, sort="new", q="nosuchword", window=500, **FIRST_PAGE)
    edge = db.execute(Q["orders_feed_window_edge"], params).fetchone()
    params.update(edge_id=edge["id"], edge_time=edge["created_at"], edge_budget=edge["budget"],
                  edge_deadline=edge["deadline_key"])
    # The window: an index range between the cursor and the edge: 500 open orders, plus the
    # cancelled ones and the rest of a batch of equal times around them (4,000 rows in all).
    scans = [n for n in explain(db, "orders_feed", params) if n.get("Index Name", "").startswith("orders_")]
    assert scans and all(n["Actual Rows"] <= 1000 for n in scans), scans
    older = explain(db, "orders_feed_search_older", dict(params, limit=21))
    assert [n for n in older if n.get("Index Name") == "orders_search_idx"]
    assert not [n for n in older if n["Node Type"] in ("Seq Scan", "Index Scan") and n.get("Relation Name") == "orders"
                and n.get("Actual Rows", 0) > 100]


def test_search_stems_russian_and_english_words(client, make_user, make_order):
    anna = make_user("customer")
    coffee = make_order(anna, title="Логотип для кофейни", description="Тёплые цвета")["id"]
    landing = make_order(anna, title="Landing pages", description="Two pages for a bakery")["id"]
    other = make_order(anna, title="Перевод инструкции", description="Шесть страниц")["id"]

    def search(q):
        return feed_ids(client.get("/orders?" + urlencode({"q": q})))

    assert search("логотипы") == [coffee]
    assert search("Кофейня") == [coffee]
    assert search("landing") == [landing]
    assert search("bakeries") == [landing]
    assert search("инструкцию") == [other]
    assert search("логотип -кофейни") == []
    assert search('"landing pages"') == [landing]
    assert search("dinosaurs") == []
    assert sorted(search("")) == sorted([coffee, landing, other])


def test_blocked_customers_orders_leave_the_feed_and_the_category_counts(client, db, make_user, make_order):
    anna, spammer = make_user("customer"), make_user("customer")
    kept = make_order(anna, title="Honest order", category="seo")["id"]
    spam = make_order(spammer, title="Buy followers", category="seo")["id"]
    assert sorted(feed_ids(client.get("/orders?category=seo"))) == sorted([kept, spam])
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (spammer["id"],))
    assert feed_ids(client.get("/orders?category=seo")) == [kept]
    assert feed_ids(client.get("/orders?q=followers")) == []
    assert db.execute("SELECT open_orders FROM categories WHERE slug = 'seo'").fetchone()["open_orders"] == 1
    sidebar = re.search(r'category=seo">[^<]*</a>\s*<span[^>]*>(\d+)</span>', client.get("/orders").text)
    assert sidebar.group(1) == "1"
    assert "Buy followers" not in client.get("/").text
    for sort in ("new", "budget", "cheap", "deadline"):  # each sort's own statement (feed_orders)
        assert feed_ids(client.get(f"/orders?sort={sort}")) == [kept], sort
    db.execute("UPDATE users SET is_blocked = false WHERE id = %s", (spammer["id"],))
    for sort in ("new", "budget", "cheap", "deadline"):
        assert sorted(feed_ids(client.get(f"/orders?sort={sort}"))) == sorted([kept, spam]), sort


@pytest.mark.parametrize("query", [
    "min_budget=abc", "min_budget=-1", "max_budget=1e5", f"max_budget={10**30}", "min_budget=5000&max_budget=10",
    "min_budget=100000001", "sort=cheapest", "sort=deadline&after=2026-13-01_5", "sort=cheap&after=x_5", "category=no-such", "category=secret",
    "after=garbage", "after=123", "after=_1", "after=2026-13-45T00:00:00%2B00:00_1",
    "after=2026-11-26T10:00:00_5", "after=2026-11-26T10:00:00%2B00:00_abc", "after=2026-11-26T10:00:00%2B00:00_0",
    "sort=budget&after=2026-11-26T10:00:00%2B00:00_5", "sort=budget&after=5000_", "sort=budget&after=-1_5",
    f"sort=budget&after={10**12}_5", "sort=new&after=5000_123", "q=%00", "after=%FF_1", "q=" + "x" * 201,
])
def test_bad_feed_parameters_are_400_with_a_message(client, db, query):
    db.execute("INSERT INTO categories (slug, name_ru, name_en, is_hidden) VALUES ('secret', 'Тайна', 'Secret', true)")
    resp = client.get("/orders?" + query, status=400)
    assert 'class="field-error"' in resp.text


def test_good_cursors_are_accepted_even_when_nothing_follows(client, catalogue):
    assert feed_ids(client.get("/orders?after=2000-01-01T00:00:00%2B00:00_1")) == []
    assert feed_ids(client.get("/orders?sort=budget&after=1_1")) == []
    newest = newest_first(catalogue["orders"])
    assert feed_ids(client.get("/orders?after=9999-01-01T00:00:00Z_1"))[:20] == newest[:20]


def test_only_signed_in_performers_see_take_buttons(client, make_client, make_user, make_order, sign_in):
    order_id = make_order(make_user("customer"))["id"]
    take = f'action="/orders/{order_id}/take"'
    assert take not in client.get("/orders").text
    assert take not in sign_in(make_client(), make_user("customer")).get("/orders").text
    assert take in sign_in(make_client(), make_user("performer")).get("/orders").text


def test_kept_cards_follow_the_viewer_the_language_and_the_row(make_client, db, make_user, make_order, sign_in):
    """The feed's cards are rendered once and kept (web.order_cards): each performer still gets
    their own CSRF token in a card's take form (and the take works with it), each language its
    own words, and a changed order its new card."""
    order_id = make_order(make_user("customer"), title="Kept card")["id"]
    vera, gleb = make_user("performer"), make_user("performer")
    browsers = {person["id"]: sign_in(make_client(), person) for person in (vera, gleb)}
    tokens = {}
    for person_id, browser in browsers.items():
        page = browser.get("/orders").text
        take_form = re.search(rf'action="/orders/{order_id}/take".*?</form>', page, re.S).group(0)
        tokens[person_id] = re.search(r'name="csrf_token" value="([0-9a-f]+)"', take_form).group(1)
        assert tokens[person_id] == browser.csrf()
    assert tokens[vera["id"]] != tokens[gleb["id"]]
    browsers[gleb["id"]].set_cookie("lang", "ru")
    assert "Взять заказ" in browsers[gleb["id"]].get("/orders").text
    assert "Take this order" in browsers[vera["id"]].get("/orders").text
    db.execute("UPDATE orders SET title = 'Renamed card' WHERE id = %s", (order_id,))
    assert "Renamed card" in browsers[vera["id"]].get("/orders").text
    taken = browsers[gleb["id"]].post(f"/orders/{order_id}/take", {"csrf_token": tokens[gleb["id"]]}, status="*")
    assert taken.status_int == 303
    assert "Renamed card" not in browsers[vera["id"]].get("/orders").text


def test_kept_filter_form_shows_each_searchs_values_its_category_and_language(client, make_user, make_order):
    """The feed's filter form is rendered once per set of values and kept (web.kept); with errors
    it is rendered as it is."""
    make_order(make_user("customer"), title="Logo order")

    def form(url, **kwargs):
        page = client.get(url, **kwargs)
        return page.status_int, re.search(r'<form method="get" action="/orders" class="filters">.*?</form>',
                                          page.text, re.S).group(0)

    _status, logo = form("/orders?q=logo&min_budget=100")
    assert 'name="q" type="search" value="logo"' in logo and 'name="min_budget" type="text" value="100"' in logo
    assert 'name="category"' not in logo and '<option value="new" >' in logo
    _status, other = form("/orders?q=other")
    assert 'value="other"' in other and 'value="100"' not in other
    _status, coffee = form("/orders?" + urlencode({"q": "кофе", "sort": "budget", "category": "design"}))
    assert 'value="кофе"' in coffee and "logo" not in coffee and 'name="min_budget" type="text" value=""' in coffee
    assert '<option value="budget" selected>' in coffee
    assert '<input type="hidden" name="category" value="design">' in coffee
    client.set_cookie("lang", "ru")
    _status, russian = form("/orders?q=logo&min_budget=100")
    assert "Найти" in russian and "Бюджет от" in russian and 'value="logo"' in russian
    client.set_cookie("lang", "en")
    status, broken = form("/orders?q=logo&min_budget=abc", status=400)
    assert status == 400 and 'aria-invalid="true"' in broken and 'value="abc"' in broken
    assert 'aria-invalid' not in form("/orders?q=logo&min_budget=100")[1]


def test_feed_sidebar_lists_visible_categories_with_open_counts(client, db, make_user, make_order):
    anna = make_user("customer")
    for _n in range(3):
        make_order(anna, category="texts")
    db.execute("INSERT INTO categories (slug, name_ru, name_en, is_hidden) VALUES ('secret', 'Тайна', 'Secret', true)")
    page = client.get("/orders")
    counts = dict(re.findall(r'category=([a-z-]+)">[^<]*</a>\s*<span[^>]*>(\d+)</span>', page.text))
    assert counts["texts"] == "3" and counts["design"] == "0" and "secret" not in counts
    assert "Writing &amp; translation" in page.text
    assert text_of(client.get("/orders?category=texts")).count("A test order") == 3


def test_kept_sidebar_follows_the_search_the_category_the_counts_and_the_language(client, make_user, make_order):
    """The sidebar is rendered once per set of filters, counts and language and kept (web.kept):
    its links keep the other filters of this page, not of an earlier one, and a new order shows."""
    anna = make_user("customer")
    make_order(anna, category="texts", title="Logo text")

    def sidebar(url):
        return re.search(r"<aside>.*?</aside>", client.get(url).text, re.S).group(0)

    logo = sidebar("/orders?q=logo&sort=budget&after=5000_1")
    assert 'href="/orders?q=logo&amp;category=texts&amp;sort=budget"' in logo and "after" not in logo
    assert '<li class="active"><a href="/orders?q=logo&amp;sort=budget">All categories</a>' in logo
    other = sidebar("/orders?q=other&category=texts")
    assert 'href="/orders?q=other&amp;category=design"' in other and "logo" not in other
    assert '<li class="active">\n      <a href="/orders?q=other&amp;category=texts">Writing &amp; translation</a>' in other
    texts = re.compile(r'category=texts">[^<]*</a>\s*<span[^>]*>(\d+)</span>')
    assert texts.search(sidebar("/orders")).group(1) == "1"
    make_order(anna, category="texts", title="Another text")
    assert texts.search(sidebar("/orders")).group(1) == "2"
    client.set_cookie("lang", "ru")
    assert "Тексты и переводы" in sidebar("/orders") and "Все категории" in sidebar("/orders")


# ---------------------------------------------------------------------------------------------
# The feed queries walk the partial indexes, and a deep page costs what the first one does

def plan_nodes(plan):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def kept_plans(conn, statement, values, runs):
    """The plans PostgreSQL kept for `statement`, prepared on `conn` and run `runs` times, each run
    (EXPLAIN ANALYZE) with `values`: their nodes. psycopg prepares one statement per set of
    parameter types (the first page's id may be a bigint); PostgreSQL plans each for its values
    five times, then keeps the generic plan."""
    plans = [plan for plan in conn.execute("SELECT name, statement, generic_plans, custom_plans "
                                           "FROM pg_prepared_statements").fetchall()
             if plan["statement"].startswith(statement[:statement.index("%(")])]  # as sent: $1 for %(name)s
    assert plans and all(plan["custom_plans"] == 5 and plan["generic_plans"] >= 2 for plan in plans), plans
    assert sum(plan["custom_plans"] + plan["generic_plans"] for plan in plans) == runs
    wanted = dict.fromkeys(re.findall(r"%\((\w+)\)s", statement))
    for plan in plans:
        run = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {}({})").format(
            sql.Identifier(plan["name"]), sql.SQL(", ").join(sql.Literal(values[key]) for key in wanted))
        yield list(plan_nodes(conn.execute(run).fetchone()["QUERY PLAN"][0]["Plan"]))


def explain(db, name, params):
    row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + Q[name], params).fetchone()
    return list(plan_nodes(row["QUERY PLAN"][0]["Plan"]))


@pytest.fixture
def big_feed(db, make_user):
    """3000 open orders (in 30 transactions, so 30 distinct creation times) and 1000 cancelled ones."""
    customers = [make_user("customer")["id"] for _n in range(5)]
    for batch in range(40):
        db.execute(
            "INSERT INTO orders (customer_id, category_id, title, description, budget) "
            "SELECT %(customers)s[1 + n %% 5], 1 + n %% 7, 'Order ' || n, 'Text ' || n, 100 * (1 + n %% 97) "
            "FROM generate_series(%(start)s, %(start)s + 99) AS n",
            {"customers": customers, "start": batch * 100})
    db.execute("UPDATE orders SET status = 'cancelled' WHERE id % 4 = 0")
    db.execute("ANALYZE")
    return db


FEED_FILTERS = {"q": None, "category_id": None, "min_budget": None, "max_budget": None,
                "edge_id": None, "edge_time": None, "edge_budget": None, "edge_deadline": None}
FIRST_PAGE = {"after_time": END_OF_TIME, "after_budget": TOP_BUDGET, "after_id": LAST_ID, "after_deadline": "-infinity"}


def test_the_feed_query_uses_the_partial_indexes_at_any_depth(big_feed):
    db = big_feed
    deep = db.execute("SELECT created_at, id, budget FROM orders WHERE status = 'open' "
                      "ORDER BY created_at DESC, id DESC OFFSET 2500 LIMIT 1").fetchone()
    deep_by_budget = db.execute("SELECT budget, id FROM orders WHERE status = 'open' "
                                "ORDER BY budget DESC, id DESC OFFSET 2500 LIMIT 1").fetchone()
    deep_new = dict(FIRST_PAGE, after_time=deep["created_at"], after_id=deep["id"])
    deep_budget = dict(FIRST_PAGE, after_budget=deep_by_budget["budget"], after_id=deep_by_budget["id"])
    cases = [
        (dict(FEED_FILTERS, sort="new", **FIRST_PAGE), "orders_feed_new_idx"),
        (dict(FEED_FILTERS, sort="new", **deep_new), "orders_feed_new_idx"),
        (dict(FEED_FILTERS, sort="new", **dict(deep_new), category_id=3), "orders_feed_category_new_idx"),
        (dict(FEED_FILTERS, sort="budget", **FIRST_PAGE), "orders_feed_budget_idx"),
        (dict(FEED_FILTERS, sort="budget", **deep_budget), "orders_feed_budget_idx"),
        (dict(FEED_FILTERS, sort="budget", **deep_budget, max_budget=5000), "orders_feed_budget_idx"),
    ]
    for params, index in cases:
        nodes = explain(db, "orders_feed", params)
        scans = [node for node in nodes if node.get("Index Name") == index]
        assert scans, (params, index, [n["Node Type"] for n in nodes])
        assert not [node for node in nodes if node["Node Type"] == "Sort"]
        # Rows read from the index: one page and one more, however deep the page is.
        assert scans[0]["Actual Rows"] <= 21, (params, scans[0]["Actual Rows"])
        assert "ROW(" in scans[0]["Index Cond"]


def test_repeated_feed_queries_keep_custom_plans(big_feed):
    """psycopg prepares a statement after 5 runs; PostgreSQL must not settle on a generic plan."""
    db = big_feed
    for n in range(12):
        db.execute(Q["orders_feed"], dict(FEED_FILTERS, sort="new", min_budget=n * 100, **FIRST_PAGE),
                   prepare=True).fetchall()
        db.execute(Q["orders_feed"], dict(FEED_FILTERS, sort="budget", q="order", **FIRST_PAGE),
                   prepare=True).fetchall()
    plans = db.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                       "WHERE statement LIKE '%%LIMIT 21'").fetchall()
    # psycopg keeps one prepared statement per set of parameter types: here two.
    assert plans and all(plan["generic_plans"] == 0 for plan in plans), plans
    assert sum(plan["custom_plans"] for plan in plans) == 24


DEEP_KEYS = {"new": ("created_at", "after_time", "created_at DESC, id DESC"),
             "budget": ("budget", "after_budget", "budget DESC, id DESC"),
             "cheap": ("budget", "after_budget", "budget, id"),
             "deadline": ("COALESCE(deadline, 'infinity')", "after_deadline", "COALESCE(deadline, 'infinity'), id")}


@pytest.mark.parametrize("name, sort, category, index", [
    ("orders_feed_newest", "new", None, "orders_feed_new_idx"),
    ("orders_feed_highest_budget", "budget", None, "orders_feed_budget_idx"),
    ("orders_feed_lowest_budget", "cheap", None, "orders_feed_budget_idx"),
    ("orders_feed_nearest_deadline", "deadline", None, "orders_feed_deadline_idx"),
    ("orders_feed_in_category", "new", 3, "orders_feed_category_new_idx")])
def test_each_sort_of_the_feed_without_filters_keeps_one_plan_and_the_rows_of_the_general_feed(
        big_feed, db_url, name, sort, category, index):
    """The feed's own links (each sort) and a category's link in the sidebar (newest first,
    nothing else chosen) have statements of their own, whose plan PostgreSQL keeps after psycopg
    prepares them: the feed index of the sort with the cursor in its condition (not a walk of
    every order with a sort), and at any depth the rows orders_feed gives for the same choice."""
    db = big_feed
    # two orders in three with a deadline (four distinct days, so ties cross pages), the rest none
    db.execute("UPDATE orders SET deadline = CASE WHEN id % 3 = 0 THEN NULL ELSE current_date + 1 + (id % 4)::int END "
               "WHERE status = 'open'")
    db.execute("ANALYZE orders")
    db.execute("UPDATE users SET is_blocked = true WHERE id = (SELECT customer_id FROM orders LIMIT 1)")
    key, param, order = DEEP_KEYS[sort]
    deep = db.execute(f"SELECT {key} AS key, id FROM orders WHERE status = 'open' "
                      "AND (%(category)s::integer IS NULL OR category_id = %(category)s::integer) "
                      f"ORDER BY {order} OFFSET 200 LIMIT 1", {"category": category}).fetchone()
    first = dict(FIRST_PAGE, after_budget=0 if sort == "cheap" else TOP_BUDGET,
                 after_id=0 if sort in ("cheap", "deadline") else LAST_ID)
    cursors = [first, dict(first, **{param: deep["key"], "after_id": deep["id"]})]
    chosen = {} if category is None else {"category_id": category}
    wanted = dict.fromkeys(re.findall(r"%\((\w+)\)s", Q[name]))
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:  # its own prepared statements
        for cursor in cursors * 7:  # planned for its values five times, then kept
            values = {key: value for key, value in dict(cursor, **chosen).items() if key in wanted}
            rows = conn.execute(Q[name], values, prepare=True).fetchall()
            general = db.execute(Q["orders_feed"], dict(FEED_FILTERS, sort=sort, **chosen, **cursor)).fetchall()
            assert len(rows) == 21 and rows == general
        for nodes in kept_plans(conn, Q[name], values, runs=14):  # each plan kept, run for the deep page
            scans = [node for node in nodes if node.get("Index Name") == index]
            # a page, and the orders of the blocked customer in between: not the 200 before the cursor
            assert scans and scans[0]["Actual Rows"] < 50 and "ROW(" in scans[0]["Index Cond"], nodes[0]
            assert not [node for node in nodes if "Sort" in node["Node Type"]], nodes[0]


@pytest.mark.parametrize("term, filters", [
    ("order", {}), ("order", {"category_id": 3, "min_budget": 2000}), ("2999 or 1717", {}), ("nosuchword", {})])
def test_a_search_newest_first_keeps_one_plan_that_walks_the_window_and_counts_it(big_feed, db_url, term, filters):
    """A search newest first (the search box's) is one statement whose plan PostgreSQL keeps
    (orders_search_newest): at any depth, the rows orders_feed gives between the cursor and the
    window edge, and how many match there (up to feed_count_cap() + 1). The plan kept reads
    orders_feed_new_idx between the two, and the term once: never the GIN index (a common word
    matched half the open orders at a million, and the plan cannot know the term), nor parallel
    workers (a plan kept for every term guesses few matches, and started two for each search)."""
    db = big_feed
    db.execute("UPDATE users SET is_blocked = true WHERE id = (SELECT customer_id FROM orders LIMIT 1)")
    deep = db.execute("SELECT created_at, id FROM orders WHERE status = 'open' "
                      "ORDER BY created_at DESC, id DESC OFFSET 150 LIMIT 1").fetchone()
    chosen = dict(FEED_FILTERS, q=term, **filters)
    cursors = [FIRST_PAGE, dict(FIRST_PAGE, after_time=deep["created_at"], after_id=deep["id"])]
    for cursor in cursors:  # the window: 500 open orders after the cursor
        edge = db.execute(Q["orders_feed_window_edge"], dict(cursor, sort="new", window=500)).fetchone()
        cursor.update(edge_time=edge["created_at"], edge_id=edge["id"])
    wanted = dict.fromkeys(re.findall(r"%\((\w+)\)s", Q["orders_search_newest"]))
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:  # its own prepared statements
        for cursor in cursors * 7:  # planned for its values five times, then kept
            values = {key: value for key, value in dict(chosen, **cursor).items() if key in wanted}
            rows = conn.execute(Q["orders_search_newest"], values, prepare=True).fetchall()
            general = db.execute(Q["orders_feed"], dict(chosen, sort="new", **cursor)).fetchall()
            in_window = db.execute(
                "SELECT count(*) AS n FROM orders o JOIN users u ON u.id = o.customer_id "
                "WHERE o.status = 'open' AND NOT u.is_blocked "
                "AND (o.created_at, o.id) < (%(after_time)s, %(after_id)s) "
                "AND (o.created_at, o.id) >= (%(edge_time)s, %(edge_id)s) "
                "AND o.search @@ websearch_to_tsquery('russian', %(q)s) "
                "AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s) "
                "AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s)", values).fetchone()["n"]
            counts = {(row.pop("window_matches"), row.pop("matches_cap")) for row in rows}
            assert rows == general and counts <= {(min(in_window, 101), 100)}
            assert len(rows) == min(in_window, 21) and (rows or in_window == 0)
        for nodes in kept_plans(conn, Q["orders_search_newest"], values, runs=14):  # run for the deep page
            scans = [node for node in nodes if node.get("Index Name") == "orders_feed_new_idx"]
            assert scans and "ROW(" in scans[0]["Index Cond"] and scans[0]["Actual Rows"] <= 500, nodes[0]
            # (at this size a bitmap of that range, sorted; at a million, the index in order)
            matching = [node["Filter"] for node in nodes if "ts_match_vq" in node.get("Filter", "")]
            assert matching and "websearch_to_tsquery" not in matching[0], matching
            assert not [node for node in nodes if node.get("Index Name") == "orders_search_idx"
                        or "Gather" in node["Node Type"]], nodes[0]
            # the page's rows come with the matches: orders is not read again by id
            assert [node.get("Relation Name") for node in nodes].count("orders") == 1, nodes[0]
    assert db.execute("SELECT reloptions FROM pg_class WHERE relname = 'orders'").fetchone()["reloptions"].count(
        "parallel_workers=0") == 1


def lowest_budget_first(orders):
    return [o["id"] for o in sorted(orders, key=lambda o: (o["budget"], o["id"]))]


def nearest_deadline_first(orders):
    return [o["id"] for o in sorted(orders, key=lambda o: (o["deadline"] or datetime.date.max, o["id"]))]


def with_deadlines(db, catalogue):
    """Gives two orders in three a deadline (few distinct days, so ties cross pages); the rest none."""
    today = datetime.date.today()
    for n, order in enumerate(catalogue["orders"]):
        order["deadline"] = None if n % 3 == 0 else today + datetime.timedelta(days=1 + n % 4)
        db.execute("UPDATE orders SET deadline = %s WHERE id = %s", (order["deadline"], order["id"]))
    return catalogue["orders"]


def test_walking_all_pages_cheapest_first_breaks_ties_by_id(client, catalogue):
    ids, pages = walk(client, "/orders?sort=cheap")
    assert ids == lowest_budget_first(catalogue["orders"]) and pages == 3
    budgets = {o["id"]: o["budget"] for o in catalogue["orders"]}
    assert budgets[ids[19]] == budgets[ids[20]] or budgets[ids[39]] == budgets[ids[40]]


def test_walking_all_pages_nearest_deadline_first_puts_orders_without_one_last(client, db, catalogue):
    orders = with_deadlines(db, catalogue)
    ids, pages = walk(client, "/orders?sort=deadline")
    assert ids == nearest_deadline_first(orders) and pages == 3
    assert {o["id"] for o in orders if o["deadline"] is None} == set(ids[-15:])
    searched, _pages = walk(client, "/orders?sort=deadline&q=feed&category=texts")
    assert searched == nearest_deadline_first([o for o in orders if o["category"] == "texts"])


@pytest.mark.parametrize("sort, expected", [("cheap", lowest_budget_first), ("deadline", nearest_deadline_first)])
def test_a_search_past_the_window_keeps_the_ascending_sorts(client, db, catalogue, monkeypatch, sort, expected):
    monkeypatch.setattr("orders.SEARCH_WINDOW", 7)
    orders = with_deadlines(db, catalogue)
    ids, pages = walk(client, f"/orders?sort={sort}&q=feed")
    assert ids == expected(orders) and pages == 3
    assert walk(client, f"/orders?sort={sort}&q=03 or 24 or 41")[0] == expected(
        [o for o in orders if o["title"][-2:] in ("03", "24", "41")])


@pytest.mark.parametrize("window", [2000, 7, 45, 46, 47])
def test_the_feed_says_how_many_orders_match(client, db, make_user, make_order, catalogue, monkeypatch, window):
    """Counted filters are counted among the newest SEARCH_WINDOW open orders first, then the older
    ones: the count is the same wherever the window's edge falls (46 orders: before the last, on
    it, none)."""
    monkeypatch.setattr("orders.SEARCH_WINDOW", window)
    # An open order in a category hidden since is still in the feed, and in its count.
    db.execute("INSERT INTO categories (slug, name_ru, name_en) VALUES ('secret', 'Тайна', 'Secret')")
    make_order(make_user("customer"), title="Feed order in a hidden category", category="secret")
    db.execute("UPDATE categories SET is_hidden = true WHERE slug = 'secret'")
    assert re.search(r'id="feed-count" role="status">46 orders match<', client.get("/orders").text)
    texts = sum(1 for o in catalogue["orders"] if o["category"] == "texts")
    assert f">{texts} orders match<" in client.get("/orders?category=texts").text
    assert ">0 orders match<" in client.get("/orders?q=nosuchword").text
    assert ">46 orders match<" in client.get("/orders?q=feed").text
    assert ">46 orders match<" in client.get("/orders?q=feed&sort=budget").text
    assert ">46 orders match<" in client.get("/orders?q=feed&after=" + catalogue_cursor(db)).text
    assert ">46 orders match<" in client.get("/orders?max_budget=100000").text
    assert ">1 order matches<" in client.get("/orders?q=hidden").text
    # Filters are counted up to feed_count_cap() (100), then "more than"; the whole feed and a
    # category are read from the counters the triggers keep, so they stay exact whatever their size.
    assert db.execute("SELECT feed_count_cap() AS cap").fetchone()["cap"] == 100
    bulk = ("INSERT INTO orders (customer_id, category_id, title, description, budget) "
            "SELECT %(customer)s, (SELECT id FROM categories WHERE slug = 'design'), 'Feed order bulk ' || n, 'Text', "
            "1000 FROM generate_series(1, %(n)s) AS n")
    customer = make_user("customer")["id"]
    db.execute(bulk, {"customer": customer, "n": 54})
    assert ">100 orders match<" in client.get("/orders?q=feed").text
    assert ">100 orders match<" in client.get("/orders?min_budget=0").text
    db.execute(bulk, {"customer": customer, "n": 1})
    assert ">More than 100 orders match<" in client.get("/orders?q=feed").text
    assert ">More than 100 orders match<" in client.get("/orders?q=feed&after=" + catalogue_cursor(db)).text
    assert ">More than 100 orders match<" in client.get("/orders?min_budget=0").text
    assert ">101 orders match<" in client.get("/orders").text
    assert f">{texts} orders match<" in client.get("/orders?category=texts").text


def catalogue_cursor(db):
    """The `after` of the feed's second page, newest first."""
    row = db.execute("SELECT created_at, id FROM orders WHERE status = 'open' "
                     "ORDER BY created_at DESC, id DESC OFFSET 19 LIMIT 1").fetchone()
    return quote(f"{row['created_at'].isoformat()}_{row['id']}")


def test_the_feed_count_groups_thousands(client, db, make_user):
    customer = make_user("customer")
    db.execute("""INSERT INTO orders (customer_id, category_id, title, description, budget)
                  SELECT %s, (SELECT id FROM categories WHERE slug = 'texts'), 'Bulk order ' || n, 'Text', 1000
                  FROM generate_series(1, 1234) AS n""", (customer["id"],))
    assert ">1\u00a0234 orders match<" in client.get("/orders").text


def test_the_ascending_sorts_read_their_indexes_at_any_depth(big_feed):
    db = big_feed
    db.execute("UPDATE orders SET deadline = current_date + (id % 90)::integer WHERE status = 'open' AND id % 3 > 0")
    db.execute("ANALYZE orders")
    deep_cheap = db.execute("SELECT budget, id FROM orders WHERE status = 'open' "
                            "ORDER BY budget, id OFFSET 2500 LIMIT 1").fetchone()
    deep_deadline = db.execute("SELECT COALESCE(deadline, 'infinity')::text AS key, id FROM orders "
                               "WHERE status = 'open' ORDER BY COALESCE(deadline, 'infinity'), id "
                               "OFFSET 2500 LIMIT 1").fetchone()
    first_asc = dict(FIRST_PAGE, after_budget=0, after_id=0)
    cases = [
        (dict(FEED_FILTERS, sort="cheap", **first_asc), "orders_feed_budget_idx"),
        (dict(FEED_FILTERS, sort="cheap", **dict(first_asc, after_budget=deep_cheap["budget"],
                                                  after_id=deep_cheap["id"])), "orders_feed_budget_idx"),
        (dict(FEED_FILTERS, sort="deadline", **first_asc), "orders_feed_deadline_idx"),
        (dict(FEED_FILTERS, sort="deadline", **dict(first_asc, after_deadline=deep_deadline["key"],
                                                     after_id=deep_deadline["id"])), "orders_feed_deadline_idx"),
    ]
    for params, index in cases:
        nodes = explain(db, "orders_feed", params)
        scans = [node for node in nodes if node.get("Index Name") == index]
        assert scans, (params["sort"], index, [(n["Node Type"], n.get("Index Name")) for n in nodes])
        assert not [node for node in nodes if node["Node Type"] == "Sort"]
        assert scans[0]["Actual Rows"] <= 21, (params["sort"], scans[0]["Actual Rows"])
