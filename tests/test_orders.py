"""Orders through HTTP: the whole flow for both roles, every refusal, bad input, the cabinets."""
import datetime
import html
import re

import pytest

from db import Q
from conftest import text_of

VALID_ORDER = {"title": "Logo for a coffee shop", "description": "Warm colours, a simple sign.",
               "category": "design", "budget": "5000", "deadline": ""}


def location(resp):
    """The path of a redirect, without the host webtest may add."""
    return re.sub(r"^https?://[^/]+", "", resp.headers["Location"])


def order_row(db, order_id):
    return db.execute("SELECT * FROM orders WHERE id = %s", (order_id,)).fetchone()


def history(db, order_id):
    return db.execute("SELECT action, actor_id, from_status, to_status, note FROM order_history "
                      "WHERE order_id = %s ORDER BY id", (order_id,)).fetchall()


def customer_stats(db, user):
    return db.execute("SELECT orders_placed, orders_open, orders_in_progress, orders_delivered, orders_disputed, "
                      "orders_done, orders_cancelled FROM customer_stats WHERE customer_id = %s", (user["id"],)).fetchone()


def performer_stats(db, user):
    return db.execute("SELECT orders_completed, orders_in_progress, orders_delivered, orders_disputed, rating_sum, "
                      "rating_count, rating_avg FROM performer_stats WHERE performer_id = %s", (user["id"],)).fetchone()


def open_in_category(db, slug):
    return db.execute("SELECT open_orders FROM categories WHERE slug = %s", (slug,)).fetchone()["open_orders"]


def everything(db):
    """Every row a refused request might have touched, to prove it changed nothing."""
    return {
        "orders": db.execute("SELECT * FROM orders ORDER BY id").fetchall(),
        "history": db.execute("SELECT * FROM order_history ORDER BY id").fetchall(),
        "customers": db.execute("SELECT * FROM customer_stats ORDER BY customer_id").fetchall(),
        "performers": db.execute("SELECT * FROM performer_stats ORDER BY performer_id").fetchall(),
        "categories": db.execute("SELECT id, open_orders FROM categories ORDER BY id").fetchall(),
        "offers": db.execute("SELECT * FROM offers ORDER BY id").fetchall(),
        "deliveries": db.execute("SELECT * FROM order_deliveries ORDER BY id").fetchall(),
    }


# ---------------------------------------------------------------------------------------------
# The whole flow

def test_take_mode_post_take_deliver_revise_accept_with_rating_through_the_forms(
        client, make_client, make_user, sign_in, db):
    anna = make_user("customer", name="Anna")
    vera = make_user("performer", name="Vera")
    sign_in(client, anna)
    performer = sign_in(make_client(), vera)

    posted = client.post_form("/orders", VALID_ORDER)
    assert posted.status_int == 303
    order_id = int(location(posted).rsplit("/", 1)[1])
    order = order_row(db, order_id)
    assert (order["status"], order["customer_id"], order["title"], order["budget"]) == (
        "open", anna["id"], "Logo for a coffee shop", 5000)
    assert history(db, order_id) == [
        {"action": "create", "actor_id": anna["id"], "from_status": None, "to_status": "open", "note": None}]
    assert customer_stats(db, anna) == {"orders_placed": 1, "orders_open": 1, "orders_in_progress": 0,
                                        "orders_delivered": 0, "orders_disputed": 0,
                                        "orders_done": 0, "orders_cancelled": 0}
    assert open_in_category(db, "design") == 1
    assert "Your order is published." in text_of(client.get(location(posted)))
    cabinet = text_of(client.get("/cabinet?status=open"))
    assert "Logo for a coffee shop" in cabinet and "1 placed 1 open 0 in progress" in cabinet

    feed = performer.get("/orders")
    assert f'action="/orders/{order_id}/take"' in feed.text
    taken = performer.post_form(f"/orders/{order_id}/take")
    assert taken.status_int == 303 and location(taken) == f"/orders/{order_id}"
    order = order_row(db, order_id)
    assert (order["status"], order["performer_id"]) == ("in_progress", vera["id"])
    assert history(db, order_id)[-1] == {"action": "take", "actor_id": vera["id"], "from_status": "open",
                                         "to_status": "in_progress", "note": None}
    assert performer_stats(db, vera)["orders_in_progress"] == 1
    assert customer_stats(db, anna)["orders_open"] == 0 and customer_stats(db, anna)["orders_in_progress"] == 1
    assert open_in_category(db, "design") == 0
    assert "Logo for a coffee shop" in performer.get("/cabinet").text
    assert f'action="/orders/{order_id}/deliver"' in performer.get(f"/orders/{order_id}").text

    # Handed in, sent back for a revision, handed in again: every round in the timeline.
    empty = performer.post_form(f"/orders/{order_id}/deliver", {"message": "  "})
    assert empty.status_int == 400 and 'id="deliver-message-error"' in empty.text
    delivered = performer.post_form(f"/orders/{order_id}/deliver", {"message": "Three logo drafts, see the link.",
                                                                    "next": "/cabinet"})
    assert delivered.status_int == 303 and location(delivered) == "/cabinet"
    assert order_row(db, order_id)["status"] == "delivered"
    assert history(db, order_id)[-1]["action"] == "deliver"
    assert performer_stats(db, vera)["orders_delivered"] == 1
    assert customer_stats(db, anna)["orders_delivered"] == 1
    page = client.get(f"/orders/{order_id}").text
    assert "Three logo drafts, see the link." in page
    assert f'action="/orders/{order_id}/accept"' in page and f'action="/orders/{order_id}/revision"' in page
    assert f'action="/orders/{order_id}/accept"' not in performer.get(f"/orders/{order_id}").text
    no_reason = client.post_form(f"/orders/{order_id}/revision", {"reason": ""})
    assert no_reason.status_int == 400 and 'id="revision-reason-error"' in no_reason.text
    revision = client.post_form(f"/orders/{order_id}/revision", {"reason": "The cup should be blue."})
    assert revision.status_int == 303 and order_row(db, order_id)["status"] == "in_progress"
    assert history(db, order_id)[-1] == {"action": "revision", "actor_id": anna["id"], "from_status": "delivered",
                                         "to_status": "in_progress", "note": "The cup should be blue."}
    assert performer.post_form(f"/orders/{order_id}/complete", {"message": "Blue cup now."}).status_int == 303
    assert order_row(db, order_id)["status"] == "delivered"  # /complete is delivering by its old name

    # Accepted with a rating in the same form.
    accepted = client.post_form(f"/orders/{order_id}/accept", {"rating": "9", "review": "Fast and careful."})
    assert accepted.status_int == 303
    order = order_row(db, order_id)
    assert (order["status"], order["rating"], order["review"]) == ("done", 9, "Fast and careful.")
    assert history(db, order_id)[-1]["action"] == "accept"
    assert history(db, order_id)[-1]["actor_id"] == anna["id"]
    assert performer_stats(db, vera)["orders_completed"] == 1
    assert performer_stats(db, vera)["orders_in_progress"] == performer_stats(db, vera)["orders_delivered"] == 0
    assert customer_stats(db, anna)["orders_done"] == 1
    stats = performer_stats(db, vera)
    assert (stats["rating_sum"], stats["rating_count"], float(stats["rating_avg"])) == (9, 1, 9.0)
    work = text_of(performer.get("/cabinet"))
    assert "9.0 average of 1 rating" in work and "Fast and careful." in work
    page = text_of(client.get(f"/orders/{order_id}"))
    for line in ("Anna placed the order", "Vera took the order", "Vera handed in the work",
                 "Anna asked for a revision", "The cup should be blue.", "Anna accepted the work",
                 "Rating: 9 / 10", "Blue cup now."):
        assert line in page
    assert "Send the rating" not in page

    again = client.post_form(f"/orders/{order_id}/rate", {"rating": "1", "review": "Changed my mind"})
    assert again.status_int == 409 and "already been rated" in again.text
    assert order_row(db, order_id)["rating"] == 9


