"""The JSON API (SPEC §6): Bearer tokens and sessions, the order flow, problems, the OpenAPI document.

Every API response these tests receive goes through Api.request, which checks it against the
schema that the OpenAPI document gives for its path, method and status.
"""
import datetime
import html
import json
import re
import threading
import types
from urllib.parse import parse_qs, urlencode, urlsplit

import psycopg
import pytest
import jsonschema_rs  # schemathesis' validator: it reads patterns as ECMA 262 does
from jsonschema import Draft202012Validator, ValidationError

import api as api_module
import app as birzha
import db as database
import web
from conftest import PASSWORD
from test_feed import catalogue, walk  # noqa: F401  (catalogue is a fixture)
from test_security import snapshot

DOCUMENT = api_module.OPENAPI
DOCUMENT_URI = api_module.DOCUMENT_URI
REGISTRY = api_module.document_registry()


def pointer(*parts):
    return "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def document_path(url):
    """The path template of the document that this URL matches, or None."""
    path = url.split("?")[0]
    for template in DOCUMENT["paths"]:
        if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path):
            return template
    return None


def check_against_document(method, url, resp):
    """The response's media type and body are those the document gives for its path, method, status."""
    template = document_path(url)
    assert template, f"{url} is not in the OpenAPI document"
    responses = DOCUMENT["paths"][template][method.lower()]["responses"]
    status = str(resp.status_int)
    assert status in responses, f"{method} {template} answered {status}, which its operation does not list"
    base = ["paths", template, method.lower(), "responses", status]
    answer = responses[status]
    if "$ref" in answer:
        base = answer["$ref"].lstrip("#/").split("/")
        answer = DOCUMENT["components"]["responses"][base[-1]]
    assert resp.content_type in answer["content"], (url, resp.status_int, resp.content_type)
    for header in answer.get("headers", {}):
        assert header in resp.headers, (url, resp.status_int, header)
    schema = {"$ref": DOCUMENT_URI + "#/" + pointer(*base, "content", resp.content_type, "schema")}
    Draft202012Validator(schema, registry=REGISTRY,
                         format_checker=Draft202012Validator.FORMAT_CHECKER).validate(resp.json)


class Api:
    """A client of the API: a Bearer token, or a browser session with (or without) the CSRF header."""

    def __init__(self, client, token=None, csrf_header=True):
        self.client, self.token, self.csrf_header = client, token, csrf_header

    def request(self, method, url, body=None, status=200, *, raw=None, content_type="application/json",
                headers=None):
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if method == "POST" and self.csrf_header and not self.token:
            headers["X-CSRF-Token"] = self.client.csrf()
        if method == "GET":
            resp = self.client.get(url, headers=headers, status=status)
        else:
            data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
            resp = self.client.request(url, method=method, body=data, headers=headers, status=status,
                                       content_type=content_type)
        check_against_document(method, url, resp)
        if resp.status_int >= 400:
            assert resp.content_type == "application/problem+json"
            assert resp.json["status"] == resp.status_int and resp.json["detail"]
        return resp

    def get(self, url, status=200):
        return self.request("GET", url, status=status)

    def post(self, url, body=None, status=200, **kwargs):
        return self.request("POST", url, body, status, **kwargs)


def create_token(client, label="script"):
    """Creates a token on the profile page of the signed-in client and returns it."""
    resp = client.post_form("/profile/tokens", {"label": label})
    assert resp.status_int == 201, resp.status
    return re.search(r'<code id="new-token">([^<]+)</code>', resp.text).group(1)


@pytest.fixture
def people(make_user, make_client, sign_in):
    """A customer and a performer, each with a browser session and an API token made on /profile."""
    found = {}
    for n, role in enumerate(("customer", "performer")):
        user = make_user(role, categories=["design"] if role == "performer" else ())
        browser = sign_in(make_client(f"198.51.100.{30 + n}"), user)
        found[role] = {"user": user, "browser": browser, "token": create_token(browser)}
    return found


def bearer(make_client, token):
    return Api(make_client("198.51.100.50"), token=token)


NEW_ORDER = {"title": "Logo for a bakery", "description": "Warm colours, a croissant.",
             "category": "design", "budget": 15000, "deadline": None}


def history(db, order_id):
    return [(row["action"], row["from_status"], row["to_status"], row["actor_id"]) for row in db.execute(
        "SELECT action, from_status, to_status, actor_id FROM order_history WHERE order_id = %s ORDER BY id",
        (order_id,))]


def run_flow(db, customer, performer, customer_id, performer_id):
    """Create, take, complete (the old name of deliver), accept, rate through the API; checks each
    answer and the database."""
    resp = customer.post("/api/v1/orders", NEW_ORDER, status=201)
    order = resp.json
    assert resp.headers["Location"].endswith(f"/api/v1/orders/{order['id']}")
    assert order["status"] == "open" and order["customer"]["id"] == customer_id and order["mode"] == "take"
    assert order["performer"] is None and order["budget"] == 15000 and order["category"]["slug"] == "design"
    assert order["agreed_price"] is None and order["offers_active"] == 0
    oid = order["id"]
    taken = performer.post(f"/api/v1/orders/{oid}/take").json
    assert taken["status"] == "in_progress" and taken["performer"]["id"] == performer_id and taken["taken_at"]
    assert taken["agreed_price"] == 15000
    delivered = performer.post(f"/api/v1/orders/{oid}/complete", {"message": "The logo, in three sizes"}).json
    assert delivered["status"] == "delivered" and delivered["delivered_at"]
    assert customer.post(f"/api/v1/orders/{oid}/accept").json["status"] == "done"
    rated = customer.post(f"/api/v1/orders/{oid}/rate", {"rating": 9, "review": "Lovely"}).json
    assert rated["rating"] == 9 and rated["review"] == "Lovely" and rated["rated_at"]
    row = db.execute("SELECT status, performer_id, rating, review FROM orders WHERE id = %s", (oid,)).fetchone()
    assert row == {"status": "done", "performer_id": performer_id, "rating": 9, "review": "Lovely"}
    assert deliveries(db, oid) == [(performer_id, "The logo, in three sizes")]
    assert history(db, oid) == [("create", None, "open", customer_id),
                                ("take", "open", "in_progress", performer_id),
                                ("deliver", "in_progress", "delivered", performer_id),
                                ("accept", "delivered", "done", customer_id),
                                ("rate", "done", "done", customer_id)]
    return oid


def deliveries(db, order_id):
    return [(row["performer_id"], row["message"]) for row in db.execute(
        "SELECT performer_id, message FROM order_deliveries WHERE order_id = %s ORDER BY id", (order_id,))]


# ---------------------------------------------------------------------------------------------
# The flow

