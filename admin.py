"""The admin area for staff (SPEC §7): dashboard, users, orders, disputes, categories, reviews,
audit log, CSV.

Every route is for staff only (role_required(staff=True); the dashboard checks the viewer its own
statement reads, by the same rule, before anything else). Every action is one named query that
makes the change and writes its admin_log row together, and re-checks in SQL that the actor is
still active staff; when it changes nothing, the route reads once to answer 404, 403 or 409.
"""
import csv
import datetime
import functools
import io
import json
import re
from urllib.parse import urlencode

from bottle import request, response

from orders import cursor_after, parse_time_cursor
from web import (Form, Routes, _, act_as, check_role, csrf_protect, current_lang, current_user, db_all, db_one,
                 db_stream, error_response, ngettext, not_found, redirect, role_required, session_token_hash, template,
                 templates, user_or_login)
from web import render as render_page

routes = Routes()

PAGE_SIZE = 50
staff_only = role_required(staff=True)

ROLES = ("customer", "performer")
STATUSES = ("open", "in_progress", "delivered", "disputed", "done", "cancelled")
OUTCOMES = ("done", "cancelled")  # how staff settle a dispute
YES_NO = {"yes": True, "no": False}
LOG_ACTIONS = ("block", "unblock", "grant_staff", "revoke_staff", "cancel_order", "reopen_order",
               "add_category", "rename_category", "hide_category", "unhide_category",
               "hide_review", "restore_review", "recalc_counters", "resolve_dispute",
               "read_conversation", "read_conversation_file")
LOG_TARGETS = ("user", "order", "category", "review", "counters")
SLUG_PATTERN = r"[a-z0-9]+(-[a-z0-9]+)*"
REASON_MAX = 1000


# The first page of the disputes queue starts after a moment before any dispute.
BEGINNING_OF_TIME = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


# ---------------------------------------------------------------------------------------------
# Helpers: rendering, filters, keyset pages, the reason field

def render(name, status=200, **context):
    """web.render with what every admin page shows: the number of open disputes in the navigation
    (an index-only count on a partial index, up to a cap: "99+")."""
    if "disputes_badge" not in context:  # the dashboard reads it with its figures
        context["disputes_badge"] = db_one("admin_disputes_open")
    return render_page(name, status=status, **context)


def yes_no(form, name):
    """A yes/no/any filter: True, False or None."""
    return YES_NO.get(form.choice(name, tuple(YES_NO), required=False))


def keyset_page(query, **params):
    """One page of a query ordered by id descending, and the id to continue after (or None)."""
    rows = db_all(query, limit=PAGE_SIZE + 1, **params)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return rows, (rows[-1]["id"] if more else None)


def page_urls(form, cursor):
    """Next and first page links that keep the validated filters."""
    filters = {k: v for k, v in form.values.items() if v and k != "after"}
    next_url = "?" + urlencode(dict(filters, after=cursor)) if cursor else None
    first_url = "?" + urlencode(filters) if form.values.get("after") else None
    return next_url, first_url


def log_filters(**filters):
    """Parameters of admin_log_list: every filter off unless given."""
    params = {"action": None, "target_types": None, "target_id": None, "by_staff_id": None, "after_id": None}
    params.update(filters)
    return params


def reason_of(form, required=True):
    """The `reason` of a staff action: one line, at most 1000 characters (the admin_log CHECK)."""
    return form.text("reason", required=required, max_len=REASON_MAX)


def log_json(value):
    """before/after of a log row, readable (Cyrillic as is); empty for none."""
    return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


templates.filters["admin_json"] = log_json


def staff_id():
    """The id of the signed-in staff member (the routes are behind staff_only)."""
    return current_user()["id"]


def lost_rights():
    """The conditional write refused the actor: no longer staff (changed in another tab or by a colleague)."""
    return error_response(403, _("Your staff rights have changed. Reload the page."))


# ---------------------------------------------------------------------------------------------
# Dashboard

