"""Orders: the home page, the feed, order pages, transitions and the cabinets (SPEC §4–5).

Every transition is one conditional SQL statement (db/queries.sql) that checks role, ownership and
state itself; only when it touches no row do we read the order once to answer 404, 403 or 409.
"""
import datetime
import re
import time

from bottle import request

import files
from web import (FILES_BODY_BYTES, Form, Routes, _, act_as, category_name, csrf_protect, current_lang, current_user,
                 db_all, db_one, db_run, db_table, error_response, link, login_required, not_found, redirect, render,
                 reread_unread_counts, role_required, safe_next, session_role, session_token_hash,
                 user_or_login)

routes = Routes()

PAGE_SIZE = 20  # the feed queries say LIMIT 21: one more row tells whether a next page exists
SEARCH_WINDOW = 2000  # open orders a search scans in feed order before it asks the GIN index
CABINET_PAGE_SIZE = 20
BUDGET_MAX = 100_000_000
STATUSES = ("open", "in_progress", "delivered", "disputed", "done", "cancelled")
MODES = ("take", "offers")
# The first page of a keyset list starts "after" a row beyond every real one.
END_OF_TIME = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
LAST_ID = 2**63 - 1
TOP_BUDGET = 2**31 - 1
FEED_SORTS = ("new", "budget", "cheap", "deadline")
RATING_OPTIONS = [(str(n), str(n)) for n in range(10, 0, -1)]


# ---------------------------------------------------------------------------------------------
# Keyset cursors: "<sort key>_<id>" of the last row shown

def cursor_after(row, key):
    """The `after` parameter that continues a list after this row."""
    value = row[key]
    if key == "deadline":
        value = value or "infinity"
    text = value.isoformat() if isinstance(value, (datetime.datetime, datetime.date)) else str(value)
    return f"{text}_{row['id']}"


def parse_time_cursor(text):
    """(moment, id) from '2026-11-26T10:00:00.123456+00:00_123', or None when malformed."""
    key, _sep, id_text = text.rpartition("_")
    if not key.isascii() or not re.fullmatch(r"[1-9][0-9]{0,17}", id_text):
        return None
    try:
        moment = datetime.datetime.fromisoformat(key)
    except ValueError:
        return None
    return (moment, int(id_text)) if moment.tzinfo is not None else None


def parse_deadline_cursor(text):
    """(the deadline key as text, id) from '2026-12-01_123' or 'infinity_123' (no deadline), or None."""
    key, _sep, id_text = text.rpartition("_")
    if not re.fullmatch(r"[1-9][0-9]{0,17}", id_text):
        return None
    if key != "infinity":
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", key):
            return None
        try:
            datetime.date.fromisoformat(key)
        except ValueError:
            return None
    return (key, int(id_text))


def parse_budget_cursor(text):
    """(budget, id) from '5000_123', or None when malformed."""
    key, _sep, id_text = text.rpartition("_")
    if not re.fullmatch(r"[0-9]{1,10}", key) or not re.fullmatch(r"[1-9][0-9]{0,17}", id_text):
        return None
    return (int(key), int(id_text)) if int(key) <= TOP_BUDGET else None


# ---------------------------------------------------------------------------------------------
# The home page and the feed

@routes.get("/", read_only=True)
def home():
    return render("home.html", latest=db_all("orders_latest_open"), top_performers=db_all("home_performers_top"))


@routes.get("/orders", read_only=True)
def feed():
    """Open orders: full-text search, category, budget range, four sorts, keyset pages of 20, and
    how many match (counted up to feed_count_cap() in SQL)."""
    categories = db_all("feed_categories")
    visible = [category for category in categories if not category["is_hidden"]]
    by_slug = {category["slug"]: category for category in visible}
    form = Form(request.query)
    filters, sort, cursor = read_feed_filters(form, by_slug)
    # the sidebar's categories, as its kept macro takes them (feed_sidebar)
    sidebar = tuple((category["slug"], category["name_ru"], category["name_en"], category["open_orders"])
                    for category in visible)
    page = {"values": form.values, "errors": form.errors, "active": by_slug.get(form.values.get("category")),
            "sort": sort, "sidebar": sidebar}
    if not form.ok:
        return render("orders_feed.html", status=400, orders=[], next_url=None, first_url="/orders", **page)
    orders, next_after, counted = feed_page(filters, sort, cursor)
    next_url = link("/orders", form.values, after=next_after) if next_after else None
    first_url = link("/orders", form.values, after=None) if cursor else None
    matches, cap = feed_matches(filters, categories, page["active"], counted)
    return render("orders_feed.html", orders=with_categories(orders, categories), next_url=next_url,
                  first_url=first_url, matches=matches, matches_cap=cap, **page)


def with_categories(rows, categories):
    """The feed's rows with their category's slug and names (the feed query leaves out the join:
    planning it was a third of the query's time)."""
    by_id = {category["id"]: category for category in categories}
    for row in rows:
        category = by_id[row["category_id"]]
        row.update(category_slug=category["slug"], category_name_ru=category["name_ru"],
                   category_name_en=category["name_en"])
    return rows