def test_work_accepted_without_a_rating_is_rated_later(client, make_user, make_order, sign_in, db):
    anna, vera = make_user("customer"), make_user("performer")
    order = make_order(anna, performer=vera, status="delivered")
    sign_in(client, anna)
    assert client.post_form(f"/orders/{order['id']}/accept", {"review": "Nice"}).status_int == 400  # a review needs a rating
    assert client.post_form(f"/orders/{order['id']}/accept").status_int == 303
    assert order_row(db, order["id"])["status"] == "done" and order_row(db, order["id"])["rating"] is None
    assert f'action="/orders/{order["id"]}/rate"' in client.get(f"/orders/{order['id']}").text
    assert client.post_form(f"/orders/{order['id']}/rate", {"rating": "7"}).status_int == 303
    assert history(db, order["id"])[-1]["action"] == "rate"


def test_customer_posts_and_cancels_with_a_reason(client, make_user, sign_in, db):
    anna = make_user("customer")
    sign_in(client, anna)
    order_id = int(location(client.post_form("/orders", dict(VALID_ORDER, category="texts"))).rsplit("/", 1)[1])
    assert open_in_category(db, "texts") == 1

    cancelled = client.post_form(f"/orders/{order_id}/cancel", {"reason": "Found someone offline", "confirm": "yes"})
    assert cancelled.status_int == 303 and location(cancelled) == f"/orders/{order_id}"
    order = order_row(db, order_id)
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "Found someone offline")
    assert history(db, order_id)[-1] == {"action": "cancel", "actor_id": anna["id"], "from_status": "open",
                                         "to_status": "cancelled", "note": "Found someone offline"}
    assert customer_stats(db, anna) == {"orders_placed": 1, "orders_open": 0, "orders_in_progress": 0,
                                        "orders_delivered": 0, "orders_disputed": 0,
                                        "orders_done": 0, "orders_cancelled": 1}
    assert open_in_category(db, "texts") == 0
    assert "1 placed 0 open 0 in progress 0 delivered 0 disputed 0 done 1 cancelled" in text_of(client.get("/cabinet"))
    assert "Found someone offline" in text_of(client.get(f"/orders/{order_id}"))


def make_overdue(db, order_id):
    """Time passes: the order's deadline is yesterday (the guard refuses a past deadline from anyone,
    so the test steps around it as the calendar would)."""
    db.execute("ALTER TABLE orders DISABLE TRIGGER orders_guard_transition")
    db.execute("UPDATE orders SET deadline = current_date - 1 WHERE id = %s", (order_id,))
    db.execute("ALTER TABLE orders ENABLE TRIGGER orders_guard_transition")