CHART_HEIGHT, BAR_WIDTH, BAR_GAP = 100, 14, 4


def bar_chart(days, key):
    """Bar geometry for an inline SVG (sizes as attributes: the CSP allows no style attributes)."""
    top = max((day[key] for day in days), default=0)
    bars = []
    for i, day in enumerate(days):
        height = round(day[key] * CHART_HEIGHT / top) if top else 0
        height = max(height, 1) if day[key] else 0
        bars.append({"x": i * (BAR_WIDTH + BAR_GAP), "y": CHART_HEIGHT - height, "width": BAR_WIDTH,
                     "height": height, "day": day["day"], "value": day[key]})
    return {"bars": bars, "width": len(days) * (BAR_WIDTH + BAR_GAP), "height": CHART_HEIGHT,
            "max": top, "first": days[0]["day"] if days else None, "last": days[-1]["day"] if days else None}


def render_dashboard(status=200, values=None, errors=None):
    """The dashboard; after a 400 of the recount form, with its values and errors. The figures over
    every user and order are the ones the tick stores every minute (computed here only when it
    has not run yet). Its statement reads the viewer's session too: staff only from there on."""
    token_hash = session_token_hash()
    read = db_one("admin_dashboard_read", token_hash=token_hash)
    check_role(user_or_login(read["viewer"]), staff=True)
    if read["computed_at"] is None:
        db_one("dashboard_figures_refresh")
        read = db_one("admin_dashboard_read", token_hash=token_hash)
    figures = {key: read[key] for key in ("computed_at", "age", *FIGURE_PARTS)}
    audit = None
    if read["audit_checked_at"] is not None:
        audit = {key: read["audit_" + key] for key in ("checked_at", "age", "drifted", "drift")}
    return render("admin_dashboard.html", status=status, section="dashboard", figures=figures,
                  figures_html=figures_html(figures),
                  disputes_badge={"n": read["disputes_n"], "cap": read["disputes_cap"]},
                  top=read["top_performers"], audit=audit,
                  values=values or {}, errors=errors or {})


FIGURE_PARTS = ("users_by_role", "orders_by_status", "new_per_day")


def figures_html(figures):
    """The stored figures as the dashboard shows them (counters, two charts of the last 30 days and
    their table), rendered once per worker and language and kept while they stay the same: the tick
    recomputes them once a minute, and their sixty bars were 40% of the page's rendering. Kept
    under the figures themselves, not their time, so a figure changed by hand shows too."""
    return _figures_html(current_lang(), *(tuple(tuple(row.items()) for row in figures[part])
                                           for part in FIGURE_PARTS))


@functools.lru_cache(maxsize=16)
def _figures_html(lang, users_by_role, orders_by_status, new_per_day):
    days = [dict(day, day=datetime.date.fromisoformat(dict(day)["day"])) for day in new_per_day]
    return template("admin_macros.html", lang).module.dashboard_figures(
        [dict(row) for row in users_by_role], [dict(row) for row in orders_by_status], days,
        bar_chart(days, "users"), bar_chart(days, "orders"))


@routes.get("/admin", read_only=True)
def dashboard():
    """Reads, but for the first visit before the tick has run: the figures are then stored by
    one statement of their own (dashboard_figures_refresh)."""
    return render_dashboard()


@routes.post("/admin/counters/recalc")
@csrf_protect
@staff_only
def counters_recalc():
    form = Form()
    reason = reason_of(form, required=False)
    if not form.ok:
        return render_dashboard(400, form.values, form.errors)
    row = db_one("admin_counters_recalc", staff_id=staff_id(), reason=reason)
    if row is None:
        raise lost_rights()
    db_one("counter_audit_refresh")
    redirect("/admin#counters", _("Counters recounted: %(n)s corrected.", n=row["after"]["fixed"]))


