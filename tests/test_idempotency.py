"""Idempotency-Key on the API's POSTs: a retry gets the first answer again and writes nothing more,
another request with the key is a 422, keys are per user and live 24 hours. Every answer is
checked against the OpenAPI document (test_api.Api)."""
import http.client
import json
import secrets
import threading
import time

import pytest

import app as birzha
import commands
import conftest
import orders
import web
from db import Q
from test_api import DOCUMENT, NEW_ORDER, Api, history

KEY = "Idempotency-Key"


def api_user(db, make_user, make_client, role="customer", address="198.51.100.90"):
    """A user with an API token made in SQL: (user, token, Api)."""
    user = make_user(role, categories=["design"] if role == "performer" else ())
    token = "bz_" + secrets.token_urlsafe(32)
    db.execute(Q["api_token_create"], {"user_id": user["id"], "token_hash": web.token_hash(token),
                                       "label": "script", "max_tokens": 10})
    return user, token, Api(make_client(address), token=token)


@pytest.fixture
def customer(db, make_user, make_client):
    return api_user(db, make_user, make_client)


def orders_of(db, user):
    return db.execute("SELECT count(*) AS n FROM orders WHERE customer_id = %s", (user["id"],)).fetchone()["n"]


def kept(db, user):
    """The keys kept for a user: {key: (request, status)}."""
    return {row["key"]: (row["request"], row["response_status"]) for row in db.execute(
        "SELECT key, request, response_status FROM api_idempotency WHERE user_id = %s", (user["id"],))}


def assert_same_answer(first, again):
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert (again.status_int, again.body, again.headers.get("Location")) == \
           (first.status_int, first.body, first.headers.get("Location"))


def test_a_create_retried_with_its_key_makes_one_order_and_gets_the_first_answer_again(db, customer):
    user, _token, api = customer
    first = api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "create-1"})
    again = api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "create-1"})
    assert_same_answer(first, again)
    assert again.headers["Location"].endswith(f"/api/v1/orders/{first.json['id']}")
    assert orders_of(db, user) == 1
    assert kept(db, user) == {"create-1": ("POST /api/v1/orders", 201)}

    api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "create-2"})  # a new key: a new order
    api.post("/api/v1/orders", NEW_ORDER, status=201)  # no key: as before, every POST creates
    assert orders_of(db, user) == 3


def test_the_same_key_with_another_body_or_path_is_422_and_writes_nothing(db, customer):
    user, _token, api = customer
    order = api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "k"}).json
    other_body = api.post("/api/v1/orders", dict(NEW_ORDER, budget=20000), status=422, headers={KEY: "k"})
    assert "another request" in other_body.json["detail"] and other_body.json["title"] == "Unprocessable content"
    other_path = api.post(f"/api/v1/orders/{order['id']}/edit", NEW_ORDER, status=422, headers={KEY: "k"})
    assert "another request" in other_path.json["detail"]
    assert orders_of(db, user) == 1
    assert db.execute("SELECT budget FROM orders WHERE id = %s", (order["id"],)).fetchone()["budget"] == 15000
    assert history(db, order["id"]) == [("create", None, "open", user["id"])]
    assert kept(db, user) == {"k": ("POST /api/v1/orders", 201)}
    ru = api.post("/api/v1/orders", {}, status=422, headers={KEY: "k", "Accept-Language": "ru"})
    assert "Idempotency-Key уже использован" in ru.json["detail"]


def test_keys_are_per_user(db, make_user, make_client, customer):
    user, _token, api = customer
    other, _other_token, other_api = api_user(db, make_user, make_client, address="198.51.100.91")
    mine = api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "shared"})
    theirs = other_api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "shared"})
    assert "Idempotent-Replayed" not in theirs.headers
    assert_same_answer(mine, api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "shared"}))
    assert theirs.json["customer"]["id"] == other["id"] and theirs.json["id"] != mine.json["id"]
    assert (orders_of(db, user), orders_of(db, other)) == (1, 1)