def test_customer_cancels_a_taken_order_only_once_its_deadline_has_passed(
        client, make_client, make_user, sign_in, db):
    anna, gleb = make_user("customer"), make_user("performer", name="Gleb")
    sign_in(client, anna)
    performer = sign_in(make_client(), gleb)
    tomorrow = (datetime.date.today() + datetime.timedelta(days=1)).isoformat()
    order_id = int(location(client.post_form("/orders", dict(VALID_ORDER, deadline=tomorrow))).rsplit("/", 1)[1])
    assert performer.post_form(f"/orders/{order_id}/take").status_int == 303
    assert performer_stats(db, gleb)["orders_in_progress"] == 1
    assert f'action="/orders/{order_id}/cancel"' not in client.get(f"/orders/{order_id}").text
    early = client.post_form(f"/orders/{order_id}/cancel", {"reason": ""})
    assert early.status_int == 409 and "open a dispute" in early.text

    make_overdue(db, order_id)
    assert f'action="/orders/{order_id}/cancel"' in client.get(f"/orders/{order_id}").text
    cancelled = client.post_form(f"/orders/{order_id}/cancel", {"reason": "", "confirm": "yes"})
    assert cancelled.status_int == 303
    order = order_row(db, order_id)
    assert (order["status"], order["performer_id"], order["cancel_reason"]) == ("cancelled", gleb["id"], None)
    assert [h["action"] for h in history(db, order_id)] == ["create", "take", "cancel"]
    assert history(db, order_id)[-1]["actor_id"] == anna["id"]
    assert performer_stats(db, gleb)["orders_in_progress"] == 0
    assert customer_stats(db, anna)["orders_cancelled"] == 1
    assert "cancelled" in text_of(performer.get("/cabinet?status=cancelled"))


@pytest.mark.parametrize("status", ["open", "in_progress"])
def test_staff_cannot_cancel_someone_elses_order_outside_the_admin_area(
        client, make_user, make_order, sign_in, db, status):
    """Staff act on other people's orders only through /admin, with a reason that is logged."""
    anna, vera = make_user("customer"), make_user("performer")
    boss = make_user("performer", staff=True, name="Boss")
    order = make_order(anna, performer=vera, status=status)
    sign_in(client, boss)
    page = client.get(f"/orders/{order['id']}").text
    assert f'href="/admin/orders/{order["id"]}"' in page and f'action="/orders/{order["id"]}/cancel"' not in page
    before = everything(db)
    for reason in ("Spam", "x" * 1001):  # refused before its reason is even judged
        refused = client.post_form(f"/orders/{order['id']}/cancel", {"reason": reason})
        assert refused.status_int == 403
        assert "Staff cancel other people's orders in the admin area" in html.unescape(text_of(refused))
    assert everything(db) == before
    assert order_row(db, order["id"])["status"] == status
    assert db.execute("SELECT count(*) AS n FROM admin_log").fetchone()["n"] == 0
    # The statement itself refuses staff: no check in Python to forget.
    assert db.execute(Q["order_cancel"], {"order_id": order["id"], "actor_id": boss["id"],
                                          "reason": ""}).rowcount == 0
    assert everything(db) == before


def test_staff_reasons_on_the_order_page_are_for_staff_only(make_client, make_user, make_order, sign_in, db):
    anna, vera = make_user("customer", name="Anna"), make_user("performer", name="Vera")
    staff = sign_in(make_client(), make_user("customer", staff=True, name="Boss"))
    viewers = {"customer": sign_in(make_client(), anna), "performer": sign_in(make_client(), vera),
               "guest": make_client()}
    order = make_order(anna, performer=vera, status="in_progress")
    url = f"/orders/{order['id']}"
    assert staff.post_form(f"/admin/orders/{order['id']}/reopen", {"reason": "Performer vanished 4821"}).status_int == 303
    assert staff.post_form(f"/admin/orders/{order['id']}/cancel", {"reason": "Fraud ticket 7319"}).status_int == 303
    assert [row["note"] for row in history(db, order["id"])][-2:] == ["Performer vanished 4821", "Fraud ticket 7319"]

    page = text_of(staff.get(url))
    assert "Performer vanished 4821" in page and "Fraud ticket 7319" in page
    for who, viewer in viewers.items():
        page = text_of(viewer.get(url))
        # the transitions are there, by whom; the staff's reasons are not
        assert "Boss reopened the order" in page and "Boss cancelled the order" in page, who
        assert "Performer vanished" not in page and "Fraud ticket" not in page, who

    # The customer's own reason stays public.
    mine = make_order(anna)
    assert viewers["customer"].post_form(f"/orders/{mine['id']}/cancel", {"reason": "Found someone 5523", "confirm": "yes"}).status_int == 303
    for viewer in (viewers["guest"], viewers["performer"], staff):
        assert "Found someone 5523" in text_of(viewer.get(f"/orders/{mine['id']}"))


def test_customer_edits_an_open_order_and_the_category_counts_follow(
        client, make_client, make_user, make_order, sign_in, db):
    anna, vera = make_user("customer"), make_user("performer")
    order = make_order(anna, title="Old title", category="design", budget=1000)
    sign_in(client, anna)
    form = client.get(f"/orders/{order['id']}/edit")
    assert 'value="Old title"' in form.text and 'value="1000"' in form.text

    deadline = (datetime.date.today() + datetime.timedelta(days=10)).isoformat()
    saved = client.post_form(f"/orders/{order['id']}/edit", dict(
        VALID_ORDER, title="New title", category="seo", budget="7000", deadline=deadline))
    assert saved.status_int == 303 and location(saved) == f"/orders/{order['id']}"
    row = order_row(db, order["id"])
    assert (row["title"], row["budget"], row["deadline"].isoformat()) == ("New title", 7000, deadline)
    assert (open_in_category(db, "design"), open_in_category(db, "seo")) == (0, 1)

    sign_in(make_client(), vera).post_form(f"/orders/{order['id']}/take")
    before = everything(db)
    assert client.get(f"/orders/{order['id']}/edit", status=409)
    late = client.post_form(f"/orders/{order['id']}/edit", dict(VALID_ORDER, title="Too late"))
    assert late.status_int == 409 and "Only an open order can be edited." in late.text
    assert everything(db) == before