@routes.post("/admin/counters/check")
@csrf_protect
@staff_only
def counters_check():
    """Runs the counter audit and computes the dashboard's figures now (python app.py tick does
    both every minute), and stores them."""
    drifted = db_one("counter_audit_refresh")["drifted"]
    db_one("dashboard_figures_refresh")
    redirect("/admin#counters", ngettext("Counters checked: %(num)s differs from a recount.",
                                         "Counters checked: %(num)s differ from a recount.", drifted)
             if drifted else _("Counters checked: every one matches a recount."))


# ---------------------------------------------------------------------------------------------
# Users

USER_CHANGES = {
    # route action: (query, flag parameter, wanted value)
    "block": ("admin_user_set_blocked", "blocked", True),
    "unblock": ("admin_user_set_blocked", "blocked", False),
    "grant-staff": ("admin_user_set_staff", "staff", True),
    "revoke-staff": ("admin_user_set_staff", "staff", False),
}


def user_messages(action):
    """(success, already so) messages of a user action, in the current language."""
    return {
        "block": (_("The user is blocked: their sessions have ended and their open orders left the feed."),
                  _("This user is already blocked.")),
        "unblock": (_("The user is unblocked."), _("This user is not blocked.")),
        "grant-staff": (_("The user is now staff."), _("This user is already staff.")),
        "revoke-staff": (_("Staff rights revoked."), _("This user is not staff.")),
    }[action]


@routes.get("/admin/users")
@staff_only
def users_list():
    form = Form(request.query)
    filters = {"q": form.text("q", required=False, max_len=200),
               "role": form.choice("role", ROLES, required=False),
               "staff": yes_no(form, "staff"),
               "blocked": yes_no(form, "blocked"),
               "after_id": form.integer("after", required=False, min_value=1)}
    if not form.ok:
        return render("admin_users.html", status=400, section="users", people=[], next_url=None,
                      first_url=None, values=form.values, errors=form.errors)
    people, cursor = keyset_page("admin_users_search", **filters)
    next_url, first_url = page_urls(form, cursor)
    return render("admin_users.html", section="users", people=people, next_url=next_url,
                  first_url=first_url, values=form.values, errors={})


def render_user(user_id, status=200, action=None, form=None):
    """The user page; after a 400, `action` names the form to show again with its errors."""
    person = db_one("admin_user_get", user_id=user_id)
    if person is None:
        raise not_found(_("There is no such user."))
    return render("admin_user.html", status=status, section="users", person=person,
                  orders=db_all("admin_user_orders", user_id=user_id, limit=PAGE_SIZE),
                  log=db_all("admin_log_list", limit=20,
                             **log_filters(target_types=["user"], target_id=user_id)),
                  action=action, values=form.values if form else {}, errors=form.errors if form else {})


@routes.get("/admin/users/<user_id:id>")
@staff_only
def user_page(user_id):
    return render_user(user_id)


def change_user(user_id, action):
    """Block, unblock, grant or revoke staff: one statement with its log row, never on oneself."""
    query, flag, wanted = USER_CHANGES[action]
    form = Form()
    reason = reason_of(form)
    if not form.ok:
        return render_user(user_id, status=400, action=action, form=form)
    me = staff_id()
    done, already = user_messages(action)
    if db_one(query, user_id=user_id, staff_id=me, reason=reason, **{flag: wanted}):
        redirect(f"/admin/users/{user_id}", done)
    person = db_one("admin_user_get", user_id=user_id)
    if person is None:
        raise not_found(_("There is no such user."))
    if person["id"] == me:
        raise error_response(
            403, _("Staff cannot block, unblock or change the staff rights of their own account."))
    if person["is_" + flag] == wanted:
        raise error_response(409, already)
    raise lost_rights()


@routes.post("/admin/users/<user_id:id>/block")
@csrf_protect
@staff_only
def user_block(user_id):
    return change_user(user_id, "block")


@routes.post("/admin/users/<user_id:id>/unblock")
@csrf_protect
@staff_only
def user_unblock(user_id):
    return change_user(user_id, "unblock")


