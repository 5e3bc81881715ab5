"""Conversations, messages, files and notifications in the JSON API: the same rules as the pages,
every answer checked against the OpenAPI document (test_api.Api)."""
import pytest

import files
from test_api import Api, bearer, create_token
from test_talk import PNG, files_dir  # noqa: F401  (a fixture)


@pytest.fixture
def crew(make_user, make_client, sign_in):
    """People with a browser session and an API token each."""
    found = {}
    for n, (key, role, staff) in enumerate([("customer", "customer", False), ("performer", "performer", False),
                                            ("other_performer", "performer", False),
                                            ("other_customer", "customer", False), ("staff", "customer", True)]):
        user = make_user(role, staff=staff, name=key.replace("_", " ").title())
        browser = sign_in(make_client(f"198.51.100.{130 + n}"), user)
        found[key] = {"user": user, "browser": browser, "api": bearer(make_client, create_token(browser))}
    return found


def test_write_read_and_list_conversations_and_notifications_through_the_api(db, crew, make_order, files_dir):
    customer, performer = crew["customer"], crew["performer"]
    cid, pid = customer["user"]["id"], performer["user"]["id"]
    order = make_order(customer["user"], title="Logo")
    oid = order["id"]

    empty = performer["api"].get(f"/api/v1/orders/{oid}/messages").json
    assert empty == {"order_id": oid, "performer_id": pid, "conversation_id": None, "may_write": True,
                     "messages": [], "earlier": None}
    sent = performer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": "  Vector fine?  "}, status=201)
    assert sent.json["body"] == "Vector fine?" and sent.json["seq"] == 1 and sent.json["sender"]["id"] == pid
    assert sent.headers["Location"].endswith(f"/api/v1/orders/{oid}/messages")
    # A file comes through the HTML form; the API lists it and serves its bytes.
    performer["browser"].post_form(f"/orders/{oid}/messages", {"body": "The sketch"},
                                   upload_files=[("files", "sketch.png", PNG, "image/png")])

    listing = customer["api"].get("/api/v1/conversations").json
    assert [(item["order"]["id"], item["performer"]["id"], item["unread"], item["open"]) for item in listing["items"]] == [
        (oid, pid, 2, True)]
    thread = customer["api"].get(f"/api/v1/orders/{oid}/messages?with={pid}").json
    assert [m["body"] for m in thread["messages"]] == ["Vector fine?", "The sketch"]
    [attached] = thread["messages"][1]["files"]
    assert attached["name"] == "sketch.png" and attached["content_type"] == "image/png"
    download = customer["api"].client.get(attached["url"], headers={"Authorization": f"Bearer {customer['api'].token}"})
    assert download.body == PNG and download.headers["Content-Disposition"].startswith("attachment;")
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert customer["api"].get("/api/v1/conversations").json["items"][0]["unread"] == 0  # read now

    reply = customer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": "Yes", "with": pid}, status=201)
    assert reply.headers["Location"].endswith(f"/api/v1/orders/{oid}/messages?with={pid}")
    assert [m["sender"]["id"] for m in performer["api"].get(f"/api/v1/orders/{oid}/messages").json["messages"]] == [
        pid, pid, cid]
    # Through the session and its CSRF header too.
    Api(performer["browser"]).post(f"/api/v1/orders/{oid}/messages", {"body": "Thanks"}, status=201)
    Api(performer["browser"], csrf_header=False).post(f"/api/v1/orders/{oid}/messages", {"body": "x"}, status=403)

    notes = customer["api"].get("/api/v1/notifications").json
    assert notes["unread"] == 1 and notes["next"] is None  # the first two were read with the conversation
    assert [(n["kind"], n["order_id"], n["read_at"] is None) for n in notes["items"]] == [
        ("message_received", oid, True), ("message_received", oid, False), ("message_received", oid, False)]
    assert notes["items"][0]["url"] == f"/orders/{oid}/messages?with={pid}" and notes["items"][0]["detail"] == "Thanks"
    assert customer["api"].post("/api/v1/notifications/read", {"id": notes["items"][0]["id"]}).json == {"unread": 0}
    assert performer["api"].get("/api/v1/notifications").json["unread"] == 0  # read with the conversation
    for body in ("One more thing", "And another"):
        customer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": body, "with": pid}, status=201)
    assert performer["api"].get("/api/v1/notifications").json["unread"] == 2
    assert performer["api"].post("/api/v1/notifications/read", {}).json == {"unread": 0}
    assert db.execute("SELECT count(*) AS n FROM notifications WHERE read_at IS NULL").fetchone()["n"] == 0