def feed_matches(filters, categories, category, counted=None):
    """How many open orders match: (n, None) from the counters the triggers keep (open orders of
    customers not blocked, by category) when only a category (or nothing) is chosen, else counted:
    (n, cap) where n > cap means "more than cap". Counting looks among the newest first, down to
    the window edge of the first page of the newest-first feed, then beyond it when fewer than
    cap + 1 matched there; `counted` is that first look when the page made it (see feed_page)."""
    if beyond_category(filters):
        if counted is not None and counted["final"]:
            return counted["n"], counted["cap"]
        edge = counted["edge"] if counted is not None else window_edge({"sort": "new", **first_page_cursor("new")})
        row = db_one("orders_feed_count", **edge, **filters)
        return row["n"], row["cap"]
    if category:
        return category["open_orders"], None
    return sum(row["open_orders"] for row in categories), None


def beyond_category(filters):
    """Whether the feed's filters ask for more than a category: a term or a budget."""
    return bool(filters["q"]) or filters["min_budget"] is not None or filters["max_budget"] is not None


SORT_KEYS = {"new": "created_at", "budget": "budget", "cheap": "budget", "deadline": "deadline"}
CURSOR_PARAMS = {"new": "after_time", "budget": "after_budget", "cheap": "after_budget", "deadline": "after_deadline"}
# The feed in each sort with no filter: a statement each, whose plan PostgreSQL keeps
ONE_PLAN_FEEDS = {"new": "orders_feed_newest", "budget": "orders_feed_highest_budget",
                  "cheap": "orders_feed_lowest_budget", "deadline": "orders_feed_nearest_deadline"}
CURSOR_PARSERS = {"new": lambda text: parse_time_cursor(text), "budget": lambda text: parse_budget_cursor(text),
                  "cheap": lambda text: parse_budget_cursor(text), "deadline": lambda text: parse_deadline_cursor(text)}


def first_page_cursor(sort):
    """The cursor the first page starts after: beyond every real row in the sort's direction."""
    ascending = sort in ("cheap", "deadline")
    return {"after_time": END_OF_TIME, "after_budget": 0 if ascending else TOP_BUDGET,
            "after_deadline": "-infinity", "after_id": 0 if ascending else LAST_ID}


def feed_page(filters, sort, cursor):
    """One page of the feed after the cursor: (orders, the `after` of the next page or None, the
    count of matches a search's first page newest first makes on its way: {"n", "cap", "edge",
    "final"}, see feed_matches; else None)."""
    position = first_page_cursor(sort)
    if cursor:
        position[CURSOR_PARAMS[sort]], position["after_id"] = cursor
    rows, counted = feed_rows(sort, position, filters)
    orders = rows[:PAGE_SIZE]
    if cursor:
        counted = None  # counted from this page on, not from the first
    if len(rows) <= PAGE_SIZE:
        return orders, None, counted
    return orders, cursor_after(orders[-1], SORT_KEYS[sort]), counted


NO_EDGE = {"edge_id": None, "edge_time": None, "edge_budget": None, "edge_deadline": None}


def feed_rows(sort, position, filters):
    """Up to PAGE_SIZE + 1 feed rows after the cursor, and for a search newest first the matches
    it counted in its window on the way (see feed_page; else None); a search costs little
    whatever the term."""
    cursor = {"sort": sort, **position}
    if not beyond_category(filters) and (filters["category_id"] is None or sort == "new"):
        # the feed's own links, its sorts and the sidebar's: statements with one plan
        after = {CURSOR_PARAMS[sort]: position[CURSOR_PARAMS[sort]], "after_id": position["after_id"]}
        if filters["category_id"] is None:
            return db_all(ONE_PLAN_FEEDS[sort], **after), None
        return db_all("orders_feed_in_category", category_id=filters["category_id"], **after), None
    edge = window_edge(cursor) if filters["q"] else NO_EDGE
    if filters["q"] and sort == "new":
        rows, counted = search_newest(position, edge, filters)
    else:
        rows, counted = db_all("orders_feed", **cursor, **edge, **filters), None
    if filters["q"] and edge["edge_id"] and len(rows) <= PAGE_SIZE:
        # A rare term: the rest through the full-text index, beyond the window.
        rows += db_all("orders_feed_search_older", limit=PAGE_SIZE + 1 - len(rows),
                       **cursor, **edge, **filters)
    return rows, counted


def search_newest(position, edge, filters):
    """A search's rows newest first after the cursor down to the window edge (orders_search_newest),
    and the matches it counted there: {"n", "cap", "edge", "final"}, final when more than the cap
    matched in the window, or the window held every open order left."""
    rows = db_all("orders_search_newest", after_time=position["after_time"], after_id=position["after_id"],
                  edge_time=edge["edge_time"], edge_id=edge["edge_id"], **filters)
    counted = {"n": 0, "cap": None, "edge": edge}
    for row in rows:  # each row says it: the statement's count, and the cap
        counted.update(n=row.pop("window_matches"), cap=row.pop("matches_cap"))
    counted["final"] = edge["edge_id"] is None or bool(rows) and counted["n"] > counted["cap"]
    return rows, counted