@routes.post("/admin/users/<user_id:id>/grant-staff")
@csrf_protect
@staff_only
def user_grant_staff(user_id):
    return change_user(user_id, "grant-staff")


@routes.post("/admin/users/<user_id:id>/revoke-staff")
@csrf_protect
@staff_only
def user_revoke_staff(user_id):
    return change_user(user_id, "revoke-staff")


# ---------------------------------------------------------------------------------------------
# Orders

def order_filters(form, categories):
    """Parameters of admin_orders_search from the query string."""
    return {"q": form.text("q", required=False, max_len=200),
            "status": form.choice("status", STATUSES, required=False),
            "category": form.choice("category", [c["slug"] for c in categories], required=False),
            "customer_id": form.integer("customer", required=False, min_value=1),
            "performer_id": form.integer("performer", required=False, min_value=1),
            "created_from": form.date("from"),
            "created_to": form.date("to"),
            "after_id": form.integer("after", required=False, min_value=1)}


@routes.get("/admin/orders")
@staff_only
def orders_list():
    form = Form(request.query)
    categories = db_all("admin_categories_all")
    filters = order_filters(form, categories)
    context = {"section": "orders", "categories": categories, "values": form.values}
    if not form.ok:
        return render("admin_orders.html", status=400, orders=[], next_url=None, first_url=None,
                      errors=form.errors, **context)
    rows, cursor = keyset_page("admin_orders_search", **filters)
    next_url, first_url = page_urls(form, cursor)
    return render("admin_orders.html", orders=rows, next_url=next_url, first_url=first_url,
                  errors={}, **context)


def render_order(order_id, status=200, action=None, form=None):
    """The order page with its whole timeline (staff notes included) and the work handed in;
    after a 400, `action` names the form to show again."""
    order = db_one("admin_order_get", order_id=order_id)
    if order is None:
        raise not_found(_("There is no such order."))
    return render("admin_order.html", status=status, section="orders", order=order, outcomes=OUTCOMES,
                  history=db_all("admin_order_history", order_id=order_id),
                  deliveries=db_all("order_deliveries_list", order_id=order_id),
                  log=db_all("admin_log_list", limit=20,
                             **log_filters(target_types=["order", "review"], target_id=order_id)),
                  action=action, values=form.values if form else {}, errors=form.errors if form else {})


@routes.get("/admin/orders/<order_id:id>")
@staff_only
def order_page(order_id):
    return render_order(order_id)


ORDER_CHANGES = {
    # route action: (query, statuses it starts from)
    "cancel": ("admin_order_cancel", ("open", "in_progress")),
    "reopen": ("admin_order_reopen", ("in_progress",)),
}


def change_order(order_id, action):
    """Cancel or reopen along SPEC §4, with the staff actor and reason in order_history."""
    query, from_statuses = ORDER_CHANGES[action]
    form = Form()
    reason = reason_of(form)
    if not form.ok:
        return render_order(order_id, status=400, action=action, form=form)
    me = staff_id()
    act_as(me, reason, staff=True)
    cancel = action == "cancel"
    if db_one(query, order_id=order_id, staff_id=me, reason=reason):
        redirect(f"/admin/orders/{order_id}", _("The order is cancelled.") if cancel
                 else _("The order is open again and has no performer."))
    order = db_one("admin_order_get", order_id=order_id)
    if order is None:
        raise not_found(_("There is no such order."))
    if order["status"] not in from_statuses:
        raise error_response(409, _("Only an open or in-progress order can be cancelled.") if cancel
                             else _("Only an order in progress can be reopened."))
    raise lost_rights()


@routes.post("/admin/orders/<order_id:id>/cancel")
@csrf_protect
@staff_only
def order_cancel(order_id):
    return change_order(order_id, "cancel")


@routes.post("/admin/orders/<order_id:id>/reopen")
@csrf_protect
@staff_only
def order_reopen(order_id):
    return change_order(order_id, "reopen")


