"""The database's own rules: the order state machine, constraints, history and counters.

These talk SQL directly, as a DBA in psql would: the rules must hold without the app.
"""
import collections
import datetime
import random
import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from db import Q

STATUSES = ("open", "in_progress", "delivered", "disputed", "done", "cancelled")
# The moves of SPEC §4, and what the history calls each when a person (not the system) makes it.
# In offers mode open -> in_progress takes an offer accepted in the same transaction as well:
# test_in_offers_mode_an_order_goes_in_progress_only_with_an_offer_accepted_in_the_same_transaction.
MOVES = {("open", "in_progress"): "take", ("open", "cancelled"): "cancel",
         ("in_progress", "delivered"): "deliver", ("in_progress", "open"): "reopen",
         ("in_progress", "cancelled"): "cancel", ("in_progress", "disputed"): "dispute",
         ("delivered", "done"): "accept", ("delivered", "in_progress"): "revision",
         ("delivered", "disputed"): "dispute",
         ("disputed", "done"): "resolve", ("disputed", "cancelled"): "resolve"}
# The time each move stamps (a revision stamps none: the order was taken and delivered before).
STAMPS = {"in_progress": "taken_at", "delivered": "delivered_at", "disputed": "disputed_at",
          "done": "completed_at", "cancelled": "cancelled_at"}
TIMES = ("taken_at", "delivered_at", "disputed_at", "completed_at", "cancelled_at", "rated_at")


@pytest.fixture
def people(make_user):
    return {"customer": make_user("customer"), "other_customer": make_user("customer"),
            "performer": make_user("performer"), "other_performer": make_user("performer"),
            "staff": make_user("customer", staff=True)}


def refusal(db, sql, params=(), *, actor=None, note=""):
    """The message PostgreSQL refuses the statement with, or None when it passes; a refused
    statement changes nothing. With `actor`, the statement acts as that user (as the app does)."""
    try:
        with db.transaction():
            if actor:
                act(db, actor, note)
            db.execute(sql, params)
    except psycopg.Error as err:
        return err.diag.message_primary or str(err)
    return None


def refused(db, sql, params=()):
    """True when PostgreSQL refuses the statement (and the failed statement changed nothing)."""
    return refusal(db, sql, params) is not None


def act(db, actor, note="", staff=False):
    """Who acts in the current transaction, for the history (None: the system)."""
    db.execute(Q["actor_set"], {"actor_id": str(actor["id"]) if actor else "", "note": note, "staff": staff})


def send_offer(db, order, performer, price=900, days=5, message="I can do it"):
    """A performer's offer through the app's query; returns its id."""
    return db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"],
                                          "price": price, "days": days, "message": message}).fetchone()["id"]


def order_row(db, order):
    return db.execute("SELECT * FROM orders WHERE id = %s", (order["id"],)).fetchone()


def offer_statuses(db, order):
    rows = db.execute("SELECT id, status FROM offers WHERE order_id = %s ORDER BY id", (order["id"],)).fetchall()
    return {r["id"]: r["status"] for r in rows}


def last_history(db, order):
    return db.execute("SELECT * FROM order_history WHERE order_id = %s ORDER BY id DESC LIMIT 1",
                      (order["id"],)).fetchone()


@pytest.mark.parametrize("source", STATUSES)
def test_only_the_transitions_of_the_spec_pass_a_direct_update(db, people, make_order, source):
    """From `source` to each other status, in both modes: a move of the spec passes with what it
    needs and is stamped and recorded; any other is refused by the state machine itself (the
    statement changes the status alone, so no other rule can be what refuses it)."""
    customer, performer = people["customer"], people["performer"]
    for target in STATUSES:
        if target == source:
            continue
        orders = [make_order(customer, performer=performer, status=source, mode=mode) for mode in ("take", "offers")]
        if source == "cancelled":  # cancelled while open too, never having had a performer
            orders += [make_order(customer, status="cancelled", mode=mode) for mode in ("take", "offers")]
        for order in orders:
            check_direct_move(db, customer, performer, order, target)


def check_direct_move(db, customer, performer, order, target):
    source = order["status"]
    where = f"{order['mode']} mode, {source} -> {target}, performer {order['performer_id']}"
    sets = "status = %(target)s"
    if (source, target) == ("open", "in_progress"):
        sets += ", performer_id = %(performer)s, agreed_price = budget"
    elif (source, target) == ("in_progress", "open"):
        sets += ", performer_id = NULL, agreed_price = NULL"
    message = refusal(db, f"UPDATE orders SET {sets} WHERE id = %(id)s",
                      {"target": target, "performer": performer["id"], "id": order["id"]}, actor=customer)
    after = order_row(db, order)
    if (source, target) == ("open", "in_progress") and order["mode"] == "offers":
        assert message and "only by accepting an offer" in message, where
    elif (source, target) not in MOVES:
        assert message == f"order {order['id']}: the transition {source} -> {target} is not allowed", where
    else:
        assert message is None, where
        history = last_history(db, order)
        assert (history["action"], history["from_status"], history["to_status"], history["actor_id"]) == (
            MOVES[source, target], source, target, customer["id"]), where
        stamp = None if (source, target) == ("delivered", "in_progress") else STAMPS.get(target)
        for column in TIMES:
            if column == stamp:
                assert after[column] is not None and after[column] != order[column], (where, column)
            elif (source, target, column) == ("in_progress", "open", "taken_at"):
                assert after[column] is None, where
            else:
                assert after[column] == order[column], (where, column)
    if message:
        assert after == order, where
    else:
        assert after["status"] == target, where


def test_in_offers_mode_an_order_goes_in_progress_only_with_an_offer_accepted_in_the_same_transaction(
        db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer, mode="offers", budget=1000)
    mine = send_offer(db, order, performer, price=800, days=5)
    theirs = send_offer(db, order, other, price=900, days=3)
    take = ("UPDATE orders SET status = 'in_progress', performer_id = %(performer)s, agreed_price = %(price)s, "
            "deadline = current_date + %(days)s WHERE id = %(id)s")
    terms = {"performer": performer["id"], "price": 800, "days": 5, "id": order["id"]}
    # A bare update is refused, even at the terms of an active offer, or at the budget as in take mode.
    assert "only by accepting an offer" in refusal(db, take, terms)
    assert "only by accepting an offer" in refusal(db, take, dict(terms, price=1000))
    # With the offer accepted in the same transaction, only its performer, price and days will do.
    for wrong in ({"price": 801}, {"days": 6}, {"performer": other["id"]}):
        with pytest.raises(psycopg.errors.CheckViolation, match="only by accepting an offer"):
            with db.transaction():
                db.execute("UPDATE offers SET status = 'accepted' WHERE id = %s", (mine,))
                db.execute(take, dict(terms, **wrong))
    assert order_row(db, order)["status"] == "open"
    assert offer_statuses(db, order) == {mine: "active", theirs: "active"}

    # order_accept_offer is that one step: the order at the offer's terms, the rest declined.
    assert db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": mine,
                                          "customer_id": customer["id"]}).fetchone()["id"] == order["id"]
    row = order_row(db, order)
    today = db.execute(Q["date_today"]).fetchone()["today"]
    assert (row["status"], row["performer_id"], row["agreed_price"], row["deadline"], row["offers_active"]) == (
        "in_progress", performer["id"], 800, today + datetime.timedelta(days=5), 0)
    assert row["taken_at"] is not None
    assert offer_statuses(db, order) == {mine: "accepted", theirs: "declined"}
    assert last_history(db, order)["action"] == "accept_offer"
    # A second accept finds the order taken.
    assert db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": theirs,
                                          "customer_id": customer["id"]}).fetchone()["id"] is None

    # A DBA may do by hand what the function does: accept the offer and take the order together.
    second = make_order(customer, mode="offers", budget=1000)
    offer = send_offer(db, second, other, price=700, days=2)
    with db.transaction():
        db.execute("UPDATE offers SET status = 'accepted' WHERE id = %s", (offer,))
        db.execute(take, {"performer": other["id"], "price": 700, "days": 2, "id": second["id"]})
    assert order_row(db, second)["agreed_price"] == 700

    # Take mode: taken at the budget, at no other price.
    taken = make_order(customer, budget=1000)
    for price in (999, 1001):
        assert "agreed at its budget" in refusal(
            db, "UPDATE orders SET status = 'in_progress', performer_id = %s, agreed_price = %s WHERE id = %s",
            (performer["id"], price, taken["id"]))
    assert order_row(db, taken)["status"] == "open"


