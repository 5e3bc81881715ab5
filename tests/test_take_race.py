"""Twenty performers take one order at the same moment, over real sockets, against gunicorn."""
import hashlib
import hmac
import http.client
import secrets
import threading
import time
from urllib.parse import urlencode

import pytest

import conftest
import web
from db import Q

TAKERS = 20


@pytest.fixture
def gunicorn(db_url):
    """The app under gunicorn (4 sync workers) on a free port, pointed at this test's database."""
    with conftest.gunicorn(db_url, workers=4) as server:
        yield server.port


def signed_in_performer(db, make_user):
    """A performer with a session opened in SQL; returns (user, session token, CSRF token)."""
    user = make_user("performer")
    token = secrets.token_urlsafe(32)
    db.execute(Q["session_create"], {"token_hash": web.token_hash(token), "user_id": user["id"],
                                            "days": 1, "user_agent": "race"})
    return user, token, hmac.new(conftest.SECRET, token.encode(), hashlib.sha256).hexdigest()


@pytest.mark.server
def test_twenty_performers_take_one_order_at_once_and_exactly_one_wins(gunicorn, db, make_user, make_order):
    order = make_order(make_user("customer"))
    takers = [signed_in_performer(db, make_user) for _n in range(TAKERS)]
    barrier = threading.Barrier(TAKERS, timeout=30)
    results = [None] * TAKERS

    def take(index):
        _user, token, csrf = takers[index]
        connection = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=30)
        try:
            connection.connect()
            barrier.wait()
            connection.request("POST", f"/orders/{order['id']}/take", body=urlencode({"csrf_token": csrf}),
                               headers={"Cookie": f"{web.SESSION_COOKIE}={token}", "Accept-Language": "en",
                                        "Content-Type": "application/x-www-form-urlencoded"})
            response = connection.getresponse()  # http.client never follows redirects
            results[index] = (response.status, response.read().decode())
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=take, args=(n,)) for n in range(TAKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert time.monotonic() - started < 60

    statuses = sorted(status for status, _body in results)
    assert statuses == [303] + [409] * (TAKERS - 1)
    assert all("already taken by someone else" in body for status, body in results if status == 409)
    winner = takers[[status for status, _body in results].index(303)][0]
    row = db.execute("SELECT status, performer_id FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert row == {"status": "in_progress", "performer_id": winner["id"]}
    takes = db.execute("SELECT actor_id FROM order_history WHERE order_id = %s AND action = 'take'",
                       (order["id"],)).fetchall()
    assert takes == [{"actor_id": winner["id"]}]
    stats = db.execute("SELECT performer_id, orders_in_progress FROM performer_stats "
                       "WHERE orders_in_progress > 0").fetchall()
    assert stats == [{"performer_id": winner["id"], "orders_in_progress": 1}]