@routes.post("/admin/orders/<order_id:id>/resolve")
@csrf_protect
@staff_only
def order_resolve(order_id):
    """Settles a dispute: the order becomes done or cancelled, with the reason in the audit log and,
    staff-only, in the timeline."""
    form = Form()
    outcome = form.choice("outcome", OUTCOMES)
    reason = reason_of(form)
    if not form.ok:
        return render_order(order_id, status=400, action="resolve", form=form)
    me = staff_id()
    act_as(me, reason, staff=True)
    if db_one("admin_order_resolve", order_id=order_id, outcome=outcome, staff_id=me, reason=reason):
        redirect("/admin/disputes", _("The dispute is settled: the order is done.") if outcome == "done"
                 else _("The dispute is settled: the order is cancelled."))
    order = db_one("admin_order_get", order_id=order_id)
    if order is None:
        raise not_found(_("There is no such order."))
    if order["status"] != "disputed":
        raise error_response(409, _("This order is no longer disputed: someone has settled it already."))
    raise lost_rights()


# ---------------------------------------------------------------------------------------------
# Disputes: the queue, the longest waiting first

def parse_queue_cursor(form):
    """(disputed_at, id) to continue the queue after; the first page when none. An error in form."""
    after = form.text("after", required=False, max_len=100)
    if not after or "after" in form.errors:
        return BEGINNING_OF_TIME, 0
    cursor = parse_time_cursor(after)
    if cursor is None:
        form.errors["after"] = _("This page link is broken. Start again from the first page.")
        return BEGINNING_OF_TIME, 0
    return cursor


@routes.get("/admin/disputes")
@staff_only
def disputes_queue():
    form = Form(request.query)
    after_at, after_id = parse_queue_cursor(form)
    if not form.ok:
        return render("admin_disputes.html", status=400, section="disputes", disputes=[], next_url=None,
                      first_url="/admin/disputes", errors=form.errors)
    rows = db_all("admin_disputes_queue", after_at=after_at, after_id=after_id, limit=PAGE_SIZE + 1)
    disputes = rows[:PAGE_SIZE]
    next_url = ("?" + urlencode({"after": cursor_after(disputes[-1], "disputed_at")})
                if len(rows) > PAGE_SIZE else None)
    return render("admin_disputes.html", section="disputes", disputes=disputes, next_url=next_url,
                  first_url="/admin/disputes" if form.values.get("after") else None, errors={})


# ---------------------------------------------------------------------------------------------
# Categories

def render_categories(status=200, form_key=None, form=None):
    """The list with the add form; after a 400, `form_key` says which form to re-show."""
    return render("admin_categories.html", status=status, section="categories",
                  categories=db_all("admin_categories_all"), form_key=form_key,
                  values=form.values if form else {}, errors=form.errors if form else {})


def category_names(form):
    """name_ru and name_en, within the categories table's CHECKs."""
    return (form.text("name_ru", max_len=60), form.text("name_en", max_len=60))


@routes.get("/admin/categories")
@staff_only
def categories_page():
    return render_categories()


@routes.post("/admin/categories")
@csrf_protect
@staff_only
def category_add():
    form = Form()
    slug = form.text("slug", max_len=50)
    if "slug" not in form.errors and not re.fullmatch(SLUG_PATTERN, slug):
        form.errors["slug"] = _("Lower-case Latin letters and digits, words joined by single hyphens.")
    name_ru, name_en = category_names(form)
    reason = reason_of(form, required=False)
    if form.ok and db_one("admin_category_slug_taken", slug=slug)["taken"]:
        form.errors["slug"] = _("This slug is taken.")
    if not form.ok:
        return render_categories(400, "add", form)
    row = db_one("admin_category_add", slug=slug, name_ru=name_ru, name_en=name_en,
                 staff_id=staff_id(), reason=reason)
    if row is None:
        if db_one("admin_category_slug_taken", slug=slug)["taken"]:  # added by someone just now
            form.errors["slug"] = _("This slug is taken.")
            return render_categories(400, "add", form)
        raise lost_rights()
    redirect("/admin/categories", _("Category added."))


