"""The exchange's races over real sockets, against gunicorn (SPEC §4: first come, first served).

Each test runs one race several rounds in a row, each round on fresh rows, through the HTML forms
and the JSON API in turn: two requests (or a request and the database's own auto-accept) are
released together by a barrier; exactly one of them wins, the other is refused with 409, and the
rows and the counters say the same.
"""
import hashlib
import hmac
import http.client
import json
import secrets
import threading
from urllib.parse import urlencode

import psycopg
import pytest

import conftest
import web
from db import Q
from test_take_race import gunicorn  # noqa: F401  (the fixture: the app under gunicorn on a free port)

ROUNDS = 5
# The transports of the two requests, round by round: both forms, both API, then mixed.
TRANSPORTS = [("html", "html"), ("api", "api"), ("html", "api"), ("api", "html"), ("html", "html")]
SUCCESS = {"html": 303, "api": 200}


class Person:
    """A user with a session opened in SQL; shoots form posts (CSRF field) or API calls (CSRF header)."""

    def __init__(self, db, user):
        self.user = user
        self.token = secrets.token_urlsafe(32)
        db.execute(Q["session_create"], {"token_hash": web.token_hash(self.token), "user_id": user["id"],
                                         "days": 1, "user_agent": "race"})
        self.csrf = hmac.new(conftest.SECRET, self.token.encode(), hashlib.sha256).hexdigest()

    def post(self, port, transport, path, fields=None):
        """A shot: POST the order action `path` (e.g. /orders/1/revision) as a form or to /api/v1."""
        headers = {"Cookie": f"{web.SESSION_COOKIE}={self.token}", "Accept-Language": "en"}
        if transport == "html":
            body = urlencode(dict(fields or {}, csrf_token=self.csrf))
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            path = "/api/v1" + path
            body = json.dumps(fields or {})
            headers.update({"Content-Type": "application/json", "X-CSRF-Token": self.csrf})
        return http_shot(port, path, headers, body)


def http_shot(port, path, headers, body):
    def shot(barrier):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.connect()
            barrier.wait()
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()  # http.client never follows redirects
            return response.status, response.read().decode()
        finally:
            connection.close()
    return shot


def auto_accept_shot(db_url):
    """A shot: the tick's auto-accept with AUTO_ACCEPT_DAYS=0, from its own connection; how many it accepted."""
    def shot(barrier):
        with psycopg.connect(db_url, autocommit=True) as connection:
            barrier.wait()
            return connection.execute(Q["orders_auto_accept"], {"days": 0}).fetchone()[0]
    return shot


def simultaneously(*shots):
    """Fires the shots at the same moment (each connected first) and returns their results in order."""
    barrier = threading.Barrier(len(shots), timeout=30)
    results, errors = [None] * len(shots), []

    def run(index):
        try:
            results[index] = shots[index](barrier)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(shots))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request did not finish in 60 s"
    assert not errors, errors
    return results


def won(result, transport):
    """True for the transport's success, False for a 409; anything else fails the test."""
    status, body = result
    assert status in (SUCCESS[transport], 409), (status, body[:500])
    return status != 409


def send_offer(db, order, performer, price, days):
    return db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"], "price": price,
                                          "days": days, "message": "Pick me"}).fetchone()["id"]


def offer_statuses(db, order_id):
    return {row["id"]: row["status"] for row in db.execute("SELECT id, status FROM offers WHERE order_id = %s",
                                                           (order_id,))}


def order_state(db, order_id):
    return db.execute("SELECT status, performer_id, agreed_price, offers_active, deadline - current_date AS days "
                      "FROM orders WHERE id = %s", (order_id,)).fetchone()


def actions(db, order_id, action):
    return [row["actor_id"] for row in db.execute(
        "SELECT actor_id FROM order_history WHERE order_id = %s AND action = %s ORDER BY id", (order_id, action))]


def assert_counters_exact(db):
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