def window_edge(cursor):
    """The edge of the next SEARCH_WINDOW open orders after the feed cursor, in its sort (NO_EDGE
    when fewer are left): a search looks for matches there first, by the feed index.

    Kept for EDGE_SECONDS in each worker (a search's first page, and its count, start after the
    same cursor every time): the edge only says where a search looks first, and the rows on
    either side of it are found all the same, so one a few seconds old costs nothing; walking
    2,000 index entries to find it again was a fifth of a search's time in PostgreSQL."""
    key = (request.app.config["db.url"], SEARCH_WINDOW, *sorted(cursor.items()))
    now = time.monotonic()
    kept = _edges.get(key)
    if kept is not None and kept[0] > now:
        return kept[1]
    row = db_one("orders_feed_window_edge", window=SEARCH_WINDOW, **cursor)
    edge = NO_EDGE if row is None else {"edge_id": row["id"], "edge_time": row["created_at"],
                                        "edge_budget": row["budget"], "edge_deadline": row["deadline_key"]}
    if len(_edges) >= 256:  # deep pages' cursors come and go
        _edges.clear()
    _edges[key] = (now + EDGE_SECONDS, edge)
    return edge


EDGE_SECONDS = 10
_edges = {}


def read_feed_filters(form, by_slug):
    """The feed's query parameters: (filters for the query, sort, cursor or None); errors in form."""
    q = form.text("q", required=False, max_len=200)
    slug = form.choice("category", by_slug, required=False)
    min_budget = form.integer("min_budget", required=False, min_value=0, max_value=BUDGET_MAX)
    max_budget = form.integer("max_budget", required=False, min_value=0, max_value=BUDGET_MAX)
    sort = form.choice("sort", FEED_SORTS, required=False) or "new"
    after = form.text("after", required=False, max_len=100)
    if min_budget is not None and max_budget is not None and min_budget > max_budget:
        form.errors["max_budget"] = _("The maximum cannot be smaller than the minimum.")
    cursor = None
    if after and "after" not in form.errors:
        cursor = CURSOR_PARSERS[sort](after)
        if cursor is None:
            form.errors["after"] = _("This page link is broken. Start again from the first page.")
    filters = {"q": q or None, "category_id": by_slug[slug]["id"] if slug else None,
               "min_budget": min_budget, "max_budget": max_budget}
    return filters, sort, cursor


# ---------------------------------------------------------------------------------------------
# Who may do what: for the forms shown, and to explain a refused write

PERFORMER_ACTIONS = ("deliver", "withdraw")


def is_hidden_from(order, user):
    """Open orders of a blocked customer are gone for everyone but staff and that customer."""
    return (order["status"] == "open" and order["customer_blocked"]
            and not (user and (user["is_staff"] or user["id"] == order["customer_id"])))


def is_allowed(order, user, action):
    """Whether this person may do `action` to this order at all, whatever its state."""
    me = user["id"]
    if action in ("take", "offer", "withdraw_offer"):
        return user["role"] == "performer" and me != order["customer_id"]
    if action in PERFORMER_ACTIONS:
        return me == order["performer_id"]
    if action == "dispute":
        return me in (order["customer_id"], order["performer_id"])
    return me == order["customer_id"]  # staff act on others' orders only in /admin


def forbidden_message(action, user):
    if action in ("take", "offer", "withdraw_offer"):
        return _("Only performers can take orders or send offers.")
    if action in PERFORMER_ACTIONS:
        return _("Only the performer of this order can do this.")
    if action == "dispute":
        return _("Only the customer and the performer of this order can open a dispute.")
    if action == "cancel" and user["is_staff"]:
        return _("Staff cancel other people's orders in the admin area, with a reason for the audit log.")
    if action == "cancel":
        return _("Only the order's customer can cancel it.")
    if action == "rate":
        return _("Only the order's customer can rate it.")
    if action in ("accept", "revision", "accept_offer"):
        return _("Only the order's customer can do this.")
    return _("Only the order's customer can edit it.")


