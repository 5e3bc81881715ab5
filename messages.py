"""Conversations, files and notifications (SPEC §10-11): the inbox, an order's conversations,
writing with files, downloads, and the notifications page.

Who may read and write is decided in SQL (conversation_open, message_send, file_for_reader,
admin_log_conversation_read); the database's triggers number the messages, keep the unread
counts and write the notifications. When a write is refused, the order is read once to answer
404, 403 or 409, as orders.py does.
"""

from bottle import request

import files
import notices
import orders
from web import (FILES_BODY_BYTES, Form, Routes, _, csrf_protect, current_user, db_all, db_one, db_run, db_table,
                 error_response, login_required, not_found, redirect, render, reread_unread_counts, safe_next)

routes = Routes()

INBOX_PAGE = 30
MESSAGES_PAGE = 100
NOTIFICATIONS_PAGE = 30
LAST_SEQ = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Reading the request

def read_id(form, name):
    """A positive id from a form or query field, or None; a malformed one is an error in form."""
    return form.integer(name, required=False, min_value=1, max_value=10**17)


def conversation_url(order_id, performer_id, for_customer):
    return f"/orders/{order_id}/messages" + (f"?with={performer_id}" if for_customer else "")


# ---------------------------------------------------------------------------------------------
# Who reads which conversation of an order

class View:
    """What the viewer of /orders/<id>/messages gets: the customer's list of conversations, or
    one conversation (maybe not opened yet), read as one of its people or as staff."""

    def __init__(self, order, user, *, performer_id=None, conversation=None, listing=False, staff=False,
                 may_write=False):
        self.order, self.user = order, user
        self.performer_id, self.conversation = performer_id, conversation
        self.listing, self.staff, self.may_write = listing, staff, may_write
        self.is_customer = user["id"] == order["customer_id"]


def view_of(order, user, with_id):
    """Who this viewer is to the order's conversations; 403/404 when they may read none of them.

    The customer reads the list, or the conversation `with` a performer; a performer reads their
    own conversation (`with` may only name themselves); staff who are neither read a conversation
    only while the order is disputed, and each such read is logged (here, in the same statement
    that allows it). Everyone else: 403."""
    me = user["id"]
    if me == order["customer_id"]:
        if with_id is None:
            return View(order, user, listing=True)
        conversation = db_one("conversation_of", order_id=order["id"], performer_id=with_id)
        if conversation is not None:
            return View(order, user, performer_id=with_id, conversation=conversation,
                        may_write=conversation["goes_on"])
        if db_one("customer_may_write_to", order_id=order["id"], performer_id=with_id)["may"]:
            return View(order, user, performer_id=with_id, may_write=True)
        raise not_found(_("There is no conversation with this performer about this order."))
    if user["role"] == "performer" and with_id in (None, me):
        conversation = db_one("conversation_of", order_id=order["id"], performer_id=me)
        may_write = order["status"] == "open" or order["performer_id"] == me
        if conversation is None and not may_write:
            raise error_response(403, _("This order went to another performer: only they talk to the customer about it now."))
        return View(order, user, performer_id=me, conversation=conversation,
                    may_write=may_write and not order["customer_blocked"])
    if user["is_staff"]:
        return staff_view(order, user, with_id)
    if user["role"] == "performer":
        raise error_response(403, _("You can read only your own conversation with the customer."))
    raise error_response(403, _("Only the customer of this order and the performers who write to them read its conversations."))


def staff_view(order, user, with_id):
    if order["status"] != "disputed":
        raise error_response(403, _("Staff read the conversations of an order only while it is disputed."))
    performer_id = with_id or order["performer_id"]
    conversation = db_one("conversation_of", order_id=order["id"], performer_id=performer_id)
    if conversation is None:
        raise not_found(_("There is no conversation with this performer about this order."))
    if db_one("admin_log_conversation_read", action="read_conversation", staff_id=user["id"],
              conversation_id=conversation["id"], file_id=None) is None:
        raise error_response(403, _("Staff read the conversations of an order only while it is disputed."))
    return View(order, user, performer_id=performer_id, conversation=conversation, staff=True)


