"""What a notification says and where it leads, in the current language: the same words on
/notifications, in the API and in the e-mail (mail.py renders them in the recipient's language
with web.language). The database writes notifications (triggers); this only reads them.
"""
from web import _, format_money, ngettext


def link(row):
    """The page a notification leads to: the conversation for a message, else the order."""
    order_id = row["order_id"]
    if row["kind"] == "message_received":
        params = row["params"]
        if row.get("for_customer"):
            return f"/orders/{order_id}/messages?with={params.get('performer_id')}"
        return f"/orders/{order_id}/messages"
    return f"/orders/{order_id}"


def text(row):
    """One sentence about the event, with the order's title."""
    kind, params, title = row["kind"], row["params"] or {}, row.get("order_title") or ""
    if kind == "offer_received":
        return _("%(performer)s sent an offer on “%(title)s”: %(price)s, %(days)s.",
                 performer=params.get("performer_name", ""), title=title,
                 price=format_money(params.get("price", 0)),
                 days=ngettext("%(num)s day", "%(num)s days", params.get("days", 0)))
    if kind == "offer_accepted":
        return _("Your offer on “%(title)s” was accepted: the order is yours, start the work.", title=title)
    if kind == "offer_declined":
        return _("Your offer on “%(title)s” was declined.", title=title)
    if kind == "order_taken":
        return _("%(performer)s took your order “%(title)s”.", performer=params.get("performer_name", ""), title=title)
    if kind == "order_delivered":
        return _("%(performer)s handed in the work on “%(title)s”. Accept it or ask for a revision.",
                 performer=params.get("performer_name", ""), title=title)
    if kind == "revision_requested":
        return _("The customer asked for a revision of “%(title)s”.", title=title)
    if kind == "work_accepted":
        if params.get("rating"):
            return _("The customer accepted your work on “%(title)s” and rated it %(rating)s / 10.",
                     title=title, rating=params["rating"])
        return _("The customer accepted your work on “%(title)s”.", title=title)
    if kind == "work_auto_accepted":
        return _("Your work on “%(title)s” was accepted automatically: the customer did not answer in time.", title=title)
    if kind == "order_rated":
        return _("The customer rated your work on “%(title)s”: %(rating)s / 10.", title=title, rating=params.get("rating"))
    if kind == "message_received":
        return _("%(sender)s wrote about “%(title)s”.", sender=params.get("sender_name", ""), title=title)
    if kind == "dispute_opened":
        if params.get("by_name"):
            return _("%(name)s opened a dispute on “%(title)s”. Birzha staff will settle it.",
                     name=params["by_name"], title=title)
        return _("A dispute was opened on “%(title)s”. Birzha staff will settle it.", title=title)
    if kind == "dispute_resolved":
        if params.get("outcome") == "done":
            return _("Staff settled the dispute on “%(title)s”: the order is done.", title=title)
        return _("Staff settled the dispute on “%(title)s”: the order is cancelled.", title=title)
    return _("Something happened to “%(title)s”.", title=title)


def detail(row):
    """The words the person wrote with the event (a message, a reason), or an empty string."""
    params = row["params"] or {}
    if row["kind"] == "message_received":
        return params.get("excerpt", "")
    return params.get("reason", "")