def test_notification_pages_follow_next(db, crew, make_order):
    customer = crew["customer"]
    order = make_order(customer["user"])
    db.execute("INSERT INTO notifications (user_id, kind, order_id, params) "
               "SELECT %s, 'order_rated', %s, '{\"rating\": 5}' FROM generate_series(1, 35)",
               (customer["user"]["id"], order["id"]))
    first = customer["api"].get("/api/v1/notifications").json
    second = customer["api"].get(f"/api/v1/notifications?after={first['next']}").json
    assert len(first["items"]) == 30 and len(second["items"]) == 5 and second["next"] is None
    ids = [n["id"] for n in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 35
    customer["api"].get("/api/v1/notifications?after=x", status=400)


def test_strangers_get_403_or_404_for_every_conversation_message_and_file_in_the_api(db, crew, make_order, files_dir):
    customer, performer = crew["customer"], crew["performer"]
    order = make_order(customer["user"], performer=performer["user"], status="in_progress")
    oid, pid = order["id"], performer["user"]["id"]
    performer["browser"].post_form(f"/orders/{oid}/messages", {"body": "Secret"},
                                   upload_files=[("files", "s.txt", b"secret bytes", "text/plain")])
    file_id = db.execute("SELECT id FROM files").fetchone()["id"]
    note_id = db.execute("SELECT id FROM notifications").fetchone()["id"]
    for name in ("other_performer", "other_customer", "staff"):
        api = crew[name]["api"]
        for url in (f"/api/v1/orders/{oid}/messages", f"/api/v1/orders/{oid}/messages?with={pid}"):
            resp = api.get(url, status="*")
            assert resp.status_int in (403, 404) and "Secret" not in resp.text, (name, url)
        resp = api.post(f"/api/v1/orders/{oid}/messages", {"body": "Let me in", "with": pid}, status="*")
        assert resp.status_int in (403, 404), (name, resp.status)
        resp = api.client.get(f"/api/v1/files/{file_id}", headers={"Authorization": f"Bearer {api.token}"}, status=404)
        assert b"secret bytes" not in resp.body
        api.post("/api/v1/notifications/read", {"id": note_id}, status=404)
        assert all(item["order"]["id"] != oid for item in api.get("/api/v1/conversations").json["items"])
    guest = Api(crew["customer"]["browser"].__class__(crew["customer"]["browser"].app))
    guest.get(f"/api/v1/orders/{oid}/messages?with={pid}", status=401)
    guest.get("/api/v1/notifications", status=401)
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 1
    assert db.execute("SELECT read_at FROM notifications WHERE id = %s", (note_id,)).fetchone()["read_at"] is None


def test_bad_message_input_is_a_400_or_422_with_the_field(db, crew, make_order):
    customer, performer = crew["customer"], crew["performer"]
    order = make_order(customer["user"])
    oid = order["id"]
    assert performer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": " "}, status=400).json["errors"] == {
        "body": "This field is required."}
    assert "body" in performer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": "x" * 5001}, status=400).json["errors"]
    assert performer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": 5}, status=400).json["errors"] == {
        "body": "Enter the value as a JSON string."}
    # the document allows leaving `with` out, and says that its customer must not (422)
    assert customer["api"].post(f"/api/v1/orders/{oid}/messages", {"body": "Hi"}, status=422).json["errors"] == {
        "with": "This field is required."}
    customer["api"].get(f"/api/v1/orders/{oid}/messages", status=422)
    customer["api"].get(f"/api/v1/orders/{oid}/messages?with=abc", status=400)
    performer["api"].post(f"/api/v1/orders/{oid}/messages", raw=b"body=form", status=415,
                          content_type="application/x-www-form-urlencoded")
    performer["api"].post("/api/v1/orders/999999/messages", {"body": "Hi"}, status=404)
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    assert files.MAX_FILES == 5
