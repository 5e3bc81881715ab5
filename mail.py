"""Sending the mail outbox (SPEC §11): `python app.py tick` calls send_due().

Each mail is claimed with SELECT … FOR UPDATE SKIP LOCKED in its own transaction, sent while the
row stays locked, and marked sent (or failed, with the next attempt put off) in that same
transaction. Why this and not a lease: the lock lives exactly as long as the sender, so another
tick skips the row however slow the SMTP server is, and a sender that dies gives its rows back
at once (PostgreSQL ends its transaction) instead of after a lease runs out; there is no clock to
tune. What no scheme can avoid: if the process dies, or the COMMIT fails, after the SMTP server
took a mail but before the mark is committed, that mail goes again on a later tick (at least
once, never twice while the sender lives).

Failures: a refusal with a 5xx code is final (failed_at); anything else (a 4xx, a server that is
down, a timeout) is tried again after 1, 2, 4, … minutes (at most 6 hours apart), up to
MAX_ATTEMPTS. When the server cannot be reached, this tick stops trying further mail: the rest
stays due for the next tick, its attempts untouched.

SMTP_URL: smtp://host:port (plain), smtp+starttls://… (STARTTLS), smtps://user:pass@host:465
(TLS from the start); user and password are optional, percent-encoded. With no SMTP_URL each
mail is written to the log (stdout) and marked sent: `make run` shows it. BASE_URL (default
http://127.0.0.1:8080) makes the links back; MAIL_FROM the sender (default Birzha
<noreply@birzha.local>).
"""
import email.message
import email.utils
import os
import smtplib
import ssl
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.rows import dict_row

import db
import notices
from web import _, language

MAX_ATTEMPTS = 8
FIRST_WAIT = 60  # seconds before the second attempt; it doubles after each failure
MAX_WAIT = 6 * 3600
BATCH = 500  # mails one tick sends at most
SMTP_TIMEOUT = 20
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_FROM = "Birzha <noreply@birzha.local>"


class Unreachable(Exception):
    """The SMTP server cannot be reached (or refuses us as a whole): stop for this tick."""


def settings():
    return {"smtp_url": os.environ.get("SMTP_URL", "").strip(),
            "base_url": (os.environ.get("BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
            "mail_from": os.environ.get("MAIL_FROM") or DEFAULT_FROM}


# ---------------------------------------------------------------------------------------------
# What a mail says, in its recipient's language

def compose(row, base_url, mail_from):
    """The EmailMessage for a claimed outbox row, or None when it should not go any more (the
    account is blocked, or its owner turned notification mail off since)."""
    if row["is_blocked"] or (row["notification_id"] and not row["email_notifications"]):
        return None
    with language(row["lang"]):
        if row["password_reset_id"]:
            subject = _("Birzha: reset your password")
            link = f"{base_url}/password/reset/{row['reset_token']}"
            body = "\n\n".join([
                _("Hello, %(name)s!", name=row["name"]),
                _("Someone, probably you, asked to reset the password of your Birzha account. "
                  "Open this link within an hour to choose a new password (it works once):"),
                link,
                _("If it was not you, ignore this letter: your password stays as it is."),
            ])
        else:
            text, detail = notices.text(row), notices.detail(row)
            subject = _("Birzha: %(text)s", text=text)
            if len(subject) > 150:
                subject = subject[:149] + "…"
            parts = [_("Hello, %(name)s!", name=row["name"]), text]
            if detail:
                parts.append("> " + detail.replace("\n", "\n> "))
            parts += [_("Open it on Birzha: %(link)s", link=base_url + notices.link(row)),
                      "-- \n" + _("You get these letters because e-mail notifications are on in your profile. "
                                  "Turn them off there: %(link)s", link=base_url + "/profile")]
            body = "\n\n".join(parts)
    message = email.message.EmailMessage()
    message["From"] = mail_from
    message["To"] = email.utils.formataddr((row["name"], row["email"]))
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(idstring=f"outbox-{row['id']}", domain="birzha.local")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message


# ---------------------------------------------------------------------------------------------
# Transports: SMTP, or the log

class LogTransport:
    """No SMTP_URL: each mail goes to the log, and counts as sent."""

    def __init__(self, log):
        self.log = log

    def send(self, message):
        self.log(f"mail (no SMTP_URL, not sent): To: {message['To']}\nSubject: {message['Subject']}\n\n"
                 f"{message.get_content().rstrip()}\n")

    def close(self):
        pass


class SmtpTransport:
    """One SMTP connection for the whole tick, opened at the first mail."""

    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps", "smtp+starttls") or not parts.hostname:
            raise SystemExit(f"SMTP_URL: {url!r} is not smtp://host:port, smtp+starttls://… or smtps://user:pass@host:port.")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password or "")
        self.connection = None

    def connect(self):
        try:
            if self.scheme == "smtps":
                connection = smtplib.SMTP_SSL(self.host, self.port, timeout=SMTP_TIMEOUT,
                                              context=ssl.create_default_context())
            else:
                connection = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT)
                if self.scheme == "smtp+starttls":
                    connection.starttls(context=ssl.create_default_context())
            if self.user:
                connection.login(self.user, self.password)
        except (OSError, smtplib.SMTPException) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        return connection

    def send(self, message):
        if self.connection is None:
            self.connection = self.connect()
        try:
            self.connection.send_message(message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException):
            raise  # the server answered about this mail (smtplib's errors are OSErrors too)
        except OSError as exc:  # the connection broke, or timed out
            self.connection = None
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    def close(self):
        if self.connection is not None:
            try:
                self.connection.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self.connection = None