def conflict_message(order, user, action):
    """Why the order's state refuses `action` now."""
    status = order["status"]
    if action == "take":
        if order["performer_id"] == user["id"]:
            return _("You have already taken this order.")
        if status == "cancelled":
            return _("This order was cancelled and can no longer be taken.")
        if status == "open" and order["mode"] == "offers":
            return _("The customer chooses among offers for this order: send an offer instead.")
        return _("This order was already taken by someone else.")
    if action in ("offer", "withdraw_offer"):
        if status == "open" and order["mode"] != "offers":
            return _("This order takes no offers: it goes to the first performer who takes it.")
        if action == "withdraw_offer" and status == "open":
            return _("You have no active offer on this order.")
        return _("This order is no longer open for offers.")
    if action == "accept_offer":
        if status == "open":
            return _("This offer is no longer active.")
        return _("This order is no longer open: an offer was already accepted.")
    if action == "deliver":
        return _("Only an order in progress can be delivered.")
    if action == "withdraw":
        return _("Only an order in progress can be given back.")
    if action in ("accept", "revision"):
        return _("There is no delivered work waiting for your answer.")
    if action == "dispute":
        return _("A dispute can be opened only on an order in progress or delivered.")
    if action == "cancel":
        if status == "in_progress":
            return _("An order in progress can be cancelled only once its deadline has passed. Until then, open a dispute if something is wrong.")
        if status in ("done", "delivered", "disputed"):
            return _("This order can no longer be cancelled.")
        return _("This order is already cancelled.")
    if action == "rate":
        if order["is_rated"]:
            return _("This order has already been rated.")
        return _("Only a done order can be rated.")
    if action == "edit" and status == "open":
        return _("The mode can change only while the order has no active offers.")
    return _("Only an open order can be edited.")


def refuse(order_id, action):
    """After a conditional write touched no row: read the order once and raise 404, 403 or 409."""
    order = db_one("order_state_read", order_id=order_id)
    user = current_user()
    if order is None or is_hidden_from(order, user):
        raise not_found(_("There is no such order."))
    if not is_allowed(order, user, action):
        raise error_response(403, forbidden_message(action, user))
    if action in ("take", "offer") and order["status"] == "open" and (
            action == "offer") == (order["mode"] == "offers"):
        # still open and of the right mode: the performer (or the customer) is blocked
        raise error_response(403, _("Your account cannot take orders right now."))
    raise error_response(409, conflict_message(order, user, action))


def permissions(order, user):
    """The forms this viewer sees on the order page (the SQL decides for real)."""
    can = dict.fromkeys(("take", "offer", "accept_offer", "edit", "cancel", "deliver", "withdraw",
                         "accept", "revision", "dispute", "rate", "staff"), False)
    if user is None:
        return can
    status = order["status"]
    is_customer = user["id"] == order["customer_id"]
    is_performer = user["id"] == order["performer_id"]
    open_for_performers = (user["role"] == "performer" and status == "open"
                           and not order["customer_blocked"])
    can.update(
        take=open_for_performers and order["mode"] == "take",
        offer=open_for_performers and order["mode"] == "offers",
        accept_offer=is_customer and status == "open" and order["mode"] == "offers",
        edit=is_customer and status == "open",
        cancel=is_customer and (status == "open" or (status == "in_progress" and bool(order["overdue"]))),
        deliver=is_performer and status == "in_progress",
        withdraw=is_performer and status == "in_progress",
        accept=is_customer and status == "delivered",
        revision=is_customer and status == "delivered",
        dispute=(is_customer or is_performer) and status in ("in_progress", "delivered"),
        rate=is_customer and status == "done" and not order["is_rated"],
        staff=bool(user["is_staff"]),
    )
    return can


# ---------------------------------------------------------------------------------------------
# The order page

def load_order(order_id):
    """The order as its page shows it to this viewer; 404 when unknown or hidden from them."""
    user = current_user()
    order = db_one("order_page_read", order_id=order_id, staff=bool(user and user["is_staff"]))
    if order is None or is_hidden_from(order, user):
        raise not_found(_("There is no such order."))
    return order


def order_offers(order, user):
    """What the viewer sees of the offers: the customer (and staff) every active offer, a
    performer their own; everyone the count."""
    if user and (user["id"] == order["customer_id"] or user["is_staff"]):
        return {"all": db_all("offers_of_order", order_id=order["id"]), "mine": None}
    if user and user["role"] == "performer":
        return {"all": None, "mine": db_one("offer_of_performer", order_id=order["id"], performer_id=user["id"])}
    return {"all": None, "mine": None}


def render_order(order, status=200, values=None, errors=None, form_name=None):
    """The order page; the timeline shows the notes staff wrote (their reasons) to staff only.
    After a 400, `form_name` says which form the values and errors belong to."""
    user = current_user()
    parties = user and (user["is_staff"] or user["id"] in (order["customer_id"], order["performer_id"]))
    return render("order.html", status=status, order=order, rating_options=RATING_OPTIONS,
                  history=db_all("order_history_list", order_id=order["id"],
                                 staff=bool(user and user["is_staff"])),
                  deliveries=order_deliveries(order) if parties else [],
                  offers=order_offers(order, user),
                  can=permissions(order, user), values=values or {}, errors=errors or {},
                  form_name=form_name, talk=order_talk(order, user))


def order_deliveries(order):
    """The work handed in, each delivery with its files."""
    rows = db_all("order_deliveries_list", order_id=order["id"])
    attached = {}
    for row in db_all("files_of_order_deliveries", order_id=order["id"]):
        attached.setdefault(row["delivery_id"], []).append(files.describe(row))
    for row in rows:
        row["files"] = attached.get(row["id"], [])
    return rows