def test_a_transition_and_a_message_retried_with_their_keys_give_the_first_answer_and_write_once(
        db, make_user, make_client, customer):
    user, _token, api = customer
    performer, _ptoken, performer_api = api_user(db, make_user, make_client, "performer", "198.51.100.92")
    oid = api.post("/api/v1/orders", NEW_ORDER, status=201).json["id"]

    taken = performer_api.post(f"/api/v1/orders/{oid}/take", headers={KEY: "take"})
    assert_same_answer(taken, performer_api.post(f"/api/v1/orders/{oid}/take", headers={KEY: "take"}))
    performer_api.post(f"/api/v1/orders/{oid}/take", status=409)  # without the key it is a second take
    assert history(db, oid) == [("create", None, "open", user["id"]), ("take", "open", "in_progress", performer["id"])]

    path = f"/api/v1/orders/{oid}/messages"
    sent = performer_api.post(path, {"body": "Started"}, status=201, headers={KEY: "hello"})
    assert_same_answer(sent, performer_api.post(path, {"body": "Started"}, status=201, headers={KEY: "hello"}))
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 1
    assert kept(db, performer) == {"take": (f"POST /api/v1/orders/{oid}/take", 200),
                                   "hello": (f"POST {path}", 201)}


def test_a_refused_request_keeps_nothing_and_its_key_can_be_sent_again(db, customer):
    user, _token, api = customer
    refused = api.post("/api/v1/orders", dict(NEW_ORDER, budget=0), status=400, headers={KEY: "retry-me"})
    assert "budget" in refused.json["errors"]
    assert kept(db, user) == {} and orders_of(db, user) == 0
    api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "retry-me"})
    assert kept(db, user) == {"retry-me": ("POST /api/v1/orders", 201)} and orders_of(db, user) == 1


@pytest.mark.parametrize("value", ["", " ", "x" * 256, "ключ".encode().decode("latin-1"), "tab\there"])
def test_a_bad_key_is_400_and_writes_nothing(db, customer, value):
    user, _token, api = customer
    answer = api.post("/api/v1/orders", NEW_ORDER, status=400, headers={KEY: value})
    assert "Idempotency-Key" in answer.json["detail"]
    assert orders_of(db, user) == 0 and kept(db, user) == {}


def test_a_key_of_255_printable_characters_is_taken(db, customer):
    user, _token, api = customer
    visible = "".join(chr(code) for code in range(33, 127))
    key = visible + " " + visible + "~" * 66  # spaces inside count; around the value they are not the key's
    assert len(key) == 255
    api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: key})
    assert kept(db, user) == {key: ("POST /api/v1/orders", 201)}


def test_a_key_past_24_hours_runs_the_request_anew_and_the_tick_purges_it(db, db_url, customer, capsys):
    user, _token, api = customer
    first = api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "old"}).json
    api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "fresh"})
    db.execute("UPDATE api_idempotency SET created_at = now() - interval '24 hours 1 second' WHERE key = 'old'")
    anew = api.post("/api/v1/orders", NEW_ORDER, status=201, headers={KEY: "old"})
    assert "Idempotent-Replayed" not in anew.headers and anew.json["id"] != first["id"]
    assert orders_of(db, user) == 3
    assert db.execute("SELECT response_body::jsonb ->> 'id' AS id, now() - created_at < interval '1 minute' AS new "
                      "FROM api_idempotency WHERE key = 'old'").fetchone() == {"id": str(anew.json["id"]), "new": True}

    db.execute("UPDATE api_idempotency SET created_at = now() - interval '25 hours' WHERE key = 'old'")
    assert commands.tick(db_url) == 0
    assert "1 idempotency keys past 24 hours purged" in capsys.readouterr().out
    assert set(kept(db, user)) == {"fresh"}


def blocked_backends(db):
    return db.execute("SELECT count(*) AS n FROM pg_stat_activity "
                      "WHERE datname = current_database() AND wait_event_type = 'Lock'").fetchone()["n"]


