"""The admin area (SPEC §7): staff only, every action logged with it, never on oneself, CSV export."""
import csv
import io
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

import admin
import app as birzha
import commands
import db as database
from db import Q
import web
from conftest import PASSWORD, free_port, text_of
from web import format_date

ROOT = Path(birzha.__file__).parent


@pytest.fixture
def staff(make_user):
    return make_user("customer", staff=True, name="Staff Sveta")


@pytest.fixture
def staff_client(client, sign_in, staff):
    return sign_in(client, staff)


def log_rows(db):
    return db.execute("SELECT * FROM admin_log ORDER BY id").fetchall()


def world_state(db):
    """Everything a staff action could change, to prove that a refused one changed nothing."""
    return {
        "users": db.execute("SELECT id, is_staff, is_blocked FROM users ORDER BY id").fetchall(),
        "orders": db.execute("SELECT id, status, performer_id, review_hidden, cancel_reason "
                             "FROM orders ORDER BY id").fetchall(),
        "categories": db.execute("SELECT * FROM categories ORDER BY id").fetchall(),
        "performers": db.execute("SELECT * FROM performer_stats ORDER BY performer_id").fetchall(),
        "sessions": db.execute("SELECT count(*) AS n FROM sessions").fetchone()["n"],
        "log": log_rows(db),
    }


# ---------------------------------------------------------------------------------------------
# Access: every /admin route is for staff only

def admin_routes():
    return [route for route in birzha.app.routes if route.rule.startswith("/admin")]


def concrete_url(rule, ids):
    """The rule with every wildcard replaced by a real id; an unknown wildcard fails loudly."""
    def substitute(match):
        name = match.group(1)
        assert name in ids, f"add a real id for <{name}> in this test (route {rule})"
        return str(ids[name])
    return re.sub(r"<(\w+)(?::[^>]*)?>", substitute, rule)


def test_every_admin_route_is_for_staff_only(app, client, make_client, sign_in, db, staff,
                                             make_user, make_order):
    customer = make_user("customer")
    performer = make_user("performer")
    order = make_order(customer, performer=performer, status="done", rating=8)
    ids = {"user_id": customer["id"], "order_id": order["id"], "category_id": 1}
    routes = admin_routes()
    rules = {route.rule for route in routes}
    # the walk must see the whole area, actions included
    assert {"/admin", "/admin/users/<user_id:id>/block", "/admin/orders/<order_id:id>/reopen",
            "/admin/orders/<order_id:id>/resolve", "/admin/disputes",
            "/admin/categories/<category_id:id>/hide", "/admin/reviews/<order_id:id>/hide",
            "/admin/counters/recalc", "/admin/export/orders.csv", "/admin/log"} <= rules
    guest = client
    as_customer = sign_in(make_client("203.0.113.21"), customer)
    as_performer = sign_in(make_client("203.0.113.22"), performer)
    before = world_state(db)
    for route in routes:
        url = concrete_url(route.rule, ids)
        if route.method == "POST":
            assert getattr(route.callback, "csrf_protected", False), f"{route.rule}: @csrf_protect first"
            data = {"reason": "walk", "slug": "walk", "name_ru": "Обход", "name_en": "Walk", "outcome": "done"}
            answer = guest.post_form(url, data)
            assert answer.status_int == 303, route.rule
            assert answer.headers["Location"].endswith("/login?next=" + url), route.rule
            for other in (as_customer, as_performer):
                assert other.post_form(url, data).status_int == 403, route.rule
        else:
            answer = guest.get(url, status="*")
            assert answer.status_int == 303, route.rule
            assert "/login?next=" in answer.headers["Location"], route.rule
            for other in (as_customer, as_performer):
                assert other.get(url, status="*").status_int == 403, route.rule
    assert world_state(db) == before

    as_staff = sign_in(make_client("203.0.113.23"), staff)
    for route in routes:
        if route.method == "GET":
            page = as_staff.get(concrete_url(route.rule, ids), status="*")
            assert page.status_int == 200, route.rule
            if "text/html" in page.content_type:
                assert "style=" not in page.text and not re.search(r"<script(?![^>]*\bsrc=)", page.text), route.rule
                forms = re.findall(r'<form method="post".*?</form>', page.text, flags=re.S)
                assert all('name="csrf_token"' in form for form in forms), route.rule
                element_ids = re.findall(r'\sid="([^"]+)"', page.text)
                assert len(element_ids) == len(set(element_ids)), route.rule


def test_admin_pages_speak_russian(staff_client, make_user, make_order):
    customer = make_user("customer")
    order = make_order(customer)
    russian = {"Accept-Language": "ru"}
    assert "Панель" in staff_client.get("/admin", headers=russian).text
    assert "Пользователи" in staff_client.get("/admin/users", headers=russian).text
    assert "Отменить заказ" in staff_client.get(f"/admin/orders/{order['id']}", headers=russian).text
    assert "Журнал действий" in staff_client.get("/admin/log", headers=russian).text
    assert "Audit log" in staff_client.get("/admin/log").text


# ---------------------------------------------------------------------------------------------
# Actions: each changes what it should, writes exactly one log row with it, and needs CSRF

@pytest.fixture
def world(db, staff, make_user, make_order):
    """A small marketplace for the action tests."""
    customer = make_user("customer", name="Customer Kira")
    blocked = make_user("customer", blocked=True)
    colleague = make_user("performer", staff=True)
    performer = make_user("performer")
    return {
        "staff": staff, "customer": customer, "blocked": blocked, "colleague": colleague,
        "performer": performer,
        "open": make_order(customer, title="Open order"),
        "in_progress": make_order(customer, performer=performer, status="in_progress"),
        "rated": make_order(customer, performer=performer, status="done", rating=6, review="Fine"),
        "hidden": make_order(customer, performer=performer, status="done", rating=2, review="Bad"),
        "disputed": make_order(customer, performer=performer, status="disputed", title="Disputed order"),
    }


def hide_rating_in_sql(db, order_id):
    db.execute("UPDATE orders SET review_hidden = true WHERE id = %s", (order_id,))


def user_flags(db, user_id):
    return db.execute("SELECT id, is_blocked, is_staff FROM users WHERE id = %s", (user_id,)).fetchone()


def order_row(db, order_id):
    return db.execute("SELECT id, status, performer_id, cancel_reason, review_hidden FROM orders "
                      "WHERE id = %s", (order_id,)).fetchone()


def category_row(db, slug):
    return db.execute("SELECT id, slug, name_ru, name_en, is_hidden FROM categories WHERE slug = %s",
                      (slug,)).fetchone()