def order_talk(order, user):
    """What the order page offers about talking: the contacts of the other side once a performer
    is assigned (to the customer and that performer only), and the way to the conversations."""
    talk = {"contacts": None, "messages_url": None, "unread": 0, "staff_read": False}
    if user is None:
        return talk
    me = user["id"]
    if order["performer_id"] and me in (order["customer_id"], order["performer_id"]):
        talk["contacts"] = db_one("order_contacts", order_id=order["id"], user_id=me)
    if me == order["customer_id"]:
        conversations = db_all("conversations_of_order", order_id=order["id"], customer_id=me)
        if conversations or order["performer_id"]:
            talk["messages_url"] = f"/orders/{order['id']}/messages"
            talk["unread"] = sum(row["unread"] for row in conversations)
    elif user["role"] == "performer":
        mine = db_one("conversation_of", order_id=order["id"], performer_id=me)
        if mine or (order["status"] == "open" and not order["customer_blocked"]) or order["performer_id"] == me:
            talk["messages_url"] = f"/orders/{order['id']}/messages"
            talk["unread"] = mine["performer_unread"] if mine else 0
    elif user["is_staff"] and order["status"] == "disputed":
        talk["messages_url"] = f"/orders/{order['id']}/messages"
        talk["staff_read"] = True
    return talk


@routes.get("/orders/<order_id:id>", read_only=True)
def order_page(order_id):
    order = load_order(order_id)
    user = current_user()
    if user and user.get("unread_notifications") and \
            db_run("notifications_read_for_order", user_id=user["id"], order_id=order_id):
        reread_unread_counts(user)
    return render_order(order)


@routes.get("/orders/<order_id:id>/<action:re:take|complete|deliver|cancel|rate|accept|revision|withdraw|dispute|offers>")
def order_action_page(order_id, action):
    """A GET of an action's URL (after signing in, say) shows the order and its forms."""
    redirect(f"/orders/{order_id}")


def refuse_bad_input(order_id, action):
    """Bad input for `action` (a form, or an API body): raises 404 / 403 / 409 as the write would;
    otherwise returns the order, and the answer is a 400 with each field's error."""
    order = load_order(order_id)
    user = current_user()
    if not is_allowed(order, user, action):
        raise error_response(403, forbidden_message(action, user))
    if not permissions(order, user)[action]:  # the form is not on the page any more
        raise error_response(409, conflict_message(order, user, action))
    return order


def reshow_order_form(order_id, action, form):
    """Bad input on an order-page form: 404 / 403 / 409 as the write would, else the page with 400
    (413 when a file was too large: files.read_uploads says so)."""
    order = refuse_bad_input(order_id, action)
    return render_order(order, status=getattr(form, "status", 400), values=form.values, errors=form.errors,
                        form_name=action)


def back_to(order_id):
    """Where a transition returns: the local `next` of the form, else the order page."""
    return safe_next(request.forms.getunicode("next") or "", f"/orders/{order_id}")


# ---------------------------------------------------------------------------------------------
# Transitions (SPEC §4): one conditional statement each. The functions below are shared by the
# HTML routes and the JSON API (api.py): each reads its fields from a Form (errors go into
# form.errors), or makes its write and raises 404/403/409 if refused.

def transition(query, order_id, user, action, note="", **params):
    """Runs one transition statement as `user`; when it touches nothing, explains why (raises)."""
    act_as(user["id"], note)
    if db_one(query, order_id=order_id, **params) is None:
        refuse(order_id, action)


def take_order(order_id, user):
    transition("order_take", order_id, user, "take", performer_id=user["id"])


def read_reason(form, required):
    return form.text("reason", required=required, max_len=1000, multiline=True).strip()


def read_cancel_fields(form):
    return {"reason": read_reason(form, required=False)}


def check_cancel_confirmed(form):
    """The order page's cancel form also carries the ticked box that confirms it (a cancel cannot be
    undone, and the page must ask without JavaScript too); the API's caller has decided already."""
    if form.raw("confirm") != "yes":
        form.errors["confirm"] = _("Tick the box to confirm: a cancelled order cannot be reopened.")


def cancel_order(order_id, user, reason):
    transition("order_cancel", order_id, user, "cancel", note=reason, actor_id=user["id"], reason=reason)


def read_rate_fields(form):
    """The rating form's fields: {"rating": ..., "review": ...}."""
    return {"rating": form.integer("rating", min_value=1, max_value=10),
            "review": form.text("review", required=False, max_len=5000, multiline=True).strip()}


def rate_order(order_id, user, rating, review):
    transition("order_rate", order_id, user, "rate", customer_id=user["id"], rating=rating, review=review)


def read_deliver_fields(form):
    return {"message": form.text("message", max_len=5000, multiline=True).strip()}


def read_deliver_form(form):
    """The HTML deliver form: the message, and up to 5 files of 10 MB (errors in form.errors)."""
    return {**read_deliver_fields(form), "uploads": files.read_uploads(form)}