@pytest.mark.server
def test_two_accepts_of_different_offers_at_once_exactly_one_wins(gunicorn, db, make_user, make_order):  # noqa: F811
    customer_user = make_user("customer")
    customer = Person(db, customer_user)
    performers = [make_user("performer"), make_user("performer")]
    for round_, (first, second) in enumerate(TRANSPORTS[:ROUNDS]):
        order = make_order(customer_user, mode="offers")
        offers = [send_offer(db, order, performers[0], 700, 3), send_offer(db, order, performers[1], 900, 8)]
        results = simultaneously(
            customer.post(gunicorn, first, f"/orders/{order['id']}/offers/{offers[0]}/accept"),
            customer.post(gunicorn, second, f"/orders/{order['id']}/offers/{offers[1]}/accept"))
        outcome = [won(results[0], first), won(results[1], second)]
        assert sorted(outcome) == [False, True], (round_, results)
        win = outcome.index(True)
        lose = 1 - win
        assert "an offer was already accepted" in results[lose][1]
        price, days = ((700, 3), (900, 8))[win]
        assert order_state(db, order["id"]) == {"status": "in_progress", "performer_id": performers[win]["id"],
                                                "agreed_price": price, "offers_active": 0, "days": days}
        assert offer_statuses(db, order["id"]) == {offers[win]: "accepted", offers[lose]: "declined"}
        assert actions(db, order["id"], "accept_offer") == [customer_user["id"]]
        assert_counters_exact(db)
    stats = db.execute("SELECT sum(orders_in_progress) AS n FROM performer_stats").fetchone()
    assert stats["n"] == ROUNDS


@pytest.mark.server
def test_an_accept_against_the_performer_withdrawing_that_offer_one_of_them_wins(
        gunicorn, db, make_user, make_order):  # noqa: F811
    customer_user = make_user("customer")
    customer = Person(db, customer_user)
    performer_user, rival = make_user("performer"), make_user("performer")
    performer = Person(db, performer_user)
    for round_, (accept_by, withdraw_by) in enumerate(TRANSPORTS[:ROUNDS]):
        order = make_order(customer_user, mode="offers")
        offer = send_offer(db, order, performer_user, 500, 4)
        other = send_offer(db, order, rival, 800, 2)
        accept, withdraw = simultaneously(
            customer.post(gunicorn, accept_by, f"/orders/{order['id']}/offers/{offer}/accept"),
            performer.post(gunicorn, withdraw_by, f"/orders/{order['id']}/offers/withdraw"))
        accepted, withdrawn = won(accept, accept_by), won(withdraw, withdraw_by)
        assert accepted != withdrawn, f"round {round_}: never both, never neither: {accept}, {withdraw}"
        if accepted:
            assert "no longer open for offers" in withdraw[1]
            assert order_state(db, order["id"]) == {"status": "in_progress", "performer_id": performer_user["id"],
                                                    "agreed_price": 500, "offers_active": 0, "days": 4}
            assert offer_statuses(db, order["id"]) == {offer: "accepted", other: "declined"}
            assert actions(db, order["id"], "accept_offer") == [customer_user["id"]]
        else:
            assert "no longer active" in accept[1]
            assert order_state(db, order["id"]) == {"status": "open", "performer_id": None, "agreed_price": None,
                                                    "offers_active": 1, "days": None}
            assert offer_statuses(db, order["id"]) == {offer: "withdrawn", other: "active"}
            assert actions(db, order["id"], "accept_offer") == []
        assert_counters_exact(db)


@pytest.mark.server
def test_a_revision_request_against_the_auto_accept_exactly_one_wins(
        gunicorn, db, db_url, make_user, make_order):  # noqa: F811
    customer_user = make_user("customer")
    customer = Person(db, customer_user)
    performer_user = make_user("performer")
    for round_, (transport, _other) in enumerate(TRANSPORTS[:ROUNDS]):
        order = make_order(customer_user, performer=performer_user, status="delivered")
        revision, auto_accepted = simultaneously(
            customer.post(gunicorn, transport, f"/orders/{order['id']}/revision", {"reason": "One more pass"}),
            auto_accept_shot(db_url))
        revised = won(revision, transport)
        assert auto_accepted in (0, 1)
        assert revised != bool(auto_accepted), f"round {round_}: never both, never neither: {revision}, {auto_accepted}"
        state = order_state(db, order["id"])
        last = db.execute("SELECT action, actor_id, note FROM order_history WHERE order_id = %s ORDER BY id DESC "
                          "LIMIT 1", (order["id"],)).fetchone()
        if revised:
            assert state["status"] == "in_progress" and state["performer_id"] == performer_user["id"]
            assert last == {"action": "revision", "actor_id": customer_user["id"], "note": "One more pass"}
        else:
            assert "no delivered work waiting" in revision[1]
            assert state["status"] == "done" and state["performer_id"] == performer_user["id"]
            assert last == {"action": "auto_accept", "actor_id": None, "note": None}
        assert actions(db, order["id"], "revision") + actions(db, order["id"], "auto_accept") == [last["actor_id"]]
        assert_counters_exact(db)