# Each case: the URL and form, then what the database shows after, and the log row expected.
ACTIONS = {
    "block": dict(
        url=lambda w: f"/admin/users/{w['customer']['id']}/block",
        check=lambda db, w: user_flags(db, w["customer"]["id"])["is_blocked"] is True,
        log=lambda w: ("block", "user", w["customer"]["id"],
                       {"id": w["customer"]["id"], "is_blocked": False},
                       {"id": w["customer"]["id"], "is_blocked": True})),
    "unblock": dict(
        url=lambda w: f"/admin/users/{w['blocked']['id']}/unblock",
        check=lambda db, w: user_flags(db, w["blocked"]["id"])["is_blocked"] is False,
        log=lambda w: ("unblock", "user", w["blocked"]["id"],
                       {"id": w["blocked"]["id"], "is_blocked": True},
                       {"id": w["blocked"]["id"], "is_blocked": False})),
    "grant_staff": dict(
        url=lambda w: f"/admin/users/{w['performer']['id']}/grant-staff",
        check=lambda db, w: user_flags(db, w["performer"]["id"])["is_staff"] is True,
        log=lambda w: ("grant_staff", "user", w["performer"]["id"],
                       {"id": w["performer"]["id"], "is_staff": False},
                       {"id": w["performer"]["id"], "is_staff": True})),
    "revoke_staff": dict(
        url=lambda w: f"/admin/users/{w['colleague']['id']}/revoke-staff",
        check=lambda db, w: user_flags(db, w["colleague"]["id"])["is_staff"] is False,
        log=lambda w: ("revoke_staff", "user", w["colleague"]["id"],
                       {"id": w["colleague"]["id"], "is_staff": True},
                       {"id": w["colleague"]["id"], "is_staff": False})),
    "cancel_order": dict(
        # the staff reason goes to the audit log and the staff-only timeline, not the public cancel_reason
        url=lambda w: f"/admin/orders/{w['in_progress']['id']}/cancel",
        check=lambda db, w: order_row(db, w["in_progress"]["id"])["status"] == "cancelled"
        and order_row(db, w["in_progress"]["id"])["cancel_reason"] is None,
        log=lambda w: ("cancel_order", "order", w["in_progress"]["id"],
                       {"id": w["in_progress"]["id"], "status": "in_progress", "performer_id": w["performer"]["id"]},
                       {"id": w["in_progress"]["id"], "status": "cancelled", "performer_id": w["performer"]["id"]})),
    "reopen_order": dict(
        url=lambda w: f"/admin/orders/{w['in_progress']['id']}/reopen",
        check=lambda db, w: order_row(db, w["in_progress"]["id"])["status"] == "open"
        and order_row(db, w["in_progress"]["id"])["performer_id"] is None,
        log=lambda w: ("reopen_order", "order", w["in_progress"]["id"],
                       {"id": w["in_progress"]["id"], "status": "in_progress", "performer_id": w["performer"]["id"]},
                       {"id": w["in_progress"]["id"], "status": "open", "performer_id": None})),
    "resolve_dispute": dict(
        url=lambda w: f"/admin/orders/{w['disputed']['id']}/resolve",
        form={"outcome": "done"},
        check=lambda db, w: order_row(db, w["disputed"]["id"])["status"] == "done",
        log=lambda w: ("resolve_dispute", "order", w["disputed"]["id"],
                       {"id": w["disputed"]["id"], "status": "disputed", "performer_id": w["performer"]["id"]},
                       {"id": w["disputed"]["id"], "status": "done", "performer_id": w["performer"]["id"]})),
    "add_category": dict(
        url=lambda w: "/admin/categories",
        form={"slug": "3d-modeling", "name_ru": "3D-моделирование", "name_en": "3D modelling"},
        check=lambda db, w: category_row(db, "3d-modeling") is not None,
        log=lambda w: ("add_category", "category", None, None,
                       {"slug": "3d-modeling", "name_ru": "3D-моделирование", "name_en": "3D modelling",
                        "is_hidden": False})),
    "rename_category": dict(
        url=lambda w: "/admin/categories/1/rename",
        form={"name_ru": "Графика", "name_en": "Graphics"},
        check=lambda db, w: category_row(db, "design")["name_en"] == "Graphics",
        log=lambda w: ("rename_category", "category", 1,
                       {"id": 1, "name_ru": "Дизайн", "name_en": "Design"},
                       {"id": 1, "name_ru": "Графика", "name_en": "Graphics"})),
    "hide_category": dict(
        url=lambda w: "/admin/categories/1/hide",
        check=lambda db, w: category_row(db, "design")["is_hidden"] is True,
        log=lambda w: ("hide_category", "category", 1, {"id": 1, "is_hidden": False},
                       {"id": 1, "is_hidden": True})),
    "unhide_category": dict(
        setup=lambda db, w: db.execute("UPDATE categories SET is_hidden = true WHERE id = 7"),
        url=lambda w: "/admin/categories/7/unhide",
        check=lambda db, w: category_row(db, "business")["is_hidden"] is False,
        log=lambda w: ("unhide_category", "category", 7, {"id": 7, "is_hidden": True},
                       {"id": 7, "is_hidden": False})),
    "hide_review": dict(
        url=lambda w: f"/admin/reviews/{w['rated']['id']}/hide",
        check=lambda db, w: order_row(db, w["rated"]["id"])["review_hidden"] is True,
        log=lambda w: ("hide_review", "review", w["rated"]["id"],
                       {"id": w["rated"]["id"], "rating": 6, "review_hidden": False},
                       {"id": w["rated"]["id"], "rating": 6, "review_hidden": True})),
    "restore_review": dict(
        setup=lambda db, w: hide_rating_in_sql(db, w["hidden"]["id"]),
        url=lambda w: f"/admin/reviews/{w['hidden']['id']}/restore",
        check=lambda db, w: order_row(db, w["hidden"]["id"])["review_hidden"] is False,
        log=lambda w: ("restore_review", "review", w["hidden"]["id"],
                       {"id": w["hidden"]["id"], "rating": 2, "review_hidden": True},
                       {"id": w["hidden"]["id"], "rating": 2, "review_hidden": False})),
    "recalc_counters": dict(
        setup=lambda db, w: db.execute("UPDATE performer_stats SET orders_completed = orders_completed + 3 "
                                       "WHERE performer_id = %s", (w["performer"]["id"],)),
        url=lambda w: "/admin/counters/recalc",
        check=lambda db, w: db.execute("SELECT * FROM audit_counters()").fetchall() == [],
        log=lambda w: ("recalc_counters", "counters", None,
                       {"drift": [{"counter": "performer.orders_completed", "subject_id": w["performer"]["id"],
                                   "stored": 5, "actual": 2}]},
                       {"fixed": 1})),
}


@pytest.mark.parametrize("name", list(ACTIONS))
def test_staff_action_changes_state_and_logs_one_row_in_the_same_transaction(name, db, staff_client, world):
    case = ACTIONS[name]
    if "setup" in case:
        case["setup"](db, world)
    reason = "Spam, see ticket 7"
    form = dict(case.get("form", {}), reason=reason)
    url = case["url"](world)
    before = world_state(db)

    refused = staff_client.post_form(url, form, csrf=False)
    assert refused.status_int == 403
    assert world_state(db) == before

    done = staff_client.post_form(url, form)
    assert done.status_int == 303, text_of(done)
    assert case["check"](db, world)
    rows = log_rows(db)
    assert len(rows) == 1
    row = rows[0]
    action, target_type, target_id, log_before, log_after = case["log"](world)
    assert (row["action"], row["target_type"], row["staff_id"], row["reason"]) == (action, target_type,
                                                                                   world["staff"]["id"], reason)
    if target_id is not None:
        assert row["target_id"] == target_id
    after = dict(row["after"])
    if name == "add_category":
        assert row["target_id"] == after.pop("id") == category_row(db, "3d-modeling")["id"]
    assert (row["before"], after) == (log_before, log_after)
    # the flash message says it worked
    assert 'class="flash flash-ok"' in staff_client.get(done.headers["Location"]).text


@pytest.mark.parametrize("name", ["cancel_order", "reopen_order", "resolve_dispute", "hide_review", "restore_review"])
def test_order_history_names_the_staff_member_and_the_reason(name, db, staff_client, world):
    case = ACTIONS[name]
    if "setup" in case:
        case["setup"](db, world)
    form = dict(case.get("form", {}), reason="Spam, see ticket 7")
    assert staff_client.post_form(case["url"](world), form).status_int == 303
    order_id = case["log"](world)[2]
    last = db.execute("SELECT actor_id, note, staff_only, action FROM order_history WHERE order_id = %s "
                      "ORDER BY id DESC LIMIT 1", (order_id,)).fetchone()
    assert (last["actor_id"], last["note"], last["staff_only"]) == (world["staff"]["id"], "Spam, see ticket 7", True)
    page = staff_client.get(f"/admin/orders/{order_id}")
    assert "Staff Sveta" in text_of(page) and "Spam, see ticket 7" in text_of(page)