# ---------------------------------------------------------------------------------------------
# Who may not do what

@pytest.fixture
def marketplace(make_user, make_order, make_client, sign_in):
    """A customer with an open, an in-progress and a done order, and every other kind of visitor."""
    people = {
        "owner": make_user("customer"),
        "other_customer": make_user("customer"),
        "assigned_performer": make_user("performer"),
        "other_performer": make_user("performer"),
    }
    owner, assigned = people["owner"], people["assigned_performer"]
    orders = {
        "open": make_order(owner),
        "in_progress": make_order(owner, performer=assigned, status="in_progress"),
        "done": make_order(owner, performer=assigned, status="done"),
        "rated": make_order(owner, performer=assigned, status="done", rating=7, review="ok"),
        "cancelled": make_order(owner, status="cancelled"),
        "delivered": make_order(owner, performer=assigned, status="delivered"),
        "disputed": make_order(owner, performer=assigned, status="disputed"),
        "offers": make_order(owner, mode="offers"),
    }
    clients = {"guest": make_client()}
    for key, person in people.items():
        clients[key] = sign_in(make_client(), person)
    return {"people": people, "orders": orders, "clients": clients}


REFUSALS = [
    # (who, action, which order, expected status, words of the message)
    ("owner", "take", "open", 403, "not available for your account"),
    ("other_customer", "take", "open", 403, "not available for your account"),
    ("other_performer", "take", "in_progress", 409, "already taken by someone else"),
    ("assigned_performer", "take", "in_progress", 409, "already taken this order"),
    ("other_performer", "take", "cancelled", 409, "cancelled"),
    ("other_performer", "take", "offers", 409, "send an offer instead"),
    ("other_performer", "complete", "in_progress", 403, "Only the performer of this order"),
    ("other_performer", "deliver", "open", 403, "Only the performer of this order"),
    ("owner", "deliver", "in_progress", 403, "not available for your account"),
    ("assigned_performer", "complete", "done", 409, "Only an order in progress can be delivered"),
    ("assigned_performer", "deliver", "delivered", 409, "Only an order in progress can be delivered"),
    ("assigned_performer", "withdraw", "delivered", 409, "Only an order in progress can be given back"),
    ("other_performer", "withdraw", "in_progress", 403, "Only the performer of this order"),
    ("other_customer", "accept", "delivered", 403, "Only the order's customer can do this"),
    ("assigned_performer", "accept", "delivered", 403, "not available for your account"),
    ("owner", "accept", "in_progress", 409, "no delivered work"),
    ("owner", "revision", "done", 409, "no delivered work"),
    ("other_customer", "dispute", "in_progress", 403, "Only the customer and the performer"),
    ("other_performer", "dispute", "delivered", 403, "Only the customer and the performer"),
    ("owner", "dispute", "done", 409, "in progress or delivered"),
    ("assigned_performer", "dispute", "disputed", 409, "in progress or delivered"),
    ("other_performer", "offers", "open", 409, "takes no offers"),
    ("other_performer", "offers", "in_progress", 409, "no longer open for offers"),
    ("owner", "offers", "offers", 403, "not available for your account"),
    ("other_customer", "cancel", "open", 403, "Only the order's customer can cancel it"),
    ("other_customer", "cancel", "in_progress", 403, "Only the order's customer can cancel it"),
    ("assigned_performer", "cancel", "in_progress", 403, "Only the order's customer can cancel it"),
    ("other_performer", "cancel", "open", 403, "Only the order's customer can cancel it"),
    ("owner", "cancel", "in_progress", 409, "only once its deadline has passed"),
    ("owner", "cancel", "delivered", 409, "can no longer be cancelled"),
    ("owner", "cancel", "done", 409, "can no longer be cancelled"),
    ("owner", "cancel", "cancelled", 409, "already cancelled"),
    ("other_customer", "rate", "done", 403, "Only the order's customer can rate"),
    ("assigned_performer", "rate", "done", 403, "not available for your account"),
    ("owner", "rate", "open", 409, "Only a done order can be rated"),
    ("owner", "rate", "in_progress", 409, "Only a done order can be rated"),
    ("owner", "rate", "rated", 409, "already been rated"),
    ("other_customer", "edit", "open", 403, "Only the order's customer can edit"),
    ("other_performer", "edit", "open", 403, "Only the order's customer can edit"),
    ("owner", "edit", "in_progress", 409, "Only an open order can be edited"),
]


@pytest.mark.parametrize("who, action, which, status, words", REFUSALS)
def test_refused_actions_answer_the_right_status_and_change_nothing(marketplace, db, who, action, which,
                                                                   status, words):
    client = marketplace["clients"][who]
    order_id = marketplace["orders"][which]["id"]
    fields = {"rating": "8", "review": "x", "reason": "x", "message": "x", "price": "900", "days": "3",
              **VALID_ORDER}
    before = everything(db)
    resp = client.post_form(f"/orders/{order_id}/{action}", fields)
    assert resp.status_int == status
    assert words in html.unescape(text_of(resp))
    assert everything(db) == before


@pytest.mark.parametrize("action", ["take", "complete", "cancel", "rate", "edit"])
def test_guests_are_sent_to_log_in_and_change_nothing(marketplace, db, action):
    order_id = marketplace["orders"]["open"]["id"]
    before = everything(db)
    resp = marketplace["clients"]["guest"].post_form(f"/orders/{order_id}/{action}", {"rating": "5"})
    assert resp.status_int == 303
    assert location(resp) == f"/login?next=/orders/{order_id}/{action}"
    assert everything(db) == before


