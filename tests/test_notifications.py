"""Notifications through HTTP (SPEC §11): the page in keyset pages, newest first, links to the
order, marking one or all read, the count in the header."""
import re

import pytest

from conftest import text_of


@pytest.fixture
def customer(make_user, make_client, sign_in):
    user = make_user("customer", name="Anna")
    return user, sign_in(make_client("198.51.100.70"), user)


def add_notifications(db, user, order, count, kind="order_rated"):
    db.execute("INSERT INTO notifications (user_id, kind, order_id, params) "
               "SELECT %s, %s, %s, jsonb_build_object('rating', n %% 10 + 1) FROM generate_series(1, %s) AS n",
               (user["id"], kind, order["id"], count))


def unread_in_header(page):
    found = re.search(r'href="/notifications"[^>]*>Notifications(?: <span class="badge unread-count"[^>]*>(\d+)</span>)?',
                      page.text)
    return int(found.group(1) or 0)


def test_the_page_lists_newest_first_in_keyset_pages_with_a_link_to_the_order(db, customer, make_user, make_order):
    user, browser = customer
    performer = make_user("performer", name="Vera")
    order = make_order(user, title="Logo for a bakery")
    add_notifications(db, user, order, 33)
    db.execute("SET birzha.actor_id = ''")
    db.execute("UPDATE orders SET status = 'in_progress', performer_id = %s, agreed_price = budget WHERE id = %s",
               (performer["id"], order["id"]))  # the 34th: taken
    newest = db.execute("SELECT max(id) AS id FROM notifications").fetchone()["id"]

    first = browser.get("/notifications")
    ids = [int(n) for n in re.findall(r'id="n(\d+)"', first.text)]
    assert len(ids) == 30 and ids == sorted(ids, reverse=True) and ids[0] == newest
    assert "Vera took your order “Logo for a bakery”." in text_of(first)
    assert f'href="/orders/{order["id"]}"' in first.text
    next_url = re.search(r'href="(/notifications\?after=\d+)"', first.text).group(1)
    second = browser.get(next_url)
    rest = [int(n) for n in re.findall(r'id="n(\d+)"', second.text)]
    assert len(rest) == 4 and max(rest) < min(ids) and 'href="/notifications?after=' not in second.text
    # A notification inserted meanwhile does not shift the second page.
    add_notifications(db, user, order, 1)
    assert [int(n) for n in re.findall(r'id="n(\d+)"', browser.get(next_url).text)] == rest
    assert browser.get("/notifications?after=abc", status=400).status_int == 400


def test_marking_one_or_all_read_updates_the_count_in_the_header(db, customer, make_order, make_user, make_client, sign_in):
    user, browser = customer
    order = make_order(user)
    add_notifications(db, user, order, 3)
    assert unread_in_header(browser.get("/")) == 3
    first, second, third = [row["id"] for row in db.execute("SELECT id FROM notifications ORDER BY id")]
    assert browser.post_form("/notifications/read", {"id": str(second)}).status_int == 303
    assert unread_in_header(browser.get("/")) == 2
    assert browser.post_form("/notifications/read", {"id": str(second)}).status_int == 303  # read already: fine
    assert db.execute("SELECT read_at IS NOT NULL AS read FROM notifications WHERE id = %s", (second,)).fetchone()["read"]

    # Someone else's notification: 404, and it stays unread.
    stranger = sign_in(make_client("198.51.100.71"), make_user("customer"))
    assert stranger.post_form("/notifications/read", {"id": str(first)}, status=404).status_int == 404
    assert stranger.post_form("/notifications/read", {"id": "x"}, status=400).status_int == 400
    assert "Mark all as read" not in stranger.get("/notifications").text
    assert db.execute("SELECT count(*) AS n FROM notifications WHERE read_at IS NULL").fetchone()["n"] == 2
    assert browser.post_form("/notifications/read", {"id": str(first)}, csrf=False, status=403).status_int == 403

    page = browser.post_form("/notifications/read", {}).follow()
    assert "All notifications are marked as read." in page.text and unread_in_header(page) == 0
    assert db.execute("SELECT count(*) AS n FROM notifications WHERE read_at IS NULL").fetchone()["n"] == 0
    assert third  # every one of them


def test_reading_a_conversation_reads_its_message_notifications(db, make_user, make_client, sign_in, make_order):
    customer = make_user("customer")
    performer = make_user("performer")
    customer_browser = sign_in(make_client("198.51.100.72"), customer)
    performer_browser = sign_in(make_client("198.51.100.73"), performer)
    order = make_order(customer)
    for n in range(2):
        performer_browser.post_form(f"/orders/{order['id']}/messages", {"body": f"Question {n}"})
    page = customer_browser.get("/notifications")
    assert text_of(page).count(f"{performer['name']} wrote about") == 2
    assert f'href="/orders/{order["id"]}/messages?with={performer["id"]}"' in page.text
    assert unread_in_header(page) == 2
    customer_browser.get(f"/orders/{order['id']}/messages?with={performer['id']}")
    assert unread_in_header(customer_browser.get("/")) == 0


def test_guests_are_sent_to_sign_in(client):
    assert client.get("/notifications", status=303).headers["Location"].endswith("/login?next=/notifications")


def test_opening_the_order_reads_its_notifications_but_not_its_messages(db, customer, make_user, make_client,
                                                                          sign_in, make_order):
    user, browser = customer
    performer = make_user("performer", name="Vera")
    order, other = make_order(user, title="Logo for a bakery"), make_order(user, title="Other order")
    add_notifications(db, user, order, 2)
    add_notifications(db, user, other, 1)
    sign_in(make_client("198.51.100.74"), performer).post_form(f"/orders/{order['id']}/messages", {"body": "Question"})
    assert unread_in_header(browser.get("/")) == 4
    page = browser.get(f"/orders/{order['id']}")
    assert unread_in_header(page) == 2  # the header already counts what the page has read
    unread = db.execute("SELECT kind, order_id FROM notifications WHERE read_at IS NULL ORDER BY id").fetchall()
    assert unread == [{"kind": "order_rated", "order_id": other["id"]},
                      {"kind": "message_received", "order_id": order["id"]}]
    make_client("198.51.100.75").get(f"/orders/{other['id']}")  # a guest reads nothing of anyone's
    assert unread_in_header(browser.get("/")) == 2