@pytest.mark.parametrize("action", ["block", "unblock", "grant-staff", "revoke-staff"])
def test_staff_cannot_act_on_their_own_account(action, db, staff_client, staff):
    before = world_state(db)
    answer = staff_client.post_form(f"/admin/users/{staff['id']}/{action}", {"reason": "Testing"})
    assert answer.status_int == 403
    assert "own account" in text_of(answer)
    assert world_state(db) == before
    # and the page does not offer the buttons, but says why
    page = staff_client.get(f"/admin/users/{staff['id']}")
    assert "This is your own account" in text_of(page)
    assert f"/admin/users/{staff['id']}/block" not in page.text


def test_the_sql_itself_refuses_an_action_on_oneself(db, staff):
    """Even called directly, the statement changes nothing and logs nothing."""
    row = db.execute(Q["admin_user_set_blocked"],
                     {"user_id": staff["id"], "staff_id": staff["id"], "blocked": True, "reason": "x"}).fetchone()
    assert row is None
    assert user_flags(db, staff["id"])["is_blocked"] is False
    assert log_rows(db) == []


def test_a_former_staff_member_is_refused_by_the_statement(db, make_user, world):
    """The statement re-checks that the actor is still active staff (a stale page or a race)."""
    former = make_user("customer")
    for query, params in [("admin_user_set_blocked", {"user_id": world["customer"]["id"], "blocked": True}),
                          ("admin_order_cancel", {"order_id": world["open"]["id"]}),
                          ("admin_category_set_hidden", {"category_id": 1, "hidden": True}),
                          ("admin_counters_recalc", {})]:
        assert db.execute(Q[query], dict(params, staff_id=former["id"], reason="x")).fetchone() is None
    assert log_rows(db) == []
    assert order_row(db, world["open"]["id"])["status"] == "open"


@pytest.mark.parametrize("url, status", [
    ("/admin/users/{customer}/unblock", 409),     # not blocked
    ("/admin/users/{blocked}/block", 409),        # already blocked
    ("/admin/users/{colleague}/grant-staff", 409),
    ("/admin/users/{customer}/revoke-staff", 409),
    ("/admin/users/999999/block", 404),
    ("/admin/orders/{rated}/cancel", 409),        # done: SPEC §4 has no way out
    ("/admin/orders/{open}/reopen", 409),         # only in_progress -> open
    ("/admin/orders/999999/cancel", 404),
    ("/admin/orders/{disputed}/cancel", 409),     # a dispute is settled, not cancelled
    ("/admin/orders/{in_progress}/resolve", 409), # no dispute to settle
    ("/admin/orders/{rated}/resolve", 409),
    ("/admin/orders/999999/resolve", 404),
    ("/admin/reviews/{open}/hide", 404),          # no rating to hide
    ("/admin/reviews/{rated}/restore", 409),      # not hidden
    ("/admin/categories/999/hide", 404),
    ("/admin/categories/{design}/unhide", 409),
])
def test_actions_that_change_nothing_answer_404_or_409_and_log_nothing(url, status, db, staff_client, world):
    ids = {key: value["id"] for key, value in world.items()}
    before = world_state(db)
    answer = staff_client.post_form(url.format(design=1, **ids), {"reason": "Because", "outcome": "done"})
    assert answer.status_int == status
    assert world_state(db) == before


@pytest.mark.parametrize("url", ["/admin/users/{customer}/block", "/admin/orders/{open}/cancel",
                                 "/admin/orders/{in_progress}/reopen", "/admin/orders/{disputed}/resolve",
                                 "/admin/reviews/{rated}/hide"])
def test_an_empty_reason_is_refused_with_the_form_shown_again(url, db, staff_client, world):
    ids = {key: value["id"] for key, value in world.items()}
    before = world_state(db)
    answer = staff_client.post_form(url.format(**ids), {"reason": "   "})
    assert answer.status_int == 400
    assert world_state(db) == before
    assert 'aria-invalid="true"' in answer.text and "This field is required." in text_of(answer)


def test_category_form_errors_keep_the_input(db, staff_client):
    answer = staff_client.post_form("/admin/categories", {"slug": "Web Design!", "name_ru": "Веб", "name_en": ""})
    assert answer.status_int == 400
    assert 'value="Web Design!"' in answer.text and 'value="Веб"' in answer.text
    assert "Lower-case Latin letters" in text_of(answer)
    taken = staff_client.post_form("/admin/categories", {"slug": "design", "name_ru": "Д", "name_en": "D"})
    assert taken.status_int == 400 and "This slug is taken." in text_of(taken)
    assert staff_client.post_form("/admin/categories/1/rename",
                                  {"name_ru": "Дизайн", "name_en": "Design"}).status_int == 409
    assert log_rows(db) == []


def test_a_hidden_category_takes_no_new_orders_and_leaves_the_list(db, staff_client, make_user):
    customer = make_user("customer")
    assert staff_client.post_form("/admin/categories/1/hide", {}).status_int == 303
    new_order = {"customer_id": customer["id"], "category": "design", "title": "Poster",
                 "description": "A poster", "budget": 500, "deadline": None, "mode": "take"}
    assert db.execute(Q["order_create"], new_order).fetchone() is None
    assert "design" not in [c["slug"] for c in db.execute(Q["categories_list"]).fetchall()]
    assert staff_client.post_form("/admin/categories/1/unhide", {}).status_int == 303
    assert db.execute(Q["order_create"], new_order).fetchone() is not None


# ---------------------------------------------------------------------------------------------
# What the actions do to the rest of the site

def test_blocking_ends_a_live_session_and_takes_open_orders_out_of_the_feed(
        db, client, make_client, sign_in, staff_client, make_user, make_order):
    kira = make_user("customer", name="Kira Pottery", email="kira@example.test")
    make_order(kira, title="Glaze forty mugs", category="design")
    kira_browser = sign_in(make_client("203.0.113.30"), kira)
    assert "Kira Pottery" in kira_browser.get("/").text
    assert kira_browser.get("/cabinet").status_int == 200
    assert "Glaze forty mugs" in client.get("/orders").text
    design_open = "SELECT open_orders FROM categories WHERE slug = 'design'"
    assert db.execute(design_open).fetchone()["open_orders"] == 1

    answer = staff_client.post_form(f"/admin/users/{kira['id']}/block", {"reason": "Fraud report"})
    assert answer.status_int == 303

    home = kira_browser.get("/")
    assert "Kira Pottery" not in home.text and 'href="/login"' in home.text
    cabinet = kira_browser.get("/cabinet", status=303)
    assert cabinet.headers["Location"].startswith("/login")
    assert "Glaze forty mugs" not in client.get("/orders").text
    assert db.execute(design_open).fetchone()["open_orders"] == 0
    # and the password no longer opens a session
    make_client("203.0.113.31").post_form("/login", {"email": "kira@example.test", "password": PASSWORD})
    assert db.execute("SELECT count(*) AS n FROM sessions WHERE user_id = %s", (kira["id"],)).fetchone()["n"] == 0

    assert staff_client.post_form(f"/admin/users/{kira['id']}/unblock", {"reason": "Cleared"}).status_int == 303
    assert "Glaze forty mugs" in client.get("/orders").text
    assert db.execute(design_open).fetchone()["open_orders"] == 1


