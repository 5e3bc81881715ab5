"""The database's rules for conversations, files, notifications, the mail outbox and password
resets (SPEC §10-11), in SQL as a DBA in psql would meet them: the rules hold without the app."""
import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from db import Q
from web import token_hash

SHA = "ab" * 32


def refused(db, sql, params=()):
    """True when PostgreSQL refuses the statement (and the failed statement changed nothing)."""
    try:
        with db.transaction():
            db.execute(sql, params)
    except psycopg.Error:
        return True
    return False


def act(db, actor, query, note="", staff=False, **params):
    """A named query in one transaction, as `actor` (None: the system) with a note."""
    with db.transaction():
        db.execute(Q["actor_set"], {"actor_id": str(actor or ""), "note": note, "staff": staff})
        return db.execute(Q[query], params).fetchone()


def open_conversation(db, order, performer):
    return db.execute("INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s) "
                      "RETURNING *", (order["id"], order["customer_id"], performer["id"])).fetchone()


def write(db, conversation, sender, body="Hello"):
    return db.execute("INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, %s) RETURNING *",
                      (conversation["id"], sender["id"], body)).fetchone()


def conversation_row(db, conversation):
    return db.execute("SELECT * FROM conversations WHERE id = %s", (conversation["id"],)).fetchone()


def counters(db, user):
    return db.execute("SELECT unread_messages, unread_notifications FROM user_counters WHERE user_id = %s",
                      (user["id"],)).fetchone()


def audit(db):
    return db.execute("SELECT * FROM audit_counters()").fetchall()


@pytest.fixture
def people(make_user):
    return {"customer": make_user("customer"), "other_customer": make_user("customer"),
            "performer": make_user("performer"), "other_performer": make_user("performer")}


# ---------------------------------------------------------------------------------------------
# Conversations: who may open one, who may write, and when

def test_any_performer_opens_a_conversation_on_an_open_order_and_after_the_take_only_the_assigned_one_goes_on(
        db, people, make_user, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer)
    mine, theirs = open_conversation(db, order, performer), open_conversation(db, order, other)
    write(db, mine, performer, "Is a vector file fine?")
    write(db, theirs, other, "I can start today")
    write(db, theirs, customer, "Thanks, what is your price?")
    assert act(db, performer["id"], "order_take", order_id=order["id"], performer_id=performer["id"])

    write(db, mine, customer, "Welcome aboard")  # the assigned performer's conversation goes on
    write(db, mine, performer, "Starting now")
    assert refused(db, "INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, 'Still there?')",
                   (theirs["id"], other["id"]))
    assert refused(db, "INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, 'Sorry, taken')",
                   (theirs["id"], customer["id"]))
    late = make_user("performer")
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s)",
                   (order["id"], customer["id"], late["id"]))
    assert conversation_row(db, mine)["message_count"] == 3
    assert conversation_row(db, theirs)["message_count"] == 2


def test_a_conversation_is_with_the_orders_own_customer_and_a_performer_who_is_not_blocked(db, people, make_user, make_order):
    order = make_order(people["customer"])
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s)",
                   (order["id"], people["other_customer"]["id"], people["performer"]["id"]))
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s)",
                   (order["id"], order["customer_id"], people["other_customer"]["id"]))  # not a performer
    blocked = make_user("performer", blocked=True)
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s)",
                   (order["id"], order["customer_id"], blocked["id"]))
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s)",
                   (order["id"], order["customer_id"], people["performer"]["id"])) is False
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id) VALUES (%s, %s, %s)",
                   (order["id"], order["customer_id"], people["performer"]["id"]))  # one per performer


