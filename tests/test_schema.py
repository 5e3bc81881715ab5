"""The database's own rules: the order state machine, constraints, history and counters.

These talk SQL directly, as a DBA in psql would: the rules must hold without the app.
"""
import datetime
import random
import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from db import Q

STATUSES = ("open", "in_progress", "done", "cancelled")
ALLOWED = {("open", "in_progress"), ("open", "cancelled"), ("in_progress", "done"),
           ("in_progress", "cancelled"), ("in_progress", "open")}


@pytest.fixture
def people(make_user):
    return {"customer": make_user("customer"), "other_customer": make_user("customer"),
            "performer": make_user("performer"), "other_performer": make_user("performer")}


def refused(db, sql, params=()):
    """True when PostgreSQL refuses the statement (and the failed statement changed nothing)."""
    try:
        with db.transaction():
            db.execute(sql, params)
    except psycopg.Error:
        return True
    return False


@pytest.mark.parametrize("source,target", [(s, t) for s in STATUSES for t in STATUSES if s != t])
def test_only_the_transitions_of_the_spec_pass_a_direct_update(db, people, make_order, source, target):
    order = make_order(people["customer"], performer=people["performer"], status=source)
    # Give the target the performer it would need, so only the transition rule can refuse it.
    performer = None if target == "open" else (order["performer_id"] or people["performer"]["id"])
    if target == "cancelled":
        performer = order["performer_id"]
    was_refused = refused(db, "UPDATE orders SET status = %s, performer_id = %s WHERE id = %s",
                          (target, performer, order["id"]))
    assert was_refused == ((source, target) not in ALLOWED)
    after = db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert after["status"] == (source if was_refused else target)