def test_blocking_a_performer_withdraws_their_offers_so_the_orders_count_what_they_list(
        db, sign_in, make_client, staff_client, make_user, make_order):
    anna = make_user("customer")
    spammer, honest = make_user("performer", name="Spam Studio"), make_user("performer", name="Honest Lab")
    both = make_order(anna, title="Logo for a bakery", mode="offers")
    only_spam = make_order(anna, title="Banner for a bakery", mode="offers")
    for performer, order in ((spammer, both), (honest, both), (spammer, only_spam)):
        db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"],
                                       "price": 900, "days": 3, "message": "Mine"})
    anna_browser = sign_in(make_client("203.0.113.32"), anna)
    assert "2 offers" in text_of(anna_browser.get(f"/orders/{both['id']}"))

    assert staff_client.post_form(f"/admin/users/{spammer['id']}/block", {"reason": "Spam"}).status_int == 303

    page = text_of(anna_browser.get(f"/orders/{both['id']}"))
    assert "1 offer" in page and "Honest Lab" in page and "Spam Studio" not in page
    assert "0 offers" in text_of(anna_browser.get(f"/orders/{only_spam['id']}"))
    assert [r["status"] for r in db.execute("SELECT status::text FROM offers WHERE performer_id = %s",
                                            (spammer["id"],))] == ["withdrawn", "withdrawn"]
    # an unblock lets them send offers again; it does not send the withdrawn ones
    assert staff_client.post_form(f"/admin/users/{spammer['id']}/unblock", {"reason": "Cleared"}).status_int == 303
    assert "1 offer" in text_of(anna_browser.get(f"/orders/{both['id']}"))
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


def test_hiding_a_rating_takes_it_out_of_the_average_and_restoring_brings_it_back(
        db, staff_client, make_user, make_order):
    customer = make_user("customer")
    performer = make_user("performer")
    make_order(customer, performer=performer, status="done", rating=10)
    unfair = make_order(customer, performer=performer, status="done", rating=4, review="Rude!")

    def average():
        return db.execute("SELECT rating_avg, rating_sum, rating_count FROM performer_stats "
                          "WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert average() == {"rating_avg": 7, "rating_sum": 14, "rating_count": 2}
    assert staff_client.post_form(f"/admin/reviews/{unfair['id']}/hide", {"reason": "Abusive"}).status_int == 303
    assert average() == {"rating_avg": 10, "rating_sum": 10, "rating_count": 1}
    listing = staff_client.get("/admin/reviews?hidden=yes")
    assert "Rude!" in listing.text and f"/admin/reviews/{unfair['id']}/restore" in listing.text
    assert staff_client.post_form(f"/admin/reviews/{unfair['id']}/restore", {"reason": "Appeal"}).status_int == 303
    assert average() == {"rating_avg": 7, "rating_sum": 14, "rating_count": 2}


def test_reopening_puts_the_order_back_in_the_feed_without_its_performer(
        db, client, staff_client, make_user, make_order):
    customer = make_user("customer")
    performer = make_user("performer")
    order = make_order(customer, performer=performer, status="in_progress", title="Translate a menu")
    assert "Translate a menu" not in client.get("/orders").text
    reopen = staff_client.post_form(f"/admin/orders/{order['id']}/reopen", {"reason": "Performer vanished"})
    assert reopen.status_int == 303
    assert "Translate a menu" in client.get("/orders").text
    stats = db.execute("SELECT orders_in_progress FROM performer_stats WHERE performer_id = %s",
                       (performer["id"],)).fetchone()
    assert stats["orders_in_progress"] == 0


# ---------------------------------------------------------------------------------------------
# Disputes: the queue, settling one, what it leaves behind

def open_dispute(db, order, by, reason):
    """The order's customer or performer opens a dispute with a reason, as the order page does."""
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(by["id"]), "note": reason, "staff": False})
        assert db.execute(Q["order_dispute"], {"order_id": order["id"], "user_id": by["id"]}).fetchone()


def stats(db, user):
    """The counters of a customer or a performer that a dispute moves."""
    if user["role"] == "customer":
        return db.execute("SELECT orders_in_progress, orders_delivered, orders_disputed, orders_done, "
                          "orders_cancelled FROM customer_stats WHERE customer_id = %s", (user["id"],)).fetchone()
    return db.execute("SELECT orders_in_progress, orders_delivered, orders_disputed, orders_completed "
                      "FROM performer_stats WHERE performer_id = %s", (user["id"],)).fetchone()


def queue_ids(page):
    return [int(n) for n in re.findall(r'href="/admin/orders/(\d+)"', page.text)]


def shown_date(moment):
    """The text a page shows for a moment (format_date's <time> without its tags)."""
    return re.sub(r"<[^>]+>", "", str(format_date(moment)))


def test_the_disputes_queue_lists_disputed_orders_oldest_first_with_both_sides_and_the_reason(
        db, staff_client, make_user, make_order, monkeypatch):
    kira = make_user("customer", name="Customer Kira")
    gleb = make_user("performer", name="Performer Gleb")
    first, second, third = (make_order(kira, performer=gleb, status=status, title=title) for status, title in
                            [("in_progress", "Menu translation"), ("delivered", "Shop logo"), ("in_progress", "Bot")])
    calm = make_order(kira, performer=gleb, status="delivered", title="Calm delivered order")
    open_dispute(db, third, kira, "Nothing happened for a week")
    open_dispute(db, first, gleb, "The customer does not answer")
    open_dispute(db, second, kira, "Not what I asked for")

    page = staff_client.get("/admin/disputes")
    assert queue_ids(page) == [third["id"], first["id"], second["id"]]  # by the moment disputed, not by id
    assert calm["id"] not in queue_ids(page)
    rows = re.findall(r"<tr>.*?</tr>", page.text, flags=re.S)[1:]
    assert [text_of(SimpleNamespace(text=row)) for row in rows] == [
        f"#{third['id']} Bot 1 000 ₽ {shown_date(order_at(db, third, 'disputed_at'))} "
        "Customer Kira Performer Gleb Customer Kira · customer Nothing happened for a week",
        f"#{first['id']} Menu translation 1 000 ₽ {shown_date(order_at(db, first, 'disputed_at'))} "
        "Customer Kira Performer Gleb Performer Gleb · performer The customer does not answer",
        f"#{second['id']} Shop logo 1 000 ₽ {shown_date(order_at(db, second, 'disputed_at'))} "
        "Customer Kira Performer Gleb Customer Kira · customer Not what I asked for"]
    assert f'href="/admin/users/{kira["id"]}"' in page.text and f'href="/admin/users/{gleb["id"]}"' in page.text
    # the navigation of every admin page counts the open disputes; the dashboard counts them by status
    for url in ("/admin/disputes", "/admin", "/admin/users"):
        assert re.search(r'href="/admin/disputes"[^>]*>Disputes <span[^>]*>3</span>', staff_client.get(url).text), url
    dashboard = staff_client.get("/admin").text
    assert re.search(r'href="/admin/orders\?status=disputed"><b>3</b>', dashboard)
    assert re.search(r'href="/admin/orders\?status=delivered"><b>1</b>', dashboard)

    # keyset pages, oldest first, without gaps or repeats
    monkeypatch.setattr(admin, "PAGE_SIZE", 2)
    first_page = staff_client.get("/admin/disputes")
    assert queue_ids(first_page) == [third["id"], first["id"]]
    next_url = re.search(r'href="(\?after=[^"]+)">Next page', first_page.text).group(1).replace("&amp;", "&")
    second_page = staff_client.get("/admin/disputes" + next_url)
    assert queue_ids(second_page) == [second["id"]]
    assert "Next page" not in second_page.text and 'href="/admin/disputes">← First page' in second_page.text
    assert staff_client.get("/admin/disputes?after=garbage", status=400)
    assert staff_client.get("/admin/disputes?after=2026-01-01T00:00:00_5", status=400)  # no time zone

    # a settled dispute leaves the queue and the count
    assert staff_client.post_form(f"/admin/orders/{first['id']}/resolve",
                                  {"outcome": "cancelled", "reason": "Customer gone"}).status_int == 303
    monkeypatch.setattr(admin, "PAGE_SIZE", 50)
    page = staff_client.get("/admin/disputes")
    assert queue_ids(page) == [third["id"], second["id"]]
    assert re.search(r'>Disputes <span[^>]*>2</span>', page.text)


