"""E-mail (SPEC §11): every event notifies the right person once and mails them once through a
real SMTP server on 127.0.0.1 (aiosmtpd), in their language, with a link back; a server that is
down leaves the mail pending for a later tick; two ticks at once send each mail once; with no
SMTP_URL the mail goes to the log."""
import asyncio
import email
import email.policy
import threading
import time
from collections import Counter

import psycopg
import pytest
from aiosmtpd.controller import Controller

import commands
import mail
from conftest import free_port
from db import Q

BASE_URL = "https://birzha.example"


class Inbox:
    """An SMTP server's handler that keeps what arrives; it can be slow, or refuse recipients."""

    def __init__(self):
        self.envelopes, self.delay, self.refused = [], 0.0, set()
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refused:
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    @property
    def messages(self):
        with self.lock:
            return [email.message_from_bytes(e.original_content or e.content, policy=email.policy.default)
                    for e in self.envelopes]


@pytest.fixture
def smtp(monkeypatch):
    """A real SMTP server on 127.0.0.1; SMTP_URL and BASE_URL point the tick at it."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("BASE_URL", BASE_URL)
    inbox.url = f"smtp://127.0.0.1:{port}"
    try:
        yield inbox
    finally:
        controller.stop()


def outbox(db):
    return db.execute("SELECT id, user_id, attempts, sent_at, failed_at, last_error, next_attempt_at > now() AS later "
                      "FROM mail_outbox ORDER BY id").fetchall()


def to_addresses(messages):
    return Counter(message["To"].addresses[0].addr_spec for message in messages)


def as_system(db, query, **params):
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": "", "note": "", "staff": False})
        return db.execute(Q[query], params).fetchone()


# ---------------------------------------------------------------------------------------------
# Every event, end to end

def test_every_event_notifies_the_right_person_once_and_mails_them_once_in_their_language(
        db, db_url, make_user, make_client, sign_in, make_order, smtp):
    customer = make_user("customer", name="Anna")
    performer = make_user("performer", name="Вера")
    quiet = make_user("performer", name="Gleb")
    staff = make_user("customer", staff=True, name="Staff")
    anna = sign_in(make_client("198.51.100.80"), customer)
    vera = sign_in(make_client("198.51.100.81"), performer)
    gleb = sign_in(make_client("198.51.100.82"), quiet)
    anna.get("/lang/en?next=/")  # Anna reads English: her mail comes in English
    vera.get("/lang/ru?next=/")
    assert gleb.post_form("/profile/email", {}).status_int == 303  # Gleb wants no mail
    c, p, g = customer["id"], performer["id"], quiet["id"]

    def expect(*pairs):
        return Counter(pairs)

    seen = Counter()

    def step(action, expected):
        before = db.execute("SELECT coalesce(max(id), 0) AS id FROM notifications").fetchone()["id"]
        action()
        got = Counter((row["user_id"], row["kind"]) for row in db.execute(
            "SELECT user_id, kind FROM notifications WHERE id > %s", (before,)))
        assert got == expected, (action, got)
        seen.update(got)

    def ok(resp):
        assert resp.status_int == 303, resp.text[:2000]

    offers = make_order(customer, mode="offers", title="Logo")
    oid = offers["id"]
    step(lambda: ok(vera.post_form(f"/orders/{oid}/offers", {"price": "900", "days": "3", "message": "Me"})),
         expect((c, "offer_received")))
    step(lambda: ok(gleb.post_form(f"/orders/{oid}/offers", {"price": "800", "days": "5", "message": "Me too"})),
         expect((c, "offer_received")))
    offer = db.execute("SELECT id FROM offers WHERE performer_id = %s", (p,)).fetchone()["id"]
    step(lambda: ok(anna.post_form(f"/orders/{oid}/offers/{offer}/accept")),
         expect((p, "offer_accepted"), (g, "offer_declined")))
    step(lambda: ok(vera.post_form(f"/orders/{oid}/messages", {"body": "Привет! Начинаю."})),
         expect((c, "message_received")))
    step(lambda: ok(anna.post_form(f"/orders/{oid}/messages", {"body": "Great", "with": str(p)})),
         expect((p, "message_received")))
    step(lambda: ok(vera.post_form(f"/orders/{oid}/deliver", {"message": "Готово"})), expect((c, "order_delivered")))
    step(lambda: ok(anna.post_form(f"/orders/{oid}/revision", {"reason": "Bigger"})), expect((p, "revision_requested")))
    step(lambda: ok(vera.post_form(f"/orders/{oid}/deliver", {"message": "Крупнее"})), expect((c, "order_delivered")))
    step(lambda: ok(anna.post_form(f"/orders/{oid}/accept", {})), expect((p, "work_accepted")))
    step(lambda: ok(anna.post_form(f"/orders/{oid}/rate", {"rating": "9", "review": "Fine"})), expect((p, "order_rated")))

    taken = make_order(customer, title="Banner")
    step(lambda: ok(gleb.post_form(f"/orders/{taken['id']}/take")), expect((c, "order_taken")))
    step(lambda: ok(gleb.post_form(f"/orders/{taken['id']}/deliver", {"message": "Done"})), expect((c, "order_delivered")))
    step(lambda: as_system(db, "orders_auto_accept", days=0), expect((g, "work_auto_accepted")))

    disputed = make_order(customer, title="Site")
    step(lambda: ok(vera.post_form(f"/orders/{disputed['id']}/take")), expect((c, "order_taken")))
    step(lambda: ok(anna.post_form(f"/orders/{disputed['id']}/dispute", {"reason": "Silence"})),
         expect((p, "dispute_opened")))

    def resolve():
        with db.transaction():
            db.execute(Q["actor_set"], {"actor_id": str(staff["id"]), "note": "Refund", "staff": True})
            db.execute(Q["admin_order_resolve"], {"order_id": disputed["id"], "staff_id": staff["id"],
                                                  "outcome": "cancelled", "reason": "Refund"})
    step(resolve, expect((c, "dispute_resolved"), (p, "dispute_resolved")))

    assert commands.tick(db_url) == 0
    messages = smtp.messages
    wanted = Counter(user for user, _kind in seen.elements() if user != g)
    assert to_addresses(messages) == Counter({customer["email"]: wanted[c], performer["email"]: wanted[p]})
    assert len(messages) == sum(wanted.values()) == db.execute(
        "SELECT count(*) AS n FROM mail_outbox WHERE sent_at IS NOT NULL").fetchone()["n"]
    by_subject = {message["Subject"]: message for message in messages}
    taken_mail = by_subject["Birzha: Gleb took your order “Banner”."]
    assert taken_mail["To"].addresses[0].addr_spec == customer["email"]
    body = taken_mail.get_content()
    assert body.startswith("Hello, Anna!") and f"{BASE_URL}/orders/{taken['id']}" in body
    assert f"{BASE_URL}/profile" in body and taken_mail.get_content_type() == "text/plain"
    accepted = by_subject["Биржа: Ваше предложение по заказу «Logo» принято: заказ ваш, можно начинать."]
    assert accepted["To"].addresses[0].addr_spec == performer["email"]
    assert accepted.get_content().startswith("Здравствуйте, Вера!")
    message_mail = next(m for m in messages if "wrote about" in m["Subject"])
    assert f"{BASE_URL}/orders/{oid}/messages?with={p}" in message_mail.get_content()
    assert "Привет! Начинаю." in message_mail.get_content()
    # A second tick finds nothing due.
    commands.tick(db_url)
    assert len(smtp.messages) == len(messages)


# ---------------------------------------------------------------------------------------------
# Failures, concurrency, the log

def queue_mail(db, make_user, make_order, count):
    """`count` notifications with mail: orders of one customer taken by one performer."""
    customer, performer = make_user("customer"), make_user("performer")
    for _n in range(count):
        order = make_order(customer)
        with db.transaction():
            db.execute(Q["actor_set"], {"actor_id": str(performer["id"]), "note": "", "staff": False})
            db.execute(Q["order_take"], {"order_id": order["id"], "performer_id": performer["id"]})
    return customer


def test_a_server_that_is_down_leaves_mail_pending_and_a_later_tick_sends_it(db, db_url, make_user, make_order,
                                                                              monkeypatch):
    customer = queue_mail(db, make_user, make_order, 3)
    port = free_port()  # nothing listens here yet
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{port}")
    assert commands.tick(db_url) == 0
    rows = outbox(db)
    assert [row["sent_at"] for row in rows] == [None] * 3 and all(row["failed_at"] is None for row in rows)
    assert [row["attempts"] for row in rows] == [1, 0, 0]  # the tick stopped at the first: the server is down
    assert rows[0]["later"] and "ConnectionRefused" in rows[0]["last_error"]
    commands.tick(db_url)  # the first is not due again yet; the others are tried and fail the same way
    assert [row["attempts"] for row in outbox(db)] == [1, 1, 0]

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        commands.tick(db_url)
        assert len(inbox.messages) == 1  # only the one that was never tried
        db.execute("UPDATE mail_outbox SET next_attempt_at = now() WHERE sent_at IS NULL")  # time passes
        commands.tick(db_url)
    finally:
        controller.stop()
    assert to_addresses(inbox.messages) == Counter({customer["email"]: 3})
    assert all(row["sent_at"] is not None and row["last_error"] is None for row in outbox(db))
    assert [row["attempts"] for row in outbox(db)] == [2, 2, 1]


def test_a_refused_recipient_is_given_up_and_temporary_failures_back_off(db, db_url, make_user, make_order, smtp):
    customer = queue_mail(db, make_user, make_order, 1)
    smtp.refused.add(customer["email"])
    assert mail.send_due(db_url) == {"sent": 0, "failed": 1, "retry": 0}
    [row] = outbox(db)
    assert row["failed_at"] is not None and row["sent_at"] is None and "550" in row["last_error"]
    assert mail.wait_after(1) == 60 and mail.wait_after(2) == 120 and mail.wait_after(4) == 480
    assert mail.wait_after(30) == mail.MAX_WAIT


def test_two_ticks_at_once_send_each_mail_once(db, db_url, make_user, make_order, smtp):
    customer = queue_mail(db, make_user, make_order, 24)
    smtp.delay = 0.05  # each mail takes a while, so the two ticks overlap
    outputs, errors = [], []
    start = threading.Barrier(2)

    def tick():
        try:
            start.wait()
            outputs.append(mail.send_due(db_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = [message["Message-ID"] for message in smtp.messages]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert to_addresses(smtp.messages) == Counter({customer["email"]: 24})
    assert sorted(output["sent"] for output in outputs) != [0, 24], outputs  # both took a share
    assert sum(output["sent"] for output in outputs) == 24


def test_with_no_smtp_url_the_mail_is_written_to_the_log_and_counts_as_sent(db, db_url, make_user, make_order,
                                                                            monkeypatch, capsys):
    monkeypatch.delenv("SMTP_URL", raising=False)
    customer = queue_mail(db, make_user, make_order, 2)
    assert commands.tick(db_url) == 0
    out = capsys.readouterr().out
    assert out.count(f"To: {customer['name']} <{customer['email']}>") == 2
    assert "mail: 2 sent" in out and "http://127.0.0.1:8080/orders/" in out
    assert all(row["sent_at"] is not None for row in outbox(db))


def test_mail_for_a_user_who_turned_it_off_after_the_event_is_not_sent(db, db_url, make_user, make_order, smtp):
    customer = queue_mail(db, make_user, make_order, 1)
    db.execute("UPDATE users SET email_notifications = false WHERE id = %s", (customer["id"],))
    commands.tick(db_url)
    assert smtp.messages == [] and outbox(db)[0]["failed_at"] is not None