def test_the_agreed_price_is_set_only_by_taking_and_cleared_only_by_giving_back(db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    orders = {status: make_order(customer, performer=performer, status=status, budget=1000)
              for status in ("in_progress", "delivered", "disputed", "done", "cancelled")}
    # Without a move, on every order that has one ...
    for status, order in orders.items():
        assert order["agreed_price"] == 1000
        assert "agreed price" in refusal(db, "UPDATE orders SET agreed_price = 1200 WHERE id = %s",
                                         (order["id"],)), status
    # ... with every move that keeps the performer, ...
    for (source, target) in MOVES:
        if source in orders and target != "open":
            assert "agreed price stays the same" in refusal(
                db, "UPDATE orders SET status = %s, agreed_price = 1200 WHERE id = %s",
                (target, orders[source]["id"])), (source, target)
    # ... or with a change of performer: the new one works at the agreed price.
    taken = orders["in_progress"]
    assert "agreed price" in refusal(db, "UPDATE orders SET performer_id = %s, agreed_price = 1200 WHERE id = %s",
                                     (other["id"], taken["id"]))
    assert not refused(db, "UPDATE orders SET performer_id = %s WHERE id = %s", (other["id"], taken["id"]))
    assert order_row(db, taken)["agreed_price"] == 1000
    # Given back, the order has none; taken again, it is agreed at the budget as it is then.
    assert "no performer and no agreed price" in refusal(
        db, "UPDATE orders SET status = 'open', performer_id = NULL WHERE id = %s", (taken["id"],))
    assert not refused(db, "UPDATE orders SET status = 'open', performer_id = NULL, agreed_price = NULL "
                           "WHERE id = %s", (taken["id"],))
    db.execute("UPDATE orders SET budget = 1500 WHERE id = %s", (taken["id"],))
    assert db.execute(Q["order_take"], {"order_id": taken["id"], "performer_id": performer["id"]}).rowcount == 1
    assert order_row(db, taken)["agreed_price"] == 1500
    # A cancel never sets one: an order cancelled while open had no performer and agreed nothing.
    open_order = make_order(customer)
    assert refused(db, "UPDATE orders SET status = 'cancelled', agreed_price = budget WHERE id = %s",
                   (open_order["id"],))


def test_the_mode_changes_only_while_the_order_is_open_without_an_active_offer(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer)
    to = "UPDATE orders SET mode = %s WHERE id = %s"
    assert not refused(db, to, ("offers", order["id"]))
    assert last_history(db, order)["action"] == "change_mode"
    send_offer(db, order, performer)
    assert "mode changes only" in refusal(db, to, ("take", order["id"]))
    # The offers decide, not their stored count: an offer sent in the same statement is counted only
    # at its end ...
    fresh = make_order(customer, mode="offers")
    assert "mode changes only" in refusal(
        db, "WITH sent AS (INSERT INTO offers (order_id, performer_id, price, days, message) "
            "                VALUES (%(id)s, %(p)s, 10, 1, 'Mine') RETURNING order_id) "
            "UPDATE orders SET mode = 'take' WHERE id = (SELECT order_id FROM sent)",
        {"id": fresh["id"], "p": performer["id"]})
    assert order_row(db, fresh)["mode"] == "offers" and offer_statuses(db, fresh) == {}
    # ... and a DBA may have put the count wrong.
    assert not refused(db, "UPDATE orders SET offers_active = 0 WHERE id = %s", (order["id"],))
    assert "mode changes only" in refusal(db, to, ("take", order["id"]))
    db.execute("SELECT recalc_counters()")
    # A withdrawn (or declined) offer is no obstacle.
    db.execute(Q["offer_withdraw"], {"order_id": order["id"], "performer_id": performer["id"]})
    assert not refused(db, to, ("take", order["id"]))
    # Not together with a move, nor after the order has left open, in either mode.
    assert "mode changes only" in refusal(db, "UPDATE orders SET status = 'cancelled', mode = 'offers' WHERE id = %s",
                                          (order["id"],))
    for mode in ("take", "offers"):
        for status in ("in_progress", "delivered", "disputed", "done", "cancelled"):
            other = make_order(customer, performer=performer, status=status, mode=mode)
            new_mode = "offers" if mode == "take" else "take"
            assert "mode changes only" in refusal(db, to, (new_mode, other["id"])), (mode, status)
            assert order_row(db, other)["mode"] == mode


def test_an_order_leaving_open_declines_its_active_offers(db, people, make_order, make_user):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    third = make_user("performer")
    # Accepted: the rest are declined; a withdrawn one stays withdrawn.
    order = make_order(customer, mode="offers")
    chosen, rival, gone = (send_offer(db, order, p) for p in (performer, other, third))
    db.execute(Q["offer_withdraw"], {"order_id": order["id"], "performer_id": third["id"]})
    assert order_row(db, order)["offers_active"] == 2
    db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": chosen, "customer_id": customer["id"]})
    assert offer_statuses(db, order) == {chosen: "accepted", rival: "declined", gone: "withdrawn"}
    assert order_row(db, order)["offers_active"] == 0
    # Cancelled: every active offer declined.
    cancelled = make_order(customer, mode="offers")
    offers = [send_offer(db, cancelled, p) for p in (performer, other)]
    db.execute(Q["order_cancel"], {"order_id": cancelled["id"], "actor_id": customer["id"], "reason": ""})
    assert offer_statuses(db, cancelled) == dict.fromkeys(offers, "declined")
    assert order_row(db, cancelled)["offers_active"] == 0
    # The offers decide, not their stored count: an offer sent in the very statement that moves the
    # order, counted only at its end, is declined too ...
    together = make_order(customer, mode="offers")
    db.execute("WITH sent AS (INSERT INTO offers (order_id, performer_id, price, days, message) "
               "              VALUES (%(id)s, %(p)s, 10, 1, 'Mine') RETURNING order_id) "
               "UPDATE orders SET status = 'cancelled' WHERE id = (SELECT order_id FROM sent)",
               {"id": together["id"], "p": performer["id"]})
    assert list(offer_statuses(db, together).values()) == ["declined"]
    # ... and with a count put wrong by a DBA the order does not leave open with an offer still
    # active (the count cannot go below zero) until the count is repaired.
    slipped = make_order(customer, mode="offers")
    offer = send_offer(db, slipped, performer)
    db.execute("UPDATE orders SET offers_active = 0 WHERE id = %s", (slipped["id"],))
    assert "orders_offers_active_check" in refusal(db, "UPDATE orders SET status = 'cancelled' WHERE id = %s",
                                                   (slipped["id"],))
    assert offer_statuses(db, slipped) == {offer: "active"} and order_row(db, slipped)["status"] == "open"
    db.execute("SELECT recalc_counters()")
    db.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s", (slipped["id"],))
    assert offer_statuses(db, slipped) == {offer: "declined"}
    assert db.execute("SELECT count(*) AS n FROM offers f JOIN orders o ON o.id = f.order_id "
                      "WHERE f.status = 'active' AND o.status <> 'open'").fetchone()["n"] == 0


def test_one_active_offer_per_performer_and_order(db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer, mode="offers")
    insert = ("INSERT INTO offers (order_id, performer_id, price, days, message) "
              "VALUES (%s, %s, 500, 3, 'Hello') RETURNING id")
    first = db.execute(insert, (order["id"], performer["id"])).fetchone()["id"]
    assert "offers_one_live_idx" in refusal(db, insert, (order["id"], performer["id"]))
    assert not refused(db, insert, (order["id"], other["id"]))
    # The app's query changes the active offer instead of adding one.
    row = db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"], "price": 450,
                                         "days": 2, "message": "Cheaper"}).fetchone()
    assert (row["id"], row["created"]) == (first, False)
    # Once it is withdrawn, the performer may send a new one.
    db.execute(Q["offer_withdraw"], {"order_id": order["id"], "performer_id": performer["id"]})
    assert not refused(db, insert, (order["id"], performer["id"]))
    counts = db.execute("SELECT status, count(*) AS n FROM offers WHERE order_id = %s GROUP BY status "
                        "ORDER BY status", (order["id"],)).fetchall()
    assert [(c["status"], c["n"]) for c in counts] == [("active", 2), ("withdrawn", 1)]
    assert order_row(db, order)["offers_active"] == 2


def test_offers_go_only_to_open_orders_in_offers_mode_from_performers_not_blocked(db, people, make_order, make_user):
    customer, performer = people["customer"], people["performer"]
    insert = ("INSERT INTO offers (order_id, performer_id, price, days, message, status) "
              "VALUES (%s, %s, 500, 3, 'Hello', %s)")
    targets = [make_order(customer)] + [make_order(customer, performer=people["other_performer"], status=status,
                                                   mode="offers")
                                        for status in ("in_progress", "delivered", "disputed", "done", "cancelled")]
    targets.append(make_order(customer, status="cancelled", mode="offers"))
    for order in targets:
        assert "only to open orders in offers mode" in refusal(db, insert, (order["id"], performer["id"], "active")), (
            order["mode"], order["status"])
        assert db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"], "price": 1,
                                              "days": 1, "message": "Hi"}).fetchone() is None
    open_order = make_order(customer, mode="offers")
    blocked = make_user("performer", blocked=True)
    assert "blocked performer" in refusal(db, insert, (open_order["id"], blocked["id"], "active"))
    for status in ("withdrawn", "accepted", "declined"):
        assert "a new offer is active" in refusal(db, insert, (open_order["id"], performer["id"], status))
    assert refused(db, insert, (open_order["id"], customer["id"], "active"))  # a customer makes no offers
    assert not refused(db, insert, (open_order["id"], performer["id"], "active"))
    assert list(offer_statuses(db, open_order).values()) == ["active"]


