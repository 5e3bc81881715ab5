"""Wrong passwords fired at the same moment, over real sockets, against gunicorn: the sign-in
throttle lets no more of them reach the password check than its limit, however they interleave."""
import hashlib
import hmac
import http.client
import secrets
import threading
from urllib.parse import urlencode

import pytest

import conftest
from test_take_race import gunicorn  # noqa: F401  (the fixture: the app under 4 gunicorn workers)

SHOTS = 30


@pytest.fixture(autouse=True)
def behind_a_loopback_proxy(monkeypatch):
    """gunicorn believes X-Forwarded-For from 127.0.0.1, so one test machine can be many clients;
    a request without the header is the loopback address itself."""
    monkeypatch.setenv("TRUSTED_PROXIES", "127.0.0.1")


def fire_at_once(port, attempts):
    """POSTs /login for each (email, forwarded_for or None) at the same moment, each from its own
    guest (anonymous cookie and CSRF token); returns [(status, Retry-After, body)] in that order."""
    barrier = threading.Barrier(len(attempts), timeout=30)
    results = [None] * len(attempts)

    def attempt(index):
        email, forwarded_for = attempts[index]
        anon = secrets.token_urlsafe(24)
        csrf = hmac.new(conftest.SECRET, ("anon:" + anon).encode(), hashlib.sha256).hexdigest()
        headers = {"Cookie": f"birzha_anon={anon}", "Accept-Language": "en",
                   "Content-Type": "application/x-www-form-urlencoded"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.connect()
            barrier.wait()
            connection.request("POST", "/login", headers=headers, body=urlencode(
                {"csrf_token": csrf, "email": email, "password": "not the password"}))
            response = connection.getresponse()
            results[index] = (response.status, response.getheader("Retry-After"), response.read().decode())
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(len(attempts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads)
    return results


def recorded(db, where, *params):
    return db.execute("SELECT count(*) AS n FROM login_attempts WHERE " + where, params).fetchone()["n"]


def assert_only_the_limit_got_through(results, allowed):
    """`allowed` attempts had their password checked (400); every other one waited (429)."""
    statuses = sorted(status for status, _wait, _body in results)
    assert statuses == [400] * allowed + [429] * (len(results) - allowed)
    for status, wait, body in results:
        if status == 429:
            assert int(wait) > 0 and "Too many failed sign-in attempts." in body
        else:
            assert "Wrong email or password." in body


@pytest.mark.server
def test_parallel_wrong_passwords_for_one_account_from_one_address_check_only_the_limit(gunicorn, db, make_user):
    user = make_user("customer")
    results = fire_at_once(gunicorn, [(user["email"], None)] * SHOTS)
    assert_only_the_limit_got_through(results, 5)
    assert recorded(db, "email = %s", user["email"]) == 5