def test_guests_and_performers_cannot_post_orders(marketplace, db):
    before = everything(db)
    guest = marketplace["clients"]["guest"].post_form("/orders", VALID_ORDER)
    assert guest.status_int == 303 and location(guest) == "/login?next=/orders"
    assert marketplace["clients"]["other_performer"].post_form("/orders", VALID_ORDER).status_int == 403
    assert marketplace["clients"]["guest"].get("/cabinet").status_int == 303
    assert everything(db) == before


def test_unknown_orders_are_404_and_a_post_without_csrf_is_403(marketplace, db):
    performer = marketplace["clients"]["other_performer"]
    owner = marketplace["clients"]["owner"]
    before = everything(db)
    assert performer.post_form("/orders/999999/take").status_int == 404
    assert owner.post_form("/orders/999999/cancel").status_int == 404
    assert owner.post_form("/orders/999999/rate", {"rating": "5"}).status_int == 404
    assert owner.post_form("/orders/999999/rate", {"rating": "abc"}).status_int == 404
    assert owner.get("/orders/999999/edit", status=404)
    assert performer.get("/orders/999999", status=404)
    assert performer.get("/orders/" + "9" * 30, status=404)
    assert performer.get("/orders/abc", status=404)
    order_id = marketplace["orders"]["open"]["id"]
    assert performer.post_form(f"/orders/{order_id}/take", csrf=False).status_int == 403
    assert performer.post_form(f"/orders/{order_id}/take", {"csrf_token": "forged"}).status_int == 403
    assert everything(db) == before


def test_a_blocked_performer_loses_the_session_and_the_database_refuses_the_take(
        marketplace, make_user, sign_in, make_client, db):
    order_id = marketplace["orders"]["open"]["id"]
    blocked = make_user("performer")
    client = sign_in(make_client(), blocked)
    token = client.csrf()  # computed while the session is alive, as an open browser tab would hold it
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (blocked["id"],))
    before = everything(db)

    resp = client.post_form(f"/orders/{order_id}/take", {"csrf_token": token})
    assert resp.status_int == 403  # the session is gone: a guest whose token does not match
    assert location(client.get("/cabinet", status=303)) == "/login?next=/cabinet"
    assert everything(db) == before

    db.execute(Q["actor_set"], {"actor_id": str(blocked["id"]), "note": "", "staff": False})
    taken = db.execute(Q["order_take"], {"order_id": order_id, "performer_id": blocked["id"]})
    assert taken.rowcount == 0
    assert everything(db) == before


def test_open_orders_of_a_blocked_customer_are_404_except_for_staff(marketplace, make_user, sign_in,
                                                                    make_client, db):
    owner = marketplace["people"]["owner"]
    order_id = marketplace["orders"]["open"]["id"]
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (owner["id"],))
    assert marketplace["clients"]["guest"].get(f"/orders/{order_id}", status=404)
    performer = marketplace["clients"]["other_performer"]
    assert performer.get(f"/orders/{order_id}", status=404)
    before = everything(db)
    assert performer.post_form(f"/orders/{order_id}/take").status_int == 404
    assert everything(db) == before
    staff = sign_in(make_client(), make_user("customer", staff=True))
    assert staff.get(f"/orders/{order_id}").status_int == 200
    # Orders of theirs that are no longer open stay visible: they are part of others' history.
    assert performer.get(f"/orders/{marketplace['orders']['done']['id']}").status_int == 200


def test_the_order_page_shows_each_viewer_only_their_buttons(marketplace, make_user, sign_in, make_client):
    clients, orders = marketplace["clients"], marketplace["orders"]
    open_id, busy_id, done_id = orders["open"]["id"], orders["in_progress"]["id"], orders["done"]["id"]

    def forms(who, order_id):
        return set(re.findall(rf'action="/orders/{order_id}/(\w+)"', clients[who].get(f"/orders/{order_id}").text))

    assert forms("guest", open_id) == set()
    assert f"/login?next=/orders/{open_id}" in clients["guest"].get(f"/orders/{open_id}").text
    assert forms("other_performer", open_id) == {"take"}
    assert forms("other_customer", open_id) == set()
    assert forms("owner", open_id) == {"cancel"}
    assert f'href="/orders/{open_id}/edit"' in clients["owner"].get(f"/orders/{open_id}").text
    assert f'href="/orders/{busy_id}/edit"' not in clients["owner"].get(f"/orders/{busy_id}").text
    assert forms("owner", busy_id) == {"dispute"}  # cancel comes only past the deadline
    assert forms("assigned_performer", busy_id) == {"deliver", "withdraw", "dispute"}
    assert forms("other_performer", busy_id) == set()
    delivered_id, disputed_id, offers_id = (orders[k]["id"] for k in ("delivered", "disputed", "offers"))
    assert forms("owner", delivered_id) == {"accept", "revision", "dispute"}
    assert forms("assigned_performer", delivered_id) == {"dispute"}
    assert forms("other_customer", delivered_id) == forms("guest", delivered_id) == set()
    assert forms("owner", disputed_id) == forms("assigned_performer", disputed_id) == set()
    assert forms("owner", done_id) == {"rate"}
    assert forms("owner", orders["rated"]["id"]) == set()
    assert forms("assigned_performer", done_id) == set()
    assert forms("other_performer", offers_id) == {"offers"}  # send an offer, no take
    assert forms("owner", offers_id) == {"cancel"}
    assert "Log in to send an offer" in clients["guest"].get(f"/orders/{offers_id}").text
    staff = sign_in(make_client(), make_user("performer", staff=True))
    page = staff.get(f"/orders/{busy_id}").text
    assert f'action="/orders/{busy_id}/cancel"' not in page and f'href="/admin/orders/{busy_id}"' in page