def load_view(order_id, with_id):
    order = orders.load_order(order_id)
    return view_of(order, current_user(), with_id)


def page_of_messages(conversation, before):
    """The messages of a page (oldest first), their files, and the seq to show earlier ones from."""
    if conversation is None:
        return [], None
    rows = db_all("messages_of_conversation", conversation_id=conversation["id"], before=before or LAST_SEQ,
                  limit=MESSAGES_PAGE)
    attached = {}
    for row in db_all("files_of_messages", message_ids=[row["id"] for row in rows]):
        attached.setdefault(row["message_id"], []).append(files.describe(row))
    for row in rows:
        row["files"] = attached.get(row["id"], [])
    earlier = rows[0]["seq"] if rows and rows[0]["seq"] > 1 else None
    return rows, earlier


def mark_read(view):
    """A person of the conversation has now read it (and its message notifications); the header's
    unread counts, read with the user at the start of the request, are read again."""
    if view.conversation is None or view.staff:
        return
    me = view.user["id"]
    if db_one("conversation_mark_read", conversation_id=view.conversation["id"], user_id=me):
        db_run("notifications_read_for_conversation", user_id=me, order_id=view.order["id"],
               conversation_id=view.conversation["id"])
        reread_unread_counts(view.user)


def render_view(view, status=200, values=None, errors=None):
    form = Form(request.query)
    before = form.integer("before", required=False, min_value=1, max_value=LAST_SEQ)
    if not form.ok:
        raise error_response(400, _("This page link is broken. Start again from the first page."))
    if view.listing:
        return render("messages_order.html", status=status, view=view, order=view.order,
                      conversations=db_all("conversations_of_order", order_id=view.order["id"],
                                           customer_id=view.user["id"]),
                      messages=[], earlier=None, values={}, errors={}, limits=limits())
    page, earlier = page_of_messages(view.conversation, before)
    if before is None and status == 200:  # re-shown with a refused message's errors, it writes nothing
        mark_read(view)
    return render("messages_order.html", status=status, view=view, order=view.order, conversations=[],
                  messages=page, earlier=earlier, values=values or {}, errors=errors or {}, limits=limits())