def order_at(db, order, column):
    return db.execute(f"SELECT {column} FROM orders WHERE id = %s", (order["id"],)).fetchone()[column]


def test_no_disputes_no_count_in_the_navigation(staff_client):
    page = staff_client.get("/admin/disputes")
    assert "No open disputes." in text_of(page)
    assert re.search(r'href="/admin/disputes"[^>]*>Disputes</a>', page.text)


@pytest.mark.parametrize("outcome", ["done", "cancelled"])
def test_settling_a_dispute_moves_the_counters_logs_it_and_keeps_the_reason_for_staff(
        outcome, db, staff_client, staff, make_user, make_order, make_client, sign_in):
    kira = make_user("customer", name="Customer Kira")
    gleb = make_user("performer", name="Performer Gleb")
    order = make_order(kira, performer=gleb, status="delivered", title="Shop logo")
    open_dispute(db, order, kira, "Not what I asked for")
    assert stats(db, kira) == {"orders_in_progress": 0, "orders_delivered": 0, "orders_disputed": 1,
                               "orders_done": 0, "orders_cancelled": 0}
    assert stats(db, gleb) == {"orders_in_progress": 0, "orders_delivered": 0, "orders_disputed": 1,
                               "orders_completed": 0}
    page = staff_client.get(f"/admin/orders/{order['id']}")
    timeline = text_of(page)[text_of(page).index("History"):]
    assert re.search(r"work handed in .* dispute opened .*Customer Kira.* Not what I asked for", timeline)
    assert "Here it is" in text_of(page)  # the work handed in, for staff to judge
    assert f'action="/admin/orders/{order["id"]}/resolve"' in page.text
    assert f'action="/admin/orders/{order["id"]}/cancel"' not in page.text  # settled, not cancelled

    reason = "Checked the files with both sides"
    settled = staff_client.post_form(f"/admin/orders/{order['id']}/resolve", {"outcome": outcome, "reason": reason})
    assert settled.status_int == 303 and settled.headers["Location"].endswith("/admin/disputes")
    assert f"The dispute is settled: the order is {outcome}." in text_of(staff_client.get(settled.headers["Location"]))
    assert order_at(db, order, "status") == outcome
    assert stats(db, kira) == {"orders_in_progress": 0, "orders_delivered": 0, "orders_disputed": 0,
                               "orders_done": int(outcome == "done"), "orders_cancelled": int(outcome == "cancelled")}
    assert stats(db, gleb) == {"orders_in_progress": 0, "orders_delivered": 0, "orders_disputed": 0,
                               "orders_completed": int(outcome == "done")}
    last = db.execute("SELECT action, actor_id, from_status, to_status, note, staff_only FROM order_history "
                      "WHERE order_id = %s ORDER BY id DESC LIMIT 1", (order["id"],)).fetchone()
    assert last == {"action": "resolve", "actor_id": staff["id"], "from_status": "disputed", "to_status": outcome,
                    "note": reason, "staff_only": True}
    # the reason: in the audit log under a readable label, to staff in the timeline, to no one else
    log = staff_client.get("/admin/log?action=resolve_dispute")
    assert re.findall(r"<td>(Dispute settled)</td>", log.text) == ["Dispute settled"] and reason in log.text
    assert reason in text_of(staff_client.get(f"/orders/{order['id']}"))
    for person in (kira, gleb):
        public = text_of(sign_in(make_client(), person).get(f"/orders/{order['id']}"))
        assert "Staff Sveta" in public and reason not in public and "Not what I asked for" in public
    # settled once: a second answer (a colleague's stale page) is refused and logs nothing
    again = staff_client.post_form(f"/admin/orders/{order['id']}/resolve", {"outcome": "done", "reason": "Me too"})
    assert again.status_int == 409 and "no longer disputed" in text_of(again)
    assert len(log_rows(db)) == 1 and order_at(db, order, "status") == outcome
    assert f'action="/admin/orders/{order["id"]}/resolve"' not in staff_client.get(f"/admin/orders/{order['id']}").text


@pytest.mark.parametrize("form, field", [({"outcome": "maybe", "reason": "Fair"}, "outcome"),
                                         ({"reason": "Fair"}, "outcome"),
                                         ({"outcome": "open", "reason": "Fair"}, "outcome"),
                                         ({"outcome": "done", "reason": "x" * 1001}, "reason"),
                                         ({"outcome": "done", "reason": "one\ntwo"}, "reason")])
def test_a_resolve_with_a_bad_outcome_or_reason_is_400_with_the_form_shown_again(form, field, db, staff_client, world):
    before = world_state(db)
    answer = staff_client.post_form(f"/admin/orders/{world['disputed']['id']}/resolve", form)
    assert answer.status_int == 400
    assert world_state(db) == before
    assert f'id="{field}-resolve-error"' in answer.text
    if field == "outcome":
        assert 'value="Fair"' in answer.text  # what was typed stays


def test_a_former_staff_member_cannot_settle_a_dispute(db, make_user, world):
    former = make_user("customer")
    row = db.execute(Q["admin_order_resolve"], {"order_id": world["disputed"]["id"], "outcome": "done",
                                                 "staff_id": former["id"], "reason": "x"}).fetchone()
    assert row is None and log_rows(db) == []
    assert order_row(db, world["disputed"]["id"])["status"] == "disputed"
    # and no other outcome passes the statement, whoever asks
    for outcome in ("open", "in_progress", "delivered"):
        assert db.execute(Q["admin_order_resolve"], {"order_id": world["disputed"]["id"], "outcome": outcome,
                                                      "staff_id": world["staff"]["id"], "reason": "x"}).fetchone() is None
    assert order_row(db, world["disputed"]["id"])["status"] == "disputed" and log_rows(db) == []


def test_order_list_filters_and_shows_the_new_statuses(db, staff_client, make_user, make_order):
    kira, gleb = make_user("customer"), make_user("performer")
    delivered = make_order(kira, performer=gleb, status="delivered")
    disputed = make_order(kira, performer=gleb, status="disputed")
    make_order(kira, performer=gleb, status="in_progress")
    page = staff_client.get("/admin/orders?status=delivered")
    assert listed_ids(page, "/admin/orders/") == [delivered["id"]]
    assert 'class="status status-delivered">delivered<' in page.text
    assert '<option value="delivered" selected>' in page.text
    page = staff_client.get("/admin/orders?status=disputed")
    assert listed_ids(page, "/admin/orders/") == [disputed["id"]]
    assert 'class="status status-disputed">disputed<' in page.text
    person = text_of(staff_client.get(f"/admin/users/{kira['id']}"))
    assert "1 in progress 1 delivered 1 disputed" in person


