"""Twenty performers take one order at the same moment, over real sockets, against gunicorn."""
import hashlib
import hmac
import http.client
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

import app as birzha
from db import Q
import web
import conftest

ROOT = Path(birzha.__file__).resolve().parent
TAKERS = 20


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_status(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture
def gunicorn(db_url):
    """The app under gunicorn (4 sync workers) on a free port, pointed at this test's database."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=db_url, SECRET_KEY=conftest.SECRET.decode())
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--no-control-socket", "app:app", "--bind", f"127.0.0.1:{port}",
         "--workers", "4", "--threads", "1", "--timeout", "30"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, "gunicorn exited early"
            try:
                if get_status(port, "/healthz") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz in 30 s"
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])
        log.close()


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