def wait_for_a_blocked_backend(db, timeout=10):
    deadline = time.monotonic() + timeout
    while blocked_backends(db) == 0:
        assert time.monotonic() < deadline, "the second request never waited for the first"
        time.sleep(0.02)


@pytest.mark.parametrize("first_fails", [False, True])
def test_a_request_with_the_key_of_one_still_running_waits_for_it(db, make_client, customer, monkeypatch, first_fails):
    """The first request has created its order and not committed yet; the second, with the same
    key, waits on the claim. The first commits: the second replays its answer. The first fails
    after its write: nothing of it stays, and the second creates the order itself."""
    user, token, _api = customer
    create_order, paused, go_on = orders.create_order, threading.Event(), threading.Event()

    def create_and_pause(*args):
        order_id = create_order(*args)
        if threading.current_thread().name == "first":
            paused.set()
            go_on.wait(timeout=20)
            if first_fails:
                raise web.error_response(400, "failed after its write")
        return order_id
    monkeypatch.setattr(orders, "create_order", create_and_pause)
    answers = {}

    def post(name, address):
        api = Api(make_client(address), token=token)
        status = 400 if first_fails and name == "first" else 201
        answers[name] = api.post("/api/v1/orders", NEW_ORDER, status=status, headers={KEY: "once"})
    first = threading.Thread(target=post, name="first", args=("first", "198.51.100.93"))
    second = threading.Thread(target=post, name="second", args=("second", "198.51.100.94"))
    first.start()
    assert paused.wait(timeout=20)
    second.start()
    wait_for_a_blocked_backend(db)
    go_on.set()
    first.join(timeout=20)
    second.join(timeout=20)
    assert not first.is_alive() and not second.is_alive() and set(answers) == {"first", "second"}

    assert orders_of(db, user) == 1
    kept_body = db.execute("SELECT response_body FROM api_idempotency WHERE key = 'once'").fetchone()["response_body"]
    assert kept_body == answers["second"].text
    if first_fails:
        assert "Idempotent-Replayed" not in answers["second"].headers
    else:
        assert_same_answer(answers["first"], answers["second"])


@pytest.mark.server
def test_two_requests_with_one_key_at_once_over_real_sockets_make_one_order(db, db_url, customer):
    """Ten rounds against gunicorn (2 workers): each sends the same create twice at once."""
    user, token, _api = customer
    rounds, body = 10, json.dumps(NEW_ORDER)
    with conftest.gunicorn(db_url) as server:
        for n in range(rounds):
            barrier, answers = threading.Barrier(2, timeout=30), []

            def post():
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                try:
                    connection.connect()
                    barrier.wait()
                    connection.request("POST", "/api/v1/orders", body=body, headers={
                        "Authorization": f"Bearer {token}", "Content-Type": "application/json", KEY: f"round-{n}"})
                    answer = connection.getresponse()
                    answers.append((answer.status, answer.read(), answer.getheader("Idempotent-Replayed")))
                finally:
                    connection.close()
            threads = [threading.Thread(target=post) for _two in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert len(answers) == 2, f"round {n}"
            (status, first, replayed), (status_again, again, replayed_again) = answers
            assert (status, status_again) == (201, 201) and first == again, f"round {n}"
            assert sorted([replayed, replayed_again], key=str) == [None, "true"], f"round {n}"
    assert orders_of(db, user) == rounds
    assert len(kept(db, user)) == rounds


def test_every_api_post_takes_the_key_and_the_document_says_so():
    posts = [route for route in birzha.app.routes if route.rule.startswith("/api/") and route.method == "POST"]
    assert len(posts) >= 10
    for route in posts:
        assert getattr(route.callback, "idempotent", False), f"{route.rule}: @idempotent under @authenticate"
    parameter = {"$ref": "#/components/parameters/IdempotencyKey"}
    for path, methods in DOCUMENT["paths"].items():
        if "post" in methods:
            assert parameter in methods["post"]["parameters"] and "422" in methods["post"]["responses"], path
    assert DOCUMENT["components"]["parameters"]["IdempotencyKey"]["in"] == "header"