def test_full_flow_with_bearer_tokens_moves_the_order_and_the_counters(db, make_client, people):
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    cid, pid = people["customer"]["user"]["id"], people["performer"]["user"]["id"]
    run_flow(db, customer, performer, cid, pid)
    stats = db.execute("SELECT * FROM customer_stats WHERE customer_id = %s", (cid,)).fetchone()
    assert (stats["orders_placed"], stats["orders_open"], stats["orders_done"]) == (1, 0, 1)
    stats = db.execute("SELECT * FROM performer_stats WHERE performer_id = %s", (pid,)).fetchone()
    assert (stats["orders_completed"], stats["rating_sum"], stats["rating_count"]) == (1, 9, 1)
    me = customer.get("/api/v1/me").json
    assert me["id"] == cid and me["role"] == "customer" and me["counters"]["orders_done"] == 1
    me = performer.get("/api/v1/me").json
    assert me["role"] == "performer" and me["counters"] == {
        "orders_completed": 1, "orders_in_progress": 0, "orders_delivered": 0, "orders_disputed": 0,
        "rating_avg": 9.0, "rating_count": 1}
    used = db.execute("SELECT count(*) AS n FROM api_tokens WHERE last_used_at IS NOT NULL").fetchone()
    assert used["n"] == 2


def test_full_flow_with_the_session_cookie_and_the_csrf_header(db, people):
    customer = Api(people["customer"]["browser"])
    performer = Api(people["performer"]["browser"])
    run_flow(db, customer, performer, people["customer"]["user"]["id"], people["performer"]["user"]["id"])


def test_a_session_post_without_the_csrf_header_is_refused_and_changes_nothing(db, people, make_order):
    order = make_order(people["customer"]["user"])
    before = snapshot(db)
    no_header = Api(people["performer"]["browser"], csrf_header=False)
    resp = no_header.post(f"/api/v1/orders/{order['id']}/take", status=403)
    assert "did not come from this site" in resp.json["detail"]
    Api(people["customer"]["browser"], csrf_header=False).post("/api/v1/orders", NEW_ORDER, status=403)
    assert snapshot(db) == before
    assert no_header.get("/api/v1/me").json["role"] == "performer"  # GETs need no header


# ---------------------------------------------------------------------------------------------
# Refusals: each with its status, as problem+json, and nothing changes

def test_every_refusal_has_its_status_and_changes_nothing(db, app, make_client, people, make_user, make_order):
    cust, perf = people["customer"]["user"], people["performer"]["user"]
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    guest = Api(make_client("198.51.100.60"))
    other_customer = Api(make_client("198.51.100.61"), token=None)
    stranger = make_user("customer")
    with_stranger = sign_in_api(make_client, stranger)
    open_order = make_order(cust)
    taken = make_order(cust, performer=perf, status="in_progress")
    done = make_order(cust, performer=perf, status="done")
    before = snapshot(db)

    # 401: no credentials, or a token that is not one
    resp = guest.post(f"/api/v1/orders/{open_order['id']}/take", status=401)
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    guest.get("/api/v1/me", status=401)
    other_customer.token = "bz_not-a-real-token"
    assert other_customer.get("/api/v1/me", status=401).headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    other_customer.get(f"/api/v1/orders/{open_order['id']}", status=401)
    # 403: the wrong person
    performer.post("/api/v1/orders", NEW_ORDER, status=403)
    performer.post(f"/api/v1/orders/{done['id']}/rate", {"rating": 5}, status=403)
    with_stranger.post(f"/api/v1/orders/{open_order['id']}/cancel", {"reason": "mine now"}, status=403)
    with_stranger.post(f"/api/v1/orders/{taken['id']}/complete", {"message": "Mine"}, status=403)
    customer.post(f"/api/v1/orders/{open_order['id']}/take", status=403)
    # 404: unknown ids and routes
    performer.post("/api/v1/orders/999999/take", status=404)
    guest.get("/api/v1/orders/999999", status=404)
    guest.get("/api/v1/performers/999999", status=404)
    guest.get(f"/api/v1/performers/{cust['id']}", status=404)  # a customer is not a performer
    for url in ("/api/v1/nothing-here", "/api/v1/orders/1x"):
        resp = guest.client.get(url, status=404)
        assert resp.content_type == "application/problem+json" and resp.json["status"] == 404
    resp = guest.client.delete("/api/v1/orders", status=405)
    assert resp.content_type == "application/problem+json" and resp.json["title"] == "Method not allowed"
    # 409: the state has moved on
    performer.post(f"/api/v1/orders/{taken['id']}/take", status=409)
    customer.post(f"/api/v1/orders/{open_order['id']}/rate", {"rating": 5}, status=409)
    customer.post(f"/api/v1/orders/{done['id']}/cancel", status=409)
    performer.post(f"/api/v1/orders/{done['id']}/complete", {"message": "Again"}, status=409)
    # bad input on an order whose state refuses the write anyway: 409, as the HTML form answers
    performer.post(f"/api/v1/orders/{done['id']}/complete", status=409)
    customer.post(f"/api/v1/orders/{done['id']}/cancel", {"reason": "x" * 1001}, status=409)
    # 400: bad input, each field with its message
    errors = customer.post("/api/v1/orders", {"title": "x", "description": "", "category": "nope",
                                              "budget": "5000", "deadline": "2001-01-01"}, status=400).json["errors"]
    assert set(errors) == {"title", "description", "category", "budget", "deadline"}
    assert errors["budget"] == "Enter a whole number."
    errors = customer.post("/api/v1/orders", dict(NEW_ORDER, title="Nul\x00byte", budget=True,
                                                  description=["a list"]), status=400).json["errors"]
    assert set(errors) == {"title", "budget", "description"}
    errors = customer.post("/api/v1/orders", dict(NEW_ORDER, budget=0, title="\ud800 lone"), status=400).json["errors"]
    assert set(errors) == {"title", "budget"}
    assert customer.post(f"/api/v1/orders/{done['id']}/rate", {"rating": 11}, status=400).json["errors"] == {
        "rating": "The largest allowed value is 10."}
    customer.post(f"/api/v1/orders/{done['id']}/rate", {"rating": 9.5}, status=400)
    customer.post(f"/api/v1/orders/{open_order['id']}/cancel", {"reason": "x" * 1001}, status=400)
    assert performer.post(f"/api/v1/orders/{taken['id']}/deliver", {"message": "  "}, status=400).json["errors"] == {
        "message": "This field is required."}
    customer.post("/api/v1/orders", raw=b'{"title": ', status=400)
    customer.post("/api/v1/orders", raw=b"[1, 2]", status=400)
    customer.post("/api/v1/orders", raw=b"[" * 100000, status=400)
    customer.post("/api/v1/orders", raw=b'{"title": "\xff\xfe"}', status=400)
    # 415: not JSON; 413: too big
    customer.post("/api/v1/orders", raw=b"title=Form+post", status=415,
                  content_type="application/x-www-form-urlencoded")
    customer.post(f"/api/v1/orders/{open_order['id']}/cancel", raw=b"Fraud", status=415, content_type="text/plain")
    resp = customer.post("/api/v1/orders", raw=b" " * (web.MAX_BODY_BYTES + 1), status=413)
    assert resp.json["title"] == "Request too large"
    assert snapshot(db) == before


