"""Sign-in attempts at the same moment: the throttle lets no more of them reach the password
check than its limit, however they interleave. Wrong passwords fired over real sockets at
gunicorn, and two undecided attempts side by side in the database."""
import hashlib
import hmac
import http.client
import secrets
import threading
import time
from urllib.parse import urlencode

import psycopg
import pytest

import conftest
from db import Q
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


@pytest.mark.server
def test_parallel_wrong_passwords_for_one_account_from_many_addresses_stop_at_its_ceiling(gunicorn, db, make_user):
    user = make_user("customer")
    db.execute("INSERT INTO login_attempts (email, address) "
               "SELECT %s, '198.51.100.' || n FROM generate_series(1, 45) AS n", (user["email"],))
    results = fire_at_once(gunicorn, [(user["email"], f"192.0.2.{n + 1}") for n in range(SHOTS)])
    assert_only_the_limit_got_through(results, 50 - 45)
    assert recorded(db, "email = %s", user["email"]) == 50


@pytest.mark.server
def test_parallel_wrong_passwords_from_one_address_for_many_accounts_stop_at_its_limit(gunicorn, db):
    db.execute("INSERT INTO login_attempts (email, address) "
               "SELECT 'earlier' || n || '@example.test', '192.0.2.7' FROM generate_series(1, 15) AS n")
    results = fire_at_once(gunicorn, [(f"guess{n}@example.test", "192.0.2.7") for n in range(SHOTS)])
    assert_only_the_limit_got_through(results, 20 - 15)
    assert recorded(db, "address = %s", "192.0.2.7") == 20


# ---------------------------------------------------------------------------------------------
# Two attempts side by side: the second waits for the first to be decided and committed

def admit(connection, email, address):
    return connection.execute(Q["login_attempt_admit"], {"email": email, "address": address}).fetchone()[0]


def waiting_for_a_lock(db, pid):
    row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row["wait_event_type"] == "Lock"


@pytest.mark.parametrize("earlier,first,second", [
    # 49 earlier attempts on the account from elsewhere: the 50th and 51st come from two new addresses
    ([("owner@example.test", f"198.51.100.{n}") for n in range(1, 50)],
     ("owner@example.test", "192.0.2.1"), ("owner@example.test", "192.0.2.2")),
    # 19 earlier attempts from the address: the 20th and 21st are for two new accounts
    ([(f"earlier{n}@example.test", "192.0.2.7") for n in range(19)],
     ("first@example.test", "192.0.2.7"), ("second@example.test", "192.0.2.7")),
    # 4 earlier attempts on the account from the address: the 5th and 6th from there again
    ([("owner@example.test", "192.0.2.7")] * 4,
     ("owner@example.test", "192.0.2.7"), ("Owner@Example.test", "192.0.2.7")),
], ids=["account", "address", "account-and-address"])
def test_an_attempt_waits_until_the_one_before_it_is_decided_and_then_counts_it(db_url, db, earlier, first,
                                                                                 second):
    db.cursor().executemany("INSERT INTO login_attempts (email, address) VALUES (%s, %s)", earlier)
    with psycopg.connect(db_url) as one, psycopg.connect(db_url) as two:
        assert admit(one, *first) == 0  # recorded, not yet committed: the last one the limit lets through
        result = {}
        second_attempt = threading.Thread(target=lambda: result.update(wait=admit(two, *second)))
        second_attempt.start()
        deadline = time.monotonic() + 10
        while not waiting_for_a_lock(db, two.info.backend_pid):
            assert second_attempt.is_alive(), f"decided without waiting: {result}"
            assert time.monotonic() < deadline, "the second attempt neither waited nor finished"
            time.sleep(0.02)
        one.commit()
        second_attempt.join(timeout=10)
        two.commit()
    assert 840 < result["wait"] <= 900
    assert db.execute("SELECT count(*) AS n FROM login_attempts").fetchone()["n"] == len(earlier) + 1