def test_an_open_order_cannot_be_cancelled_with_a_performer(db, people, make_order):
    """A cancelled order keeps the performer who had it; an open order has none to keep."""
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer)
    assert refused(db, "UPDATE orders SET status = 'cancelled', performer_id = %s WHERE status = 'open'",
                   (performer["id"],))
    assert refused(db, "UPDATE orders SET status = 'cancelled', performer_id = %s WHERE id = %s",
                   (performer["id"], order["id"]))
    row = db.execute("SELECT status, performer_id FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert row == {"status": "open", "performer_id": None}
    assert not refused(db, "UPDATE orders SET status = 'cancelled' WHERE id = %s", (order["id"],))
    # An order cancelled while in progress keeps its performer, and only that one.
    taken = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET status = 'cancelled', performer_id = %s WHERE id = %s",
                   (people["other_performer"]["id"], taken["id"]))
    assert not refused(db, "UPDATE orders SET status = 'cancelled' WHERE id = %s", (taken["id"],))
    counts = db.execute("SELECT orders_in_progress, orders_completed FROM performer_stats "
                        "WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert counts == {"orders_in_progress": 0, "orders_completed": 0}


def test_the_rating_time_and_the_cancel_reason_never_change_once_set(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    rated = make_order(customer, performer=performer, status="done", rating=8)
    assert refused(db, "UPDATE orders SET rated_at = rated_at - interval '1 day' WHERE id = %s", (rated["id"],))
    assert refused(db, "UPDATE orders SET rated_at = now() WHERE id = %s", (rated["id"],))
    unrated = make_order(customer, performer=performer, status="done")
    assert refused(db, "UPDATE orders SET rating = 5, rated_at = '2001-01-01' WHERE id = %s", (unrated["id"],))

    # The reason is written by the cancel itself, then never again.
    with_reason = make_order(customer)
    assert not refused(db, "UPDATE orders SET status = 'cancelled', cancel_reason = 'Found someone' WHERE id = %s",
                       (with_reason["id"],))
    without_reason = make_order(customer, performer=performer, status="cancelled")
    for order, reason in ((with_reason, "Another story"), (with_reason, None), (without_reason, "Added later")):
        assert refused(db, "UPDATE orders SET cancel_reason = %s WHERE id = %s", (reason, order["id"]))
    # An order that is not cancelled has no reason to give, with a transition or without one.
    for status in ("open", "in_progress", "done"):
        order = make_order(customer, performer=performer, status=status)
        assert refused(db, "UPDATE orders SET cancel_reason = 'Not cancelled' WHERE id = %s", (order["id"],))
    taken = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET status = 'done', cancel_reason = 'Not cancelled' WHERE id = %s",
                   (taken["id"],))
    rows = db.execute("SELECT id, cancel_reason, rated_at FROM orders WHERE id = ANY(%s) ORDER BY id",
                      ([rated["id"], with_reason["id"], without_reason["id"]],)).fetchall()
    assert [(r["id"], r["cancel_reason"], r["rated_at"]) for r in rows] == [
        (rated["id"], None, rated["rated_at"]), (with_reason["id"], "Found someone", None),
        (without_reason["id"], None, None)]


def test_transition_times_are_stamped_by_the_database_and_never_written_by_a_statement(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    open_order = make_order(customer)
    taken = make_order(customer, performer=performer, status="in_progress")
    long_ago = "2001-01-01"
    # Together with a transition ...
    for sql, order in (
            ("UPDATE orders SET status = 'cancelled', taken_at = %s WHERE id = %s", open_order),
            ("UPDATE orders SET status = 'in_progress', performer_id = {p}, taken_at = %s WHERE id = %s", open_order),
            ("UPDATE orders SET status = 'done', taken_at = %s WHERE id = %s", taken),
            ("UPDATE orders SET status = 'done', completed_at = %s WHERE id = %s", taken),
            ("UPDATE orders SET status = 'cancelled', taken_at = %s WHERE id = %s", taken),
            ("UPDATE orders SET status = 'cancelled', cancelled_at = %s WHERE id = %s", taken),
            ("UPDATE orders SET status = 'open', performer_id = NULL, taken_at = %s WHERE id = %s", taken)):
        assert refused(db, sql.format(p=performer["id"]), (long_ago, order["id"])), sql
    # ... or without one.
    done = make_order(customer, performer=performer, status="done", rating=9)
    cancelled = make_order(customer, performer=performer, status="cancelled")
    for column, order in (("taken_at", taken), ("taken_at", done), ("completed_at", done), ("rated_at", done),
                          ("taken_at", cancelled), ("cancelled_at", cancelled)):
        assert refused(db, f"UPDATE orders SET {column} = %s WHERE id = %s", (long_ago, order["id"])), column
    # The transitions themselves stamp them, and leave the earlier ones as they were.
    db.execute("UPDATE orders SET status = 'done' WHERE id = %s", (taken["id"],))
    row = db.execute("SELECT taken_at, completed_at FROM orders WHERE id = %s", (taken["id"],)).fetchone()
    assert row["taken_at"] == taken["taken_at"] and row["completed_at"] > row["taken_at"]


def test_transition_times_and_history_are_recorded_with_the_actor(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer)
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(performer["id"]), "note": ""})
        db.execute(Q["order_take"], {"order_id": order["id"], "performer_id": performer["id"]})
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(performer["id"]), "note": ""})
        db.execute(Q["order_complete"], {"order_id": order["id"], "performer_id": performer["id"]})
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(customer["id"]), "note": "great"})
        db.execute(Q["order_rate"], {"order_id": order["id"], "customer_id": customer["id"],
                                     "rating": 9, "review": "Thanks"})
    row = db.execute("SELECT * FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert row["taken_at"] and row["completed_at"] and row["rated_at"] and row["cancelled_at"] is None
    history = db.execute("SELECT action, from_status, to_status, actor_id, note FROM order_history "
                         "WHERE order_id = %s ORDER BY id", (order["id"],)).fetchall()
    assert [(h["action"], h["from_status"], h["to_status"]) for h in history] == [
        ("create", None, "open"), ("take", "open", "in_progress"),
        ("complete", "in_progress", "done"), ("rate", "done", "done")]
    assert [h["actor_id"] for h in history[1:]] == [performer["id"], performer["id"], customer["id"]]
    assert history[3]["note"] == "great"
    # Append-only, even for a DBA.
    assert refused(db, "UPDATE order_history SET note = 'x' WHERE order_id = %s", (order["id"],))
    assert refused(db, "DELETE FROM order_history WHERE order_id = %s", (order["id"],))


def test_rating_rules_hold_in_the_database(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    in_progress = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET rating = 5 WHERE id = %s", (in_progress["id"],))
    done = make_order(customer, performer=performer, status="done")
    for bad in (0, 11, -1):
        assert refused(db, "UPDATE orders SET rating = %s WHERE id = %s", (bad, done["id"]))
    assert refused(db, "UPDATE orders SET review = 'no rating' WHERE id = %s", (done["id"],))
    assert not refused(db, "UPDATE orders SET rating = 7 WHERE id = %s", (done["id"],))
    assert refused(db, "UPDATE orders SET rating = 10 WHERE id = %s", (done["id"],))
    assert refused(db, "UPDATE orders SET rating = NULL WHERE id = %s", (done["id"],))
    assert refused(db, "UPDATE orders SET review = 'changed my mind' WHERE id = %s", (done["id"],))
    # The app's query rates once: a second attempt touches nothing.
    assert db.execute(Q["order_rate"], {"order_id": done["id"], "customer_id": customer["id"],
                                        "rating": 1, "review": ""}).rowcount == 0
    stats = db.execute("SELECT * FROM performer_stats WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert (stats["rating_sum"], stats["rating_count"], float(stats["rating_avg"])) == (7, 1, 7.0)


def test_rows_that_cannot_exist_are_refused(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    category = db.execute("SELECT id FROM categories WHERE slug = 'design'").fetchone()["id"]
    insert = ("INSERT INTO orders (customer_id, category_id, title, description, budget, deadline, status, performer_id) "
              "VALUES (%s, %s, 'A title', 'Text', %s, %s, %s, %s)")
    today = datetime.date.today()
    assert refused(db, insert, (customer["id"], category, 0, None, "open", None))            # budget > 0
    assert refused(db, insert, (customer["id"], category, 100, today - datetime.timedelta(days=1), "open", None))
    assert refused(db, insert, (customer["id"], category, 100, None, "done", performer["id"]))  # starts open
    assert refused(db, insert, (performer["id"], category, 100, None, "open", None))         # a performer is no customer
    db.execute("UPDATE categories SET is_hidden = true WHERE id = %s", (category,))
    assert refused(db, insert, (customer["id"], category, 100, None, "open", None))          # hidden category
    db.execute("UPDATE categories SET is_hidden = false WHERE id = %s", (category,))

    order = make_order(customer)
    # a customer cannot be the performer, nor can another customer
    assert refused(db, "UPDATE orders SET status = 'in_progress', performer_id = %s WHERE id = %s",
                   (people["other_customer"]["id"], order["id"]))
    assert refused(db, "UPDATE orders SET status = 'in_progress', performer_id = NULL WHERE id = %s", (order["id"],))
    assert refused(db, "UPDATE orders SET customer_id = %s WHERE id = %s", (people["other_customer"]["id"], order["id"]))
    taken = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET title = 'Edited later' WHERE id = %s", (taken["id"],))
    assert refused(db, "UPDATE orders SET completed_at = now() WHERE id = %s", (taken["id"],))
    assert not refused(db, "UPDATE orders SET title = 'Edited while open' WHERE id = %s", (order["id"],))
    # a role never changes; emails are unique whatever their case
    assert refused(db, "UPDATE users SET role = 'performer' WHERE id = %s", (customer["id"],))
    assert refused(db, "INSERT INTO users (role, email, password_hash, name) VALUES ('customer', %s, 'x', 'Dup')",
                   (customer["email"].upper(),))
    # a customer cannot work in categories
    assert refused(db, "INSERT INTO performer_categories (performer_id, category_id) VALUES (%s, %s)",
                   (customer["id"], category))


@pytest.mark.parametrize("statement", ["TRUNCATE orders CASCADE", "TRUNCATE order_history, orders",
                                       "TRUNCATE users CASCADE", "TRUNCATE categories CASCADE"])
def test_truncating_orders_is_refused_even_by_cascade_so_the_counters_stay_exact(db, people, make_order, statement):
    """TRUNCATE fires no row triggers; the orders must go by DELETE, whose triggers keep the counts."""
    customer, performer = people["customer"], people["performer"]
    make_order(customer)
    make_order(customer, performer=performer, status="done", rating=6)
    before = db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"]
    with pytest.raises(psycopg.Error, match="use DELETE"):
        with db.transaction():
            db.execute(statement)
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == before == 2
    # DELETE is the way, and leaves every counter exact (checked after each test).
    db.execute("DELETE FROM orders")
    counts = db.execute("SELECT orders_placed, orders_open, orders_done FROM customer_stats "
                        "WHERE customer_id = %s", (customer["id"],)).fetchone()
    assert counts == {"orders_placed": 0, "orders_open": 0, "orders_done": 0}


def test_concurrent_block_and_new_order_keep_category_counts_exact(db, people, make_order):
    """Blocking hides open orders from category counts; unblocking restores them."""
    customer = people["customer"]
    make_order(customer, category="design")
    make_order(customer, category="design")
    count = lambda: db.execute("SELECT open_orders FROM categories WHERE slug = 'design'").fetchone()["open_orders"]
    assert count() == 2
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (customer["id"],))
    assert count() == 0
    db.execute("UPDATE users SET is_blocked = false WHERE id = %s", (customer["id"],))
    assert count() == 2


def test_only_the_counters_whose_contribution_changes_are_written(db, people, make_order):
    """A rating or a hidden review is the performer's business: the customer's row is not written
    (nor locked), and an update that changes no contribution writes no counter at all."""
    customer, performer = people["customer"], people["performer"]
    open_order = make_order(customer)
    taken = make_order(customer, performer=performer, status="in_progress")
    done = make_order(customer, performer=performer, status="done")

    def versions():
        """The row version (xmin) of each counters row: it changes whenever the row is written."""
        return {
            "customer": db.execute("SELECT xmin::text AS v FROM customer_stats WHERE customer_id = %s",
                                   (customer["id"],)).fetchone()["v"],
            "performer": db.execute("SELECT xmin::text AS v FROM performer_stats WHERE performer_id = %s",
                                    (performer["id"],)).fetchone()["v"],
            "categories": db.execute("SELECT string_agg(xmin::text, ',' ORDER BY id) AS v FROM categories").fetchone()["v"]}

    def written_by(sql, order):
        before = versions()
        db.execute(sql, (order["id"],))
        after = versions()
        return {side for side in before if before[side] != after[side]}

    assert written_by("UPDATE orders SET rating = 7, review = 'Good' WHERE id = %s", done) == {"performer"}
    assert written_by("UPDATE orders SET review_hidden = true WHERE id = %s", done) == {"performer"}
    assert written_by("UPDATE orders SET review_hidden = false WHERE id = %s", done) == {"performer"}
    nothing = ("UPDATE orders SET status = status, performer_id = performer_id, category_id = category_id, "
               "rating = rating, review_hidden = review_hidden WHERE id = %s")
    for order in (open_order, taken, done):
        assert written_by(nothing, order) == set(), order["status"]
    assert written_by("UPDATE orders SET category_id = category_id + 1 WHERE id = %s", open_order) == {"categories"}
    assert written_by("UPDATE orders SET status = 'done' WHERE id = %s", taken) == {"customer", "performer"}
    stats = db.execute("SELECT rating_sum, rating_count, orders_completed FROM performer_stats "
                       "WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert stats == {"rating_sum": 7, "rating_count": 1, "orders_completed": 2}


def random_operations(db, rng, steps):
    """Applies `steps` random operations, each in its own transaction; refusals are expected."""
    customers = [r["id"] for r in db.execute("SELECT id FROM users WHERE role = 'customer'")]
    performers = [r["id"] for r in db.execute("SELECT id FROM users WHERE role = 'performer'")]
    slugs = [r["slug"] for r in db.execute("SELECT slug FROM categories")]
    done_ops = 0
    for _ in range(steps):
        op = rng.choice(["create", "create", "take", "take", "complete", "cancel", "rate", "reopen",
                         "delete", "reassign", "hide", "restore", "block", "edit"])
        # Mostly pick an order in the state the operation needs, sometimes any order at all.
        wanted = {"take": "open", "complete": "in_progress", "reassign": "in_progress", "reopen": "in_progress",
                  "rate": "done", "hide": "done", "restore": "done"}.get(op)
        if wanted and rng.random() < 0.8:
            rows = db.execute("SELECT id FROM orders WHERE status = %s ORDER BY id", (wanted,)).fetchall()
        else:
            rows = db.execute("SELECT id FROM orders ORDER BY id").fetchall()
        oid = rng.choice(rows)["id"] if rows else None
        params = {"order_id": oid, "performer_id": rng.choice(performers), "customer_id": rng.choice(customers)}
        statements = {
            "create": (Q["order_create"], dict(params, category=rng.choice(slugs), title="Random order",
                                               description="Random text", budget=rng.randint(1, 100000), deadline=None)),
            "take": (Q["order_take"], params),
            "complete": ("UPDATE orders SET status = 'done' WHERE id = %(order_id)s", params),
            "cancel": ("UPDATE orders SET status = 'cancelled' WHERE id = %(order_id)s", params),
            "rate": ("UPDATE orders SET rating = %(rating)s WHERE id = %(order_id)s",
                     dict(params, rating=rng.randint(1, 10))),
            "reopen": ("UPDATE orders SET status = 'open', performer_id = NULL WHERE id = %(order_id)s", params),
            "delete": ("DELETE FROM orders WHERE id = %(order_id)s", params),
            "reassign": ("UPDATE orders SET performer_id = %(performer_id)s WHERE id = %(order_id)s", params),
            "hide": ("UPDATE orders SET review_hidden = true WHERE id = %(order_id)s", params),
            "restore": ("UPDATE orders SET review_hidden = false WHERE id = %(order_id)s", params),
            "block": ("UPDATE users SET is_blocked = NOT is_blocked WHERE id = %(customer_id)s", params),
            "edit": ("UPDATE orders SET category_id = (SELECT id FROM categories WHERE slug = %(slug)s) "
                     "WHERE id = %(order_id)s", dict(params, slug=rng.choice(slugs))),
        }
        sql, values = statements[op]
        if oid is None and op not in ("create", "block"):
            continue
        try:
            with db.transaction():
                done_ops += db.execute(sql, values).rowcount > 0
        except psycopg.Error:
            pass
    return done_ops


def test_two_thousand_random_operations_leave_every_counter_exact(db, make_user):
    for _ in range(4):
        make_user("customer")
        make_user("performer")
    rng = random.Random(20261126)
    applied = 0
    for _ in range(8):
        applied += random_operations(db, rng, 250)
        assert db.execute("SELECT * FROM audit_counters()").fetchall() == []
    assert applied > 800  # most steps really changed something
    statuses = {r["status"] for r in db.execute("SELECT DISTINCT status FROM orders")}
    assert statuses == set(STATUSES)
    assert db.execute("SELECT count(*) AS n FROM orders WHERE rating IS NOT NULL").fetchone()["n"] > 0


def test_audit_reports_a_corrupted_counter_and_recalc_repairs_it(db, people, make_order):
    make_order(people["customer"], performer=people["performer"], status="done", rating=8)
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []
    db.execute("UPDATE performer_stats SET rating_sum = rating_sum + 3 WHERE performer_id = %s",
               (people["performer"]["id"],))
    db.execute("UPDATE categories SET open_orders = 40 WHERE slug = 'seo'")
    db.execute("UPDATE customer_stats SET orders_done = 0 WHERE customer_id = %s", (people["customer"]["id"],))
    drift = db.execute("SELECT * FROM audit_counters()").fetchall()
    assert [(d["counter"], d["stored"], d["actual"]) for d in drift] == [
        ("category.open_orders", 40, 0), ("customer.orders_done", 0, 1), ("performer.rating_sum", 11, 8)]
    assert db.execute("SELECT recalc_counters() AS fixed").fetchone()["fixed"] == 3
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []
    stats = db.execute("SELECT rating_avg FROM performer_stats WHERE performer_id = %s",
                       (people["performer"]["id"],)).fetchone()
    assert float(stats["rating_avg"]) == 8.0


def run_in_parallel(db_url, jobs):
    """Runs each job(connection) on its own connection, all released at the same moment."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    connections = [psycopg.connect(db_url, row_factory=dict_row) for _ in jobs]

    def worker(i):
        barrier.wait()
        try:
            results[i] = jobs[i](connections[i])
            connections[i].commit()
        except psycopg.Error as err:
            connections[i].rollback()
            results[i] = err
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in connections:
        c.close()
    return results


def test_twenty_connections_taking_one_order_exactly_one_wins(db, db_url, make_user, make_order):
    order = make_order(make_user("customer"))
    performers = [make_user("performer") for _ in range(20)]

    def take(performer):
        return lambda connection: connection.execute(
            Q["order_take"], {"order_id": order["id"], "performer_id": performer["id"]}).rowcount
    results = run_in_parallel(db_url, [take(p) for p in performers])
    assert sorted(results) == [0] * 19 + [1]
    winner = performers[results.index(1)]
    row = db.execute("SELECT status, performer_id FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert row == {"status": "in_progress", "performer_id": winner["id"]}
    assert db.execute("SELECT count(*) AS n FROM order_history WHERE order_id = %s AND action = 'take'",
                      (order["id"],)).fetchone()["n"] == 1
    busy = db.execute("SELECT sum(orders_in_progress) AS n FROM performer_stats").fetchone()["n"]
    assert busy == 1


def test_parallel_completions_and_ratings_of_one_performer_keep_counters_exact(db, db_url, make_user, make_order):
    performer = make_user("performer")
    customers = [make_user("customer") for _ in range(8)]
    orders = [make_order(c, performer=performer, status="in_progress") for c in customers]
    ratings = [3, 10, 7, 8, 1, 9, 6, 5]

    def complete_and_rate(order, customer, rating):
        def job(connection):
            connection.execute(Q["order_complete"], {"order_id": order["id"], "performer_id": performer["id"]})
            return connection.execute(Q["order_rate"], {"order_id": order["id"], "customer_id": customer["id"],
                                                        "rating": rating, "review": ""}).rowcount
        return job
    results = run_in_parallel(db_url, [complete_and_rate(o, c, r) for o, c, r in zip(orders, customers, ratings)])
    assert results == [1] * 8
    stats = db.execute("SELECT * FROM performer_stats WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert (stats["orders_completed"], stats["orders_in_progress"], stats["rating_sum"], stats["rating_count"]) == (
        8, 0, sum(ratings), 8)
    assert str(stats["rating_avg"]) == "6.13"  # 49 / 8 = 6.125, rounded half away from zero


def test_every_table_function_and_trigger_is_commented(db):
    missing = db.execute("""
        SELECT 'table ' || c.relname AS what FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') IS NULL
        UNION ALL
        SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal AND obj_description(t.oid, 'pg_trigger') IS NULL
    """).fetchall()
    assert missing == []


def test_every_comment_states_its_rule_instead_of_pointing_at_a_document(db):
    """A DBA reading \\d+ or \\dd in psql has the database, not the spec: no "see SPEC §4"."""
    # Objects made by the schema have oids from 16384 on (FirstNormalObjectId); below are PostgreSQL's own.
    pointing = db.execute("SELECT description FROM pg_description "
                          "WHERE objoid >= 16384 AND description ~* '(\\mspec\\M|§|\\msee\\M)' ORDER BY 1").fetchall()
    assert pointing == []


def wait_until_blocked(db, pid, timeout=10):
    """Waits until backend `pid` waits for a lock (so the interleaving under test really happens)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError("the second transaction never waited for the first")


@pytest.mark.parametrize("first", ["block", "create"])
def test_a_block_racing_a_new_order_keeps_the_category_count_exact(db, db_url, make_user, first):
    """Whichever commits first, the order of a blocked customer is not counted in its category."""
    customer = make_user("customer")
    block_sql = "UPDATE users SET is_blocked = true WHERE id = %(customer_id)s"
    params = {"customer_id": customer["id"], "category": "design", "title": "Racing order",
              "description": "Text", "budget": 100, "deadline": None}
    # order_create refuses a blocked customer outright; a DBA's INSERT is the write that races.
    create_sql = ("INSERT INTO orders (customer_id, category_id, title, description, budget) "
                  "SELECT %(customer_id)s, id, %(title)s, %(description)s, %(budget)s "
                  "FROM categories WHERE slug = %(category)s")
    statements = {"block": block_sql, "create": create_sql}
    second = "create" if first == "block" else "block"
    with psycopg.connect(db_url) as one, psycopg.connect(db_url) as two:
        one.execute(statements[first], params)           # holds its row locks, uncommitted
        pid = two.info.backend_pid
        worker = threading.Thread(target=lambda: (two.execute(statements[second], params), two.commit()))
        worker.start()
        wait_until_blocked(db, pid)
        one.commit()
        worker.join(timeout=10)
    count = db.execute("SELECT open_orders FROM categories WHERE slug = 'design'").fetchone()["open_orders"]
    assert count == 0
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


def test_two_tokens_created_at_once_never_make_an_eleventh(db, db_url, make_user):
    user = make_user("performer")
    for n in range(9):
        db.execute("INSERT INTO api_tokens (user_id, token_hash, label) VALUES (%s, %s, 'old')",
                   (user["id"], bytes([n]) * 32))

    def create(n):
        return lambda connection: connection.execute(
            "INSERT INTO api_tokens (user_id, token_hash, label) VALUES (%s, %s, 'new')",
            (user["id"], bytes([100 + n]) * 32)).rowcount
    results = run_in_parallel(db_url, [create(n) for n in range(4)])
    assert results.count(1) == 1 and all(isinstance(r, psycopg.errors.CheckViolation) for r in results if r != 1)
    assert db.execute("SELECT count(*) AS n FROM api_tokens WHERE user_id = %s", (user["id"],)).fetchone()["n"] == 10


@pytest.mark.parametrize("counters", ["performer_stats", "categories"])
def test_two_crossing_reassignments_at_once_never_deadlock(db, db_url, make_user, make_order, counters):
    """Order one moves from the lower counters row to the higher while order two moves the other way.

    Each move writes both rows, and one's move takes the lower row first either way. The test fixes
    the interleaving: one has got as far as holding the lower row when two's move starts and waits,
    then one's move goes on. Rows taken old-then-new, two holds the higher row while it waits for the
    lower, and one's move then waits for the higher: a deadlock. Taken lowest id first, two waits for
    the lower row holding nothing, and one's move goes through.
    """
    if counters == "performer_stats":
        low, high = make_user("performer"), make_user("performer")
        one = make_order(make_user("customer"), performer=low, status="in_progress")
        two = make_order(make_user("customer"), performer=high, status="in_progress")
        low, high, column = low["id"], high["id"], "performer_id"
        take_row = "SELECT 1 FROM performer_stats WHERE performer_id = %s FOR NO KEY UPDATE"
    else:
        slugs = {r["id"]: r["slug"] for r in db.execute(
            "SELECT id, slug FROM categories WHERE slug IN ('design', 'development')")}
        low, high = sorted(slugs)
        one = make_order(make_user("customer"), category=slugs[low])
        two = make_order(make_user("customer"), category=slugs[high])
        column = "category_id"
        take_row = "SELECT 1 FROM categories WHERE id = %s FOR NO KEY UPDATE"
    assert low < high
    outcome = {}

    def move(connection, name, order, target):
        try:
            connection.execute(f"UPDATE orders SET {column} = %s WHERE id = %s", (target, order["id"]))
            connection.commit()
            outcome[name] = "committed"
        except psycopg.Error as err:
            connection.rollback()
            outcome[name] = type(err).__name__

    with psycopg.connect(db_url) as first, psycopg.connect(db_url) as second:
        first.execute(take_row, (low,))        # the lock the first move takes first, held from now on
        pid = second.info.backend_pid
        moves = [threading.Thread(target=move, args=(second, "two", two, low))]
        moves[0].start()
        wait_until_blocked(db, pid)
        moves.append(threading.Thread(target=move, args=(first, "one", one, high)))
        moves[1].start()
        for thread in moves:
            thread.join(timeout=30)
    assert outcome == {"one": "committed", "two": "committed"}
    rows = db.execute(f"SELECT id, {column} AS moved_to FROM orders WHERE id IN (%s, %s) ORDER BY id",
                      (one["id"], two["id"])).fetchall()
    assert [(r["id"], r["moved_to"]) for r in rows] == [(one["id"], high), (two["id"], low)]