def sign_in_api(make_client, user, address="198.51.100.62"):
    """An Api over a browser session of this user, with the CSRF header."""
    browser = make_client(address)
    browser.post_form("/login", {"email": user["email"], "password": PASSWORD}, status=303)
    return Api(browser)


def test_staff_see_a_hidden_review_but_cancel_only_through_the_admin_area(
        db, make_client, make_user, make_order, sign_in, people):
    cust, perf = people["customer"]["user"], people["performer"]["user"]
    boss = make_user("customer", staff=True)
    staff = sign_in_api(make_client, boss)
    rated = make_order(cust, performer=perf, status="done", rating=3, review="Late")
    db.execute("UPDATE orders SET review_hidden = true WHERE id = %s", (rated["id"],))
    guest = Api(make_client("198.51.100.63"))
    assert guest.get(f"/api/v1/orders/{rated['id']}").json["rating"] is None
    assert staff.get(f"/api/v1/orders/{rated['id']}").json["review"] == "Late"

    order = make_order(cust, performer=perf, status="in_progress")
    staff_token = create_token(staff.client)
    before = snapshot(db)
    for api in (staff, Api(make_client("198.51.100.64"), token=staff_token)):
        refused = api.post(f"/api/v1/orders/{order['id']}/cancel", {"reason": "Fraud"}, status=403).json
        assert "admin area" in refused["detail"]
    assert snapshot(db) == before
    assert db.execute("SELECT count(*) AS n FROM admin_log").fetchone()["n"] == 0

    # The admin area does it, logged; the reason is the staff's (the audit log and a staff-only
    # note in the timeline), never the order's public cancel_reason.
    admin = sign_in(make_client("198.51.100.65"), boss)
    assert admin.post_form(f"/admin/orders/{order['id']}/cancel", {"reason": "Fraud"}).status_int == 303
    assert db.execute("SELECT action, reason FROM admin_log").fetchone() == {"action": "cancel_order",
                                                                             "reason": "Fraud"}
    assert staff.get(f"/api/v1/orders/{order['id']}").json["cancel_reason"] is None
    for token in (people["customer"]["token"], people["performer"]["token"]):
        seen = bearer(make_client, token).get(f"/api/v1/orders/{order['id']}").json
        assert seen["status"] == "cancelled" and seen["cancel_reason"] is None
    assert guest.get(f"/api/v1/orders/{order['id']}").json["cancel_reason"] is None


def test_an_order_of_a_blocked_customer_is_gone_from_the_api(db, make_client, make_user, make_order, people):
    spammer = make_user("customer")
    order = make_order(spammer)
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (spammer["id"],))
    performer = bearer(make_client, people["performer"]["token"])
    performer.get(f"/api/v1/orders/{order['id']}", status=404)
    performer.post(f"/api/v1/orders/{order['id']}/take", status=404)
    assert order["id"] not in [item["id"] for item in performer.get("/api/v1/orders").json["items"]]


# ---------------------------------------------------------------------------------------------
# Tokens on the profile page

def token_hashes(db, user_id):
    return [bytes(row["token_hash"]) for row in db.execute(
        "SELECT token_hash FROM api_tokens WHERE user_id = %s ORDER BY id", (user_id,))]


def test_a_token_is_shown_once_works_and_dies_when_revoked(db, client, make_client, make_user, sign_in):
    owner = make_user("performer")
    browser = sign_in(client, owner)
    resp = browser.post_form("/profile/tokens", {"label": "My script"})
    assert resp.status_int == 201 and resp.headers["Cache-Control"] == "no-store"
    token = re.search(r'<code id="new-token">([^<]+)</code>', resp.text).group(1)
    assert token.startswith("bz_") and len(token) > 40
    assert token not in "".join(value for _name, value in resp.headerlist)  # not in a cookie or header
    assert token_hashes(db, owner["id"]) == [web.token_hash(token)]  # only the hash is kept
    page = browser.get("/profile")
    assert token not in page.text and "My script" in page.text

    api = bearer(make_client, token)
    assert api.get("/api/v1/me").json["id"] == owner["id"]
    token_id = db.execute("SELECT id, last_used_at FROM api_tokens").fetchone()
    assert token_id["last_used_at"] is not None

    thief = sign_in(make_client("198.51.100.70"), make_user("performer"))
    assert thief.post_form(f"/profile/tokens/{token_id['id']}/revoke").status_int == 404
    assert browser.post_form("/profile/tokens/999999/revoke").status_int == 404
    api.get("/api/v1/me")  # still alive
    resp = browser.post_form(f"/profile/tokens/{token_id['id']}/revoke")
    assert resp.status_int == 303 and token_hashes(db, owner["id"]) == []
    api.get("/api/v1/me", status=401)


def token_use(db, user_id):
    """The token's last_used_at and its row version (xmin): a write, even of the same value, changes it."""
    return db.execute("SELECT id, last_used_at, xmin::text AS version FROM api_tokens WHERE user_id = %s",
                      (user_id,)).fetchone()


def test_last_used_at_is_kept_to_five_minutes_and_reads_do_not_write(db, make_client, people):
    performer = people["performer"]
    api = bearer(make_client, performer["token"])
    user_id = performer["user"]["id"]
    assert token_use(db, user_id)["last_used_at"] is None
    api.get("/api/v1/me")
    assert token_use(db, user_id)["last_used_at"] is not None

    db.execute("UPDATE api_tokens SET last_used_at = now() - interval '4 minutes' WHERE user_id = %s", (user_id,))
    recent = token_use(db, user_id)
    api.get("/api/v1/me")
    api.get("/api/v1/orders")
    api.post("/api/v1/orders", NEW_ORDER, status=403)
    assert token_use(db, user_id) == recent  # same moment, same row version: nothing was written

    db.execute("UPDATE api_tokens SET last_used_at = now() - interval '6 minutes' WHERE user_id = %s", (user_id,))
    api.get("/api/v1/me")
    assert db.execute("SELECT now() - last_used_at < interval '1 minute' AS fresh FROM api_tokens "
                      "WHERE user_id = %s", (user_id,)).fetchone()["fresh"]


def test_a_call_does_not_wait_for_another_that_holds_the_token_row(db_url, db, make_client, people):
    """Two parallel calls with one token: one of them holds the token row (it has just marked it
    as used and has not committed yet); the other answers all the same, without waiting."""
    performer = people["performer"]
    token_id = token_use(db, performer["user"]["id"])["id"]
    db.execute("UPDATE api_tokens SET last_used_at = now() - interval '1 hour' WHERE id = %s", (token_id,))
    api = bearer(make_client, performer["token"])
    answers = []
    worker = threading.Thread(target=lambda: answers.append(api.get("/api/v1/me")))
    with psycopg.connect(db_url) as other:
        other.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (token_id,))
        worker.start()
        worker.join(timeout=20)
        answered_while_held = not worker.is_alive()
        other.rollback()  # lets a waiting call go on, so the test ends either way
    worker.join()
    assert answered_while_held, "the call waited for the lock another transaction holds on its token"
    assert answers and answers[0].json["id"] == performer["user"]["id"]