def test_only_the_two_people_write_and_what_is_written_stays(db, people, make_user, make_order):
    order = make_order(people["customer"])
    conversation = open_conversation(db, order, people["performer"])
    for stranger in (people["other_customer"], people["other_performer"]):
        assert refused(db, "INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, 'Hi')",
                       (conversation["id"], stranger["id"]))
    assert refused(db, "INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, '   ')",
                   (conversation["id"], people["performer"]["id"]))
    assert refused(db, "INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, %s)",
                   (conversation["id"], people["performer"]["id"], "x" * 5001))
    longest = write(db, conversation, people["performer"], "x" * 5000)
    assert longest["seq"] == 1
    assert refused(db, "UPDATE messages SET body = 'rewritten' WHERE id = %s", (longest["id"],))
    assert refused(db, "DELETE FROM messages WHERE id = %s", (longest["id"],))
    assert refused(db, "UPDATE conversations SET performer_id = %s WHERE id = %s",
                   (people["other_performer"]["id"], conversation["id"]))
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (people["performer"]["id"],))
    assert refused(db, "INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, 'Hi')",
                   (conversation["id"], people["performer"]["id"]))
    assert refused(db, "TRUNCATE messages")
    assert refused(db, "TRUNCATE conversations CASCADE")
    assert refused(db, "TRUNCATE notifications")


def test_messages_are_numbered_and_counted_unread_for_the_reader_until_read(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer)
    conversation = open_conversation(db, order, performer)
    for n in range(3):
        assert write(db, conversation, performer, f"Question {n}")["seq"] == n + 1
    row = conversation_row(db, conversation)
    assert (row["message_count"], row["customer_unread"], row["performer_unread"]) == (3, 3, 0)
    assert counters(db, customer)["unread_messages"] == 3
    assert counters(db, performer)["unread_messages"] == 0

    db.execute("UPDATE conversations SET customer_read_seq = 2 WHERE id = %s", (conversation["id"],))
    assert conversation_row(db, conversation)["customer_unread"] == 1
    assert counters(db, customer)["unread_messages"] == 1
    db.execute("UPDATE conversations SET customer_read_seq = 1 WHERE id = %s", (conversation["id"],))  # never back
    assert conversation_row(db, conversation)["customer_read_seq"] == 2
    write(db, conversation, customer, "Answer")
    assert counters(db, performer)["unread_messages"] == 1
    db.execute("UPDATE conversations SET customer_read_seq = message_count, performer_read_seq = message_count "
               "WHERE id = %s", (conversation["id"],))
    assert counters(db, customer)["unread_messages"] == 0 and counters(db, performer)["unread_messages"] == 0
    assert audit(db) == []