def category_or_404(category_id):
    """The category row, or a 404 page."""
    category = db_one("admin_category_get", category_id=category_id)
    if category is None:
        raise not_found(_("There is no such category."))
    return category


@routes.post("/admin/categories/<category_id:id>/rename")
@csrf_protect
@staff_only
def category_rename(category_id):
    category_or_404(category_id)
    form = Form()
    name_ru, name_en = category_names(form)
    reason = reason_of(form, required=False)
    if not form.ok:
        return render_categories(400, category_id, form)
    if db_one("admin_category_rename", category_id=category_id, name_ru=name_ru, name_en=name_en,
              staff_id=staff_id(), reason=reason):
        redirect("/admin/categories", _("Category renamed."))
    category = category_or_404(category_id)
    if (category["name_ru"], category["name_en"]) == (name_ru, name_en):
        raise error_response(409, _("The category already has these names."))
    raise lost_rights()


def set_category_hidden(category_id, hidden):
    """Hide or unhide a category, with its log row."""
    category_or_404(category_id)
    form = Form()
    reason = reason_of(form, required=False)
    if not form.ok:
        return render_categories(400, category_id, form)
    if db_one("admin_category_set_hidden", category_id=category_id, hidden=hidden,
              staff_id=staff_id(), reason=reason):
        redirect("/admin/categories", _("The category is hidden: it takes no new orders.") if hidden
                 else _("The category is visible again."))
    if category_or_404(category_id)["is_hidden"] == hidden:
        raise error_response(409, _("This category is already hidden.") if hidden
                             else _("This category is not hidden."))
    raise lost_rights()


@routes.post("/admin/categories/<category_id:id>/hide")
@csrf_protect
@staff_only
def category_hide(category_id):
    return set_category_hidden(category_id, True)


@routes.post("/admin/categories/<category_id:id>/unhide")
@csrf_protect
@staff_only
def category_unhide(category_id):
    return set_category_hidden(category_id, False)


# ---------------------------------------------------------------------------------------------
# Reviews

def review_filters(**filters):
    """Parameters of admin_reviews_list: every filter off unless given."""
    params = {"hidden": None, "performer_id": None, "order_id": None, "after_id": None}
    params.update(filters)
    return params


@routes.get("/admin/reviews")
@staff_only
def reviews_list():
    form = Form(request.query)
    filters = review_filters(hidden=yes_no(form, "hidden"),
                             performer_id=form.integer("performer", required=False, min_value=1),
                             order_id=form.integer("order", required=False, min_value=1),
                             after_id=form.integer("after", required=False, min_value=1))
    if not form.ok:
        return render("admin_reviews.html", status=400, section="reviews", reviews=[], next_url=None,
                      first_url=None, action_id=None, values=form.values, errors=form.errors)
    rows, cursor = keyset_page("admin_reviews_list", **filters)
    next_url, first_url = page_urls(form, cursor)
    return render("admin_reviews.html", section="reviews", reviews=rows, next_url=next_url,
                  first_url=first_url, action_id=None, values=form.values, errors={})


def review_or_404(order_id):
    """The rated order as the reviews list shows it, or a 404 page."""
    rows = db_all("admin_reviews_list", limit=1, **review_filters(order_id=order_id))
    if not rows:
        raise not_found(_("This order has no rating."))
    return rows[0]