def test_hidden_reviews_are_shown_to_staff_only(marketplace, make_user, sign_in, make_client, db):
    order_id = marketplace["orders"]["rated"]["id"]
    db.execute("UPDATE orders SET review_hidden = true WHERE id = %s", (order_id,))
    for who in ("guest", "owner", "assigned_performer", "other_customer"):
        page = text_of(marketplace["clients"][who].get(f"/orders/{order_id}"))
        assert "hidden by moderators" in page
        assert "7 / 10" not in page
    assert "7 / 10" not in text_of(marketplace["clients"]["assigned_performer"].get("/cabinet"))
    staff = sign_in(make_client(), make_user("customer", staff=True))
    page = text_of(staff.get(f"/orders/{order_id}"))
    assert "Rating: 7 / 10" in page and "only staff see this rating" in page


# ---------------------------------------------------------------------------------------------
# Bad input: 400 with the form again, never 500, nothing written

def raw_post(client, url, body):
    """POST an urlencoded body as bytes (for bytes that are not UTF-8), with the CSRF token."""
    body = body + b"&csrf_token=" + client.csrf().encode()
    return client.post(url, body, content_type="application/x-www-form-urlencoded", status="*")


BAD_ORDER_FIELDS = [
    ("title", ""), ("title", "ab"), ("title", "x" * 201), ("title", "Bad\x00title"),
    ("description", ""), ("description", "   "), ("description", "y" * 10001), ("description", "a\x00b"),
    ("budget", ""), ("budget", "0"), ("budget", "-5"), ("budget", str(10**30)), ("budget", "1e5"),
    ("budget", "abc"), ("budget", "100000001"), ("budget", "12.5"),
    ("deadline", "2020-01-01"), ("deadline", "2026-13-45"), ("deadline", "tomorrow"),
    ("category", ""), ("category", "no-such-category"), ("category", "secret"),
]


@pytest.mark.parametrize("field, value", BAD_ORDER_FIELDS)
def test_bad_new_order_input_is_400_with_the_form_and_writes_nothing(client, make_user, sign_in, db,
                                                                     field, value):
    db.execute("INSERT INTO categories (slug, name_ru, name_en, is_hidden) VALUES ('secret', 'Тайна', 'Secret', true)")
    sign_in(client, make_user("customer"))
    before = everything(db)
    resp = client.post_form("/orders", dict(VALID_ORDER, **{field: value}))
    assert resp.status_int == 400
    assert f'id="{field}-error"' in resp.text
    kept = [name for name in ("title", "budget") if name != field]
    for name in kept:
        assert f'value="{VALID_ORDER[name]}"' in resp.text
    assert everything(db) == before


def test_a_hidden_category_is_not_offered(client, make_user, sign_in, db):
    db.execute("INSERT INTO categories (slug, name_ru, name_en, is_hidden) VALUES ('secret', 'Тайна', 'Secret', true)")
    sign_in(client, make_user("customer"))
    for url in ("/orders/new", "/cabinet"):
        page = client.get(url).text
        assert 'value="design"' in page and 'value="secret"' not in page


@pytest.mark.parametrize("body", [b"title=%FF%FEabc", b"description=%C3%28", b"budget=%FF1"])
def test_new_order_fields_that_are_not_utf8_are_400(client, make_user, sign_in, db, body):
    sign_in(client, make_user("customer"))
    fields = b"title=Fine+title&description=Fine&category=design&budget=100"
    name = body.split(b"=")[0]
    fields = b"&".join(part for part in fields.split(b"&") if not part.startswith(name + b"=")) + b"&" + body
    before = everything(db)
    resp = raw_post(client, "/orders", fields)
    assert resp.status_int == 400 and "not valid UTF-8" in resp.text
    assert everything(db) == before


@pytest.mark.parametrize("field, value", [("title", "ab"), ("budget", "0"), ("deadline", "2000-01-01"),
                                          ("category", "nope"), ("description", "")])
def test_bad_edit_input_is_400_and_leaves_the_order_as_it_was(client, make_user, make_order, sign_in, db,
                                                              field, value):
    anna = make_user("customer")
    order = make_order(anna, title="Keep me")
    sign_in(client, anna)
    before = everything(db)
    resp = client.post_form(f"/orders/{order['id']}/edit", dict(VALID_ORDER, **{field: value}))
    assert resp.status_int == 400 and f'id="{field}-error"' in resp.text
    assert everything(db) == before


@pytest.mark.parametrize("rating", ["0", "11", "abc", "", "5\x00", "-1", "1e1", "7.5", str(10**30)])
def test_bad_ratings_are_400_and_no_rating_is_stored(client, make_user, make_order, sign_in, db, rating):
    anna, vera = make_user("customer"), make_user("performer")
    order = make_order(anna, performer=vera, status="done")
    sign_in(client, anna)
    before = everything(db)
    resp = client.post_form(f"/orders/{order['id']}/rate", {"rating": rating, "review": "Great"})
    assert resp.status_int == 400 and 'id="rate-rating-error"' in resp.text
    assert 'Great</textarea>' in resp.text  # the review typed so far is kept
    assert everything(db) == before


@pytest.mark.parametrize("body", [b"rating=%FF", b"rating=8&review=%FF%FE"])
def test_rating_fields_that_are_not_utf8_are_400(client, make_user, make_order, sign_in, db, body):
    anna, vera = make_user("customer"), make_user("performer")
    order = make_order(anna, performer=vera, status="done")
    sign_in(client, anna)
    before = everything(db)
    resp = raw_post(client, f"/orders/{order['id']}/rate", body)
    assert resp.status_int == 400 and "not valid UTF-8" in resp.text
    assert everything(db) == before