def test_the_admin_order_page_names_the_system_for_an_automatic_accept(db, staff_client, make_user, make_order):
    order = make_order(make_user("customer"), performer=make_user("performer"), status="delivered")
    assert db.execute(Q["orders_auto_accept"], {"days": 0}).fetchone()["accepted"] == 1
    page = text_of(staff_client.get(f"/admin/orders/{order['id']}"))
    assert re.search(r"work accepted automatically delivered → done (just now|\d+ \w+ ago) · the system", page)


# ---------------------------------------------------------------------------------------------
# CSV export

def parse_csv(response):
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    return list(csv.reader(io.StringIO(response.body.decode("utf-8-sig"), newline="")))


TRICKY_NAMES = ["Comma, Ltd", 'Quote "Q" Smith', "Line one\nline two", "Ёлка Иванова", "=SUM(A1)",
                "+7 call me", "-minus", "@mention"]


def test_users_csv_is_exact_even_for_commas_quotes_newlines_cyrillic_and_formulas(db, staff_client, staff,
                                                                                   make_user):
    people = [make_user("performer" if i % 2 else "customer", name=name, email=f"u{i}@example.test")
              for i, name in enumerate(TRICKY_NAMES)]
    db.execute("UPDATE users SET phone = '+7 900 000-00-00', messenger = '@kira', experience_years = 12 "
               "WHERE id = %s", (people[3]["id"],))
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (people[4]["id"],))
    created = {row["id"]: row["created_at"].isoformat()
               for row in db.execute("SELECT id, created_at FROM users").fetchall()}

    rows = parse_csv(staff_client.get("/admin/export/users.csv"))

    assert rows[0] == ["id", "role", "email", "name", "phone", "messenger", "experience_years",
                       "is_staff", "is_blocked", "created_at"]
    expected = [[str(staff["id"]), "customer", staff["email"], "Staff Sveta", "", "", "0", "true", "false",
                 created[staff["id"]]]]
    shown_names = ["Comma, Ltd", 'Quote "Q" Smith', "Line one\nline two", "Ёлка Иванова", "'=SUM(A1)",
                   "'+7 call me", "'-minus", "'@mention"]
    for i, (person, shown) in enumerate(zip(people, shown_names)):
        phone, messenger, years = ("'+7 900 000-00-00", "'@kira", "12") if i == 3 else ("", "", "0")
        expected.append([str(person["id"]), "performer" if i % 2 else "customer", f"u{i}@example.test", shown,
                         phone, messenger, years, "false", "true" if i == 4 else "false", created[person["id"]]])
    assert rows[1:] == expected


def test_orders_csv_is_exact(db, staff_client, make_user, make_order):
    anna = make_user("customer", name="Анна, \"Кофе\"")
    vera = make_user("performer", name="=cmd|' /C calc'!A0")
    titles = ["Logo, with a comma", 'Say "hello"', "Two\nlines", "Перевод текста", "=SUM(A1)"]
    orders = [make_order(anna, title=title, budget=1000 + i) for i, title in enumerate(titles)]
    done = make_order(anna, performer=vera, status="done", rating=9, title="Done and rated", category="texts")
    db.execute(Q["order_cancel"], {"order_id": orders[1]["id"], "actor_id": anna["id"],
                                          "reason": "-changed mind"})
    created = {row["id"]: row["created_at"].isoformat()
               for row in db.execute("SELECT id, created_at FROM orders").fetchall()}

    rows = parse_csv(staff_client.get("/admin/export/orders.csv"))

    assert rows[0] == list(admin.ORDER_COLUMNS)
    shown_titles = ["Logo, with a comma", 'Say "hello"', "Two\nlines", "Перевод текста", "'=SUM(A1)"]
    expected = []
    for i, (order, shown) in enumerate(zip(orders, shown_titles)):
        cancelled = i == 1
        expected.append([str(order["id"]), created[order["id"]], "cancelled" if cancelled else "open", "design",
                         shown, str(1000 + i), "", str(anna["id"]), 'Анна, "Кофе"', "", "", "", "false",
                         "'-changed mind" if cancelled else ""])
    expected.append([str(done["id"]), created[done["id"]], "done", "texts", "Done and rated", "1000", "",
                     str(anna["id"]), 'Анна, "Кофе"', str(vera["id"]), "'=cmd|' /C calc'!A0", "9", "false",
                     ""])
    assert rows[1:] == expected


def insert_many_orders(db, customer, count):
    """Many orders through the usual triggers, a thousand per transaction (the counters stay fast)."""
    for start in range(0, count, 1000):
        db.execute("INSERT INTO orders (customer_id, category_id, title, description, budget) "
                   "SELECT %s, 1, 'Bulk order ' || n, 'Bulk', n FROM generate_series(%s::int, %s::int) AS n",
                   (customer["id"], start + 1, min(start + 1000, count)))


def test_csv_is_streamed_in_chunks_and_the_connection_is_returned_at_the_end(app, db, staff, make_user):
    import webob
    insert_many_orders(db, make_user("customer"), 2 * admin.ROWS_PER_CHUNK + 10)
    token = "streaming-test-token"
    db.execute(Q["session_create"], {"token_hash": web.token_hash(token), "user_id": staff["id"],
                                            "days": 1, "user_agent": "test"})

    def start_download():
        request = webob.Request.blank("/admin/export/orders.csv",
                                      headers={"Cookie": f"{web.SESSION_COOKIE}={token}"})
        started = []
        body = app(request.environ, lambda status, headers, exc_info=None: started.append(status))
        assert started == ["200 OK"]
        assert not isinstance(body, (list, bytes))  # an iterator, not a body built in memory
        return body, next(iter(body))

    def connections_in_use():
        stats = database.pool(app.config["db.url"]).get_stats()
        return stats["pool_size"] - stats["pool_available"]

    body, first = start_download()
    assert connections_in_use() == 1  # the server-side cursor still reads
    chunks = [first] + list(body)
    body.close()
    assert len(chunks) >= 3
    lines = list(csv.reader(io.StringIO(b"".join(chunks).decode("utf-8-sig"))))
    assert len(lines) == 1 + 2 * admin.ROWS_PER_CHUNK + 10
    assert connections_in_use() == 0

    # a client that goes away after the first chunk: the server closes the body, the connection returns
    body, _first = start_download()
    body.close()
    assert connections_in_use() == 0


@pytest.mark.server
def test_csv_export_under_gunicorn_streams_and_frees_its_connection(db_url, db, staff, make_user):
    """One worker with a pool of one connection: any request after the export proves it was returned."""
    import http.client
    count = 20000
    insert_many_orders(db, make_user("customer"), count)
    token = "gunicorn-test-token"
    db.execute(Q["session_create"], {"token_hash": web.token_hash(token), "user_id": staff["id"],
                                            "days": 1, "user_agent": "test"})
    port = free_port()
    env = dict(os.environ, DATABASE_URL=db_url, SECRET_KEY="gunicorn-test", POOL_SIZE="1", POOL_TIMEOUT="2")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--no-control-socket", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                               "app:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cookie = {"Cookie": f"{web.SESSION_COOKIE}={token}"}
    try:
        for _attempt in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        # a client that gives up after the first bytes: the server must still end the transaction
        quitter = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        quitter.request("GET", "/admin/export/orders.csv", headers=cookie)
        assert quitter.getresponse().read(100)
        quitter.close()
        time.sleep(0.5)
        # the whole file, read as it comes
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/admin/export/orders.csv",
                                                           headers=cookie), timeout=30) as answer:
            assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert answer.headers.get("Transfer-Encoding") == "chunked"
            rows = list(csv.reader(io.TextIOWrapper(answer, encoding="utf-8-sig", newline="")))
        assert len(rows) == 1 + count
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/admin", headers=cookie),
                                    timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# Lists: search, filters, keyset pages