def set_review_hidden(order_id, hidden):
    """Hide or restore a rating: the performer's average follows by trigger."""
    review = review_or_404(order_id)
    form = Form()
    reason = reason_of(form)
    if not form.ok:
        return render("admin_reviews.html", status=400, section="reviews", reviews=[review],
                      next_url=None, first_url="/admin/reviews", action_id=order_id,
                      values=form.values, errors=form.errors)
    me = staff_id()
    act_as(me, reason, staff=True)
    if db_one("admin_review_set_hidden", order_id=order_id, hidden=hidden, staff_id=me, reason=reason):
        redirect("/admin/reviews", _("The rating is hidden and no longer counts.") if hidden
                 else _("The rating is restored."))
    if review_or_404(order_id)["review_hidden"] == hidden:
        raise error_response(409, _("This rating is already hidden.") if hidden
                             else _("This rating is not hidden."))
    raise lost_rights()


@routes.post("/admin/reviews/<order_id:id>/hide")
@csrf_protect
@staff_only
def review_hide(order_id):
    return set_review_hidden(order_id, True)


@routes.post("/admin/reviews/<order_id:id>/restore")
@csrf_protect
@staff_only
def review_restore(order_id):
    return set_review_hidden(order_id, False)


# ---------------------------------------------------------------------------------------------
# The audit log

@routes.get("/admin/log")
@staff_only
def log_page():
    form = Form(request.query)
    target_type = form.choice("target_type", LOG_TARGETS, required=False)
    filters = log_filters(action=form.choice("action", LOG_ACTIONS, required=False),
                          target_types=[target_type] if target_type else None,
                          target_id=form.integer("target", required=False, min_value=1),
                          by_staff_id=form.integer("staff", required=False, min_value=1),
                          after_id=form.integer("after", required=False, min_value=1))
    context = {"section": "log", "log_actions": LOG_ACTIONS, "log_targets": LOG_TARGETS,
               "values": form.values}
    if not form.ok:
        return render("admin_log.html", status=400, entries=[], next_url=None, first_url=None,
                      errors=form.errors, **context)
    rows, cursor = keyset_page("admin_log_list", **filters)
    next_url, first_url = page_urls(form, cursor)
    return render("admin_log.html", entries=rows, next_url=next_url, first_url=first_url,
                  errors={}, **context)


# ---------------------------------------------------------------------------------------------
# CSV export: streamed from a server-side cursor, a chunk at a time

USER_COLUMNS = ("id", "role", "email", "name", "phone", "messenger", "experience_years",
                "is_staff", "is_blocked", "created_at")
ORDER_COLUMNS = ("id", "created_at", "status", "category", "title", "budget", "deadline",
                 "customer_id", "customer_name", "performer_id", "performer_name", "rating",
                 "review_hidden", "cancel_reason")
ROWS_PER_CHUNK = 1000
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """One value as CSV text; text that a spreadsheet would run as a formula gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return str(value)


def csv_chunks(rows_in, columns):
    """Yields the CSV as UTF-8 byte chunks (BOM first, so spreadsheets read Cyrillic right)."""
    def chunk(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue().encode("utf-8")
    yield "\ufeff".encode("utf-8") + chunk([columns])
    rows = []
    for row in rows_in:
        rows.append([csv_cell(row[name]) for name in columns])
        if len(rows) == ROWS_PER_CHUNK:
            yield chunk(rows)
            rows = []
    if rows:
        yield chunk(rows)


def csv_download(filename, query, columns):
    """A CSV attachment streamed from a server-side cursor opened here; the streamed body keeps
    the request's connection until its last chunk (web.stream)."""
    rows = db_stream(query)
    response.content_type = "text/csv; charset=utf-8"
    response.set_header("Content-Disposition", f'attachment; filename="{filename}"')
    response.set_header("Cache-Control", "no-store")
    return csv_chunks(rows, columns)


@routes.get("/admin/export/users.csv")
@staff_only
def export_users():
    stamp = datetime.date.today().isoformat()
    return csv_download(f"birzha-users-{stamp}.csv", "admin_export_users", USER_COLUMNS)


@routes.get("/admin/export/orders.csv")
@staff_only
def export_orders():
    stamp = datetime.date.today().isoformat()
    return csv_download(f"birzha-orders-{stamp}.csv", "admin_export_orders", ORDER_COLUMNS)