def test_an_offer_changes_is_withdrawn_or_accepted_only_while_its_order_is_open(db, people, make_order):
    """Leaving open declines every active offer, so for an active offer on an order that has left
    open the decline is switched off while the order is cancelled: the offer's own rule is left."""
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer, mode="offers")
    offer = send_offer(db, order, performer, price=500)
    with db.transaction():
        db.execute("ALTER TABLE orders DISABLE TRIGGER orders_decline_offers")
        db.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s", (order["id"],))
        db.execute("ALTER TABLE orders ENABLE TRIGGER orders_decline_offers")
    assert offer_statuses(db, order) == {offer: "active"}
    for change in ("price = 400", "days = 9", "message = 'Still here'", "status = 'withdrawn'",
                   "status = 'accepted'"):
        assert "only while the order is open" in refusal(db, f"UPDATE offers SET {change} WHERE id = %s",
                                                         (offer,)), change
    assert db.execute(Q["offer_withdraw"], {"order_id": order["id"],
                                            "performer_id": performer["id"]}).fetchone() is None
    assert db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": offer,
                                          "customer_id": customer["id"]}).fetchone()["id"] is None
    # Declining is what an order that has left open does to its offers.
    assert not refused(db, "UPDATE offers SET status = 'declined' WHERE id = %s", (offer,))
    # While the order is open, each of those passes.
    open_order = make_order(customer, mode="offers")
    for change in ("price = 400", "days = 9", "message = 'Changed'", "status = 'withdrawn'"):
        mine = send_offer(db, open_order, performer)
        assert not refused(db, f"UPDATE offers SET {change} WHERE id = %s", (mine,)), change
        db.execute("UPDATE offers SET status = 'withdrawn' WHERE id = %s AND status = 'active'", (mine,))


def test_a_settled_offer_never_changes(db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer, mode="offers")
    withdrawn = send_offer(db, order, performer)
    db.execute(Q["offer_withdraw"], {"order_id": order["id"], "performer_id": performer["id"]})
    accepted, declined = send_offer(db, order, performer), send_offer(db, order, other)
    db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": accepted, "customer_id": customer["id"]})
    settled = {withdrawn: "withdrawn", accepted: "accepted", declined: "declined"}
    assert offer_statuses(db, order) == settled
    for offer, status in settled.items():
        for change in ("price = price + 1", "days = days + 1", "message = 'Rewritten'", "status = 'active'",
                       "status = 'withdrawn'", "status = 'accepted'", "status = 'declined'", "updated_at = now()"):
            if change != f"status = '{status}'":
                assert f"a {status} offer never changes" in refusal(
                    db, f"UPDATE offers SET {change} WHERE id = %s", (offer,)), (status, change)
    assert offer_statuses(db, order) == settled
    # Nor does an offer settle and change its terms in one step, nor change its order or performer.
    fresh = make_order(customer, mode="offers")
    offer = send_offer(db, fresh, performer, price=500)
    for change in ("status = 'withdrawn', price = 1", "status = 'declined', price = 1",
                   "status = 'declined', message = 'Never offered'", "status = 'withdrawn', days = 1"):
        assert "not both" in refusal(db, f"UPDATE offers SET {change} WHERE id = %s", (offer,)), change
    for change in (f"performer_id = {other['id']}", f"order_id = {order['id']}",
                   "created_at = now() - interval '1 day'"):
        assert "never change" in refusal(db, f"UPDATE offers SET {change} WHERE id = %s", (offer,)), change
    assert db.execute("SELECT status, price FROM offers WHERE id = %s", (offer,)).fetchone() == {
        "status": "active", "price": 500}


def test_an_offer_accepted_without_its_order_going_to_its_performer_is_refused_at_commit(db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer, mode="offers")
    mine, theirs = send_offer(db, order, performer, price=800, days=4), send_offer(db, order, other, price=700)
    # The statement itself passes (the check waits for the commit) ...
    with pytest.raises(psycopg.errors.CheckViolation, match="accepted only together with its order"):
        with db.transaction():
            db.execute("UPDATE offers SET status = 'accepted' WHERE id = %s", (mine,))
            assert offer_statuses(db, order)[mine] == "accepted"
    # ... and so does an order taken by another offer's performer, with two offers accepted.
    with pytest.raises(psycopg.errors.CheckViolation, match=f"offer {mine}: an offer is accepted only together"):
        with db.transaction():
            db.execute("UPDATE offers SET status = 'accepted' WHERE id = ANY(%s)", ([mine, theirs],))
            db.execute("UPDATE orders SET status = 'in_progress', performer_id = %s, agreed_price = 700, "
                       "deadline = current_date + 5 WHERE id = %s", (other["id"], order["id"]))
    # ... and an order taken, then given back in the same transaction.
    with pytest.raises(psycopg.errors.CheckViolation, match="accepted only together"):
        with db.transaction():
            db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": mine, "customer_id": customer["id"]})
            db.execute(Q["order_withdraw"], {"order_id": order["id"], "performer_id": performer["id"]})
    assert offer_statuses(db, order) == {mine: "active", theirs: "active"}
    row = order_row(db, order)
    assert (row["status"], row["performer_id"], row["offers_active"]) == ("open", None, 2)


def test_a_delivery_is_recorded_only_with_the_delivered_move_and_never_changes(db, people, make_order):
    customer, performer, other = people["customer"], people["performer"], people["other_performer"]
    order = make_order(customer, performer=performer, status="in_progress")
    insert = "INSERT INTO order_deliveries (order_id, performer_id, message) VALUES (%s, %s, 'Here it is')"
    only_with = "a delivery is recorded only as its performer delivers the order"
    assert only_with in refusal(db, insert, (order["id"], performer["id"]))  # not delivered
    # With the move, by the order's performer only.
    with pytest.raises(psycopg.errors.CheckViolation, match=only_with):
        with db.transaction():
            db.execute("UPDATE orders SET status = 'delivered' WHERE id = %s", (order["id"],))
            db.execute(insert, (order["id"], other["id"]))
    assert order_row(db, order)["status"] == "in_progress"
    assert db.execute(Q["order_deliver"], {"order_id": order["id"], "performer_id": performer["id"],
                                           "message": "Version 1"}).fetchone()["id"] == order["id"]
    # Not later, for a delivery that has already been recorded.
    assert only_with in refusal(db, insert, (order["id"], performer["id"]))
    delivery = db.execute("SELECT * FROM order_deliveries WHERE order_id = %s", (order["id"],)).fetchone()
    assert (delivery["performer_id"], delivery["message"]) == (performer["id"], "Version 1")
    assert delivery["created_at"] == order_row(db, order)["delivered_at"]
    for sql in ("UPDATE order_deliveries SET message = 'Rewritten' WHERE id = %s",
                "UPDATE order_deliveries SET created_at = now() WHERE id = %s",
                "DELETE FROM order_deliveries WHERE id = %s"):
        assert "never changed or deleted" in refusal(db, sql, (delivery["id"],)), sql
    # Each round adds one.
    db.execute(Q["order_revision"], {"order_id": order["id"], "customer_id": customer["id"]})
    db.execute(Q["order_deliver"], {"order_id": order["id"], "performer_id": performer["id"], "message": "Version 2"})
    messages = db.execute("SELECT message FROM order_deliveries WHERE order_id = %s ORDER BY id",
                          (order["id"],)).fetchall()
    assert [m["message"] for m in messages] == ["Version 1", "Version 2"]
    # They go with their order.
    db.execute("DELETE FROM orders WHERE id = %s", (order["id"],))
    assert db.execute("SELECT count(*) AS n FROM order_deliveries").fetchone()["n"] == 0


def test_truncating_offers_is_refused_so_the_active_counts_stay_exact(db, people, make_order):
    order = make_order(people["customer"], mode="offers")
    send_offer(db, order, people["performer"])
    send_offer(db, order, people["other_performer"])
    for statement in ("TRUNCATE offers", "TRUNCATE offers CASCADE"):
        assert "TRUNCATE of offers is refused" in refusal(db, statement)
    assert order_row(db, order)["offers_active"] == 2
    db.execute("DELETE FROM offers")
    assert order_row(db, order)["offers_active"] == 0