@pytest.mark.parametrize("fields", [{"rating": "8", "review": "r" * 5001}, {"rating": "8", "review": "a\x00b"}])
def test_bad_reviews_are_400(client, make_user, make_order, sign_in, db, fields):
    anna, vera = make_user("customer"), make_user("performer")
    order = make_order(anna, performer=vera, status="done")
    sign_in(client, anna)
    before = everything(db)
    resp = client.post_form(f"/orders/{order['id']}/rate", fields)
    assert resp.status_int == 400 and 'id="rate-review-error"' in resp.text
    assert everything(db) == before


@pytest.mark.parametrize("reason", ["r" * 1001, "no\x00pe"])
def test_bad_cancel_reasons_are_400_and_the_order_stays_open(client, make_user, make_order, sign_in, db, reason):
    anna = make_user("customer")
    order = make_order(anna)
    sign_in(client, anna)
    before = everything(db)
    resp = client.post_form(f"/orders/{order['id']}/cancel", {"reason": reason})
    assert resp.status_int == 400 and 'id="cancel-reason-error"' in resp.text
    assert everything(db) == before


# ---------------------------------------------------------------------------------------------
# The cabinets and the home page

def test_customer_cabinet_tabs_and_keyset_pages(client, make_user, make_order, sign_in, db):
    anna, vera = make_user("customer"), make_user("performer")
    titles = [f"Order number {n:02}" for n in range(25)]
    for title in titles:
        make_order(anna, title=title)
    make_order(anna, title="Busy one", performer=vera, status="in_progress")
    make_order(make_user("customer"), title="Not hers")
    sign_in(client, anna)

    first = client.get("/cabinet?status=open")
    shown = re.findall(r">(Order number \d\d)<", first.text)
    assert shown == titles[::-1][:20]
    next_url = re.search(r'href="([^"]+)">Next page', first.text).group(1).replace("&amp;", "&")
    second = client.get(next_url)
    assert re.findall(r">(Order number \d\d)<", second.text) == titles[::-1][20:]
    assert "Next page" not in second.text
    assert "Busy one" not in first.text + second.text and "Not hers" not in first.text + second.text
    assert "Busy one" in client.get("/cabinet?status=in_progress").text
    assert "26 placed 25 open 1 in progress" in text_of(first)
    assert client.get("/cabinet?after=garbage", status=400)
    assert client.get("/cabinet?status=lost", status=400)


def test_home_shows_latest_open_orders_top_performers_and_sign_up_calls(client, make_user, make_order, sign_in):
    anna = make_user("customer")
    best, good = make_user("performer", name="Best Performer"), make_user("performer", name="Good Performer")
    make_order(anna, performer=good, status="done", rating=7)
    make_order(anna, performer=good, status="done", rating=7)
    make_order(anna, performer=best, status="done", rating=10)
    make_order(anna, title="Fresh open order")
    page = client.get("/")
    text = text_of(page)
    assert "Fresh open order" in text
    assert text.index("Best Performer") < text.index("Good Performer")
    assert f'href="/performers/{best["id"]}"' in page.text
    assert 'href="/signup?role=customer"' in page.text and 'href="/signup?role=performer"' in page.text
    sign_in(client, anna)
    assert 'href="/signup?role=customer"' not in client.get("/").text


def test_a_get_of_an_action_url_goes_to_the_order_page(client, make_user, make_order):
    order = make_order(make_user("customer"))
    resp = client.get(f"/orders/{order['id']}/take", status=303)
    assert location(resp) == f"/orders/{order['id']}"


def test_bad_input_on_a_form_that_no_longer_applies_is_409(client, make_user, make_order, sign_in, db):
    anna, vera = make_user("customer"), make_user("performer")
    rated = make_order(anna, performer=vera, status="done", rating=6)
    done = make_order(anna, performer=vera, status="done")
    sign_in(client, anna)
    before = everything(db)
    assert client.post_form(f"/orders/{rated['id']}/rate", {"rating": "abc"}).status_int == 409
    assert client.post_form(f"/orders/{done['id']}/cancel", {"reason": "x" * 2000}).status_int == 409
    assert everything(db) == before


# ---------------------------------------------------------------------------------------------
# Offers mode, giving an order back, disputes: through the forms

def offer_rows(db, order_id):
    return {row["performer_id"]: row for row in db.execute(
        "SELECT * FROM offers WHERE order_id = %s ORDER BY id", (order_id,)).fetchall()}