def test_unread_counts_stay_exact_under_concurrent_messages_and_reads(db, db_url, people, make_order):
    """Four writers on both sides of two conversations and two readers, all at once."""
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer)
    first, second = open_conversation(db, order, performer), open_conversation(db, order, other)
    start = threading.Barrier(6)
    errors = []

    def writer(conversation, sender):
        def run():
            with psycopg.connect(db_url, autocommit=True) as connection:
                start.wait()
                for n in range(40):
                    connection.execute("INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, %s)",
                                       (conversation["id"], sender["id"], f"message {n}"))
        return run

    def reader(column):
        def run():
            with psycopg.connect(db_url, autocommit=True) as connection:
                start.wait()
                for _ in range(40):
                    for conversation in (first, second):
                        connection.execute(f"UPDATE conversations SET {column} = message_count WHERE id = %s",
                                           (conversation["id"],))
        return run

    def guarded(job):
        def run():
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    jobs = [writer(first, performer), writer(first, customer), writer(second, other), writer(second, customer),
            reader("customer_read_seq"), reader("performer_read_seq")]
    threads = [threading.Thread(target=guarded(job)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert audit(db) == []
    seqs = db.execute("SELECT conversation_id, array_agg(seq ORDER BY seq) AS seqs FROM messages GROUP BY 1").fetchall()
    assert all(row["seqs"] == list(range(1, 81)) for row in seqs)
    notifications = db.execute("SELECT user_id, count(*) AS n FROM notifications WHERE kind = 'message_received' "
                               "GROUP BY user_id ORDER BY user_id").fetchall()
    assert {row["user_id"]: row["n"] for row in notifications} == {
        customer["id"]: 80, performer["id"]: 40, other["id"]: 40}


def test_a_drifted_unread_count_is_reported_and_repaired(db, people, make_order):
    order = make_order(people["customer"])
    conversation = open_conversation(db, order, people["performer"])
    write(db, conversation, people["performer"])
    db.execute("UPDATE conversations SET customer_unread = 7 WHERE id = %s", (conversation["id"],))
    db.execute("UPDATE user_counters SET unread_notifications = 0 WHERE user_id = %s", (people["customer"]["id"],))
    drift = {(row["counter"], row["subject_id"]): (row["stored"], row["actual"]) for row in audit(db)}
    assert drift == {("conversation.customer_unread", conversation["id"]): (7, 1),
                     ("user.unread_messages", people["customer"]["id"]): (7, 1),
                     ("user.unread_notifications", people["customer"]["id"]): (0, 1)}
    assert db.execute("SELECT recalc_counters() AS n").fetchone()["n"] == 3
    assert audit(db) == []


def test_a_conversation_keeps_its_last_message_for_the_inbox_and_a_drifted_one_is_reported_and_repaired(
        db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    conversation = open_conversation(db, make_order(customer), performer)
    last = lambda: tuple(conversation_row(db, conversation)[key] for key in ("last_message_excerpt", "last_sender_id"))
    assert last() == ("", None)
    write(db, conversation, performer, "A first question")
    write(db, conversation, customer, "Ответ " + "ж" * 300)
    assert last() == ("Ответ " + "ж" * 194, customer["id"])  # 200 characters, not bytes
    # a DBA cannot give a conversation a last sender it has not, or none when it has messages
    assert refused(db, "UPDATE conversations SET last_sender_id = %s WHERE id = %s",
                   (people["other_performer"]["id"], conversation["id"]))
    assert refused(db, "UPDATE conversations SET last_sender_id = NULL WHERE id = %s", (conversation["id"],))
    assert refused(db, "INSERT INTO conversations (order_id, customer_id, performer_id, last_sender_id, "
                       "last_message_excerpt) VALUES (%s, %s, %s, %s, 'Forged') RETURNING last_sender_id",
                   (make_order(customer)["id"], customer["id"], performer["id"], performer["id"])) is False
    forged = db.execute("SELECT last_sender_id, last_message_excerpt FROM conversations "
                        "WHERE customer_id = %s ORDER BY id DESC LIMIT 1", (customer["id"],)).fetchone()
    assert forged == {"last_sender_id": None, "last_message_excerpt": ""}  # a new one starts with none
    db.execute("UPDATE conversations SET last_message_excerpt = 'Edited', last_sender_id = %s WHERE id = %s",
               (performer["id"], conversation["id"]))
    drift = {row["counter"] for row in audit(db)}
    assert drift == {"conversation.last_message_excerpt", "conversation.last_sender_id"}
    assert db.execute("SELECT recalc_counters() AS n").fetchone()["n"] == 2
    assert audit(db) == [] and last() == ("Ответ " + "ж" * 194, customer["id"])


# ---------------------------------------------------------------------------------------------
# Files

def attach(db, message_id=None, delivery_id=None, uploader=None, position=1, name="a.png"):
    return db.execute("INSERT INTO files (sha256, size, name, content_type, uploader_id, message_id, delivery_id, position) "
                      "VALUES (%s, 10, %s, 'image/png', %s, %s, %s, %s) RETURNING id",
                      (SHA, name, uploader["id"], message_id, delivery_id, position)).fetchone()


def test_at_most_five_files_per_message_attached_by_its_sender_as_it_is_written(db, people, make_order):
    order = make_order(people["customer"])
    conversation = open_conversation(db, order, people["performer"])
    with db.transaction():
        message = write(db, conversation, people["performer"])
        for position in range(1, 6):
            attach(db, message_id=message["id"], uploader=people["performer"], position=position)
        with pytest.raises(psycopg.errors.CheckViolation):
            with db.transaction():
                attach(db, message_id=message["id"], uploader=people["performer"], position=6)
        with pytest.raises(psycopg.errors.UniqueViolation):
            with db.transaction():
                attach(db, message_id=message["id"], uploader=people["performer"], position=3)
        with pytest.raises(psycopg.errors.CheckViolation):
            with db.transaction():  # not the sender
                other = write(db, conversation, people["customer"])
                attach(db, message_id=other["id"], uploader=people["performer"], position=1)
    # Later, in another transaction: refused.
    assert refused(db, "INSERT INTO files (sha256, size, name, content_type, uploader_id, message_id, position) "
                       "VALUES (%s, 1, 'late.txt', 'text/plain', %s, %s, 1)",
                   (SHA, people["performer"]["id"], message["id"]))
    file_id = db.execute("SELECT id FROM files WHERE message_id = %s AND position = 1", (message["id"],)).fetchone()["id"]
    assert refused(db, "UPDATE files SET name = 'x.exe' WHERE id = %s", (file_id,))
    assert refused(db, "DELETE FROM files WHERE id = %s", (file_id,))
    for bad_name in ("../etc/passwd", "a\nb", ""):
        with db.transaction():
            message = write(db, conversation, people["performer"])
            assert refused(db, "INSERT INTO files (sha256, size, name, content_type, uploader_id, message_id, position) "
                               "VALUES (%s, 1, %s, 'text/plain', %s, %s, 1)",
                           (SHA, bad_name, people["performer"]["id"], message["id"]))
    assert db.execute("SELECT count(*) AS n FROM files").fetchone()["n"] == 5


def test_files_go_on_a_delivery_by_its_performer_as_the_work_is_handed_in(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer, performer=performer, status="in_progress")
    with db.transaction():
        delivery = db.execute(Q["order_deliver"], {"order_id": order["id"], "performer_id": performer["id"],
                                                   "message": "Done"}).fetchone()
        delivery_id = db.execute("SELECT id FROM order_deliveries WHERE order_id = %s", (order["id"],)).fetchone()["id"]
        assert delivery["id"] == order["id"]
        attach(db, delivery_id=delivery_id, uploader=performer)
        with pytest.raises(psycopg.errors.CheckViolation):
            with db.transaction():
                attach(db, delivery_id=delivery_id, uploader=customer, position=2)
    assert refused(db, "INSERT INTO files (sha256, size, name, content_type, uploader_id, delivery_id, position) "
                       "VALUES (%s, 1, 'late.txt', 'text/plain', %s, %s, 2)", (SHA, performer["id"], delivery_id))


# ---------------------------------------------------------------------------------------------
# Notifications: one per event and person, and mail for those who want it

def notified_since(db, last_id):
    return [(row["user_id"], row["kind"]) for row in db.execute(
        "SELECT user_id, kind FROM notifications WHERE id > %s ORDER BY user_id, kind", (last_id,))]


def last_notification(db):
    return db.execute("SELECT coalesce(max(id), 0) AS id FROM notifications").fetchone()["id"]


def test_every_event_notifies_exactly_the_people_it_concerns(db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    c, p, o = customer["id"], performer["id"], other["id"]
    steps = []

    def step(expected, actor, query, note="", staff=False, **params):
        before = last_notification(db)
        act(db, actor, query, note=note, staff=staff, **params)
        steps.append(query)
        assert notified_since(db, before) == sorted(expected), query

    offers_order = make_order(customer, mode="offers")
    oid = offers_order["id"]
    step([(c, "offer_received")], p, "offer_submit", order_id=oid, performer_id=p, price=900, days=3, message="Me")
    step([(c, "offer_received")], o, "offer_submit", order_id=oid, performer_id=o, price=800, days=5, message="Me too")
    step([], o, "offer_submit", order_id=oid, performer_id=o, price=700, days=5, message="Cheaper")  # a change
    offer = db.execute("SELECT id FROM offers WHERE order_id = %s AND performer_id = %s AND status = 'active'",
                       (oid, p)).fetchone()
    step([(p, "offer_accepted"), (o, "offer_declined")], c, "offer_accept", order_id=oid, offer_id=offer["id"],
         customer_id=c)
    step([(c, "order_delivered")], p, "order_deliver", order_id=oid, performer_id=p, message="Here")
    step([(p, "revision_requested")], c, "order_revision", note="Bigger font", order_id=oid, customer_id=c)
    step([(c, "order_delivered")], p, "order_deliver", order_id=oid, performer_id=p, message="Again")
    step([(p, "work_accepted")], c, "order_accept", order_id=oid, customer_id=c, rating=9, review="Great")
    assert db.execute("SELECT params FROM notifications WHERE kind = 'work_accepted'").fetchone()["params"] == {"rating": 9}

    take_order = make_order(customer)
    tid = take_order["id"]
    step([(c, "order_taken")], p, "order_take", order_id=tid, performer_id=p)
    step([(c, "order_delivered")], p, "order_deliver", order_id=tid, performer_id=p, message="Here")
    step([(p, "work_accepted")], c, "order_accept", order_id=tid, customer_id=c, rating=None, review="")
    step([(p, "order_rated")], c, "order_rate", order_id=tid, customer_id=c, rating=7, review="")

    auto = make_order(customer, performer=performer, status="delivered")
    step([(p, "work_auto_accepted")], None, "orders_auto_accept", days=0)
    assert db.execute("SELECT status FROM orders WHERE id = %s", (auto["id"],)).fetchone()["status"] == "done"

    disputed = make_order(customer, performer=performer, status="in_progress")
    step([(p, "dispute_opened")], c, "order_dispute", note="Nothing happens", order_id=disputed["id"], user_id=c)
    staff = people["other_customer"]
    db.execute("UPDATE users SET is_staff = true WHERE id = %s", (staff["id"],))
    step([(c, "dispute_resolved"), (p, "dispute_resolved")], staff["id"], "admin_order_resolve", note="Refund",
         staff=True, order_id=disputed["id"], staff_id=staff["id"], outcome="cancelled", reason="Refund")
    assert db.execute("SELECT params FROM notifications WHERE kind = 'dispute_resolved' LIMIT 1").fetchone()["params"] == {
        "outcome": "cancelled"}
    by_performer = make_order(customer, performer=performer, status="delivered")
    step([(c, "dispute_opened")], p, "order_dispute", note="No answer", order_id=by_performer["id"], user_id=p)
    assert db.execute("SELECT params FROM notifications WHERE kind = 'dispute_opened' ORDER BY id DESC LIMIT 1"
                      ).fetchone()["params"] == {"by_name": performer["name"], "reason": "No answer"}

    # Nothing else notifies: a cancel, a withdrawal, an offer withdrawn.
    quiet = make_order(customer, performer=performer, status="in_progress")
    step([], p, "order_withdraw", note="Too busy", order_id=quiet["id"], performer_id=p)
    step([], c, "order_cancel", order_id=quiet["id"], actor_id=c, reason="")

    # Every notification of a user who wants mail is in the outbox exactly once.
    mail = db.execute("SELECT n.id FROM notifications n JOIN mail_outbox m ON m.notification_id = n.id ORDER BY n.id").fetchall()
    assert [row["id"] for row in mail] == [row["id"] for row in db.execute("SELECT id FROM notifications ORDER BY id")]
    unread = {row["user_id"]: row["n"] for row in db.execute(
        "SELECT user_id, count(*) AS n FROM notifications WHERE read_at IS NULL GROUP BY 1")}
    for user in (customer, performer, other):
        assert counters(db, user)["unread_notifications"] == unread.get(user["id"], 0)


def test_a_user_who_turned_mail_off_is_notified_but_not_mailed(db, people, make_order):
    db.execute("UPDATE users SET email_notifications = false WHERE id = %s", (people["customer"]["id"],))
    order = make_order(people["customer"])
    act(db, people["performer"]["id"], "order_take", order_id=order["id"], performer_id=people["performer"]["id"])
    assert notified_since(db, 0) == [(people["customer"]["id"], "order_taken")]
    assert db.execute("SELECT count(*) AS n FROM mail_outbox").fetchone()["n"] == 0


def test_notifications_are_only_marked_read_once_and_the_count_follows(db, people, make_order):
    customer = people["customer"]
    for _ in range(3):
        order = make_order(customer)
        act(db, people["performer"]["id"], "order_take", order_id=order["id"], performer_id=people["performer"]["id"])
    assert counters(db, customer)["unread_notifications"] == 3
    first = db.execute("SELECT id FROM notifications ORDER BY id LIMIT 1").fetchone()["id"]
    db.execute("UPDATE notifications SET read_at = now() WHERE id = %s", (first,))
    assert counters(db, customer)["unread_notifications"] == 2
    assert refused(db, "UPDATE notifications SET read_at = NULL WHERE id = %s", (first,))
    assert refused(db, "UPDATE notifications SET kind = 'order_rated' WHERE id = %s", (first,))
    db.execute("UPDATE notifications SET read_at = now() WHERE user_id = %s AND read_at IS NULL", (customer["id"],))
    assert counters(db, customer)["unread_notifications"] == 0
    assert audit(db) == []


# ---------------------------------------------------------------------------------------------
# Password resets

def request_reset(db, email, address="203.0.113.1", token="tok"):
    with db.transaction():
        return db.execute("SELECT password_reset_request(%s, %s, %s) AS wait", (email, address, token)).fetchone()["wait"]


def test_a_reset_request_stores_only_the_hash_and_queues_one_mail_and_an_unknown_email_the_same_answer(db, people):
    user = people["customer"]
    assert request_reset(db, user["email"].upper(), token="secret-token-1") == 0
    reset = db.execute("SELECT * FROM password_resets").fetchone()
    assert reset["user_id"] == user["id"] and bytes(reset["token_hash"]) == token_hash("secret-token-1")
    assert reset["used_at"] is None and 3599 <= (reset["expires_at"] - reset["created_at"]).total_seconds() <= 3600
    mail = db.execute("SELECT * FROM mail_outbox").fetchall()
    assert [(m["user_id"], m["password_reset_id"], m["reset_token"]) for m in mail] == [
        (user["id"], reset["id"], "secret-token-1")]
    assert request_reset(db, "nobody@example.test", token="secret-token-2") == 0
    assert db.execute("SELECT count(*) AS n FROM password_resets").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM password_reset_requests").fetchone()["n"] == 2
    assert refused(db, "UPDATE password_resets SET expires_at = expires_at + interval '1 day'")
    db.execute("UPDATE password_resets SET used_at = now()")
    assert refused(db, "UPDATE password_resets SET used_at = NULL")
    assert refused(db, "INSERT INTO password_resets (user_id, token_hash, expires_at) "
                       "VALUES (%s, sha256('x'), now() + interval '2 hours')", (user["id"],))


def test_reset_requests_are_throttled_per_email_and_per_address_whether_or_not_the_email_exists(db, db_url, people):
    for email in (people["customer"]["email"], "ghost@example.test"):
        assert [request_reset(db, email, address=f"198.51.100.{n}", token=f"{email}{n}") for n in range(3)] == [0, 0, 0]
        assert request_reset(db, email, address="198.51.100.99", token=email + "x") > 3000
    answers = [request_reset(db, f"someone{n}@example.test", address="192.0.2.1", token=f"a{n}") for n in range(11)]
    assert answers[:10] == [0] * 10 and answers[10] > 3000
    with psycopg.connect(db_url, row_factory=dict_row) as connection:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            connection.execute("SELECT password_reset_request('a@b.cc', '1.2.3.4', 't')")


def test_the_demo_story_has_conversations_and_leaves_no_mail_to_send(db, capsys):
    import demo
    assert demo.seed(db) == 0
    assert db.execute("SELECT count(*) AS n FROM conversations").fetchone()["n"] == 2
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 4
    assert db.execute("SELECT count(*) AS n FROM notifications").fetchone()["n"] > 10
    assert db.execute("SELECT count(*) AS n FROM mail_outbox WHERE sent_at IS NULL").fetchone()["n"] == 0
    assert audit(db) == []