def deliver_order(order_id, user, message, uploads=()):
    """Hands the work in with its message; the files are attached to the delivery in the same
    transaction (stored on disk only once the delivery is written)."""
    act_as(user["id"])
    row = db_one("order_deliver", order_id=order_id, performer_id=user["id"], message=message)
    if row is None:
        refuse(order_id, "deliver")
    files.attach(uploads, user, delivery_id=row["delivery_id"])


def read_accept_fields(form):
    """Accepting the work: the rating is optional here, the review goes only with a rating."""
    fields = {"rating": form.integer("rating", required=False, min_value=1, max_value=10),
              "review": form.text("review", required=False, max_len=5000, multiline=True).strip()}
    if fields["review"] and fields["rating"] is None and "rating" not in form.errors:
        form.errors["rating"] = _("A review goes with a rating: choose one, or leave the review empty.")
    return fields


def accept_work(order_id, user, rating, review):
    transition("order_accept", order_id, user, "accept", customer_id=user["id"], rating=rating, review=review)


def read_reason_fields(form):
    """A required reason: a revision, a dispute, giving an order back."""
    return {"reason": read_reason(form, required=True)}


def ask_revision(order_id, user, reason):
    transition("order_revision", order_id, user, "revision", note=reason, customer_id=user["id"])


def withdraw_order(order_id, user, reason):
    transition("order_withdraw", order_id, user, "withdraw", note=reason, performer_id=user["id"])


def open_dispute(order_id, user, reason):
    transition("order_dispute", order_id, user, "dispute", note=reason, user_id=user["id"])


def read_offer_fields(form):
    return {"price": form.integer("price", min_value=1, max_value=BUDGET_MAX),
            "days": form.integer("days", min_value=1, max_value=365),
            "message": form.text("message", max_len=2000, multiline=True).strip()}


def send_offer(order_id, user, price, days, message):
    """Sends or changes the performer's offer; True when it is a new one."""
    act_as(user["id"])
    row = db_one("offer_submit", order_id=order_id, performer_id=user["id"], price=price, days=days,
                 message=message)
    if row is None:
        refuse(order_id, "offer")
    return row["created"]


def withdraw_offer(order_id, user):
    act_as(user["id"])
    if db_one("offer_withdraw", order_id=order_id, performer_id=user["id"]) is None:
        refuse(order_id, "withdraw_offer")


def accept_offer(order_id, offer_id, user):
    act_as(user["id"])
    if db_one("offer_accept", order_id=order_id, offer_id=offer_id, customer_id=user["id"])["id"] is None:
        if db_one("offer_state_read", order_id=order_id, offer_id=offer_id) is None:
            order = db_one("order_state_read", order_id=order_id)
            if order is not None and not is_hidden_from(order, user) and is_allowed(order, user, "accept_offer"):
                raise not_found(_("There is no such offer on this order."))
        refuse(order_id, "accept_offer")


# The HTML routes: read the form, make the transition, go back with a message.
FORM_TRANSITIONS = {
    # action: (reader of the form's fields, transition, role, success message)
    "take": (None, take_order, "performer", lambda: _("The order is yours. Good luck with the work!")),
    "deliver": (read_deliver_form, deliver_order, "performer",
                lambda: _("The work is handed in. The customer will accept it or ask for a revision.")),
    "withdraw": (read_reason_fields, withdraw_order, "performer",
                 lambda: _("You gave the order back. It is open to other performers again.")),
    "cancel": (read_cancel_fields, cancel_order, None, lambda: _("The order is cancelled.")),
    "rate": (read_rate_fields, rate_order, "customer", lambda: _("Thank you! Your rating is saved.")),
    "accept": (read_accept_fields, accept_work, "customer", lambda: _("The work is accepted and the order is done.")),
    "revision": (read_reason_fields, ask_revision, "customer",
                 lambda: _("The work is sent back for a revision with your reason.")),
    "dispute": (read_reason_fields, open_dispute, None,
                lambda: _("A dispute is opened. Birzha staff will look into it and settle it.")),
}


def run_form_transition(order_id, action):
    reader, make, role, message = FORM_TRANSITIONS[action]
    user = current_user()
    if role and user["role"] != role:
        raise error_response(403, _("This action is not available for your account."))
    form = Form()
    fields = reader(form) if reader else {}
    if action == "cancel":
        check_cancel_confirmed(form)
    if not form.ok:
        return reshow_order_form(order_id, action, form)
    make(order_id, user, **fields)
    redirect(back_to(order_id), message())


def form_route(action, path=None):
    """POST /orders/<id>/<action>: signed in, CSRF-checked, one transition. Delivering takes files,
    so its body may be as large as FILES_BODY_BYTES."""
    @csrf_protect
    @login_required
    def route(order_id):
        return run_form_transition(order_id, action)
    route.__name__ = f"order_{action}"
    config = {"max_body": FILES_BODY_BYTES} if action == "deliver" else {}
    routes.post(f"/orders/<order_id:id>/{path or action}", callback=route, name=f"order_{path or action}", **config)


for _action in FORM_TRANSITIONS:
    form_route(_action)
form_route("deliver", path="complete")  # the first name of delivering, kept for old links and clients