def test_auto_accept_accepts_only_deliveries_older_than_its_interval_as_the_system(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    older = make_order(customer, performer=performer, status="delivered")
    newer = make_order(customer, performer=performer, status="delivered")
    # Delivered and sent back, or disputed: not waiting for the customer, however old.
    revised = make_order(customer, performer=performer, status="delivered")
    db.execute(Q["order_revision"], {"order_id": revised["id"], "customer_id": customer["id"]})
    disputed = make_order(customer, performer=performer, status="delivered")
    db.execute(Q["order_dispute"], {"order_id": disputed["id"], "user_id": customer["id"]})
    assert older["delivered_at"] < newer["delivered_at"]
    assert db.execute(Q["orders_auto_accept"], {"days": 3}).fetchone()["accepted"] == 0
    # An interval that reaches back to midway between the two deliveries: the older one only.
    with db.transaction():
        act(db, customer)  # whoever the transaction acted for before, the system accepts
        accepted = db.execute("SELECT orders_auto_accept(now() - %s - (%s - %s) / 2) AS n",
                              (older["delivered_at"], newer["delivered_at"], older["delivered_at"])).fetchone()["n"]
    assert accepted == 1
    statuses = {o["id"]: order_row(db, o)["status"] for o in (older, newer, revised, disputed)}
    assert statuses == {older["id"]: "done", newer["id"]: "delivered", revised["id"]: "in_progress",
                        disputed["id"]: "disputed"}
    history = last_history(db, older)
    assert (history["action"], history["actor_id"], history["note"], history["staff_only"]) == (
        "auto_accept", None, None, False)
    assert order_row(db, older)["completed_at"] is not None
    # Zero days: every delivery waiting, at once.
    assert db.execute("SELECT orders_auto_accept(interval '0') AS n").fetchone()["n"] == 1
    assert order_row(db, newer)["status"] == "done"
    stats = db.execute("SELECT orders_completed, orders_delivered, orders_in_progress, orders_disputed "
                       "FROM performer_stats WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert stats == {"orders_completed": 2, "orders_delivered": 0, "orders_in_progress": 1, "orders_disputed": 1}


def test_an_open_order_cannot_be_cancelled_with_a_performer(db, people, make_order):
    """A cancelled order keeps the performer who had it; an open order has none to keep."""
    customer, performer = people["customer"], people["performer"]
    order = make_order(customer)
    assert refused(db, "UPDATE orders SET status = 'cancelled', performer_id = %s WHERE status = 'open'",
                   (performer["id"],))
    assert refused(db, "UPDATE orders SET status = 'cancelled', performer_id = %s WHERE id = %s",
                   (performer["id"], order["id"]))
    row = db.execute("SELECT status, performer_id FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert row == {"status": "open", "performer_id": None}
    assert not refused(db, "UPDATE orders SET status = 'cancelled' WHERE id = %s", (order["id"],))
    # An order cancelled while in progress keeps its performer, and only that one.
    taken = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET status = 'cancelled', performer_id = %s WHERE id = %s",
                   (people["other_performer"]["id"], taken["id"]))
    assert not refused(db, "UPDATE orders SET status = 'cancelled' WHERE id = %s", (taken["id"],))
    counts = db.execute("SELECT orders_in_progress, orders_completed FROM performer_stats "
                        "WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert counts == {"orders_in_progress": 0, "orders_completed": 0}


def test_the_rating_time_and_the_cancel_reason_never_change_once_set(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    rated = make_order(customer, performer=performer, status="done", rating=8)
    assert refused(db, "UPDATE orders SET rated_at = rated_at - interval '1 day' WHERE id = %s", (rated["id"],))
    assert refused(db, "UPDATE orders SET rated_at = now() WHERE id = %s", (rated["id"],))
    unrated = make_order(customer, performer=performer, status="done")
    assert refused(db, "UPDATE orders SET rating = 5, rated_at = '2001-01-01' WHERE id = %s", (unrated["id"],))

    # The reason is written by the cancel itself, then never again.
    with_reason = make_order(customer)
    assert not refused(db, "UPDATE orders SET status = 'cancelled', cancel_reason = 'Found someone' WHERE id = %s",
                       (with_reason["id"],))
    without_reason = make_order(customer, performer=performer, status="cancelled")
    for order, reason in ((with_reason, "Another story"), (with_reason, None), (without_reason, "Added later")):
        assert refused(db, "UPDATE orders SET cancel_reason = %s WHERE id = %s", (reason, order["id"]))
    # An order that is not cancelled has no reason to give, with a transition or without one.
    for status in ("open", "in_progress", "delivered", "disputed", "done"):
        order = make_order(customer, performer=performer, status=status)
        assert refused(db, "UPDATE orders SET cancel_reason = 'Not cancelled' WHERE id = %s", (order["id"],))
    for status, target in (("delivered", "done"), ("in_progress", "disputed"), ("disputed", "done")):
        order = make_order(customer, performer=performer, status=status)
        assert "cancel reason" in refusal(db, "UPDATE orders SET status = %s, cancel_reason = 'Not cancelled' "
                                              "WHERE id = %s", (target, order["id"]))
    # ... and every way into cancelled takes one.
    for status in ("open", "in_progress", "disputed"):
        order = make_order(customer, performer=performer, status=status)
        assert not refused(db, "UPDATE orders SET status = 'cancelled', cancel_reason = 'Enough' WHERE id = %s",
                           (order["id"],))
    rows = db.execute("SELECT id, cancel_reason, rated_at FROM orders WHERE id = ANY(%s) ORDER BY id",
                      ([rated["id"], with_reason["id"], without_reason["id"]],)).fetchall()
    assert [(r["id"], r["cancel_reason"], r["rated_at"]) for r in rows] == [
        (rated["id"], None, rated["rated_at"]), (with_reason["id"], "Found someone", None),
        (without_reason["id"], None, None)]


def test_transition_times_are_stamped_by_the_database_and_never_written_by_a_statement(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    made = {status: make_order(customer, performer=performer, status=status)
            for status in ("open", "in_progress", "delivered", "disputed")}
    long_ago = "2001-01-01"
    # Together with each move of the spec, whichever time it is (the one it stamps or another) ...
    needs = {("open", "in_progress"): ", performer_id = {p}, agreed_price = budget",
             ("in_progress", "open"): ", performer_id = NULL, agreed_price = NULL"}
    for (source, target) in MOVES:
        for column in TIMES:
            if column == "rated_at":
                continue  # set with a rating only, below
            # A time given, or one erased.
            for value in (long_ago, None) if made[source][column] is not None else (long_ago,):
                sql = (f"UPDATE orders SET status = '{target}'{needs.get((source, target), '')}, {column} = %s "
                       f"WHERE id = %s").format(p=performer["id"])
                assert refusal(db, sql, (value, made[source]["id"])) == (
                    f"order {made[source]['id']}: transition times are set by the database"), (sql, value)
    # ... or without one.
    done = make_order(customer, performer=performer, status="done", rating=9)
    cancelled = make_order(customer, performer=performer, status="cancelled")
    for order in (*made.values(), done, cancelled):
        for column in TIMES:
            for value in (long_ago, "now()"):
                assert "transition times" in refusal(
                    db, f"UPDATE orders SET {column} = {'%s' if value == long_ago else value} WHERE id = %s",
                    (long_ago, order["id"]) if value == long_ago else (order["id"],)), (order["status"], column)
            if order[column] is not None:
                assert "transition times" in refusal(db, f"UPDATE orders SET {column} = NULL WHERE id = %s",
                                                     (order["id"],)), (order["status"], column)
    assert "transition times" in refusal(db, "UPDATE orders SET rating = 5, rated_at = %s WHERE id = %s",
                                         (long_ago, make_order(customer, performer=performer, status="done")["id"]))
    # The moves themselves stamp them, and leave the earlier ones as they were: a revision keeps the
    # last delivery's time until the next delivery stamps a newer one.
    order = made["in_progress"]
    stamps = [order_row(db, order)]
    for sql in ("UPDATE orders SET status = 'delivered' WHERE id = %s",
                "UPDATE orders SET status = 'in_progress' WHERE id = %s",
                "UPDATE orders SET status = 'delivered' WHERE id = %s",
                "UPDATE orders SET status = 'disputed' WHERE id = %s",
                "UPDATE orders SET status = 'done' WHERE id = %s"):
        db.execute(sql, (order["id"],))
        stamps.append(order_row(db, order))
    taken, delivered, revised, redelivered, disputed, done_row = stamps
    assert {row["taken_at"] for row in stamps} == {taken["taken_at"]}
    assert taken["delivered_at"] is None and delivered["delivered_at"] is not None
    assert revised["delivered_at"] == delivered["delivered_at"] < redelivered["delivered_at"]
    assert redelivered["disputed_at"] is None and disputed["disputed_at"] > redelivered["delivered_at"]
    assert (done_row["delivered_at"], done_row["disputed_at"]) == (redelivered["delivered_at"], disputed["disputed_at"])
    assert done_row["completed_at"] > disputed["disputed_at"] and done_row["cancelled_at"] is None


def test_transition_times_and_history_are_recorded_with_the_actor(db, people, make_order):
    customer, performer, staff = people["customer"], people["performer"], people["staff"]
    order = make_order(customer)
    steps = ((performer, "", "order_take", {"performer_id": performer["id"]}),
             (performer, "", "order_deliver", {"performer_id": performer["id"], "message": "Here"}),
             (customer, "Brighter colours", "order_revision", {"customer_id": customer["id"]}),
             (performer, "", "order_deliver", {"performer_id": performer["id"], "message": "Brighter"}),
             (customer, "great", "order_accept", {"customer_id": customer["id"], "rating": 9, "review": "Thanks"}))
    for actor, note, query, params in steps:
        with db.transaction():
            act(db, actor, note)
            assert db.execute(Q[query], dict(params, order_id=order["id"])).fetchone()["id"] == order["id"], query
    row = order_row(db, order)
    assert row["taken_at"] and row["delivered_at"] and row["completed_at"] and row["rated_at"] == row["completed_at"]
    assert (row["cancelled_at"], row["disputed_at"], row["rating"], row["review"]) == (None, None, 9, "Thanks")
    history = db.execute("SELECT action, from_status, to_status, actor_id, note, staff_only FROM order_history "
                         "WHERE order_id = %s ORDER BY id", (order["id"],)).fetchall()
    assert [(h["action"], h["from_status"], h["to_status"]) for h in history] == [
        ("create", None, "open"), ("take", "open", "in_progress"), ("deliver", "in_progress", "delivered"),
        ("revision", "delivered", "in_progress"), ("deliver", "in_progress", "delivered"),
        ("accept", "delivered", "done")]
    assert [h["actor_id"] for h in history[1:]] == [performer["id"], performer["id"], customer["id"],
                                                    performer["id"], customer["id"]]
    assert [h["note"] for h in history] == [None, None, None, "Brighter colours", None, "great"]
    deliveries = db.execute("SELECT message FROM order_deliveries WHERE order_id = %s ORDER BY id",
                            (order["id"],)).fetchall()
    assert [d["message"] for d in deliveries] == ["Here", "Brighter"]

    # Giving back is a withdraw when the performer does it, a reopen when staff do, whose note is staff-only.
    second = make_order(customer, performer=performer, status="in_progress")
    with db.transaction():
        act(db, performer, "No time")
        db.execute(Q["order_withdraw"], {"order_id": second["id"], "performer_id": performer["id"]})
    with db.transaction():
        act(db, people["other_performer"])
        db.execute(Q["order_take"], {"order_id": second["id"], "performer_id": people["other_performer"]["id"]})
    with db.transaction():
        act(db, staff, "Performer unreachable", staff=True)
        db.execute("UPDATE orders SET status = 'open', performer_id = NULL, agreed_price = NULL WHERE id = %s",
                   (second["id"],))
    with db.transaction():
        act(db, performer)
        db.execute(Q["order_take"], {"order_id": second["id"], "performer_id": performer["id"]})
    with db.transaction():
        act(db, customer, "Nothing delivered")
        db.execute(Q["order_dispute"], {"order_id": second["id"], "user_id": customer["id"]})
    with db.transaction():
        act(db, staff, "Refund", staff=True)
        db.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s", (second["id"],))
    history = db.execute("SELECT action, actor_id, performer_id, note, staff_only FROM order_history "
                         "WHERE order_id = %s ORDER BY id", (second["id"],)).fetchall()
    assert [(h["action"], h["actor_id"], h["note"], h["staff_only"]) for h in history[2:]] == [
        ("withdraw", performer["id"], "No time", False), ("take", people["other_performer"]["id"], None, False),
        ("reopen", staff["id"], "Performer unreachable", True), ("take", performer["id"], None, False),
        ("dispute", customer["id"], "Nothing delivered", False), ("resolve", staff["id"], "Refund", True)]
    # Append-only, even for a DBA.
    assert refused(db, "UPDATE order_history SET note = 'x' WHERE order_id = %s", (order["id"],))
    assert refused(db, "DELETE FROM order_history WHERE order_id = %s", (order["id"],))


def test_rating_rules_hold_in_the_database(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    in_progress = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET rating = 5 WHERE id = %s", (in_progress["id"],))
    done = make_order(customer, performer=performer, status="done")
    for bad in (0, 11, -1):
        assert refused(db, "UPDATE orders SET rating = %s WHERE id = %s", (bad, done["id"]))
    assert refused(db, "UPDATE orders SET review = 'no rating' WHERE id = %s", (done["id"],))
    assert not refused(db, "UPDATE orders SET rating = 7 WHERE id = %s", (done["id"],))
    assert refused(db, "UPDATE orders SET rating = 10 WHERE id = %s", (done["id"],))
    assert refused(db, "UPDATE orders SET rating = NULL WHERE id = %s", (done["id"],))
    assert refused(db, "UPDATE orders SET review = 'changed my mind' WHERE id = %s", (done["id"],))
    # The app's query rates once: a second attempt touches nothing.
    assert db.execute(Q["order_rate"], {"order_id": done["id"], "customer_id": customer["id"],
                                        "rating": 1, "review": ""}).rowcount == 0
    stats = db.execute("SELECT * FROM performer_stats WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert (stats["rating_sum"], stats["rating_count"], float(stats["rating_avg"])) == (7, 1, 7.0)


def test_rows_that_cannot_exist_are_refused(db, people, make_order):
    customer, performer = people["customer"], people["performer"]
    category = db.execute("SELECT id FROM categories WHERE slug = 'design'").fetchone()["id"]
    insert = ("INSERT INTO orders (customer_id, category_id, title, description, budget, deadline, status, performer_id) "
              "VALUES (%s, %s, 'A title', 'Text', %s, %s, %s, %s)")
    today = datetime.date.today()
    assert refused(db, insert, (customer["id"], category, 0, None, "open", None))            # budget > 0
    assert refused(db, insert, (customer["id"], category, 100, today - datetime.timedelta(days=1), "open", None))
    assert refused(db, insert, (customer["id"], category, 100, None, "done", performer["id"]))  # starts open
    assert refused(db, insert, (performer["id"], category, 100, None, "open", None))         # a performer is no customer
    db.execute("UPDATE categories SET is_hidden = true WHERE id = %s", (category,))
    assert refused(db, insert, (customer["id"], category, 100, None, "open", None))          # hidden category
    db.execute("UPDATE categories SET is_hidden = false WHERE id = %s", (category,))

    order = make_order(customer)
    # a customer cannot be the performer, nor can another customer
    assert refused(db, "UPDATE orders SET status = 'in_progress', performer_id = %s WHERE id = %s",
                   (people["other_customer"]["id"], order["id"]))
    assert refused(db, "UPDATE orders SET status = 'in_progress', performer_id = NULL WHERE id = %s", (order["id"],))
    assert refused(db, "UPDATE orders SET customer_id = %s WHERE id = %s", (people["other_customer"]["id"], order["id"]))
    taken = make_order(customer, performer=performer, status="in_progress")
    assert refused(db, "UPDATE orders SET title = 'Edited later' WHERE id = %s", (taken["id"],))
    assert refused(db, "UPDATE orders SET completed_at = now() WHERE id = %s", (taken["id"],))
    assert not refused(db, "UPDATE orders SET title = 'Edited while open' WHERE id = %s", (order["id"],))
    # a role never changes; emails are unique whatever their case
    assert refused(db, "UPDATE users SET role = 'performer' WHERE id = %s", (customer["id"],))
    assert refused(db, "INSERT INTO users (role, email, password_hash, name) VALUES ('customer', %s, 'x', 'Dup')",
                   (customer["email"].upper(),))
    # a customer cannot work in categories
    assert refused(db, "INSERT INTO performer_categories (performer_id, category_id) VALUES (%s, %s)",
                   (customer["id"], category))


@pytest.mark.parametrize("statement", ["TRUNCATE orders CASCADE",
                                       "TRUNCATE order_history, order_deliveries, offers, files, messages, conversations, mail_outbox, notifications, orders",
                                       "TRUNCATE users CASCADE", "TRUNCATE categories CASCADE"])
def test_truncating_orders_is_refused_even_by_cascade_so_the_counters_stay_exact(db, people, make_order, statement):
    """TRUNCATE fires no row triggers; the orders must go by DELETE, whose triggers keep the counts."""
    customer, performer = people["customer"], people["performer"]
    make_order(customer)
    make_order(customer, performer=performer, status="done", rating=6)
    send_offer(db, make_order(customer, mode="offers"), performer)
    before = db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"]
    with pytest.raises(psycopg.Error, match="TRUNCATE of [a-z_]+ is refused"):
        with db.transaction():
            db.execute(statement)
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == before == 3
    # DELETE is the way, and leaves every counter exact (checked after each test).
    db.execute("DELETE FROM orders")
    counts = db.execute("SELECT orders_placed, orders_open, orders_done FROM customer_stats "
                        "WHERE customer_id = %s", (customer["id"],)).fetchone()
    assert counts == {"orders_placed": 0, "orders_open": 0, "orders_done": 0}


def test_concurrent_block_and_new_order_keep_category_counts_exact(db, people, make_order):
    """Blocking hides open orders from category counts; unblocking restores them."""
    customer = people["customer"]
    make_order(customer, category="design")
    make_order(customer, category="design")
    count = lambda: db.execute("SELECT open_orders FROM categories WHERE slug = 'design'").fetchone()["open_orders"]
    assert count() == 2
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (customer["id"],))
    assert count() == 0
    db.execute("UPDATE users SET is_blocked = false WHERE id = %s", (customer["id"],))
    assert count() == 2


def test_only_the_counters_whose_contribution_changes_are_written(db, people, make_order):
    """A rating or a hidden review is the performer's business: the customer's row is not written
    (nor locked), and an update that changes no contribution writes no counter at all."""
    customer, performer = people["customer"], people["performer"]
    open_order = make_order(customer)
    taken = make_order(customer, performer=performer, status="in_progress")
    done = make_order(customer, performer=performer, status="done")

    def versions():
        """The row version (xmin) of each counters row: it changes whenever the row is written."""
        return {
            "customer": db.execute("SELECT xmin::text AS v FROM customer_stats WHERE customer_id = %s",
                                   (customer["id"],)).fetchone()["v"],
            "performer": db.execute("SELECT xmin::text AS v FROM performer_stats WHERE performer_id = %s",
                                    (performer["id"],)).fetchone()["v"],
            "categories": db.execute("SELECT string_agg(xmin::text, ',' ORDER BY id) AS v FROM categories").fetchone()["v"]}

    def written_by(sql, order):
        before = versions()
        db.execute(sql, (order["id"],))
        after = versions()
        return {side for side in before if before[side] != after[side]}

    assert written_by("UPDATE orders SET rating = 7, review = 'Good' WHERE id = %s", done) == {"performer"}
    assert written_by("UPDATE orders SET review_hidden = true WHERE id = %s", done) == {"performer"}
    assert written_by("UPDATE orders SET review_hidden = false WHERE id = %s", done) == {"performer"}
    nothing = ("UPDATE orders SET status = status, performer_id = performer_id, category_id = category_id, "
               "rating = rating, review_hidden = review_hidden WHERE id = %s")
    for order in (open_order, taken, done):
        assert written_by(nothing, order) == set(), order["status"]
    assert written_by("UPDATE orders SET category_id = category_id + 1 WHERE id = %s", open_order) == {"categories"}
    assert written_by("UPDATE orders SET status = 'delivered' WHERE id = %s", taken) == {"customer", "performer"}
    assert written_by("UPDATE orders SET status = 'done' WHERE id = %s", taken) == {"customer", "performer"}
    stats = db.execute("SELECT rating_sum, rating_count, orders_completed FROM performer_stats "
                       "WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert stats == {"rating_sum": 7, "rating_count": 1, "orders_completed": 2}


# The random operations: each with how often it is picked (weight), the orders it mostly works on
# (the rest of the time any order at all, so that refusals are exercised too), and what it runs.
RANDOM_OPERATIONS = {
    "create": (4, None), "take": (4, "status = 'open' AND mode = 'take'"),
    "offer": (5, "status = 'open' AND mode = 'offers'"), "withdraw_offer": (1, "offers_active > 0"),
    "accept_offer": (3, "offers_active > 0"), "deliver": (5, "status = 'in_progress'"),
    "accept": (2, "status = 'delivered'"), "revision": (2, "status = 'delivered'"),
    "withdraw": (1, "status = 'in_progress'"), "reopen": (1, "status = 'in_progress'"),
    "dispute": (1, "status IN ('in_progress', 'delivered')"), "resolve": (1, "status = 'disputed'"),
    "cancel": (1, "status IN ('open', 'in_progress')"), "rate": (1, "status = 'done' AND rating IS NULL"),
    "hide": (1, "rating IS NOT NULL AND NOT review_hidden"), "restore": (1, "review_hidden"),
    "reassign": (1, "status = 'in_progress'"), "edit": (1, "status = 'open'"), "mode": (1, "status = 'open'"),
    "move": (2, None), "delete": (1, None), "delete_offer": (1, "offers_active > 0"), "block": (1, None),
    "auto_accept": (2, None),
}


def random_operations(db, rng, steps, staff):
    """Applies `steps` random operations, each in its own transaction, acting as the user it is for:
    the app's own queries and a DBA's direct statements, refusals expected. Returns how many of each
    operation changed something. Deterministic for a given `rng`: every choice is made from rows in
    id order."""
    users = db.execute("SELECT id, role FROM users ORDER BY id").fetchall()
    customers = [u["id"] for u in users if u["role"] == "customer"]
    performers = [u["id"] for u in users if u["role"] == "performer"]
    slugs = [r["slug"] for r in db.execute("SELECT slug FROM categories ORDER BY id")]
    names, weights = zip(*((name, weight) for name, (weight, _) in RANDOM_OPERATIONS.items()))
    changed = collections.Counter()
    for _ in range(steps):
        op = rng.choices(names, weights)[0]
        wanted = RANDOM_OPERATIONS[op][1]
        rows = []
        if wanted and rng.random() < 0.85:
            rows = db.execute(f"SELECT * FROM orders WHERE {wanted} ORDER BY id").fetchall()
        if not rows:
            rows = db.execute("SELECT * FROM orders ORDER BY id").fetchall()
        order = rng.choice(rows) if rows else None
        if order is None and op not in ("create", "block", "auto_accept"):
            continue
        oid = order and order["id"]
        # Mostly the person the operation is for, sometimes anybody.
        customer = order["customer_id"] if order and rng.random() < 0.9 else rng.choice(customers)
        performer = order["performer_id"] if order and order["performer_id"] and rng.random() < 0.9 \
            else rng.choice(performers)
        actor, note = None, ""
        if op == "create":
            actor = customer = rng.choice(customers)
            sql, params = Q["order_create"], {"customer_id": customer, "category": rng.choice(slugs),
                                              "title": "Random order", "description": "Random text",
                                              "budget": rng.randint(1, 100000), "deadline": None,
                                              "mode": rng.choice(["take", "offers"])}
        elif op == "take":
            actor = performer = rng.choice(performers)
            sql, params = Q["order_take"], {"order_id": oid, "performer_id": performer}
        elif op == "offer":
            actor = performer = rng.choice(performers)
            sql, params = Q["offer_submit"], {"order_id": oid, "performer_id": performer, "message": "Offer",
                                              "price": rng.randint(1, 100000), "days": rng.randint(1, 30)}
        elif op in ("withdraw_offer", "accept_offer", "delete_offer"):
            offers = db.execute("SELECT id, performer_id FROM offers WHERE order_id = %s AND status = 'active' "
                                "ORDER BY id", (oid,)).fetchall()
            offer = rng.choice(offers) if offers else {"id": 0, "performer_id": rng.choice(performers)}
            if op == "delete_offer":  # a DBA's, of an active offer or another not accepted
                sql, params = ("DELETE FROM offers WHERE id = (SELECT id FROM offers WHERE order_id = %(order_id)s "
                               "AND status <> 'accepted' ORDER BY status = 'active' DESC, id LIMIT 1 "
                               "OFFSET %(skip)s)"), {
                                   "order_id": oid, "skip": rng.choice([0, 0, 1])}
            elif op == "withdraw_offer":
                actor = offer["performer_id"]
                sql, params = Q["offer_withdraw"], {"order_id": oid, "performer_id": offer["performer_id"]}
            else:
                actor = customer
                sql, params = Q["offer_accept"], {"order_id": oid, "offer_id": offer["id"], "customer_id": customer}
        elif op == "deliver":
            actor = performer
            sql, params = Q["order_deliver"], {"order_id": oid, "performer_id": performer, "message": "Done"}
        elif op == "accept":
            actor = customer
            rating = rng.choice([None, rng.randint(1, 10)])
            sql, params = Q["order_accept"], {"order_id": oid, "customer_id": customer, "rating": rating,
                                              "review": "Fine" if rating else ""}
        elif op == "revision":
            actor, note = customer, "Please fix"
            sql, params = Q["order_revision"], {"order_id": oid, "customer_id": customer}
        elif op == "withdraw":
            actor, note = performer, "Cannot do it"
            sql, params = Q["order_withdraw"], {"order_id": oid, "performer_id": performer}
        elif op == "dispute":
            actor = rng.choice([customer, performer])
            sql, params = Q["order_dispute"], {"order_id": oid, "user_id": actor}
        elif op == "cancel" and order["status"] == "open" and rng.random() < 0.5:
            actor = customer
            sql, params = Q["order_cancel"], {"order_id": oid, "actor_id": customer, "reason": "Changed my mind"}
        elif op == "rate":
            actor = customer
            sql, params = Q["order_rate"], {"order_id": oid, "customer_id": customer, "rating": rng.randint(1, 10),
                                            "review": ""}
        elif op == "auto_accept":
            # The older half of the deliveries waiting (by their order, whatever the clock says).
            sql, params = ("SELECT orders_auto_accept(now() - (SELECT percentile_disc(0.5) WITHIN GROUP "
                           "(ORDER BY delivered_at) FROM orders WHERE status = 'delivered')) AS n"), {}
        else:
            # Staff's and a DBA's statements.
            actor = staff
            sql, params = {
                "resolve": ("UPDATE orders SET status = %(outcome)s WHERE id = %(order_id)s",
                            {"outcome": rng.choice(["done", "cancelled"])}),
                "cancel": ("UPDATE orders SET status = 'cancelled' WHERE id = %(order_id)s", {}),
                "reopen": ("UPDATE orders SET status = 'open', performer_id = NULL, agreed_price = NULL "
                           "WHERE id = %(order_id)s", {}),
                "hide": ("UPDATE orders SET review_hidden = true WHERE id = %(order_id)s AND NOT review_hidden", {}),
                "restore": ("UPDATE orders SET review_hidden = false WHERE id = %(order_id)s AND review_hidden", {}),
                "reassign": ("UPDATE orders SET performer_id = %(performer_id)s WHERE id = %(order_id)s",
                             {"performer_id": rng.choice(performers)}),
                "edit": ("UPDATE orders o SET category_id = c.id FROM categories c "
                         "WHERE o.id = %(order_id)s AND c.slug = %(slug)s AND c.id <> o.category_id",
                         {"slug": rng.choice(slugs)}),
                "mode": ("UPDATE orders SET mode = CASE mode WHEN 'take' THEN 'offers' ELSE 'take' END::order_mode "
                         "WHERE id = %(order_id)s", {}),
                "move": ("UPDATE orders SET status = %(status)s WHERE id = %(order_id)s",
                         {"status": rng.choice(STATUSES)}),
                "delete": ("DELETE FROM orders WHERE id = %(order_id)s", {}),
                # A quarter of the people blocked at any time, give or take.
                "block": ("UPDATE users SET is_blocked = %(blocked)s WHERE id = %(user_id)s "
                          "AND is_blocked <> %(blocked)s",
                          {"user_id": rng.choice(customers + performers), "blocked": rng.random() < 0.25}),
            }[op]
            params = dict(params, order_id=oid)
        try:
            with db.transaction():
                if actor:
                    act(db, {"id": actor}, note, staff=actor == staff)
                cursor = db.execute(sql, params)
                result = cursor.fetchone() if cursor.description else None
                changed[op] += (cursor.rowcount > 0 and result is None) or bool(result and list(result.values())[0])
        except psycopg.Error:
            pass
    return changed


def assert_consistent(db):
    """Every counter exact, and what no sequence of writes may leave behind."""
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []
    broken = db.execute("""
        SELECT 'active offer on an order not open in offers mode' AS what, f.id
        FROM offers f JOIN orders o ON o.id = f.order_id
        WHERE f.status = 'active' AND (o.status <> 'open' OR o.mode <> 'offers')
        UNION ALL
        SELECT 'accepted offer whose order was never accepted to its performer', f.id
        FROM offers f
        WHERE f.status = 'accepted'
          AND NOT EXISTS (SELECT 1 FROM order_history h WHERE h.order_id = f.order_id
                          AND h.action = 'accept_offer' AND h.performer_id = f.performer_id)
        UNION ALL
        SELECT 'agreed price not the budget (take) or an accepted offer''s (offers)', o.id
        FROM orders o
        WHERE o.performer_id IS NOT NULL
          AND CASE o.mode WHEN 'take' THEN o.agreed_price <> o.budget
                          ELSE NOT EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.status = 'accepted'
                                           AND f.price = o.agreed_price) END
        UNION ALL
        SELECT 'more deliveries than delivered moves', d.order_id
        FROM order_deliveries d
        GROUP BY d.order_id
        HAVING count(*) > (SELECT count(*) FROM order_history h WHERE h.order_id = d.order_id AND h.action = 'deliver')
        UNION ALL
        SELECT 'status not the last one in the history', o.id
        FROM orders o
        WHERE o.status IS DISTINCT FROM (SELECT h.to_status FROM order_history h WHERE h.order_id = o.id
                                         ORDER BY h.id DESC LIMIT 1)
    """).fetchall()
    assert broken == []


def test_random_operations_of_the_exchange_leave_every_counter_exact(db, make_user):
    """Two thousand operations of every kind: orders posted in both modes, taken, offered on,
    offers changed, withdrawn and accepted, deliveries, revisions, withdrawals, disputes and their
    resolution, cancels, ratings, hidden reviews, blocks, the system's auto-accept, and a DBA's
    direct moves; the counters stay exact throughout."""
    staff = make_user("customer", staff=True)["id"]
    for _ in range(5):
        make_user("customer")
        make_user("performer")
    rng = random.Random(20261126)
    applied = collections.Counter()
    for _ in range(8):
        applied += random_operations(db, rng, 250, staff)
        assert_consistent(db)
    assert sum(applied.values()) > 900  # half the steps really changed something ...
    assert {op: n for op, n in applied.items() if n >= 10}.keys() == RANDOM_OPERATIONS.keys()  # ... of every kind
    reached = {r["to_status"] for r in db.execute("SELECT DISTINCT to_status FROM order_history")}
    assert reached == set(STATUSES)
    offers = {r["status"] for r in db.execute("SELECT DISTINCT status FROM offers")}
    assert offers >= {"withdrawn", "accepted", "declined"}  # every offer was active first
    actions = {r["action"] for r in db.execute("SELECT DISTINCT action FROM order_history")}
    assert actions >= {"take", "accept_offer", "deliver", "revision", "accept", "auto_accept", "withdraw",
                       "reopen", "dispute", "resolve", "cancel", "rate", "hide_rating", "restore_rating",
                       "change_mode", "reassign"}
    assert db.execute("SELECT count(*) AS n FROM orders WHERE rating IS NOT NULL AND review_hidden").fetchone()["n"]
    assert db.execute("SELECT max(n) AS n FROM (SELECT count(*) AS n FROM order_deliveries "
                      "GROUP BY order_id) AS d").fetchone()["n"] >= 2


def test_audit_reports_a_corrupted_counter_and_recalc_repairs_it(db, people, make_order):
    make_order(people["customer"], performer=people["performer"], status="done", rating=8)
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []
    db.execute("UPDATE performer_stats SET rating_sum = rating_sum + 3 WHERE performer_id = %s",
               (people["performer"]["id"],))
    db.execute("UPDATE categories SET open_orders = 40 WHERE slug = 'seo'")
    db.execute("UPDATE customer_stats SET orders_done = 0 WHERE customer_id = %s", (people["customer"]["id"],))
    drift = db.execute("SELECT * FROM audit_counters()").fetchall()
    assert [(d["counter"], d["stored"], d["actual"]) for d in drift] == [
        ("category.open_orders", 40, 0), ("customer.orders_done", 0, 1), ("performer.rating_sum", 11, 8)]
    assert db.execute("SELECT recalc_counters() AS fixed").fetchone()["fixed"] == 3
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []
    stats = db.execute("SELECT rating_avg FROM performer_stats WHERE performer_id = %s",
                       (people["performer"]["id"],)).fetchone()
    assert float(stats["rating_avg"]) == 8.0


def run_in_parallel(db_url, jobs):
    """Runs each job(connection) on its own connection, all released at the same moment."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    connections = [psycopg.connect(db_url, row_factory=dict_row) for _ in jobs]

    def worker(i):
        barrier.wait()
        try:
            results[i] = jobs[i](connections[i])
            connections[i].commit()
        except psycopg.Error as err:
            connections[i].rollback()
            results[i] = err
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in connections:
        c.close()
    return results


def test_twenty_connections_taking_one_order_exactly_one_wins(db, db_url, make_user, make_order):
    order = make_order(make_user("customer"))
    performers = [make_user("performer") for _ in range(20)]

    def take(performer):
        return lambda connection: connection.execute(
            Q["order_take"], {"order_id": order["id"], "performer_id": performer["id"]}).rowcount
    results = run_in_parallel(db_url, [take(p) for p in performers])
    assert sorted(results) == [0] * 19 + [1]
    winner = performers[results.index(1)]
    row = db.execute("SELECT status, performer_id FROM orders WHERE id = %s", (order["id"],)).fetchone()
    assert row == {"status": "in_progress", "performer_id": winner["id"]}
    assert db.execute("SELECT count(*) AS n FROM order_history WHERE order_id = %s AND action = 'take'",
                      (order["id"],)).fetchone()["n"] == 1
    busy = db.execute("SELECT sum(orders_in_progress) AS n FROM performer_stats").fetchone()["n"]
    assert busy == 1


def test_parallel_completions_and_ratings_of_one_performer_keep_counters_exact(db, db_url, make_user, make_order):
    performer = make_user("performer")
    customers = [make_user("customer") for _ in range(8)]
    orders = [make_order(c, performer=performer, status="in_progress") for c in customers]
    ratings = [3, 10, 7, 8, 1, 9, 6, 5]

    def complete_and_rate(order, customer, rating):
        def job(connection):
            connection.execute(Q["order_deliver"], {"order_id": order["id"], "performer_id": performer["id"],
                                                    "message": "Done"})
            return connection.execute(Q["order_accept"], {"order_id": order["id"], "customer_id": customer["id"],
                                                          "rating": rating, "review": ""}).rowcount
        return job
    results = run_in_parallel(db_url, [complete_and_rate(o, c, r) for o, c, r in zip(orders, customers, ratings)])
    assert results == [1] * 8
    stats = db.execute("SELECT * FROM performer_stats WHERE performer_id = %s", (performer["id"],)).fetchone()
    assert (stats["orders_completed"], stats["orders_in_progress"], stats["rating_sum"], stats["rating_count"]) == (
        8, 0, sum(ratings), 8)
    assert str(stats["rating_avg"]) == "6.13"  # 49 / 8 = 6.125, rounded half away from zero


def test_every_table_function_and_trigger_is_commented(db):
    missing = db.execute("""
        SELECT 'table ' || c.relname AS what FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') IS NULL
        UNION ALL
        SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal AND obj_description(t.oid, 'pg_trigger') IS NULL
    """).fetchall()
    assert missing == []


def test_every_comment_states_its_rule_instead_of_pointing_at_a_document(db):
    """A DBA reading \\d+ or \\dd in psql has the database, not the spec: no "see SPEC §4"."""
    # Objects made by the schema have oids from 16384 on (FirstNormalObjectId); below are PostgreSQL's own.
    pointing = db.execute("SELECT description FROM pg_description "
                          "WHERE objoid >= 16384 AND description ~* '(\\mspec\\M|§|\\msee\\M)' ORDER BY 1").fetchall()
    assert pointing == []


def wait_until_blocked(db, pid, timeout=10):
    """Waits until backend `pid` waits for a lock (so the interleaving under test really happens)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError("the second transaction never waited for the first")


@pytest.mark.parametrize("first", ["block", "create"])
def test_a_block_racing_a_new_order_keeps_the_category_count_exact(db, db_url, make_user, first):
    """Whichever commits first, the order of a blocked customer is not counted in its category."""
    customer = make_user("customer")
    block_sql = "UPDATE users SET is_blocked = true WHERE id = %(customer_id)s"
    params = {"customer_id": customer["id"], "category": "design", "title": "Racing order",
              "description": "Text", "budget": 100, "deadline": None}
    # order_create refuses a blocked customer outright; a DBA's INSERT is the write that races.
    create_sql = ("INSERT INTO orders (customer_id, category_id, title, description, budget) "
                  "SELECT %(customer_id)s, id, %(title)s, %(description)s, %(budget)s "
                  "FROM categories WHERE slug = %(category)s")
    statements = {"block": block_sql, "create": create_sql}
    second = "create" if first == "block" else "block"
    with psycopg.connect(db_url) as one, psycopg.connect(db_url) as two:
        one.execute(statements[first], params)           # holds its row locks, uncommitted
        outcome = run_while_one_waits(db, holder=one, then=("SELECT 1", None),
                                      waiter=two, waiting=(statements[second], params))
    assert outcome == {"holder": "committed", "waiter": "committed"}
    count = db.execute("SELECT open_orders FROM categories WHERE slug = 'design'").fetchone()["open_orders"]
    assert count == 0
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


@pytest.mark.parametrize("first", ["block", "offer"])
def test_a_block_racing_a_new_offer_leaves_the_blocked_performer_no_offer(db, db_url, make_user, make_order, first):
    """Whichever commits first, a blocked performer has no active offer and the order counts none:
    the offer reads its performer FOR SHARE, so it waits for the block and is refused, or the block
    waits for it and withdraws it."""
    order = make_order(make_user("customer"), mode="offers")
    performer = make_user("performer")
    params = {"order_id": order["id"], "performer_id": performer["id"], "price": 900, "days": 3, "message": "Mine"}
    statements = {"block": "UPDATE users SET is_blocked = true WHERE id = %(performer_id)s",
                  "offer": Q["offer_submit"]}
    second = "offer" if first == "block" else "block"
    with psycopg.connect(db_url) as one, psycopg.connect(db_url) as two:
        one.execute(statements[first], params)           # holds its row locks, uncommitted
        outcome = run_while_one_waits(db, holder=one, then=("SELECT 1", None),
                                      waiter=two, waiting=(statements[second], params))
    # the offer waits for the block and is refused, or the block waits for the offer and goes through
    assert outcome == {"holder": "committed", "waiter": "CheckViolation" if first == "block" else "committed"}
    assert db.execute("SELECT count(*) AS n FROM offers WHERE status = 'active'").fetchone()["n"] == 0
    assert db.execute("SELECT offers_active FROM orders WHERE id = %s", (order["id"],)).fetchone()["offers_active"] == 0
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


def test_two_tokens_created_at_once_never_make_an_eleventh(db, db_url, make_user):
    user = make_user("performer")
    for n in range(9):
        db.execute("INSERT INTO api_tokens (user_id, token_hash, label) VALUES (%s, %s, 'old')",
                   (user["id"], bytes([n]) * 32))

    def create(n):
        return lambda connection: connection.execute(
            "INSERT INTO api_tokens (user_id, token_hash, label) VALUES (%s, %s, 'new')",
            (user["id"], bytes([100 + n]) * 32)).rowcount
    results = run_in_parallel(db_url, [create(n) for n in range(4)])
    assert results.count(1) == 1 and all(isinstance(r, psycopg.errors.CheckViolation) for r in results if r != 1)
    assert db.execute("SELECT count(*) AS n FROM api_tokens WHERE user_id = %s", (user["id"],)).fetchone()["n"] == 10


def run_while_one_waits(db, holder, then, waiter, waiting):
    """Runs the statement `waiting` (SQL, params) on `waiter` until it waits for a lock `holder`
    holds, then `then` on `holder`, each committed in a thread of its own: how each ended
    ({"holder": …, "waiter": …}), "committed" or the name of its error (DeadlockDetected)."""
    outcome = {}

    def run(connection, name, statement, params):
        try:
            connection.execute(statement, params)
            connection.commit()
            outcome[name] = "committed"
        except psycopg.Error as err:
            connection.rollback()
            outcome[name] = type(err).__name__

    threads = [threading.Thread(target=run, args=(waiter, "waiter", *waiting))]
    threads[0].start()
    wait_until_blocked(db, waiter.info.backend_pid)
    threads.append(threading.Thread(target=run, args=(holder, "holder", *then)))
    threads[1].start()
    for thread in threads:
        thread.join(timeout=30)
    return outcome


@pytest.mark.parametrize("counters", ["performer_stats", "categories"])
def test_two_crossing_reassignments_at_once_never_deadlock(db, db_url, make_user, make_order, counters):
    """Order one moves from the lower counters row to the higher while order two moves the other way.

    Each move writes both rows, and one's move takes the lower row first either way. The test fixes
    the interleaving: one has got as far as holding the lower row when two's move starts and waits,
    then one's move goes on. Rows taken old-then-new, two holds the higher row while it waits for the
    lower, and one's move then waits for the higher: a deadlock. Taken lowest id first, two waits for
    the lower row holding nothing, and one's move goes through.
    """
    if counters == "performer_stats":
        low, high = make_user("performer"), make_user("performer")
        one = make_order(make_user("customer"), performer=low, status="in_progress")
        two = make_order(make_user("customer"), performer=high, status="in_progress")
        low, high, column = low["id"], high["id"], "performer_id"
        take_row = "SELECT 1 FROM performer_stats WHERE performer_id = %s FOR NO KEY UPDATE"
    else:
        slugs = {r["id"]: r["slug"] for r in db.execute(
            "SELECT id, slug FROM categories WHERE slug IN ('design', 'development')")}
        low, high = sorted(slugs)
        one = make_order(make_user("customer"), category=slugs[low])
        two = make_order(make_user("customer"), category=slugs[high])
        column = "category_id"
        take_row = "SELECT 1 FROM categories WHERE id = %s FOR NO KEY UPDATE"
    assert low < high
    move = f"UPDATE orders SET {column} = %s WHERE id = %s"
    with psycopg.connect(db_url) as first, psycopg.connect(db_url) as second:
        first.execute(take_row, (low,))        # the lock the first move takes first, held from now on
        outcome = run_while_one_waits(db, holder=first, then=(move, (high, one["id"])),
                                      waiter=second, waiting=(move, (low, two["id"])))
    assert outcome == {"holder": "committed", "waiter": "committed"}
    rows = db.execute(f"SELECT id, {column} AS moved_to FROM orders WHERE id IN (%s, %s) ORDER BY id",
                      (one["id"], two["id"])).fetchall()
    assert [(r["id"], r["moved_to"]) for r in rows] == [(one["id"], high), (two["id"], low)]


def test_a_block_and_a_crossing_category_move_at_once_never_deadlock(db, db_url, make_user, make_order):
    """Blocking a customer writes the count of every category they have open orders in; a move of an
    order between categories writes two, lowest id first. The test fixes the interleaving: the move
    holds the lower category when the block starts and waits, then the move goes on to the higher
    one. Had the block taken the higher category first (rows stored out of id order, as counters
    rows are after their updates), the move would then wait for it: a deadlock. Taken lowest id
    first, the block waits holding nothing, and both go through."""
    slugs = {r["id"]: r["slug"] for r in db.execute(
        "SELECT id, slug FROM categories WHERE slug IN ('design', 'development')")}
    low, high = sorted(slugs)
    blocked = make_user("customer")
    make_order(blocked, category=slugs[low])
    make_order(blocked, category=slugs[high])
    moved = make_order(make_user("customer"), category=slugs[low])
    db.execute("UPDATE categories SET name_en = name_en WHERE id = %s", (low,))  # stored after the higher one
    with psycopg.connect(db_url) as mover, psycopg.connect(db_url) as blocker:
        # the plan of a bigger database: every category scanned in stored order, joined by hash
        blocker.execute("SET enable_nestloop = off")
        blocker.execute("SET enable_mergejoin = off")
        mover.execute("SELECT 1 FROM categories WHERE id = %s FOR NO KEY UPDATE", (low,))  # the move's first row
        outcome = run_while_one_waits(
            db, holder=mover, then=("UPDATE orders SET category_id = %s WHERE id = %s", (high, moved["id"])),
            waiter=blocker, waiting=("UPDATE users SET is_blocked = true WHERE id = %s", (blocked["id"],)))
    assert outcome == {"holder": "committed", "waiter": "committed"}
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


def test_a_block_and_an_accept_at_once_never_deadlock(db, db_url, make_user, make_order):
    """An accept locks its order, then declines the order's other offers; a block withdraws the
    offers of the performer it blocks. The test fixes the interleaving: the accept holds the order
    when the block of another bidder starts and waits, then the accept goes on. Had the block taken
    that bidder's offer first, the accept would then wait for it: a deadlock. Taking the orders of
    the offers first, the block waits holding none of it, and both go through."""
    customer = make_user("customer")
    chosen, blocked = make_user("performer"), make_user("performer")
    order = make_order(customer, mode="offers")
    offers = {performer["id"]: db.execute(Q["offer_submit"], {
        "order_id": order["id"], "performer_id": performer["id"], "price": 900, "days": 3, "message": "Mine",
    }).fetchone()["id"] for performer in (chosen, blocked)}
    with psycopg.connect(db_url) as accepter, psycopg.connect(db_url) as blocker:
        accepter.execute("SELECT 1 FROM orders WHERE id = %s FOR UPDATE", (order["id"],))  # the accept's first step
        outcome = run_while_one_waits(
            db, holder=accepter,
            then=("SELECT order_accept_offer(%s, %s, %s)", (order["id"], offers[chosen["id"]], customer["id"])),
            waiter=blocker, waiting=("UPDATE users SET is_blocked = true WHERE id = %s", (blocked["id"],)))
    assert outcome == {"holder": "committed", "waiter": "committed"}
    statuses = {r["performer_id"]: r["status"] for r in db.execute("SELECT performer_id, status::text FROM offers")}
    assert statuses == {chosen["id"]: "accepted", blocked["id"]: "declined"}
    assert db.execute("SELECT * FROM audit_counters()").fetchall() == []


@pytest.mark.parametrize("table", ["order_history", "order_deliveries", "files", "admin_log"])
def test_the_append_only_and_guarded_tables_cannot_be_emptied_by_truncate(db, people, make_order, table):
    """Their row triggers refuse a DELETE of their own; TRUNCATE fires no row trigger, so it is refused."""
    make_order(people["customer"], performer=people["performer"], status="delivered")
    before = db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="TRUNCATE of [a-z_]+ is refused"):
        with db.transaction():
            db.execute(f"TRUNCATE {table} CASCADE")  # CASCADE: files refer to deliveries
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == before