def test_a_blocked_users_token_stops_working_and_a_password_change_keeps_tokens(db, make_client, people):
    customer = people["customer"]
    api = bearer(make_client, customer["token"])
    resp = customer["browser"].post_form("/profile/password", {"current_password": PASSWORD,
                                                               "new_password": "a brand new password"})
    assert resp.status_int == 303
    api.get("/api/v1/me")  # our call: a token is its own credential, revoked on the profile page
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (customer["user"]["id"],))
    api.get("/api/v1/me", status=401)
    api.post("/api/v1/orders", NEW_ORDER, status=401)
    db.execute("UPDATE users SET is_blocked = false WHERE id = %s", (customer["user"]["id"],))
    api.get("/api/v1/me")


def test_token_labels_are_checked_and_ten_is_the_most(db, client, make_user, sign_in):
    owner = make_user("customer")
    browser = sign_in(client, owner)
    for label in ("", "x" * 61, "bad\x00label"):
        resp = browser.post_form("/profile/tokens", {"label": label})
        assert resp.status_int == 400 and "field-error" in resp.text
    for n in range(10):
        create_token(browser, f"token {n}")
    resp = browser.post_form("/profile/tokens", {"label": "one too many"})
    assert resp.status_int == 409 and "Revoke one first" in resp.text
    assert len(token_hashes(db, owner["id"])) == 10
    assert browser.post_form("/profile/tokens", {"label": "no csrf"}, csrf=False).status_int == 403


# ---------------------------------------------------------------------------------------------
# Lists: the same filters and cursors as the HTML pages

def api_walk(api, query):
    """Every id of every page of /api/v1/orders?query, following `next`; and the cursors seen."""
    ids, cursors, after = [], [], None
    while True:
        params = dict(query, **({"after": after} if after else {}))
        page = api.get("/api/v1/orders?" + urlencode(params)).json
        ids += [item["id"] for item in page["items"]]
        after = page["next"]
        if after is None:
            return ids, cursors
        assert len(page["items"]) == 20
        cursors.append(after)


def html_cursors(client, url):
    """The `after` values of the "Next page" links of the HTML feed, page by page."""
    cursors = []
    while url:
        found = re.search(r'href="([^"]+)">Next page', client.get(url).text)
        url = html.unescape(found.group(1)) if found else None
        if url:
            cursors.append(parse_qs(urlsplit(url).query)["after"][0])
    return cursors


@pytest.mark.parametrize("query", [
    {}, {"sort": "budget"}, {"category": "design"}, {"min_budget": "2500", "max_budget": "7000"},
    {"q": "Feed", "sort": "budget", "category": "texts"}, {"q": "nothing-like-this"},
])
def test_the_order_list_matches_the_html_feed_page_by_page(client, make_client, catalogue, query):  # noqa: F811
    api = Api(make_client("198.51.100.80"))
    url = "/orders" + ("?" + urlencode(query) if query else "")
    html_ids, _pages = walk(client, url)
    api_ids, cursors = api_walk(api, query)
    assert api_ids == html_ids
    assert cursors == html_cursors(client, url)
    if not query:
        assert len(api_ids) == 45


def test_bad_list_filters_are_400_with_the_field_and_unknown_categories_404(client, catalogue):  # noqa: F811
    api = Api(client)
    # what the document forbids: 400
    assert list(api.get("/api/v1/orders?after=garbage", status=400).json["errors"]) == ["after"]
    assert list(api.get("/api/v1/orders?category=No+such", status=400).json["errors"]) == ["category"]
    assert list(api.get("/api/v1/performers?after=x", status=400).json["errors"]) == ["after"]
    # what it allows but says is refused: 404 for a category that is not there, 422 for the rest
    api.get("/api/v1/orders?category=nope", status=404)
    api.get("/api/v1/performers?category=nope", status=404)
    errors = api.get("/api/v1/orders?min_budget=9000&max_budget=10", status=422).json["errors"]
    assert list(errors) == ["max_budget"]
    assert list(api.get("/api/v1/orders?sort=budget&after=2026-01-01_5", status=422).json["errors"]) == ["after"]


def test_performers_and_categories_match_the_catalogue(db, client, make_client, make_user, make_order, sign_in):
    customer = make_user("customer")
    performers = [make_user("performer", categories=["design"] if n % 2 else ["texts"]) for n in range(25)]
    for n, performer in enumerate(performers[:5]):
        make_order(customer, performer=performer, status="done", rating=n + 5)
    make_order(customer, category="texts")
    guest = Api(client)
    page = guest.get("/api/v1/performers").json
    second = guest.get("/api/v1/performers?after=" + page["next"]).json
    assert second["next"] is None
    ids = [item["id"] for item in page["items"] + second["items"]]
    assert ids[:5] == [p["id"] for p in reversed(performers[:5])] and len(ids) == 25
    html_ids = [int(n) for n in re.findall(r'href="/performers/(\d+)"', client.get("/performers").text)]
    assert [i for i in dict.fromkeys(html_ids)] == ids[:20]
    design = guest.get("/api/v1/performers?category=design").json["items"]
    assert {item["id"] for item in design} == {p["id"] for p in performers[1::2]}
    best = performers[4]
    profile = guest.get(f"/api/v1/performers/{best['id']}").json
    assert profile["rating_avg"] == 9.0 and profile["contacts"] is None and profile["reviews"][0]["rating"] == 9
    signed_in = Api(sign_in(make_client("198.51.100.81"), customer))
    assert signed_in.get(f"/api/v1/performers/{best['id']}").json["contacts"]["email"] == best["email"]
    categories = {item["slug"]: item for item in guest.get("/api/v1/categories").json["items"]}
    assert categories["texts"]["open_orders"] == 1 and categories["design"]["open_orders"] == 0
    visible = db.execute("SELECT count(*) AS n FROM categories WHERE NOT is_hidden").fetchone()["n"]
    assert len(categories) == visible


# ---------------------------------------------------------------------------------------------
# The OpenAPI document