def permanent(exc):
    """A refusal with a 5xx code: trying again will not help."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _message in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def wait_after(attempts):
    """Seconds before the next attempt, after `attempts` failed ones (1 minute, then doubling)."""
    return min(FIRST_WAIT * 2 ** max(attempts - 1, 0), MAX_WAIT)


# ---------------------------------------------------------------------------------------------
# The sender

def send_due(url, *, smtp_url=None, base_url=None, mail_from=None, log=print, limit=BATCH):
    """Sends the due mail of the outbox; returns {"sent", "failed", "retry"} counts."""
    config = settings()
    smtp_url = config["smtp_url"] if smtp_url is None else smtp_url
    base_url = (base_url or config["base_url"]).rstrip("/")
    mail_from = mail_from or config["mail_from"]
    transport = SmtpTransport(smtp_url) if smtp_url else LogTransport(log)
    counts = {"sent": 0, "failed": 0, "retry": 0}
    try:
        with psycopg.connect(url, row_factory=dict_row) as connection:
            for _n in range(limit):
                with connection.transaction():
                    row = connection.execute(db.Q["mail_claim"]).fetchone()
                    if row is None:
                        break
                    outcome = send_one(connection, transport, row, base_url, mail_from)
                counts[outcome] += 1
                if outcome == "retry" and isinstance(transport, SmtpTransport) and transport.connection is None:
                    break  # the server is unreachable: the rest waits for the next tick
    finally:
        transport.close()
    return counts


def send_one(connection, transport, row, base_url, mail_from):
    """Sends one claimed row and marks it, in the claiming transaction; returns the outcome."""
    attempts = row["attempts"] + 1
    message = compose(row, base_url, mail_from)
    if message is None:
        connection.execute(db.Q["mail_failed"], {"id": row["id"], "error": "not sent: the account is blocked or "
                                                 "turned notification mail off", "wait": 0, "final": True})
        return "failed"
    try:
        transport.send(message)
    except (Unreachable, smtplib.SMTPException) as exc:
        final = attempts >= MAX_ATTEMPTS or (not isinstance(exc, Unreachable) and permanent(exc))
        connection.execute(db.Q["mail_failed"], {"id": row["id"], "error": f"{type(exc).__name__}: {exc}",
                                                 "wait": wait_after(attempts), "final": final})
        return "failed" if final else "retry"
    connection.execute(db.Q["mail_sent"], {"id": row["id"]})
    return "sent"