def limits():
    return {"files": files.MAX_FILES, "megabytes": files.MAX_FILE_BYTES // (1024 * 1024)}


# ---------------------------------------------------------------------------------------------
# Routes: the inbox, an order's conversations, writing

@routes.get("/messages", read_only=True)
@login_required
def inbox():
    """The viewer's conversations, the latest first, with their unread counts."""
    user = current_user()
    after_at, after_id = orders.read_time_cursor(Form(request.query))
    columns, rows = db_table("conversations_inbox", user_id=user["id"], after_at=after_at, after_id=after_id,
                             limit=INBOX_PAGE + 1)
    links, page = orders.keyset_links("/messages", {}, rows, "last_message_at", INBOX_PAGE, columns)
    return render("messages_inbox.html", columns=columns, conversations=page, **links)


@routes.get("/orders/<order_id:id>/messages")
@login_required
def order_messages(order_id):
    form = Form(request.query)
    with_id = read_id(form, "with")
    if not form.ok:
        raise error_response(400, _("This page link is broken. Start again from the first page."))
    return render_view(load_view(order_id, with_id))


def read_message_form(form):
    """The fields of a message: body (1 to 5000 characters), files, and `with` for the customer."""
    return {"body": form.text("body", max_len=5000, multiline=True).strip(),
            "with_id": read_id(form, "with"),
            "uploads": files.read_uploads(form)}


@routes.post("/orders/<order_id:id>/messages", max_body=FILES_BODY_BYTES)
@csrf_protect
@login_required
def order_message_send(order_id):
    form = Form()
    fields = read_message_form(form)
    view = load_view(order_id, fields["with_id"])
    if view.listing:
        form.errors["body"] = _("Choose the performer to write to.")
    if view.staff:
        raise error_response(403, _("Staff read a disputed order's conversation but do not write in it."))
    if not form.ok:
        return render_view(view, status=getattr(form, "status", 400), values=form.values, errors=form.errors)
    send_message(view, fields["body"], fields["uploads"])
    redirect(conversation_url(view.order["id"], view.performer_id, view.is_customer), _("Your message is sent."))


def send_message(view, body, uploads=()):
    """Opens the conversation if it is not there yet, writes the message and attaches the files;
    a refusal is explained as 403 or 409. Returns the message row."""
    user, order = view.user, view.order
    opened = db_one("conversation_open", order_id=order["id"], performer_id=view.performer_id, sender_id=user["id"])
    if opened is None:  # another request opening it at this very moment: it is there now
        opened = db_one("conversation_open", order_id=order["id"], performer_id=view.performer_id,
                        sender_id=user["id"])
    message = None
    if opened is not None:
        message = db_one("message_send", conversation_id=opened["id"], sender_id=user["id"], body=body)
    if message is None:
        raise error_response(409, _("This order went to another performer: this conversation is closed."))
    files.attach(uploads, user, message_id=message["id"])
    return message


# ---------------------------------------------------------------------------------------------
# Files

@routes.get("/files/<file_id:id>")
@login_required
def file_download(file_id):
    return serve_file(file_id)


def serve_file(file_id):
    """The file's bytes to the people who may read its message or delivery (staff reading a
    disputed order's message file are logged); 404 to everyone else, who may not know it exists."""
    user = current_user()
    row = db_one("file_for_reader", file_id=file_id, user_id=user["id"])
    if row is None or row["access"] is None:
        raise not_found(_("There is no such file."))
    if row["access"] == "dispute" and db_one(
            "admin_log_conversation_read", action="read_conversation_file", staff_id=user["id"],
            conversation_id=row["conversation_id"], file_id=row["id"]) is None:
        raise not_found(_("There is no such file."))
    resp = files.download(row)
    if resp is None:
        raise not_found(_("This file is missing on the server. Ask the person who sent it to send it again."))
    return resp


# ---------------------------------------------------------------------------------------------
# Notifications

def notifications_page(user, after):
    """A page of the user's notifications after an id (newest first) and the next page's `after`."""
    rows = db_all("notifications_page", user_id=user["id"], after_id=after or orders.LAST_ID, limit=NOTIFICATIONS_PAGE + 1)
    page = rows[:NOTIFICATIONS_PAGE]
    for row in page:
        row["text"], row["detail"], row["url"] = notices.text(row), notices.detail(row), notices.link(row)
    return page, (page[-1]["id"] if len(rows) > NOTIFICATIONS_PAGE else None)


@routes.get("/notifications")
@login_required
def notifications():
    """The viewer's notifications, newest first, in keyset pages (`after`: the last id shown)."""
    form = Form(request.query)
    after = read_id(form, "after")
    if not form.ok:
        raise error_response(400, _("This page link is broken. Start again from the first page."))
    page, next_after = notifications_page(current_user(), after)
    return render("notifications.html", notifications=page,
                  next_url=f"/notifications?after={next_after}" if next_after else None,
                  first_url="/notifications" if after else None)


@routes.post("/notifications/read")
@csrf_protect
@login_required
def notifications_read():
    """Marks one notification read (`id`), or all of the viewer's when no id is sent."""
    user = current_user()
    form = Form()
    notification_id = read_id(form, "id")
    if not form.ok:
        raise error_response(400, _("This notification link is broken."))
    back = safe_next(request.forms.getunicode("next") or "", "/notifications")
    if notification_id is None:
        db_run("notifications_read_all", user_id=user["id"])
        redirect(back, _("All notifications are marked as read."))
    if db_one("notification_read", id=notification_id, user_id=user["id"]) is None \
            and db_one("notification_exists", id=notification_id, user_id=user["id"]) is None:
        raise not_found(_("There is no such notification."))
    redirect(back)