def test_the_document_lists_every_api_route_and_nothing_else(client):
    served = client.get("/api/v1/openapi.json")
    assert served.content_type == "application/json" and served.json == json.loads(json.dumps(DOCUMENT))
    assert served.json["openapi"] == "3.1.0"
    routes = {(re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", route.rule), route.method.lower())
              for route in birzha.app.routes if route.rule.startswith("/api/")}
    documented = {(path, method) for path, methods in DOCUMENT["paths"].items() for method in methods}
    assert routes == documented
    for name, schema in DOCUMENT["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    for needed in ("Order", "OrderList", "Performer", "Category", "Me", "Problem"):
        assert needed in DOCUMENT["components"]["schemas"]
    assert set(DOCUMENT["components"]["securitySchemes"]) == {"bearer", "cookie"}


def test_the_document_check_catches_a_response_that_does_not_fit():
    """The checker itself: a body or a media type the document does not give fails."""
    def answer(status, content_type, body):
        return types.SimpleNamespace(status_int=status, content_type=content_type, json=body)
    with pytest.raises(ValidationError):
        check_against_document("GET", "/api/v1/categories", answer(200, "application/json", {"items": [{"slug": "x"}]}))
    with pytest.raises(ValidationError):
        check_against_document("GET", "/api/v1/orders/1", answer(
            404, "application/problem+json", {"type": "about:blank", "title": "x", "status": 404}))
    with pytest.raises(AssertionError):
        check_against_document("GET", "/api/v1/me", answer(401, "text/html", {}))


def test_problems_speak_the_visitors_language(client):
    resp = client.get("/api/v1/me", headers={"Accept-Language": "ru"}, status=401)
    assert resp.json["title"] == "Нужна авторизация" and "API-токен" in resp.json["detail"]


def test_the_api_answers_a_problem_while_the_database_is_down(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "db.url", "postgresql://127.0.0.1:9/nowhere?connect_timeout=1")
    monkeypatch.setattr(database, "POOL_TIMEOUT", 0.5)
    resp = Api(client).get("/api/v1/categories", status=503)
    assert resp.json["title"] == "Service unavailable" and "database" in resp.json["detail"]
    database.close_pool()


# ---------------------------------------------------------------------------------------------
# The server refuses exactly what the document forbids (tests/test_api_schemathesis.py checks the
# same at large, with generated requests)

def test_a_body_the_document_leaves_optional_may_be_left_out_whatever_the_content_type(db, make_client,
                                                                                        people, make_order):
    performer = bearer(make_client, people["performer"]["token"])
    for content_type in ("", "text/plain", "application/json"):
        order = make_order(people["customer"]["user"])
        assert performer.post(f"/api/v1/orders/{order['id']}/take", raw=b"",
                              content_type=content_type).json["status"] == "in_progress"
    cancelled = bearer(make_client, people["customer"]["token"]).post(
        f"/api/v1/orders/{make_order(people['customer']['user'])['id']}/cancel", raw=b"", content_type="").json
    assert cancelled["status"] == "cancelled"


def test_what_the_document_forbids_is_a_400_with_the_field(db, make_client, people, make_order):
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    order = make_order(people["customer"]["user"])
    before = snapshot(db)
    # keys the body's schema does not have (additionalProperties is false)
    assert customer.post("/api/v1/orders", dict(NEW_ORDER, colour="red"), status=400).json["errors"] == {
        "colour": "There is no such field."}
    assert performer.post(f"/api/v1/orders/{order['id']}/take", {"force": True}, status=400).json["errors"] == {
        "force": "There is no such field."}
    # a query parameter twice, an empty number, an empty choice
    assert customer.get("/api/v1/orders?min_budget=1&min_budget=2", status=400).json["errors"] == {
        "min_budget": "Send this parameter once."}
    assert customer.get("/api/v1/notifications?after=1&after=2", status=400).json["errors"] == {
        "after": "Send this parameter once."}
    assert customer.get("/api/v1/orders?min_budget=", status=400).json["errors"] == {
        "min_budget": "Enter a whole number."}
    assert list(customer.get("/api/v1/orders?sort=", status=400).json["errors"]) == ["sort"]
    assert list(customer.get("/api/v1/performers?after=1.5", status=400).json["errors"]) == ["after"]
    # what the form reader would trim and take: a tab around a title, 201 characters with the spaces
    # around them, a date in another ISO form, 5.5 as a rating
    errors = customer.post("/api/v1/orders", dict(NEW_ORDER, title="\tLogo", deadline="29990101"), status=400).json
    assert errors["errors"] == {"title": "The text contains control characters.",
                                "deadline": "Enter a date as YYYY-MM-DD."}
    assert customer.post("/api/v1/orders", dict(NEW_ORDER, title=" " + "x" * 199 + " "), status=400).json[
        "errors"] == {"title": "At most 200 characters, please."}
    assert snapshot(db) == before


def test_what_the_document_allows_is_taken(db, make_client, people, make_order):
    customer = bearer(make_client, people["customer"]["token"])
    created = customer.post("/api/v1/orders", dict(NEW_ORDER, title="  Abc  ", budget=100_000_000,
                                                   description="\tTabs and\r\nlines\x1f"), status=201).json
    assert (created["title"], created["budget"]) == ("Abc", 100_000_000)
    done = make_order(people["customer"]["user"], performer=people["performer"]["user"], status="done")
    assert customer.post(f"/api/v1/orders/{done['id']}/rate", {"rating": 5.0}).json["rating"] == 5
    # ids as long as the document allows (17 digits): no such conversation, notification
    customer.get(f"/api/v1/orders/{created['id']}/messages?with={10**17 - 1}", status=404)
    customer.post("/api/v1/notifications/read", {"id": 10**17 - 1}, status=404)


def test_what_the_document_allows_but_its_rules_refuse_is_a_422(db, make_client, people, make_order):
    customer = bearer(make_client, people["customer"]["token"])
    refused = customer.post("/api/v1/orders", dict(NEW_ORDER, category="no-such", deadline="2001-01-01"), status=422)
    assert set(refused.json["errors"]) == {"category", "deadline"}
    delivered = make_order(people["customer"]["user"], performer=people["performer"]["user"], status="delivered")
    assert customer.post(f"/api/v1/orders/{delivered['id']}/accept", {"review": "Fine"}, status=422).json[
        "errors"] == {"rating": "A review goes with a rating: choose one, or leave the review empty."}
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 1


TEXTS = ["", " ", "a", "ab", "abc", " ab ", "  abc  ", "a b", "\tabc", "abc\n", "abc\r\n", "a\nb", "\r\n\t",
         "a\x00b", "a\x1fb", "\x1c", "\x85ab", "\x85abc", "\u3000ab\u3000", "\ufeffab", "a\u2028b", "\xa0\xa0a",
         "\u200b\u200b\u200b", "é", "日本語", "ab\U0001f600"]


@pytest.mark.parametrize("multiline", [False, True])
@pytest.mark.parametrize("min_len", [0, 1, 3])
def test_the_text_patterns_of_the_document_take_only_what_the_form_reader_takes(multiline, min_len):
    """A text the schema allows (as JSON Schema's ECMA 262 reads it, and as the server reads it)
    is one web.Form takes; the schema may refuse more (control characters the reader would trim)."""
    schema = api_module.text_schema(50, min_len=min_len, multiline=multiline)
    ecma = jsonschema_rs.validator_for(schema)
    for value in TEXTS:
        allowed = not api_module.document_errors({"text": value}, repr(schema), {"properties": {"text": schema}})
        assert allowed == ecma.is_valid(value), repr(value)
        form = web.Form(api_module.JsonFields(text=value))
        with web.language("en"):
            form.text("text", required=min_len > 0, min_len=min_len, max_len=50, multiline=multiline)
        assert not allowed or form.ok, (repr(value), form.errors)
        if form.ok and not any(ord(ch) < 32 for ch in value):
            assert allowed, repr(value)


def test_the_spaces_of_the_patterns_are_those_python_trims():
    spaces = re.compile(f"[{api_module.SPACES}]")
    assert {chr(n) for n in range(0x110000) if spaces.fullmatch(chr(n))} == {
        chr(n) for n in range(0x110000) if chr(n).isspace()}


# ---------------------------------------------------------------------------------------------
# The exchange (SPEC §4): both modes through the API, step by step, with the database checked

def order_row(db, order_id):
    return db.execute("SELECT status, mode, performer_id, agreed_price, offers_active, deadline, rating, review, "
                      "delivered_at IS NOT NULL AS delivered, disputed_at IS NOT NULL AS disputed "
                      "FROM orders WHERE id = %s", (order_id,)).fetchone()


def offer_rows(db, order_id):
    """(performer, price, days, status) of every offer of the order, oldest first."""
    return [(row["performer_id"], row["price"], row["days"], row["status"]) for row in db.execute(
        "SELECT performer_id, price, days, status FROM offers WHERE order_id = %s ORDER BY id", (order_id,))]


def counters(db, customer_id, performer_id):
    customer = db.execute("SELECT orders_open, orders_in_progress, orders_delivered, orders_disputed, orders_done "
                          "FROM customer_stats WHERE customer_id = %s", (customer_id,)).fetchone()
    performer = db.execute("SELECT orders_in_progress, orders_delivered, orders_disputed, orders_completed "
                           "FROM performer_stats WHERE performer_id = %s", (performer_id,)).fetchone()
    return tuple(customer.values()), tuple(performer.values())


def test_take_mode_through_the_api_take_deliver_revision_deliver_again_accept_with_a_rating(
        db, make_client, make_user, people):
    cid, pid = people["customer"]["user"]["id"], people["performer"]["user"]["id"]
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    order = customer.post("/api/v1/orders", dict(NEW_ORDER, mode="take"), status=201).json
    oid = order["id"]
    assert order["mode"] == "take" and order_row(db, oid)["mode"] == "take"

    assert performer.post(f"/api/v1/orders/{oid}/take").json["status"] == "in_progress"
    assert order_row(db, oid)["performer_id"] == pid and order_row(db, oid)["agreed_price"] == 15000
    assert counters(db, cid, pid) == ((0, 1, 0, 0, 0), (1, 0, 0, 0))

    first = performer.post(f"/api/v1/orders/{oid}/deliver", {"message": "Version one"}).json
    assert first["status"] == "delivered" and first["delivered_at"]
    assert order_row(db, oid)["status"] == "delivered" and deliveries(db, oid) == [(pid, "Version one")]
    assert counters(db, cid, pid) == ((0, 0, 1, 0, 0), (0, 1, 0, 0))

    back = customer.post(f"/api/v1/orders/{oid}/revision", {"reason": "Make the croissant bigger"}).json
    assert back["status"] == "in_progress" and back["performer"]["id"] == pid
    assert order_row(db, oid)["status"] == "in_progress"
    assert counters(db, cid, pid) == ((0, 1, 0, 0, 0), (1, 0, 0, 0))

    assert performer.post(f"/api/v1/orders/{oid}/deliver", {"message": "Version two"}).json["status"] == "delivered"
    assert deliveries(db, oid) == [(pid, "Version one"), (pid, "Version two")]

    done = customer.post(f"/api/v1/orders/{oid}/accept", {"rating": 8, "review": "Worth the wait"}).json
    assert done["status"] == "done" and done["rating"] == 8 and done["completed_at"] and done["rated_at"]
    row = order_row(db, oid)
    assert (row["status"], row["rating"], row["review"]) == ("done", 8, "Worth the wait")
    assert counters(db, cid, pid) == ((0, 0, 0, 0, 1), (0, 0, 0, 1))
    assert history(db, oid) == [("create", None, "open", cid), ("take", "open", "in_progress", pid),
                                ("deliver", "in_progress", "delivered", pid),
                                ("revision", "delivered", "in_progress", cid),
                                ("deliver", "in_progress", "delivered", pid),
                                ("accept", "delivered", "done", cid)]
    note = db.execute("SELECT note FROM order_history WHERE order_id = %s AND action = 'revision'", (oid,)).fetchone()
    assert note["note"] == "Make the croissant bigger"
    stats = db.execute("SELECT rating_sum, rating_count FROM performer_stats WHERE performer_id = %s",
                       (pid,)).fetchone()
    assert stats == {"rating_sum": 8, "rating_count": 1}
    customer.post(f"/api/v1/orders/{oid}/rate", {"rating": 3}, status=409)  # rated once, with the accept

    # The work handed in: both parties and staff read every round; others may not.
    for api in (customer, performer, sign_in_api(make_client, make_user("customer", staff=True))):
        items = api.get(f"/api/v1/orders/{oid}/deliveries").json["items"]
        assert [(item["performer"]["id"], item["message"]) for item in items] == deliveries(db, oid)
    other = sign_in_api(make_client, make_user("performer"), address="198.51.100.66")
    assert "handed in" in other.get(f"/api/v1/orders/{oid}/deliveries", status=403).json["detail"]
    Api(make_client("198.51.100.67")).get(f"/api/v1/orders/{oid}/deliveries", status=401)
    customer.get("/api/v1/orders/999999/deliveries", status=404)


def test_offers_mode_through_the_api_offers_changed_withdrawn_one_accepted_delivered_disputed(
        db, make_client, make_user, make_order, people):
    cid = people["customer"]["user"]["id"]
    customer = bearer(make_client, people["customer"]["token"])
    first_user, second_user = people["performer"]["user"], make_user("performer", name="Second Performer")
    make_order(make_user("customer"), performer=first_user, status="done", rating=7)  # a record to show
    first = bearer(make_client, people["performer"]["token"])
    second = sign_in_api(make_client, second_user, address="198.51.100.68")
    guest = Api(make_client("198.51.100.69"))

    order = customer.post("/api/v1/orders", dict(NEW_ORDER, mode="offers"), status=201).json
    oid = order["id"]
    assert order["mode"] == "offers" and order_row(db, oid)["mode"] == "offers"
    first.post(f"/api/v1/orders/{oid}/take", status=409)  # offers mode: no taking

    sent = first.post(f"/api/v1/orders/{oid}/offers", {"price": 12000, "days": 5, "message": "Quick"}, status=201).json
    assert (sent["price"], sent["days"], sent["status"]) == (12000, 5, "active")
    second.post(f"/api/v1/orders/{oid}/offers", {"price": 9000, "days": 10, "message": "Cheap"}, status=201)
    assert offer_rows(db, oid) == [(first_user["id"], 12000, 5, "active"), (second_user["id"], 9000, 10, "active")]
    assert order_row(db, oid)["offers_active"] == 2

    changed = first.post(f"/api/v1/orders/{oid}/offers", {"price": 11000, "days": 4, "message": "Quicker"}).json
    assert changed["id"] == sent["id"] and (changed["price"], changed["days"]) == (11000, 4)
    assert offer_rows(db, oid)[0] == (first_user["id"], 11000, 4, "active")
    withdrawn = second.post(f"/api/v1/orders/{oid}/offers/withdraw").json
    assert withdrawn["status"] == "withdrawn" and order_row(db, oid)["offers_active"] == 1
    again = second.post(f"/api/v1/orders/{oid}/offers", {"price": 9500, "days": 6, "message": "Again"}, status=201).json
    assert again["id"] != withdrawn["id"] and again["status"] == "active"
    assert offer_rows(db, oid) == [(first_user["id"], 11000, 4, "active"), (second_user["id"], 9000, 10, "withdrawn"),
                                   (second_user["id"], 9500, 6, "active")]
    assert order_row(db, oid)["offers_active"] == 2

    # Who sees what: the customer every active offer with its performer's record, a performer
    # their own, everyone the count.
    listed = customer.get(f"/api/v1/orders/{oid}/offers").json
    assert listed["count"] == 2 and listed["mine"] is None
    assert [(item["id"], item["performer"]["name"], item["price"]) for item in listed["items"]] == [
        (sent["id"], first_user["name"], 11000), (again["id"], "Second Performer", 9500)]
    record = listed["items"][0]["performer"]
    assert (record["rating_avg"], record["rating_count"], record["orders_completed"]) == (7.0, 1, 1)
    assert listed["items"][1]["performer"]["orders_completed"] == 0
    mine = first.get(f"/api/v1/orders/{oid}/offers").json
    assert mine == {"count": 2, "items": None, "mine": changed | {"updated_at": mine["mine"]["updated_at"]}}
    for outsider in (guest, sign_in_api(make_client, make_user("customer"), address="198.51.100.70")):
        assert outsider.get(f"/api/v1/orders/{oid}/offers").json == {"count": 2, "items": None, "mine": None}
    assert guest.get(f"/api/v1/orders/{oid}").json["offers_active"] == 2

    # The customer accepts the second performer's offer: theirs at its price and days, the other declined.
    taken = customer.post(f"/api/v1/orders/{oid}/offers/{again['id']}/accept").json
    today = db.execute("SELECT current_date AS today").fetchone()["today"]
    assert taken["status"] == "in_progress" and taken["performer"]["id"] == second_user["id"]
    assert taken["agreed_price"] == 9500 and taken["deadline"] == str(today + datetime.timedelta(days=6))
    row = order_row(db, oid)
    assert (row["status"], row["performer_id"], row["agreed_price"], row["offers_active"]) == (
        "in_progress", second_user["id"], 9500, 0)
    assert row["deadline"] == today + datetime.timedelta(days=6)
    assert offer_rows(db, oid) == [(first_user["id"], 11000, 4, "declined"), (second_user["id"], 9000, 10, "withdrawn"),
                                   (second_user["id"], 9500, 6, "accepted")]
    assert first.get(f"/api/v1/orders/{oid}/offers").json["mine"]["status"] == "declined"
    assert second.get(f"/api/v1/orders/{oid}/offers").json["mine"]["status"] == "accepted"
    assert counters(db, cid, second_user["id"]) == ((0, 1, 0, 0, 0), (1, 0, 0, 0))

    assert second.post(f"/api/v1/orders/{oid}/deliver", {"message": "Done, see the files"}).json["status"] == "delivered"
    assert deliveries(db, oid) == [(second_user["id"], "Done, see the files")]
    disputed = customer.post(f"/api/v1/orders/{oid}/dispute", {"reason": "This is not what we agreed"}).json
    assert disputed["status"] == "disputed" and disputed["disputed_at"]
    row = order_row(db, oid)
    assert row["status"] == "disputed" and row["disputed"] and row["performer_id"] == second_user["id"]
    assert counters(db, cid, second_user["id"]) == ((0, 0, 0, 1, 0), (0, 0, 1, 0))
    assert history(db, oid) == [("create", None, "open", cid),
                                ("accept_offer", "open", "in_progress", cid),
                                ("deliver", "in_progress", "delivered", second_user["id"]),
                                ("dispute", "delivered", "disputed", cid)]
    # A dispute is for staff to settle: neither side moves the order any more.
    customer.post(f"/api/v1/orders/{oid}/accept", status=409)
    second.post(f"/api/v1/orders/{oid}/deliver", {"message": "Again"}, status=409)
    second.post(f"/api/v1/orders/{oid}/dispute", {"reason": "Me too"}, status=409)


def snapshot_with_offers(db):
    return {**snapshot(db), "offers": db.execute("SELECT * FROM offers ORDER BY id").fetchall(),
            "order_deliveries": db.execute("SELECT * FROM order_deliveries ORDER BY id").fetchall()}


def test_offer_refusals_have_their_status_and_change_nothing(db, make_client, make_user, make_order, people):
    cust, perf = people["customer"]["user"], people["performer"]["user"]
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    rival_user = make_user("performer")
    rival = sign_in_api(make_client, rival_user, address="198.51.100.71")
    take_mode = make_order(cust)
    offers_mode = make_order(cust, mode="offers")
    other_offers = make_order(cust, mode="offers")
    ours = performer.post(f"/api/v1/orders/{offers_mode['id']}/offers",
                          {"price": 500, "days": 3, "message": "Mine"}, status=201).json
    theirs = rival.post(f"/api/v1/orders/{offers_mode['id']}/offers",
                        {"price": 700, "days": 2, "message": "Theirs"}, status=201).json
    elsewhere = rival.post(f"/api/v1/orders/{other_offers['id']}/offers",
                           {"price": 700, "days": 2, "message": "There"}, status=201).json
    stranger = sign_in_api(make_client, make_user("customer"), address="198.51.100.72")
    before = snapshot_with_offers(db)

    # 400: each bad field with its message
    errors = performer.post(f"/api/v1/orders/{offers_mode['id']}/offers",
                            {"price": 0, "days": 366, "message": " "}, status=400).json["errors"]
    assert errors == {"price": "The smallest allowed value is 1.", "days": "The largest allowed value is 365.",
                      "message": "This field is required."}
    errors = performer.post(f"/api/v1/orders/{offers_mode['id']}/offers",
                            {"price": "500", "days": 2.5, "message": "x" * 2001}, status=400).json["errors"]
    assert set(errors) == {"price", "days", "message"}
    assert set(performer.post(f"/api/v1/orders/{offers_mode['id']}/offers", status=400).json["errors"]) == {
        "price", "days", "message"}
    assert customer.post("/api/v1/orders", dict(NEW_ORDER, mode="auction"), status=400).json["errors"] == {
        "mode": "Choose one of the options."}
    # 403: the wrong person
    customer.post(f"/api/v1/orders/{offers_mode['id']}/offers", {"price": 5, "days": 1, "message": "x"}, status=403)
    customer.post(f"/api/v1/orders/{offers_mode['id']}/offers/withdraw", status=403)
    refused = performer.post(f"/api/v1/orders/{offers_mode['id']}/offers/{theirs['id']}/accept", status=403).json
    assert refused["detail"] == "This action is not available for your account."
    stranger.post(f"/api/v1/orders/{offers_mode['id']}/offers/{theirs['id']}/accept", status=403)
    # 404: unknown orders and offers, and an offer of another order
    performer.post("/api/v1/orders/999999/offers", {"price": 5, "days": 1, "message": "x"}, status=404)
    customer.post(f"/api/v1/orders/{offers_mode['id']}/offers/999999/accept", status=404)
    customer.post(f"/api/v1/orders/{offers_mode['id']}/offers/{elsewhere['id']}/accept", status=404)
    Api(make_client("198.51.100.73")).get("/api/v1/orders/999999/offers", status=404)
    # 409: the wrong mode or state
    conflict = performer.post(f"/api/v1/orders/{take_mode['id']}/offers",
                              {"price": 5, "days": 1, "message": "x"}, status=409).json
    assert "takes no offers" in conflict["detail"]
    performer.post(f"/api/v1/orders/{take_mode['id']}/offers", {"price": 0}, status=409)  # bad input too
    performer.post(f"/api/v1/orders/{take_mode['id']}/offers/withdraw", status=409)
    performer.post(f"/api/v1/orders/{other_offers['id']}/offers/withdraw", status=409)  # no offer there
    performer.post(f"/api/v1/orders/{offers_mode['id']}/take", status=409)
    assert snapshot_with_offers(db) == before

    # A second accept, of the same offer or another one, is too late.
    customer.post(f"/api/v1/orders/{offers_mode['id']}/offers/{ours['id']}/accept")
    after = snapshot_with_offers(db)
    late = customer.post(f"/api/v1/orders/{offers_mode['id']}/offers/{theirs['id']}/accept", status=409).json
    assert "already accepted" in late["detail"]
    customer.post(f"/api/v1/orders/{offers_mode['id']}/offers/{ours['id']}/accept", status=409)
    rival.post(f"/api/v1/orders/{offers_mode['id']}/offers", {"price": 5, "days": 1, "message": "x"}, status=409)
    rival.post(f"/api/v1/orders/{offers_mode['id']}/offers/withdraw", status=409)
    assert snapshot_with_offers(db) == after
    assert offer_rows(db, offers_mode["id"]) == [(perf["id"], 500, 3, "accepted"), (rival_user["id"], 700, 2, "declined")]


def test_the_customer_edits_the_mode_through_the_api_until_an_offer_is_active(db, make_client, people):
    cid = people["customer"]["user"]["id"]
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    oid = customer.post("/api/v1/orders", dict(NEW_ORDER, deadline="2999-01-01"), status=201).json["id"]
    edited = customer.post(f"/api/v1/orders/{oid}/edit", {"mode": "offers"}).json
    assert edited["mode"] == "offers" and edited["title"] == NEW_ORDER["title"] and edited["deadline"] == "2999-01-01"
    assert order_row(db, oid)["mode"] == "offers"
    assert history(db, oid)[-1] == ("change_mode", "open", "open", cid)
    renamed = customer.post(f"/api/v1/orders/{oid}/edit", {"title": "Logo, round", "deadline": None}).json
    assert (renamed["title"], renamed["deadline"], renamed["mode"]) == ("Logo, round", None, "offers")
    assert customer.post(f"/api/v1/orders/{oid}/edit", {"mode": "bid", "budget": 0}, status=400).json["errors"] == {
        "mode": "Choose one of the options.", "budget": "The smallest allowed value is 1."}
    performer.post(f"/api/v1/orders/{oid}/edit", {"mode": "take"}, status=403)

    performer.post(f"/api/v1/orders/{oid}/offers", {"price": 100, "days": 1, "message": "Me"}, status=201)
    refused = customer.post(f"/api/v1/orders/{oid}/edit", {"mode": "take"}, status=409).json
    assert "no active offers" in refused["detail"]
    assert order_row(db, oid)["mode"] == "offers"
    performer.post(f"/api/v1/orders/{oid}/offers/withdraw")
    assert customer.post(f"/api/v1/orders/{oid}/edit", {"mode": "take"}).json["mode"] == "take"
    assert performer.post(f"/api/v1/orders/{oid}/take").json["status"] == "in_progress"
    customer.post(f"/api/v1/orders/{oid}/edit", {"title": "Too late"}, status=409)
    customer.post("/api/v1/orders/999999/edit", {"title": "Nothing"}, status=404)


def test_withdrawing_an_order_and_cancelling_after_the_deadline_through_the_api(db, make_client, make_user,
                                                                                  make_order, people):
    cust, perf = people["customer"]["user"], people["performer"]["user"]
    customer = bearer(make_client, people["customer"]["token"])
    performer = bearer(make_client, people["performer"]["token"])
    order = make_order(cust, performer=perf, status="in_progress", deadline=datetime.date(2999, 1, 1))
    customer.post(f"/api/v1/orders/{order['id']}/withdraw", {"reason": "Not mine"}, status=403)
    assert set(performer.post(f"/api/v1/orders/{order['id']}/withdraw", status=400).json["errors"]) == {"reason"}
    back = performer.post(f"/api/v1/orders/{order['id']}/withdraw", {"reason": "I fell ill"}).json
    assert back["status"] == "open" and back["performer"] is None and back["agreed_price"] is None
    assert order_row(db, order["id"])["performer_id"] is None
    assert history(db, order["id"])[-1] == ("withdraw", "in_progress", "open", perf["id"])
    performer.post(f"/api/v1/orders/{order['id']}/withdraw", {"reason": "Again"}, status=403)  # no longer theirs

    late = make_order(cust, performer=perf, status="in_progress")
    conflict = customer.post(f"/api/v1/orders/{late['id']}/cancel", {"reason": "Slow"}, status=409).json
    assert "deadline has passed" in conflict["detail"]  # no deadline: the dispute is the way
    # The deadline passed (a DBA moves it; the guard allows no app to do so on an order in progress).
    db.execute("ALTER TABLE orders DISABLE TRIGGER orders_guard_transition")
    try:
        db.execute("UPDATE orders SET deadline = current_date - 1 WHERE id = %s", (late["id"],))
    finally:
        db.execute("ALTER TABLE orders ENABLE TRIGGER orders_guard_transition")
    performer.post(f"/api/v1/orders/{late['id']}/cancel", {"reason": "Mine"}, status=403)
    cancelled = customer.post(f"/api/v1/orders/{late['id']}/cancel", {"reason": "Too late"}).json
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "Too late"
    assert order_row(db, late["id"])["status"] == "cancelled"