def listed_ids(page, prefix):
    return [int(n) for n in re.findall(rf'href="{prefix}(\d+)"', page.text)]


def test_user_search_takes_percent_and_underscore_literally_and_filters_combine(db, staff_client, staff, make_user):
    percent = make_user("customer", name="100% Pure Honey")
    underscore = make_user("performer", name="snake_case fan")
    plain = make_user("performer", name="Plain Pavel", email="pavel@mail.test", blocked=True)
    cyrillic = make_user("customer", name="Ёжик Туманов", staff=True)

    def found(query):
        return set(listed_ids(staff_client.get("/admin/users?" + query), "/admin/users/"))
    assert found("q=%25") == {percent["id"]}
    assert found("q=_") == {underscore["id"]}
    assert found("q=PAVEL%40MAIL") == {plain["id"]}          # email, any case
    assert found("q=" + quote("ёжик")) == {cyrillic["id"]}   # Cyrillic, any case
    assert found("role=performer") == {underscore["id"], plain["id"]}
    assert found("blocked=yes") == {plain["id"]}
    assert found("staff=yes") == {staff["id"], cyrillic["id"]}
    assert found("role=customer&staff=no") == {percent["id"]}
    assert staff_client.get("/admin/users?role=admin", status=400)
    assert staff_client.get("/admin/users?after=abc", status=400)


def test_user_list_pages_by_id_without_gaps_or_repeats(db, staff_client, staff, make_user):
    everyone = {staff["id"]} | {make_user("customer")["id"] for _ in range(admin.PAGE_SIZE + 5)}
    first = staff_client.get("/admin/users")
    first_ids = listed_ids(first, "/admin/users/")
    assert len(first_ids) == admin.PAGE_SIZE and first_ids == sorted(first_ids, reverse=True)
    next_url = re.search(r'href="(\?[^"]*after=\d+[^"]*)"', first.text).group(1).replace("&amp;", "&")
    second_ids = listed_ids(staff_client.get("/admin/users" + next_url), "/admin/users/")
    assert set(first_ids) | set(second_ids) == everyone and not set(first_ids) & set(second_ids)


def test_order_search_and_filters(db, staff_client, make_user, make_order):
    anna = make_user("customer")
    boris = make_user("customer")
    gleb = make_user("performer")
    logo = make_order(anna, title="Logo for a bakery", description="Warm colours")
    bot = make_order(boris, performer=gleb, status="in_progress", title="Telegram bot", category="development",
                     description="A logo is not needed")
    old = make_order(boris, title="Old landing page")
    db.execute("ALTER TABLE orders DISABLE TRIGGER orders_guard_transition")
    db.execute("UPDATE orders SET created_at = '2024-01-15 12:00+00' WHERE id = %s", (old["id"],))
    db.execute("ALTER TABLE orders ENABLE TRIGGER orders_guard_transition")

    def found(query):
        return set(listed_ids(staff_client.get("/admin/orders?" + query), "/admin/orders/"))
    assert found("") == {logo["id"], bot["id"], old["id"]}
    assert found("q=logo") == {logo["id"]}                   # the title, not the description
    assert found("q=100%25_") == set()
    assert found("status=in_progress") == {bot["id"]}
    assert found("category=development") == {bot["id"]}
    assert found(f"customer={boris['id']}") == {bot["id"], old["id"]}
    assert found(f"performer={gleb['id']}") == {bot["id"]}
    assert found("from=2024-01-01&to=2024-01-31") == {old["id"]}
    assert found("from=2024-02-01") == {logo["id"], bot["id"]}
    assert staff_client.get("/admin/orders?from=yesterday", status=400)
    assert staff_client.get("/admin/orders?category=nope", status=400)


def test_order_page_shows_the_full_history_with_actor_names(db, staff_client, make_user):
    customer = make_user("customer", name="Customer Kira")
    performer = make_user("performer", name="Performer Gleb")
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(customer["id"]), "note": "", "staff": False})
        order_id = db.execute(Q["order_create"], {
            "customer_id": customer["id"], "category": "design", "title": "Fix the printer",
            "description": "It jams", "budget": 900, "deadline": None, "mode": "take"}).fetchone()["id"]
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(performer["id"]), "note": "On my way", "staff": False})
        db.execute(Q["order_take"], {"order_id": order_id, "performer_id": performer["id"]})
    page = text_of(staff_client.get(f"/admin/orders/{order_id}"))
    assert "Fix the printer" in page and "It jams" in page
    timeline = page[page.index("History"):]
    assert re.search(r"created .*Customer Kira.* taken .*Performer Gleb.* On my way", timeline)
    assert staff_client.get("/admin/orders/999999", status=404)
    assert staff_client.get("/admin/users/999999", status=404)


def test_audit_log_lists_newest_first_and_filters(db, staff_client, staff, world):
    for url in (f"/admin/users/{world['customer']['id']}/block", f"/admin/orders/{world['open']['id']}/cancel",
                "/admin/categories/2/hide"):
        assert staff_client.post_form(url, {"reason": "Log test"}).status_int == 303
    page = staff_client.get("/admin/log")
    actions = r"(User blocked|Order cancelled|Category hidden)</td>"
    assert re.findall(actions, page.text) == ["Category hidden", "Order cancelled", "User blocked"]
    assert "Staff Sveta" in page.text and "Log test" in page.text
    assert re.findall(actions, staff_client.get("/admin/log?target_type=order").text) == ["Order cancelled"]
    assert re.findall(actions, staff_client.get("/admin/log?action=block").text) == ["User blocked"]
    assert "No staff actions" in staff_client.get(f"/admin/log?staff={world['customer']['id']}").text
    assert len(re.findall(r"</td>\s*<td>Log test", staff_client.get(f"/admin/log?staff={staff['id']}").text)) == 3


def test_the_dashboard_reads_its_viewer_in_its_statement_and_is_staffs_only_until_the_session_ends(
        db, staff, staff_client, make_client, sign_in, make_user):
    """One statement reads the figures and the session (session_viewers): the header shows the
    staff member, anyone else gets a 403 and computes nothing, and a session that has ended, or a
    staff member blocked since, goes to sign in."""
    db.execute("DELETE FROM dashboard_figures")  # before the tick's first run: a visit computes them
    customer = sign_in(make_client("203.0.113.31"), make_user("customer"))
    assert customer.get("/admin", status=403)
    assert db.execute("SELECT count(*) AS n FROM dashboard_figures").fetchone()["n"] == 0
    page = staff_client.get("/admin")
    assert f'<span class="whoami">{staff["name"]}' in page.text and "Dashboard" in page.text
    assert db.execute("SELECT count(*) AS n FROM dashboard_figures").fetchone()["n"] == 1
    blocked = sign_in(make_client("203.0.113.32"), make_user("customer", staff=True))
    db.execute("UPDATE users SET is_blocked = true WHERE is_staff AND id <> %s", (staff["id"],))
    db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = %s", (staff["id"],))
    for browser in (staff_client, blocked):
        assert browser.get("/admin", status=303).headers["Location"].endswith("/login?next=/admin")


def test_dashboard_counts_chart_and_counter_drift(db, staff_client, make_user, make_order):
    customer = make_user("customer")
    performer = make_user("performer", name="Top Vera")
    make_order(customer)
    make_order(customer, performer=performer, status="done", rating=9)
    page = staff_client.get("/admin")
    assert "style=" not in page.text and not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    charts = re.findall(r'<svg class="chart".*?</svg>', page.text, flags=re.S)
    assert len(charts) == 2
    for chart in charts:
        heights = [int(h) for h in re.findall(r'<rect x="\d+" y="\d+" width="\d+" height="(\d+)"', chart)]
        assert len(heights) == 30 and heights[-1] == admin.CHART_HEIGHT and heights[:-1] == [0] * 29
    assert "have not been checked yet" in text_of(page)
    assert staff_client.post_form("/admin/counters/check").status_int == 303
    assert "Every counter matches a recount." in text_of(staff_client.get("/admin"))