@routes.post("/orders/<order_id:id>/offers")
@csrf_protect
@role_required("performer")
def order_offer(order_id):
    form = Form()
    fields = read_offer_fields(form)
    if not form.ok:
        return reshow_order_form(order_id, "offer", form)
    created = send_offer(order_id, current_user(), **fields)
    redirect(back_to(order_id), _("Your offer is sent to the customer.") if created
             else _("Your offer is changed."))


@routes.post("/orders/<order_id:id>/offers/withdraw")
@csrf_protect
@role_required("performer")
def order_offer_withdraw(order_id):
    withdraw_offer(order_id, current_user())
    redirect(back_to(order_id), _("Your offer is withdrawn."))


@routes.post("/orders/<order_id:id>/offers/<offer_id:id>/accept")
@csrf_protect
@role_required("customer")
def order_offer_accept(order_id, offer_id):
    accept_offer(order_id, offer_id, current_user())
    redirect(back_to(order_id), _("The offer is accepted: the performer starts the work."))


# ---------------------------------------------------------------------------------------------
# Placing and editing an order

def category_options():
    """(slug, name) of the categories a new order may use: the visible ones."""
    return [(row["slug"], category_name(row)) for row in db_all("categories_list")]


def read_order_form(form, slugs, today, unchanged_deadline=None):
    """The order fields from the form; errors go into form.errors."""
    return {
        "title": form.text("title", min_len=3, max_len=200),
        "description": form.text("description", max_len=10000, multiline=True).strip(),
        "category": form.choice("category", slugs),
        "budget": form.integer("budget", min_value=1, max_value=BUDGET_MAX),
        "deadline": form.date("deadline", not_before=today, unchanged=unchanged_deadline),
        "mode": form.choice("mode", MODES, required=False) or "take",
    }


def read_new_order(form, options):
    """The fields of a new order in one of the visible categories `options`; errors in form.errors."""
    return read_order_form(form, [slug for slug, _name in options], db_one("date_today")["today"])


def create_order(user, fields, form):
    """Publishes the order and returns its id; None (an error in form) if its category was just hidden."""
    act_as(user["id"])
    created = db_one("order_create", customer_id=user["id"], **fields)
    if created is None:
        form.errors["category"] = _("Choose one of the options.")  # hidden a moment ago
        return None
    return created["id"]


def render_order_form(values, errors, status=200, order=None, options=None):
    return render("order_form.html", status=status, values=values, errors=errors, order=order,
                  category_options=options or category_options())


@routes.get("/orders/new")
@role_required("customer")
def order_new():
    return render_order_form({}, {})


@routes.post("/orders")
@csrf_protect
@role_required("customer")
def order_create():
    user = current_user()
    options = category_options()
    form = Form()
    fields = read_new_order(form, options)
    order_id = create_order(user, fields, form) if form.ok else None
    if order_id is not None:
        redirect(f"/orders/{order_id}", _("Your order is published."))
    return render_order_form(form.values, form.errors, status=400, options=options)


def order_to_edit(order_id):
    """The order its customer is about to edit: 404 unknown, 403 not theirs, 409 no longer open."""
    order = load_order(order_id)
    user = current_user()
    if not is_allowed(order, user, "edit"):
        raise error_response(403, forbidden_message("edit", user))
    if order["status"] != "open":
        raise error_response(409, _("Only an open order can be edited."))
    return order


def edit_options(order):
    """The visible categories, and the order's own even if staff have hidden it since."""
    options = category_options()
    if order["category_slug"] not in [slug for slug, _name in options]:
        options.append((order["category_slug"], category_name(order)))
    return options


@routes.get("/orders/<order_id:id>/edit")
@login_required
def order_edit(order_id):
    order = order_to_edit(order_id)
    values = {"title": order["title"], "description": order["description"],
              "category": order["category_slug"], "budget": str(order["budget"]),
              "deadline": order["deadline"].isoformat() if order["deadline"] else "",
              "mode": order["mode"]}
    return render_order_form(values, {}, order=order, options=edit_options(order))


def read_edit_fields(form, order, options):
    """The fields of an edit of `order` (a deadline since passed may stay); errors in form.errors."""
    return read_order_form(form, [slug for slug, _name in options], db_one("date_today")["today"],
                           unchanged_deadline=order["deadline"])


def update_order(order_id, user, fields):
    """Saves an edit by the order's customer (a mode change is recorded as theirs); raises if refused."""
    act_as(user["id"])
    if db_one("order_update", order_id=order_id, customer_id=user["id"], **fields) is None:
        refuse(order_id, "edit")


@routes.post("/orders/<order_id:id>/edit")
@csrf_protect
@login_required
def order_edit_save(order_id):
    order = order_to_edit(order_id)
    options = edit_options(order)
    form = Form()
    fields = read_edit_fields(form, order, options)
    if not form.ok:
        return render_order_form(form.values, form.errors, status=400, order=order, options=options)
    update_order(order_id, current_user(), fields)
    redirect(f"/orders/{order_id}", _("The order is saved."))