def test_offers_mode_offer_change_withdraw_accept_through_the_forms(client, make_client, make_user, sign_in, db):
    anna = make_user("customer", name="Anna")
    vera, gleb = make_user("performer", name="Vera"), make_user("performer", name="Gleb")
    sign_in(client, anna)
    v, g, guest = sign_in(make_client(), vera), sign_in(make_client(), gleb), make_client()
    posted = client.post_form("/orders", dict(VALID_ORDER, mode="offers"))
    order_id = int(location(posted).rsplit("/", 1)[1])
    assert order_row(db, order_id)["mode"] == "offers"
    assert f'action="/orders/{order_id}/take"' not in v.get(f"/orders/{order_id}").text

    bad = v.post_form(f"/orders/{order_id}/offers", {"price": "0", "days": "400", "message": ""})
    assert bad.status_int == 400
    for field in ("price", "days", "message"):
        assert f'id="offer-{field}-error"' in bad.text
    assert offer_rows(db, order_id) == {}
    assert v.post_form(f"/orders/{order_id}/offers", {"price": "4500", "days": "5", "message": "Three drafts"}).status_int == 303
    assert g.post_form(f"/orders/{order_id}/offers", {"price": "3900", "days": "9", "message": "Cheaper"}).status_int == 303
    changed = v.post_form(f"/orders/{order_id}/offers", {"price": "4200", "days": "4", "message": "Three drafts, faster"})
    assert changed.status_int == 303 and "Your offer is changed." in text_of(v.get(location(changed)))
    assert g.post_form(f"/orders/{order_id}/offers/withdraw").status_int == 303
    assert g.post_form(f"/orders/{order_id}/offers/withdraw").status_int == 409  # nothing active left
    assert g.post_form(f"/orders/{order_id}/offers", {"price": "3800", "days": "8", "message": "Again"}).status_int == 303
    assert order_row(db, order_id)["offers_active"] == 2
    assert db.execute("SELECT status, count(*) AS n FROM offers WHERE order_id = %s GROUP BY status ORDER BY status",
                      (order_id,)).fetchall() == [{"status": "active", "n": 2}, {"status": "withdrawn", "n": 1}]

    # Who sees what: the customer every offer; a performer their own; everyone the count.
    mine = text_of(client.get(f"/orders/{order_id}"))
    assert "Vera" in mine and "Three drafts, faster" in mine and "Again" in mine and "no ratings yet" in mine
    for viewer in (guest, v):
        page = text_of(viewer.get(f"/orders/{order_id}"))
        assert "2 offers" in page and "Again" not in page
    assert "Three drafts, faster" in v.get(f"/orders/{order_id}").text  # in Vera's own form
    assert "2 offers" in text_of(guest.get("/orders"))
    edit = client.post_form(f"/orders/{order_id}/edit", dict(VALID_ORDER, mode="take"))
    assert edit.status_int == 409 and "no active offers" in edit.text

    vera_offer = offer_rows(db, order_id)[vera["id"]]
    assert f'action="/orders/{order_id}/offers/{vera_offer["id"]}/accept"' in client.get(f"/orders/{order_id}").text
    assert v.post_form(f"/orders/{order_id}/offers/{vera_offer['id']}/accept").status_int == 403
    accepted = client.post_form(f"/orders/{order_id}/offers/{vera_offer['id']}/accept")
    assert accepted.status_int == 303
    order = order_row(db, order_id)
    assert (order["status"], order["performer_id"], order["agreed_price"], order["offers_active"]) == (
        "in_progress", vera["id"], 4200, 0)
    assert order["deadline"] == db.execute("SELECT current_date + 4 AS d").fetchone()["d"]
    offers = offer_rows(db, order_id)
    assert offers[vera["id"]]["status"] == "accepted"
    assert db.execute("SELECT status FROM offers WHERE order_id = %s AND performer_id = %s ORDER BY id DESC LIMIT 1",
                      (order_id, gleb["id"])).fetchone()["status"] == "declined"
    assert history(db, order_id)[-1]["action"] == "accept_offer"
    again = client.post_form(f"/orders/{order_id}/offers/{vera_offer['id']}/accept")
    assert again.status_int == 409 and "already accepted" in again.text
    assert client.post_form(f"/orders/{order_id}/offers/999999/accept").status_int in (404, 409)
    assert "Your offer" in text_of(g.get(f"/orders/{order_id}")) and "declined" in text_of(g.get(f"/orders/{order_id}"))
    assert "agreed at" in text_of(client.get(f"/orders/{order_id}"))


def test_the_performer_gives_an_order_back_with_a_reason_and_it_is_open_again(
        client, make_client, make_user, make_order, sign_in, db):
    anna, vera = make_user("customer", name="Anna"), make_user("performer", name="Vera")
    order = make_order(anna, performer=vera, status="in_progress")
    v = sign_in(make_client(), vera)
    assert v.post_form(f"/orders/{order['id']}/withdraw", {"reason": ""}).status_int == 400
    assert v.post_form(f"/orders/{order['id']}/withdraw", {"reason": "I fell ill"}).status_int == 303
    row = order_row(db, order["id"])
    assert (row["status"], row["performer_id"], row["agreed_price"]) == ("open", None, None)
    assert history(db, order["id"])[-1] == {"action": "withdraw", "actor_id": vera["id"], "from_status": "in_progress",
                                             "to_status": "open", "note": "I fell ill"}
    assert performer_stats(db, vera)["orders_in_progress"] == 0
    assert open_in_category(db, "design") == 1
    page = text_of(client.get(f"/orders/{order['id']}"))
    assert "Vera gave the order back" in page and "I fell ill" in page


@pytest.mark.parametrize("opener", ["customer", "performer"])
def test_either_side_opens_a_dispute_with_a_reason(client, make_client, make_user, make_order, sign_in, db, opener):
    anna, vera = make_user("customer", name="Anna"), make_user("performer", name="Vera")
    order = make_order(anna, performer=vera, status="delivered")
    sign_in(client, anna)
    who = client if opener == "customer" else sign_in(make_client(), vera)
    assert who.post_form(f"/orders/{order['id']}/dispute", {"reason": " "}).status_int == 400
    opened = who.post_form(f"/orders/{order['id']}/dispute", {"reason": "The files are empty"})
    assert opened.status_int == 303
    row = order_row(db, order["id"])
    assert row["status"] == "disputed" and row["disputed_at"] is not None
    assert history(db, order["id"])[-1]["action"] == "dispute"
    assert performer_stats(db, vera)["orders_disputed"] == 1 and customer_stats(db, anna)["orders_disputed"] == 1
    assert client.post_form(f"/orders/{order['id']}/accept").status_int == 409
    assert "The files are empty" in text_of(client.get(f"/orders/{order['id']}"))