def test_dashboard_lists_the_best_performers_first_with_their_stored_average(db, staff_client, make_user,
                                                                            make_order):
    customer = make_user("customer")
    vera = make_user("performer", name="Top Vera")
    sam = make_user("performer", name="Second Sam")
    idle = make_user("performer", name="Idle Ivan")
    make_order(customer, performer=vera, status="done", rating=9)
    make_order(customer, performer=sam, status="done", rating=7)
    make_order(customer, performer=sam, status="done", rating=8)
    make_order(customer, performer=sam, status="in_progress")
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (sam["id"],))
    page = staff_client.get("/admin").text
    top = page[page.index("Top performers"):page.index("Counter audit")]
    rows = re.findall(r'<td><a href="/admin/users/(\d+)">([^<]*)</a>(.*?)</td>\s*<td>([^<]*)</td>\s*'
                      r'<td>(\d+)</td>\s*<td>(\d+)</td>\s*<td>(\d+)</td>', top, flags=re.S)
    assert [(int(r[0]), r[1], "blocked" in r[2], *r[3:]) for r in rows] == [
        (vera["id"], "Top Vera", False, "9.00", "1", "1", "0"),
        (sam["id"], "Second Sam", True, "7.50", "2", "2", "1"),
        (idle["id"], "Idle Ivan", False, "—", "0", "0", "0"),
    ]


def test_dashboard_figures_are_the_stored_ones_until_the_tick_or_check_now_computes_them_again(
        db, staff_client, make_user, make_order):
    """Counting every user and order costs tens of milliseconds at a million orders: the dashboard
    shows what the tick (or "check now") stored, with its time, and never counts on a view."""
    customer = make_user("customer")
    make_order(customer)
    first = staff_client.get("/admin").text  # no figures stored yet: computed once, kept
    customers = counter_of(first, "/admin/users?role=customer")  # with the staff member's account
    assert customers == db.execute("SELECT count(*) AS n FROM users WHERE role = 'customer'").fetchone()["n"]
    stored_at = db.execute("SELECT computed_at FROM dashboard_figures").fetchone()["computed_at"]
    make_user("customer")
    make_order(customer, status="done", performer=make_user("performer"))
    page = staff_client.get("/admin").text
    assert counter_of(page, "/admin/users?role=customer") == customers
    assert counter_of(page, "/admin/orders?status=done") == 0
    assert "Users and orders as of" in text_of(staff_client.get("/admin"))
    assert db.execute("SELECT computed_at FROM dashboard_figures").fetchone()["computed_at"] == stored_at
    assert staff_client.post_form("/admin/counters/check").status_int == 303
    page = staff_client.get("/admin").text
    assert counter_of(page, "/admin/users?role=customer") == customers + 1
    assert counter_of(page, "/admin/users?role=performer") == 1
    assert counter_of(page, "/admin/orders?status=done") == 1 and counter_of(page, "/admin/orders?status=open") == 1
    db.execute("UPDATE dashboard_figures SET computed_at = computed_at - interval '1 hour'")
    assert commands.tick(birzha.app.config["db.url"]) == 0
    assert db.execute("SELECT now() - computed_at < interval '1 minute' AS fresh FROM dashboard_figures").fetchone()["fresh"]


def test_kept_dashboard_figures_follow_the_stored_figures_and_the_language(db, staff_client, make_user):
    """The figures' HTML is kept per worker (admin.figures_html): under their content, so a figure
    changed in place (its time the same) shows at once, and per language."""
    make_user("customer")
    english = staff_client.get("/admin").text
    customers = counter_of(english, "/admin/users?role=customer")
    assert "New orders per day" in english
    russian = staff_client.get("/admin", headers={"Accept-Language": "ru"}).text
    assert "New orders per day" not in russian and "Новые заказы по дням" in russian
    assert counter_of(russian, "/admin/users?role=customer") == customers
    db.execute("""UPDATE dashboard_figures
                  SET users_by_role = jsonb_set(users_by_role, '{0,total}', '4321'),
                      new_per_day = jsonb_set(new_per_day, '{29,orders}', '7')""")
    page = staff_client.get("/admin").text
    assert counter_of(page, "/admin/users?role=customer") == 4321
    assert re.search(r"New orders per day · busiest day: 7</figcaption>", page)
    assert "Новые заказы по дням" not in page


def test_kept_admin_navigation_marks_the_page_it_is_on_in_the_viewers_language(db, staff_client, make_user,
                                                                                make_order):
    """The admin area's navigation is kept per worker (kept.html admin_nav), under its section, the
    disputes' count and the language."""
    def marked(page):
        nav = page[page.index('class="tabs admin-nav"'):]
        nav = nav[:nav.index("</nav>")]
        return (re.findall(r'<a href="([^"]+)" class="active" aria-current="page">', nav),
                re.findall(r'title="([^"]+)">(\d+)</span>', nav))

    assert marked(staff_client.get("/admin").text) == (["/admin"], [])
    assert marked(staff_client.get("/admin/users").text) == (["/admin/users"], [])
    assert marked(staff_client.get("/admin/log").text) == (["/admin/log"], [])
    make_order(make_user("customer"), performer=make_user("performer"), status="disputed")
    assert marked(staff_client.get("/admin/users").text) == (["/admin/users"], [("Open disputes", "1")])
    russian = staff_client.get("/admin/users", headers={"Accept-Language": "ru"}).text
    assert marked(russian) == (["/admin/users"], [("Открытые споры", "1")]) and "Журнал действий" in russian


def counter_of(page, href):
    """The number of the dashboard counter that links to href."""
    return int(re.search(r'<a class="counter" href="%s"><b>(\d+)</b>' % re.escape(href), page).group(1))


def test_the_disputes_badge_counts_up_to_99_then_says_99_plus(db, staff_client, make_user, make_order):
    customer, performer = make_user("customer"), make_user("performer")
    for _n in range(3):
        make_order(customer, performer=performer, status="disputed")
    for page in ("/admin/disputes", "/admin"):  # the dashboard counts them with its figures
        assert re.search(r'title="Open disputes">3</span>', staff_client.get(page).text), page
    for _n in range(97):
        make_order(customer, performer=performer, status="disputed")
    for page in ("/admin/disputes", "/admin"):
        assert re.search(r'title="Open disputes">99\+</span>', staff_client.get(page).text), page


def test_dashboard_shows_the_stored_audit_until_checked_again(db, staff_client, make_user, make_order):
    """The dashboard reads the audit that tick (or "check now") stored; it never recounts itself."""
    customer = make_user("customer")
    make_order(customer)
    db.execute("SELECT counter_audit_refresh()")
    db.execute("UPDATE customer_stats SET orders_open = orders_open + 1 WHERE customer_id = %s", (customer["id"],))
    stored = text_of(staff_client.get("/admin"))
    assert "Every counter matches a recount." in stored and "min ago" in stored
    checked = staff_client.post_form("/admin/counters/check")
    assert checked.status_int == 303 and checked.headers["Location"].endswith("/admin#counters")
    drift = text_of(staff_client.get("/admin"))
    assert "1 counter differs from a recount." in drift and "customer.orders_open" in drift
    assert db.execute("SELECT drifted FROM counter_audit").fetchone()["drifted"] == 1
    db.execute("SELECT recalc_counters()")