# ---------------------------------------------------------------------------------------------
# The cabinets

def read_time_cursor(form):
    """(created_at, id) of the row to continue after, from `after`; 400 when the link is broken."""
    after = form.text("after", required=False, max_len=100)
    cursor = parse_time_cursor(after) if after and form.ok else (END_OF_TIME, LAST_ID)
    if not form.ok or cursor is None:
        raise error_response(400, _("This page link is broken. Start again from the first page."))
    return cursor


def keyset_links(base, params, rows, key, size=CABINET_PAGE_SIZE, columns=None):
    """The rows of one page of `size` (`rows` may hold one more; tuples of `columns`, if given),
    and the links to the next and the first pages."""
    shown, next_url = rows[:size], None
    if len(rows) > size:
        last = dict(zip(columns, shown[-1])) if columns else shown[-1]
        next_url = link(base, params, after=cursor_after(last, key))
    return {"next_url": next_url, "first_url": link(base, params) if request.query.get("after") else None}, shown


# The counters of a cabinet's aside (the `counters` of its statement's part 0), in their order there
CUSTOMER_COUNTERS = ("orders_placed", "orders_open", "orders_in_progress", "orders_delivered", "orders_disputed",
                     "orders_done", "orders_cancelled")
PERFORMER_COUNTERS = ("orders_completed", "orders_in_progress", "orders_delivered", "orders_disputed", "rating_count")
PART = 0  # a cabinet statement's first column: 0 its aside, 1 a review, 2 an order


def performer_aside(aside, rows):
    """The performer cabinet's aside (the counters and the average rating, the five latest reviews)
    and its orders, from its statement's rows after the aside (tuples; the reviews come first)."""
    reviews = [row for row in rows if row[PART] == 1]
    stats = dict(zip(PERFORMER_COUNTERS, aside["counters"]), rating_avg=aside["rating_avg"])
    return {"stats": stats, "reviews": reviews, "offers": None}, rows[len(reviews):]


def customer_aside(aside, rows):
    """The customer cabinet's aside (the counters, and the categories of the form of a new order)
    and its orders, from its statement's rows after the aside."""
    return {"stats": dict(zip(CUSTOMER_COUNTERS, aside["counters"])),
            "category_names": dict(aside["category_pairs"])}, rows


# A role's cabinet: its statement, its template, and what makes its aside of the statement's rows
CABINETS = {"customer": ("customer_cabinet_page", "cabinet_customer.html", customer_aside),
            "performer": ("performer_cabinet_page", "cabinet_performer.html", performer_aside)}


def read_cabinet(role, status=None, after=(END_OF_TIME, LAST_ID), limit=CABINET_PAGE_SIZE + 1):
    """The role's cabinet statement, read by the session: its viewer (None once the session has
    ended: the statement then gives no row), its aside with the statement's `columns`, and a page
    of its orders as tuples (limit 0: none)."""
    statement, _template, aside_of = CABINETS[role]
    columns, rows = db_table(statement, token_hash=session_token_hash(), status=status, lang=current_lang(),
                             after_time=after[0], after_id=after[1], limit=limit)
    if not rows:
        return None, {}, []
    aside = dict(zip(columns, rows[0]))
    page, orders = aside_of(aside, rows[1:])
    return aside["viewer"], dict(page, columns=columns), orders


@routes.get("/cabinet", read_only=True)
def cabinet():
    """The customer's or the performer's own orders by status, with the counters of the database
    (and a performer's latest reviews), in one statement that reads the session too: the session's
    token names the role, so its statement is chosen before the viewer is read (a token of before
    that: current_user() first, one statement more)."""
    role = session_role() or user_or_login(current_user())["role"]
    form = Form(request.query)
    status = form.choice("status", STATUSES, required=False)
    after = read_time_cursor(form)
    viewer, aside, rows = read_cabinet(role, status, after)
    if viewer is not None and viewer["role"] != role:  # a token we did not make: its user's own cabinet
        role = viewer["role"]
        viewer, aside, rows = read_cabinet(role, status, after)
    user_or_login(viewer)
    links, orders = keyset_links("/cabinet", {"status": status}, rows, "created_at", columns=aside["columns"])
    return render(CABINETS[role][1], orders=orders, tab=status, **aside, **links)


@routes.get("/cabinet/offers")
@role_required("performer")
def cabinet_offers():
    """My offers: the performer's offers, newest first, each with its order and status."""
    user = current_user()
    form = Form(request.query)
    after_at, after_id = read_time_cursor(form)
    # performer_offers_page says LIMIT 21: a page of CABINET_PAGE_SIZE and one more
    rows = db_all("performer_offers_page", performer_id=user["id"], after_at=after_at, after_id=after_id)
    links, offers = keyset_links("/cabinet/offers", {}, rows, "created_at")
    viewer, aside, _orders = read_cabinet("performer", limit=0)
    user_or_login(viewer)  # the session ended a moment ago
    return render("cabinet_performer.html", **dict(aside, offers=offers), orders=[], tab="offers", **links)
