"""Faults and load over real sockets against gunicorn (2 sync workers): PostgreSQL stopped in the
middle of a write load through the JSON API, a worker killed mid-load, and a short soak.

Every test sends traffic only to 127.0.0.1, is bounded in time and in requests, and stops by
itself. SOAK_SECONDS lengthens the soak (`make soak` runs it for 5 minutes).
"""
import collections
import http.client
import json
import os
import secrets
import signal
import threading
import time

import psycopg
import pytest
from psycopg.rows import dict_row

import accounts
import db as database
import web
from conftest import fast_hash, gunicorn, http_status
from db import Q
from test_app_core import LONG_OUTAGE, RECOVERY, own_server, serves_again_by, start_and_wait_until_accepting  # noqa: F401

WRITERS = 4  # client threads writing through the API
STEPS = ("create", "take", "deliver", "accept")  # one order's way, each step a request
MAX_CYCLES = 2000  # orders per writer at most, whatever the clock says
SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "30"))
SOAK_CONNECTIONS = 32
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Clients

def call(port, method, path, token=None, body=None):
    """One request on a fresh connection: (status, JSON body or None). The status is "dropped"
    when the connection broke without an answer, "timeout" when none came in 30 s."""
    headers = {"Accept-Language": "en"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if method == "POST":
        data = json.dumps(body or {}).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if "json" in (response.getheader("Content-Type") or ""):
            return response.status, json.loads(payload)
        return response.status, None
    except TimeoutError:
        return "timeout", None
    except (ConnectionError, http.client.HTTPException):
        return "dropped", None
    finally:
        connection.close()


def make_pairs(url, count):
    """`count` (customer token, performer token) pairs, made in SQL on the database at `url`."""
    pairs = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for n in range(count):
            tokens = []
            for role in ("customer", "performer"):
                user = conn.execute(Q["user_create"], {
                    "role": role, "email": f"{role}{n}-{secrets.token_hex(4)}@load.test",
                    "name": f"Load {role} {n}", "password_hash": fast_hash()}).fetchone()
                token = accounts.API_TOKEN_PREFIX + secrets.token_urlsafe(32)
                conn.execute(Q["api_token_create"], {"user_id": user["id"], "token_hash": web.token_hash(token),
                                                     "label": "load", "max_tokens": 10})
                tokens.append(token)
            pairs.append(tuple(tokens))
    return pairs


Entry = collections.namedtuple("Entry", "step key status sent")


class Ledger:
    """Every write the clients sent, when, and the answer it got (the key is the order's id, or
    the title of an order whose creation got no id back)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []

    def add(self, step, key, status, sent):
        with self.lock:
            self.entries.append(Entry(step, key, status, sent))

    def statuses(self):
        with self.lock:
            return {entry.status for entry in self.entries}

    def sent_after(self, moment):
        with self.lock:
            return [entry for entry in self.entries if entry.sent > moment]

    def successes_after(self, moment):
        return sum(1 for entry in self.sent_after(moment) if entry.status in (200, 201))


def writer(port, pair, ledger, stop, deadline):
    """Orders along their whole way (create, take, deliver, accept with a rating) until stopped; after an error
    answer it starts a new order, since the old one may or may not have moved."""
    customer, performer = pair
    for cycle in range(MAX_CYCLES):
        if stop.is_set() or time.monotonic() > deadline:
            return
        title = f"Load order {secrets.token_hex(6)}"
        sent = time.monotonic()
        status, body = call(port, "POST", "/api/v1/orders", customer,
                            {"title": title, "description": "Under load", "category": "design", "budget": 500})
        ledger.add("create", body["id"] if status == 201 else title, status, sent)
        if status != 201:
            time.sleep(0.1)
            continue
        for step, token, payload in (("take", performer, {}), ("deliver", performer, {"message": "Here it is"}),
                                     ("accept", customer, {"rating": 7, "review": "Fine"})):
            sent = time.monotonic()
            status, _body = call(port, "POST", f"/api/v1/orders/{body['id']}/{step}", token, payload)
            ledger.add(step, body["id"], status, sent)
            if status != 200:
                time.sleep(0.1)
                break


@pytest.fixture
def write_load():
    """Starts WRITERS writer threads against a port; stops and joins them at the end."""
    started = []

    def start(port, pairs, seconds=90):
        ledger, stop = Ledger(), threading.Event()
        threads = [threading.Thread(target=writer, args=(port, pair, ledger, stop, time.monotonic() + seconds))
                   for pair in pairs]
        for thread in threads:
            thread.start()
        started.append((stop, threads))
        return ledger, stop, threads
    yield start
    for stop, threads in started:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def finish(stop, threads):
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# What the database must show afterwards

def rank(order):
    """How far along STEPS the order is in the database."""
    if order["status"] == "open":
        return 0
    if order["status"] == "in_progress":
        return 1
    if order["status"] == "delivered":
        return 2
    assert order["status"] == "done" and order["rating"] is not None, order
    return 3


def check_writes(url, ledger):
    """Every write answered with success is in the database; a write answered with an error is
    there whole or not at all (with an error at COMMIT it may have been kept: the client cannot
    know); every order's history matches its state; the counters match a recount."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        orders = conn.execute("""
            SELECT o.id, o.title, o.status::text AS status, o.rating,
                   coalesce(array_agg(h.action ORDER BY h.id) FILTER (WHERE h.id IS NOT NULL), '{}') AS actions
            FROM orders o LEFT JOIN order_history h ON h.order_id = o.id
            GROUP BY o.id""").fetchall()
        drift = conn.execute("SELECT * FROM audit_counters()").fetchall()
    by_id = {order["id"]: order for order in orders}
    by_title = {}
    for order in orders:
        by_title.setdefault(order["title"], []).append(order)
        assert order["actions"] == list(STEPS[:rank(order) + 1]), order  # never half there
    answered, attempted = {}, {}
    for step, key, status, _sent in ledger.entries:
        if step == "create" and status != 201:
            found = by_title.get(key, [])
            assert len(found) <= 1 and all(rank(order) == 0 for order in found), (key, status, found)
            continue
        attempted[key] = max(attempted.get(key, 0), STEPS.index(step))
        if status in (200, 201):
            answered[key] = max(answered.get(key, 0), STEPS.index(step))
    for order_id, furthest in attempted.items():
        assert order_id in by_id, f"order {order_id} was created (201) but is not in the database"
        assert answered.get(order_id, 0) <= rank(by_id[order_id]) <= furthest, (by_id[order_id], answered.get(order_id))
    assert drift == []
    return len(orders)


# ---------------------------------------------------------------------------------------------
# PostgreSQL stopped in the middle of a write load

# A short outage, and a long one: LONG_OUTAGE (20 s), well past the attempt psycopg_pool's own
# back-off makes about 15 s after the first failure; its next comes at about 31 s.
@pytest.mark.server
@pytest.mark.parametrize("outage", [2, LONG_OUTAGE], ids=["short", "long"])
def test_a_database_outage_under_write_load_answers_503_keeps_every_answered_write_and_recovers(
        own_server, write_load, outage):
    url = own_server.uri("postgres")
    database.apply_schema(url)
    pairs = make_pairs(url, WRITERS)
    with gunicorn(url, workers=2) as server:
        ledger, stop, threads = write_load(server.port, pairs)
        wait_for(lambda: ledger.successes_after(0) >= 20, 30, "the load never got going")

        own_server.stop(mode="immediate")  # pg_ctl stop -m immediate: no shutdown, crash recovery at start
        time.sleep(outage)
        accepting = start_and_wait_until_accepting(own_server, url)
        back = accepting + RECOVERY
        assert serves_again_by(back, lambda: http_status(server.port))
        # The writers go on for a few seconds more: both workers take their requests, and one
        # that still failed would answer some of them with a 503 (after POOL_TIMEOUT at most).
        wait_for(lambda: time.monotonic() > back + database.POOL_TIMEOUT + 1 and ledger.successes_after(back) >= 40,
                 30, "writes did not succeed again")
        finish(stop, threads)

    statuses = ledger.statuses()
    assert statuses <= {200, 201, 503}, statuses  # 503 while the database is away, never a 500
    if outage > database.POOL_TIMEOUT:
        assert 503 in statuses
    late = [entry for entry in ledger.sent_after(back) if entry.status == 503]
    assert late == [], "a worker still failed 2 s after the database came back"
    assert check_writes(url, ledger) > 0


# ---------------------------------------------------------------------------------------------
# A worker killed in the middle of the load

def two_workers(server, without=None):
    pids = server.worker_pids()
    return len(pids) == 2 and without not in pids


@pytest.mark.server
def test_a_worker_killed_mid_load_is_replaced_and_no_answered_write_is_lost(db_url, write_load):
    pairs = make_pairs(db_url, WRITERS)
    with gunicorn(db_url, workers=2) as server:
        ledger, stop, threads = write_load(server.port, pairs)
        wait_for(lambda: two_workers(server), 30, "gunicorn has not two workers")
        wait_for(lambda: ledger.successes_after(0) >= 20, 30, "the load never got going")
        victim = server.worker_pids()[0]
        killed = time.monotonic()  # before: the client may see the broken connection first
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: two_workers(server, without=victim), 30, "gunicorn did not replace the worker")
        replaced = time.monotonic()
        wait_for(lambda: ledger.successes_after(replaced) >= 20, 30, "writes did not go on")
        finish(stop, threads)

    statuses = ledger.statuses()
    assert statuses <= {200, 201, "dropped"}, statuses
    dropped = [entry for entry in ledger.entries if entry.status == "dropped"]
    assert len(dropped) <= 1 and all(entry.sent < killed for entry in dropped), dropped  # the one it was answering
    assert check_writes(db_url, ledger) > 0


# ---------------------------------------------------------------------------------------------
# A short soak: mixed reads and writes at 32 connections

def rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def soaker(port, pair, stop, deadline, results):
    """Reads and writes mixed: the feed and an order page as a guest, an order through its whole
    way by the API, the API feed, `me` and the catalogue. Every answer must be the expected one."""
    customer, performer = pair
    wrong = []
    count = 0

    def expect(status, method, path, token=None, body=None):
        nonlocal count
        got, payload = call(port, method, path, token, body)
        count += 1
        if got != status:
            wrong.append((method, path, got))
        return payload
    for _cycle in range(100000):
        if stop.is_set() or time.monotonic() > deadline:
            break
        expect(200, "GET", "/orders?sort=budget")
        order = expect(201, "POST", "/api/v1/orders", customer,
                       {"title": "Soak order", "description": "Soak", "category": "design", "budget": 700})
        if not order:
            break
        expect(200, "GET", f"/orders/{order['id']}")
        expect(200, "POST", f"/api/v1/orders/{order['id']}/take", performer)
        expect(200, "GET", "/api/v1/orders?category=design")
        expect(200, "POST", f"/api/v1/orders/{order['id']}/deliver", performer, {"message": "Here it is"})
        expect(200, "POST", f"/api/v1/orders/{order['id']}/accept", customer, {"rating": 9})
        expect(200, "GET", "/api/v1/me", performer)
        expect(200, "GET", "/performers")
        if wrong:
            break
    results.append((count, wrong))


@pytest.mark.server
def test_a_soak_of_mixed_reads_and_writes_at_32_connections_has_no_errors_and_steady_memory(db_url):
    pairs = make_pairs(db_url, SOAK_CONNECTIONS)
    with gunicorn(db_url, workers=2) as server:
        wait_for(lambda: two_workers(server), 30, "gunicorn has not two workers")
        workers = server.worker_pids()
        results, stop = [], threading.Event()
        started = time.monotonic()
        # The sampler stops the soakers after its last sample (at SOAK_SECONDS); their own deadline
        # is only a bound. Were it SOAK_SECONDS too, they could all end before that last sample.
        bound = started + SOAK_SECONDS + 30
        threads = [threading.Thread(target=soaker, args=(server.port, pair, stop, bound, results))
                   for pair in pairs]
        for thread in threads:
            thread.start()
        samples = []  # (second, {pid: rss})
        try:
            for second in sorted({10, *range(30, SOAK_SECONDS + 1, 30), SOAK_SECONDS}):
                while time.monotonic() < started + second and len(results) < len(threads):
                    time.sleep(0.1)
                if len(results) == len(threads):
                    break  # a thread stopped early: its errors are reported below
                samples.append((second, {pid: rss(pid) for pid in workers}))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert server.worker_pids() == workers  # no worker died or was replaced
    requests = sum(count for count, _wrong in results)
    errors = [wrong for _count, wrong in results if wrong]
    print(f"\nsoak: {SOAK_SECONDS} s, {SOAK_CONNECTIONS} connections, {requests} requests "
          f"({requests / SOAK_SECONDS:.0f}/s), errors: {errors}; worker RSS in MiB: "
          + "; ".join(f"{second} s: " + ", ".join(f"{size / MiB:.1f}" for size in sizes.values())
                      for second, sizes in samples))
    assert errors == []
    assert samples[-1][0] == SOAK_SECONDS
    (_first, at_10), (_last, at_end) = samples[0], samples[-1]
    for pid in workers:  # generous: a leak grows with the requests served, warming up does not
        assert at_end[pid] < at_10[pid] * 1.25 + 16 * MiB, (pid, at_10[pid] / MiB, at_end[pid] / MiB)
