"""The request plumbing: the transaction of a request and its error pages, language, templates,
sessions, CSRF, flash messages, access control and forms. Route modules import what they need
from here; this module knows nothing of them.

Configuration is read from the application serving the request (`request.app.config`):
`db.url`, `secret_key`, `cookie_secure`, `trusted_proxies`; `app.py` fills it in.
"""
import contextlib
import contextvars
import datetime
import functools
import hashlib
import hmac
import html
import http
import http.cookies
import ipaddress
import json
import logging
import os
import re
import secrets
import types
import zoneinfo
from functools import wraps
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit

import bcrypt
import bottle
import jinja2
import jinja2.ext
import jinja2.lexer
import markupsafe
import psycopg
import psycopg_pool
from bottle import HTTPError, HTTPResponse, request, response

import db
from i18n import LANGUAGES, TRANSLATIONS

ROOT = Path(__file__).resolve().parent
SESSION_DAYS = 14
MAX_BODY_BYTES = 1024 * 1024  # every form here is small: a bigger body is a mistake or an attack
FILES_BODY_BYTES = 60 * 1024 * 1024  # the routes that take files (route config max_body): 5 x 10 MB and the form


# ---------------------------------------------------------------------------------------------
# The application and its areas

class Birzha(bottle.Bottle):
    """The application: security headers on every response (errors included), the error pages,
    the body limit, and a last guard that no connection outlives its request."""

    SECURITY_HEADERS = [
        ("Content-Security-Policy",
         "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
         "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
    ]

    def __init__(self):
        super().__init__()
        self.router.add_filter("id", id_filter)
        self.add_hook("before_request", refuse_huge_bodies)
        self.add_hook("before_request", read_forms_first)
        for status in (400, 403, 404, 405, 409, 411, 413, 500):
            self.error_handler[status] = handle_error

    def __call__(self, environ, start_response):
        readable_headers(environ)
        readable_cookies(environ)

        def start_with_headers(status, headers, exc_info=None):
            names = {name.lower() for name, _ in headers}
            headers = list(headers) + [h for h in self.SECURITY_HEADERS if h[0].lower() not in names]
            return start_response(status, with_cache_control(environ, headers), exc_info)
        try:
            return self.wsgi(environ, start_with_headers)
        finally:
            # Normally the request's transaction has ended by now (a streamed body took its own
            # lease); this only catches a path that forgot, so no connection leaks.
            lease = environ.pop("birzha.lease", None)
            if lease is not None:
                lease.end(commit=False)


def with_cache_control(environ, headers):
    """`Cache-Control: no-store` on every response to a request with credentials (a session
    cookie, an Authorization header, a user signed in) and on every response that sets or
    deletes a cookie, whatever the route said: no cache anywhere keeps what depends on a session.

    Anything else is a guest's: `private, no-cache` unless the route chose otherwise, since a
    guest's page still follows the guest's language and carries CSRF tokens of the guest's own
    cookie, so no shared cache may hand it to someone else and the browser asks again before
    reusing it. Static files keep Bottle's Last-Modified and ETag, and no Cache-Control."""
    names = {name.lower() for name, _ in headers}
    if "set-cookie" in names or has_credentials(environ):
        return [h for h in headers if h[0].lower() != "cache-control"] + [("Cache-Control", "no-store")]
    if "cache-control" in names or environ.get("PATH_INFO", "").startswith("/static/"):
        return headers
    return headers + [("Cache-Control", "private, no-cache")]


def has_credentials(environ):
    if environ.get("birzha.user") or environ.get("HTTP_AUTHORIZATION", "").strip():
        return True
    return bool(bottle.BaseRequest(environ).cookies.get(SESSION_COOKIE))  # parsed once per request


def readable_headers(environ):
    """Makes every header readable as UTF-8 text before anything reads it: a byte that is not
    UTF-8 becomes U+FFFD, so a header that cannot be decoded is read as text that matches nothing
    (a token, a language, a CSRF token) instead of raising in Bottle's decoding (a 500).

    PEP 3333 hands headers on as latin-1 text of their bytes and Bottle decodes those bytes as
    UTF-8; the value is put back in the same form, with the bad bytes replaced."""
    for key, value in environ.items():  # replaces values only: the dict keeps its size
        if (key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) \
                and isinstance(value, str) and not value.isascii():
            try:
                data = value.encode("latin-1")
            except UnicodeEncodeError:  # a server that handed on text rather than latin-1 bytes
                data = value.encode("utf-8", "replace")
            text = data.decode("utf-8", "replace")
            environ[key] = text.encode("utf-8").decode("latin-1")


def readable_cookies(environ):
    """Drops from the Cookie header each cookie that Python's parser refuses (a name such as
    `a@b` makes it refuse the whole header, and Bottle with it: a 500 on every page); the others
    are kept as they came. A header that parses is parsed here once, by Bottle, which keeps it."""
    raw = environ.get("HTTP_COOKIE")
    if not raw:
        return
    try:
        bottle.BaseRequest(environ).cookies
        return
    except http.cookies.CookieError:
        pass
    kept = []
    for part in raw.split(";"):
        try:
            http.cookies.SimpleCookie(part)
        except http.cookies.CookieError:
            continue
        kept.append(part)
    environ["HTTP_COOKIE"] = ";".join(kept)


class Routes(bottle.Bottle):
    """The routes of one area (accounts, orders, …), merged into the application by app.py.
    Each route runs in the request's transaction."""

    def __init__(self):
        super().__init__()
        self.router.add_filter("id", id_filter)
        self.install(transaction)


def id_filter(_config):
    """`<order_id:id>` in a route: a positive bigint, so a huge or odd id is a plain 404."""
    return r"[1-9][0-9]{0,17}", int, str


# ---------------------------------------------------------------------------------------------
# The transaction of a request

def lease():
    """The connection (db.Lease) of the current request, taken on first use: one transaction per request,
    or none on the routes marked `read_only=True` (pages served most, where BEGIN and COMMIT
    would be two of five round trips to the server): there each statement is its own
    transaction, so such a route reads, or writes in one statement that stands alone (an order's
    page marks the viewer's notifications of it read)."""
    taken = request.environ.get("birzha.lease")
    if taken is None:
        route = request.environ.get("bottle.route")
        read_only = route is not None and route.config.get("read_only", False)
        taken = db.Lease(request.app.config["db.url"], autocommit=read_only)
        request.environ["birzha.lease"] = taken
    return taken


def end_transaction(commit):
    """Ends the request's transaction, if it has one. A failed COMMIT raises."""
    lease = request.environ.pop("birzha.lease", None)
    if lease is not None:
        lease.end(commit)


def commit():
    """Commits what the request has written so far and gives its connection back; the next query
    starts a new transaction. For a write that must stand whatever happens after it, and so that
    no connection is held through slow work (a sign-in attempt is recorded, then bcrypt runs)."""
    end_transaction(commit=True)


def db_one(name, /, **params):
    """Runs a named query and returns its first row as a dict, or None."""
    return lease().run(name, params).fetchone()


def db_all(name, /, **params):
    """Runs a named query and returns all rows as dicts."""
    return lease().run(name, params).fetchall()


def db_table(name, /, **params):
    """Runs a named query and returns (its columns, its rows as tuples): for the lists shown by
    kept macros (`kept_table`), which key each row by its values. A dict a row, made only to be
    read back into a tuple, was a tenth of a cabinet's Python. The columns of a named query are
    the same every time: read once per worker, so every page's key holds the same names."""
    rows = (cursor := lease().run(name, params, as_tuples=True)).fetchall()
    columns = QUERY_COLUMNS.get(name)
    if columns is None:
        columns = QUERY_COLUMNS[name] = tuple(column.name for column in cursor.description)
    return columns, rows


QUERY_COLUMNS = {}


def db_run(name, /, **params):
    """Runs a named query and returns the number of rows it touched."""
    return lease().run(name, params).rowcount


def db_stream(name, /, **params):
    """Opens a server-side cursor on a named query (big exports) and returns it to iterate.
    The route opens it; its streamed body (see `stream`) only reads from it."""
    cur = lease().conn.cursor(name="stream")
    cur.itersize = 2000
    cur.execute(db.Q[name], params)
    return cur


def act_as(user_id, note="", staff=False):
    """Names the acting user (and a note) for the history and audit triggers of this transaction;
    staff=True marks the note as a staff member's reason, shown in the timeline to staff only."""
    db_one("actor_set", actor_id=str(user_id or ""), note=note or "", staff=staff)


# Two transactions that got in each other's way: PostgreSQL rolled one back, and running it again
# usually succeeds.
COLLISIONS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def transaction(callback):
    """One transaction per request: commit on success or redirect, roll back on error.

    The database has the last word: a deadlock or serialization failure runs the route once
    more and then answers 409; a refused constraint or trigger (even at COMMIT) is a 409; a value
    PostgreSQL cannot take is a 400; an unreachable database is a 503. A success is answered
    only once its COMMIT has succeeded.
    """
    @wraps(callback)
    def wrapper(*args, **kwargs):
        for attempt in (1, 2):
            try:
                return run_in_transaction(callback, args, kwargs)
            except psycopg.Error as exc:
                end_transaction(commit=False)
                # What the failed attempt put on the response (a flash "done", a session cookie)
                # belongs to a change that did not happen.
                response.bind()
                if isinstance(exc, COLLISIONS) and attempt == 1:
                    continue  # a deadlock or serialization failure: the same request once more
                return database_error_page(exc)
            except psycopg_pool.PoolTimeout as exc:
                end_transaction(commit=False)
                return database_error_page(exc)
    return wrapper


def database_error_page(exc):
    """The answer to an error the database raised (or the pool, when no connection came)."""
    if isinstance(exc, COLLISIONS):
        return error_page(409, _("This change collided with another one at the same moment. Reload the page and try again."))
    if isinstance(exc, psycopg.errors.IntegrityError):  # a constraint or trigger refused: the state moved on
        return error_page(409, _("This change conflicts with the current state. Reload the page and try again."))
    if isinstance(exc, psycopg.errors.DataError):  # a value PostgreSQL cannot take
        return error_page(400, _("Some of the data sent is not valid."))
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
        request.environ["birzha.db_down"] = True
        return error_page(503, _("The database is not available right now. Please try again in a minute."))
    raise exc


def run_in_transaction(callback, args, kwargs):
    """Runs the route; commits (which may raise) before any success leaves."""
    try:
        result = callback(*args, **kwargs)
    except HTTPResponse as resp:
        end_transaction(commit=resp.status_code < 400)
        raise
    except Exception:
        end_transaction(commit=False)
        raise
    if isinstance(result, types.GeneratorType):
        return stream(result)
    end_transaction(commit=True)
    return result


def stream(generator):
    """A streamed body takes the request's lease with it and ends it after the last chunk
    (committed) or when the client goes away (rolled back)."""
    lease = request.environ.pop("birzha.lease", None)

    def body():
        finished = False
        try:
            yield from generator
            finished = True
        finally:
            if lease is not None:
                lease.end(commit=finished)
    return body()


def refuse_huge_bodies():
    """Refuses a body over its route's limit before anything reads it: MAX_BODY_BYTES, unless the
    route says otherwise (`max_body=` in its config: the routes that take files). A body of
    unknown length (`Transfer-Encoding: chunked`) is refused too: Bottle would read it whole, past
    any limit."""
    if request.environ.get("HTTP_TRANSFER_ENCODING", "").strip():
        raise HTTPError(411, _("Send the request body with a Content-Length header: a chunked body is not accepted."))
    if not re.fullmatch(r"\d{0,18}", request.environ.get("CONTENT_LENGTH", "").strip()):
        raise HTTPError(400, _("The Content-Length header is not a number."))
    if request.content_length > MAX_BODY_BYTES and request.content_length > body_limit():
        raise HTTPError(413, _("The request is too large."))


def read_forms_first():
    """Reads the form of every request for a page before any route does, so that a form that
    cannot be read is a 400 here, whichever code would have read it first (the CSRF check, the
    login page looking for `next`). The API reads JSON, not forms (check_csrf reads the form of a
    POST signed in by session, through posted_form too)."""
    if not request.path.startswith("/api/") and has_body_or_type(request.environ):
        posted_form()


def has_body_or_type(environ):
    """Whether a request carries something a form parser could fail on: a body or a Content-Type.
    A plain GET has neither; parsing its nothing was 2% of a page."""
    return bool(environ.get("CONTENT_TYPE") or environ.get("CONTENT_LENGTH", "0") not in ("", "0")
                or environ.get("HTTP_TRANSFER_ENCODING"))


def body_limit():
    """The body limit of the route this request goes to (hooks run before routing: match here)."""
    try:
        route, _args = request.app.router.match(request.environ)
    except HTTPError:  # no such route or method: it will be a 404 or 405, reading nothing
        return MAX_BODY_BYTES
    return route.config.get("max_body", MAX_BODY_BYTES)


# ---------------------------------------------------------------------------------------------
# Language: the visitor's choice, and gettext in it (catalogs in i18n.py)

_forced_lang = contextvars.ContextVar("birzha_forced_lang", default=None)


@contextlib.contextmanager
def language(lang):
    """Translates into `lang` inside the block, whatever the request (mail to its recipient)."""
    token = _forced_lang.set(lang if lang in LANGUAGES else "ru")
    try:
        yield
    finally:
        _forced_lang.reset(token)


def current_lang():
    """The language forced by `language()`, else the cookie's language, else the best of
    Accept-Language, else Russian."""
    if _forced_lang.get() is not None:
        return _forced_lang.get()
    try:
        environ = request.environ
    except RuntimeError:
        return "ru"
    lang = environ.get("birzha.lang")
    if lang:
        return lang
    lang = request.get_cookie("lang")
    if lang not in LANGUAGES:
        lang = "ru"
        best = 0.0
        for part in request.headers.get("Accept-Language", "").split(","):
            tag, _, params = part.strip().partition(";")
            q = 1.0
            if params.strip().startswith("q="):
                try:
                    q = float(params.strip()[2:])
                except ValueError:
                    q = 0.0
            code = tag.strip().lower()[:2]
            if code in LANGUAGES and q > best:
                lang, best = code, q
    environ["birzha.lang"] = lang
    return lang


def _(message, **values):
    """gettext for the current request's language; %(name)s values are filled in after."""
    text = TRANSLATIONS[current_lang()].gettext(message)
    return text % values if values else text


def pgettext(context, message, **values):
    """gettext with a context, for one English word that Russian says differently in two places."""
    text = TRANSLATIONS[current_lang()].pgettext(context, message)
    return text % values if values else text


def ngettext(singular, plural, n, **values):
    """The plural form for n in the current language; %(num)s is n unless given."""
    values.setdefault("num", n)
    return TRANSLATIONS[current_lang()].ngettext(singular, plural, n) % values


# ---------------------------------------------------------------------------------------------
# Templates

class Template(jinja2.Template):
    """A template whose imports are its one module. Jinja makes an imported template a module of
    its own when the importer has globals the imported one lacks, and compares the forty names
    on every import to find out (a tenth of a small page's Python); here every template shares
    the environment's globals, none is given globals of its own, so there are never any."""

    def _get_default_module(self, ctx=None):
        return super()._get_default_module(None)


class Templates(jinja2.Environment):
    """Jinja2 reading `row.title` of a dict (every database row here) as row["title"] first:
    Jinja tries the attribute first, and the AttributeError each miss raises was a tenth of a
    feed page's rendering."""

    lang = None  # the language its templates are compiled in (TranslatedWhenCompiled); None: none
    template_class = Template
    loaded = None  # {name: Template} of this environment, when templates are not reloaded (_compiled_in)

    def _load_template(self, name, globals):
        """A template loaded once, then found by its name: Jinja's own lookup (a weak reference
        and a locked LRU cache, each call) ran five times a page, for its templates and imports."""
        if self.loaded is None or globals:
            return super()._load_template(name, globals)
        try:
            return self.loaded[name]
        except KeyError:
            template = self.loaded[name] = super()._load_template(name, globals)
            return template

    def make_globals(self, d):
        """A template's globals as one dict, not Jinja's ChainMap of its own and the environment's:
        every render makes its context of them, and a ChainMap is read name by name in Python
        (forty of them, twice a page). The environment's globals are all set as web.py is
        imported, before any template is loaded."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj, attribute):
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


class TranslatedWhenCompiled(jinja2.ext.Extension):
    """`_('Orders')`, `gettext(…)` and `pgettext('context', …)` of constant messages, with no
    values, become their translation when a template is compiled for one language: the text is
    then part of the page's static text, as `('Заказы'|safe)` folds to. A page called gettext
    forty times, each a third of a microsecond's Jinja call and a Markup; messages with values
    are still translated when shown."""

    GETTEXT_ARGUMENTS = {"_": 1, "gettext": 1, "pgettext": 2}

    def filter_stream(self, stream):
        lang = self.environment.lang
        tokens = list(stream)
        if lang is None:  # the environment messages are extracted with (and anything else): as written
            return iter(tokens)
        translations, folded, i = TRANSLATIONS[lang], [], 0
        while i < len(tokens):
            arguments = self._constant_call(tokens, i)
            if arguments is None:
                folded.append(tokens[i])
                i += 1
                continue
            text = (translations.gettext(*arguments) if len(arguments) == 1
                    else translations.pgettext(*arguments))
            line = tokens[i].lineno
            folded += [jinja2.lexer.Token(line, "lparen", "("), jinja2.lexer.Token(line, "string", text),
                       jinja2.lexer.Token(line, "pipe", "|"), jinja2.lexer.Token(line, "name", "safe"),
                       jinja2.lexer.Token(line, "rparen", ")")]
            i += 2 + 2 * len(arguments)
        return iter(folded)

    def _constant_call(self, tokens, i):
        """The string arguments when tokens[i:] are a gettext call of constant messages, else None."""
        count = self.GETTEXT_ARGUMENTS.get(tokens[i].value) if tokens[i].type == "name" else None
        if count is None or (i and tokens[i - 1].type == "dot"):
            return None
        shape = ["lparen"] + ["string", "comma"] * count
        shape[-1] = "rparen"
        found = tokens[i + 1:i + 1 + len(shape)]
        if [token.type for token in found] != shape:
            return None
        return [token.value for token in found[1::2]]


templates = Templates(
    loader=jinja2.FileSystemLoader(str(ROOT / "views")),
    # Checking every template file's mtime on every render is for editing them: `make run` asks.
    auto_reload=os.environ.get("TEMPLATES_AUTO_RELOAD") == "1",
    autoescape=True,
    extensions=["jinja2.ext.i18n", TranslatedWhenCompiled],
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.install_gettext_callables(
    lambda message, **kw: _(message, **kw),
    lambda s, p, n, **kw: ngettext(s, p, n, **kw),
    newstyle=True,
    pgettext=lambda c, m, **kw: pgettext(c, m, **kw))


def _compiled_in(lang):
    """An overlay of `templates` (the same filters and globals, its own compiled templates)."""
    overlay = templates.overlay()
    overlay.lang = lang
    overlay.loaded = None if overlay.auto_reload else {}
    return overlay


templates_in = {lang: _compiled_in(lang) for lang in LANGUAGES}


def template(name, lang=None):
    """A template compiled in the current language (or `lang`)."""
    return templates_in[lang or current_lang()].get_template(name)


def template_gettext(message, **values):
    """`_()` of a message with values in templates (constant ones are translated when compiled):
    what the i18n extension's newstyle gettext does (the translation is markup, the values are
    escaped into it), without its two context calls."""
    text = markupsafe.Markup(TRANSLATIONS[current_lang()].gettext(message))
    return text % values if values else text


templates.globals.update(_=template_gettext, gettext=template_gettext)


def format_number(value):
    """12 000: thousands apart by a non-breaking space, as both languages here may write them."""
    return f"{value:,}".replace(",", "\u00a0")


def format_money(value):
    return format_number(value) + "\u00a0₽"


DEFAULT_TIMEZONE = "Europe/Moscow"


def viewer_timezone():
    """The time zone dates are shown in: the signed-in viewer's profile setting, else Moscow.
    Looked up once per request (a page shows dozens of dates)."""
    try:
        environ = request.environ
    except RuntimeError:  # outside a request (mail)
        environ = {}
    zone = environ.get("birzha.timezone")
    if zone is None:
        zone = environ["birzha.timezone"] = _viewer_timezone(environ)
    return zone


def _viewer_timezone(environ):
    name = DEFAULT_TIMEZONE
    try:
        user = current_user() if environ and not environ.get("birzha.db_down") else None
    except Exception:  # an error page of a broken request: Moscow will do
        user = None
    if user and user.get("timezone"):
        name = user["timezone"]
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)


def format_date(value):
    """A moment in the viewer's time zone: "2 hours ago" when recent, else the local date and time,
    in a <time> whose title is the exact local time; a date stays a date."""
    return moments_shown()(value)


def moments_shown():
    """format_date for the moments of one list: the viewer's zone, language and clock read once
    (a cabinet shows sixty dates, and reading them per date was a tenth of its page)."""
    zone, lang = viewer_timezone(), current_lang()
    now = datetime.datetime.now(datetime.timezone.utc)

    def shown(value):
        if value is None:
            return ""
        if not isinstance(value, datetime.datetime):
            return value.isoformat()
        seconds = (now - value).total_seconds()
        if seconds < -60 or seconds >= 86400:
            return local_time(value, zone)[2]
        if seconds < 60:
            return recent_moment(value, zone, lang, "now", 0)
        if seconds < 3600:
            return recent_moment(value, zone, lang, "minutes", int(seconds // 60))
        return recent_moment(value, zone, lang, "hours", int(seconds // 3600))
    return shown


@functools.lru_cache(maxsize=4096)
def recent_moment(value, zone, lang, unit, count):
    """The <time> of a moment within the last day ("2 hours ago"), kept: it stays the same for a
    minute or an hour, and a feed page shows twenty."""
    utc, exact, _dated = local_time(value, zone)
    with language(lang):
        if unit == "now":
            phrase = _("just now")
        elif unit == "minutes":
            phrase = ngettext("%(num)s minute ago", "%(num)s minutes ago", count)
        else:
            phrase = ngettext("%(num)s hour ago", "%(num)s hours ago", count)
    return time_tag(utc, exact, markupsafe.escape(phrase))


@functools.lru_cache(maxsize=4096)
def local_time(value, zone):
    """A moment as (UTC ISO time, its local time with the zone's abbreviation, escaped, and the
    whole <time> as shown once it is more than a day old): a pure function, kept for the moments
    shown again and again (a feed page's forty)."""
    local = value.astimezone(zone)
    shown = local.strftime("%Y-%m-%d %H:%M")
    exact = markupsafe.escape(f"{shown} {local.tzname() or ''}".rstrip())
    utc = value.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")
    return utc, exact, time_tag(utc, exact, markupsafe.escape(shown))


def time_tag(utc, exact, text):
    """<time> of a moment: its UTC time, its exact local time as the title, and `text`, already escaped."""
    return markupsafe.Markup(f'<time datetime="{utc}" title="{exact}">{text}</time>')


def category_name(row, prefix="category_"):
    """The category name in the current language, from a row with name_ru/name_en columns."""
    key = "name_" + current_lang()
    return row.get(key) or row.get(prefix + key) or ""


def order_cards(orders, viewer=None, excerpt=False):
    """The cards of a list of open orders (macro order_card_html), each kept: the feed shows the
    same cards to everyone, and rendering them was a third of a feed page. Its creation time as
    shown (so the time zone and "5 minutes ago") and, for a performer, their CSRF token are part
    of the key."""
    performer = bool(viewer) and viewer["role"] == "performer"
    token = csrf_token() if performer else None
    lang, shown = current_lang(), moments_shown()
    return safe_lines([
        kept_row(lang, "macros.html", "order_card_html", order,
                 (shown(order["created_at"]), performer, token if order["mode"] != "offers" else None, excerpt))
        for order in orders])


def kept(template_name, macro, row, *shown):
    """A row's macro rendered once per worker and kept (the last 4,096) under everything it is made
    of: the language, the row, and the other arguments, `shown` (the row's moments as this viewer
    sees them, a token). So the macro reads nothing else, no request and no viewer. The twenty
    rows of a list were most of its page's Python."""
    return kept_row(current_lang(), template_name, macro, row, shown)


def kept_each(template_name, macro, rows, moments=(), *shown):
    """`kept_table` of rows as dicts (made here, or read from JSON), of the same columns."""
    columns = tuple(rows[0]) if rows else ()
    return kept_table(template_name, macro, columns, [tuple(row.values()) for row in rows], moments, *shown)


def kept_table(template_name, macro, columns, rows, moments=(), *shown):
    """Each row's macro as `kept` keeps it, joined: `rows` as tuples of `columns` (db_table), so a
    row's key is the row itself (a list's rows in one call: called row by row from the template,
    Jinja's own calling was a third of a kept row's cost). `moments` name the row's columns shown
    as dates (format_date), passed after the row, then `shown`, the same for every row."""
    if not rows:
        return markupsafe.Markup("")
    lang, moment = current_lang(), moments_shown()
    if len(moments) == 1:  # most lists: no comprehension per row for its one moment
        at = columns.index(moments[0])
        return safe_lines([_kept(lang, template_name, macro, columns, row, (moment(row[at]), *shown)) for row in rows])
    places = [columns.index(column) for column in moments]
    return safe_lines([_kept(lang, template_name, macro, columns, row, (*[moment(row[at]) for at in places], *shown))
                       for row in rows])


def safe_lines(parts):
    """Rendered macros (Markup, escaped already) one per line: joined as plain strings, since
    Markup's own join escapes each part again (11 µs for a page's twenty cards, against 0.6)."""
    return markupsafe.Markup("\n".join(parts))


def kept_row(lang, template_name, macro, row, shown):
    """The lookup of `kept` in a language already read: the row as its columns and its values, two
    flat tuples (as a tuple of (column, value) pairs it cost 3% more of a cabinet)."""
    return _kept(lang, template_name, macro, tuple(row), tuple(row.values()), shown)


@functools.lru_cache(maxsize=4096)
def _kept(lang, template_name, macro, columns, values, shown):
    return getattr(template(template_name, lang).module, macro)(dict(zip(columns, values)), *shown)


def link(base, params, **changes):
    """A URL of `base` with the current query parameters, some changed (None drops one): as
    urlencode writes it, each pair encoded once per worker (a search's dozen links, each with
    the term, were a tenth of its page)."""
    merged = {key: value for key, value in {**params, **changes}.items() if value}
    return base + ("?" + "&".join(query_pair(key, value) for key, value in merged.items()) if merged else "")


@functools.lru_cache(maxsize=1024)
def query_pair(key, value):
    return quote_plus(key) + "=" + quote_plus(str(value))


templates.filters.update(money=format_money, number=format_number, date=format_date)
templates.globals.update(category_name=category_name, ngettext=ngettext, order_cards=order_cards, kept=kept, link=link,
                         kept_each=kept_each, kept_table=kept_table)


def render(name, status=200, **context):
    """Renders a template with what every page needs: the viewer, flash, language. The CSRF token
    is made when a form asks for it (csrf_field()), so a guest's page without a form sets
    no cookie."""
    response.status = status
    context.setdefault("user", current_user())
    context.setdefault("flashes", pop_flashes())
    context.setdefault("lang", current_lang())
    # request.fullpath without its urljoin (3% of a feed page): the path the language links return to
    context.setdefault("path", request.script_name + request.path.lstrip("/")
                       + ("?" + request.query_string if request.query_string else ""))
    return template(name).render(**context)


# ---------------------------------------------------------------------------------------------
# The client's address

def client_address():
    """The address of the person at the other end, for throttling.

    The connection's own address, unless it comes from a trusted proxy (`trusted_proxies`, a
    tuple of networks; empty by default). Then X-Forwarded-For is read from the right, since
    each proxy appends the address it was reached from: the first address that is not itself a
    trusted proxy is the client. Anyone can write X-Forwarded-For, so what lies left of that
    address is never believed; a value that is not an address falls back to the proxy's own
    address, as does a missing header. A chain of trusted proxies only names its first one.
    """
    peer = request.environ.get("REMOTE_ADDR") or "unknown"
    trusted = request.app.config.get("trusted_proxies") or ()
    if not trusted or not _in_networks(_parse_address(peer), trusted):
        return peer
    hops = [hop.strip() for hop in request.environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    if hops == [""]:
        return peer
    for hop in reversed(hops):
        address = _parse_address(hop)
        if address is None:
            return peer
        if not _in_networks(address, trusted):
            return str(address)
    return str(_parse_address(hops[0]))


def _parse_address(text):
    """An ipaddress object, or None when the text is not exactly one IPv4 or IPv6 address (a
    port, brackets or a name make it none). An IPv4 address mapped into IPv6 is the IPv4 one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _in_networks(address, networks):
    return address is not None and any(address in network for network in networks)


# ---------------------------------------------------------------------------------------------
# Security helpers: passwords, sessions, CSRF, flash messages, access control

PASSWORD_MIN_BYTES, PASSWORD_MAX_BYTES = 8, 72


def password_error(password):
    """A message when the password is outside bcrypt's safe range (we refuse, never truncate)."""
    size = len(password.encode("utf-8"))
    if size < PASSWORD_MIN_BYTES:
        return _("The password must be at least 8 characters long.")
    if size > PASSWORD_MAX_BYTES:
        return _("The password must be at most 72 bytes long (fewer characters outside Latin).")
    return None


def hash_password(password):
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode()


# Checked against when the email is unknown, so both cases take the same time.
_DUMMY_HASH = bcrypt.hashpw(b"no such user here", bcrypt.gensalt()).decode()


def check_password(password, password_hash):
    data = password.encode("utf-8")
    if len(data) > PASSWORD_MAX_BYTES:
        bcrypt.checkpw(b"x", _DUMMY_HASH.encode())
        return False
    return bcrypt.checkpw(data, (password_hash or _DUMMY_HASH).encode())


def token_hash(token):
    return hashlib.sha256(token.encode()).digest()


SESSION_COOKIE = "birzha_session"
ANON_COOKIE = "birzha_anon"


def set_cookie(name, value, max_age):
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax",
                        secure=request.app.config["cookie_secure"])


# A session's token starts with the letter of its user's role and a dot ("p.…"): a role never
# changes (users_guard_update), so a page whose statement depends on the role (the cabinet) can
# choose it before reading the viewer, and read the viewer in that same statement. Only the
# token's hash finds its session, so a letter changed in the cookie finds none.
SESSION_ROLES = {"c": "customer", "p": "performer"}


def new_session_token(role):
    return f"{role[0]}.{secrets.token_urlsafe(32)}"


def start_session(user):
    """Opens a new session of `user` (a fresh token at every sign-in) and sets its cookie."""
    token = new_session_token(user["role"])
    db_run("sessions_delete_expired")  # housekeeping on the way in: sign-ins are rare enough
    db_run("session_create", token_hash=token_hash(token), user_id=user["id"], days=SESSION_DAYS,
           user_agent=request.headers.get("User-Agent", "")[:300])
    set_cookie(SESSION_COOKIE, token, SESSION_DAYS * 86400)
    request.environ["birzha.session_token"] = token
    request.environ.pop("birzha.user", None)
    request.environ.pop("birzha.user_loaded", None)


def end_session():
    token = request.get_cookie(SESSION_COOKIE)
    if token:
        db_run("session_delete", token_hash=token_hash(token))
    response.delete_cookie(SESSION_COOKIE, path="/")
    request.environ["birzha.session_token"] = None
    request.environ["birzha.user"] = None


def session_token():
    if "birzha.session_token" in request.environ:
        return request.environ["birzha.session_token"]
    return request.get_cookie(SESSION_COOKIE)


def session_role():
    """The role the session's token names (see SESSION_ROLES), or None: a guest, or a token of
    before tokens named it. The session may still have ended: only its statement can tell."""
    token = session_token()
    return SESSION_ROLES.get(token[0]) if token and token[1:2] == "." else None


def session_token_hash():
    """The hash a page's statement finds the viewer's session by (session_viewers), or None."""
    token = session_token()
    return token_hash(token) if token and len(token) < 100 else None


def current_user():
    """The signed-in user (dict) or None; looked up once per request."""
    environ = request.environ
    if "birzha.user_loaded" not in environ:
        environ["birzha.user_loaded"] = True
        hashed = session_token_hash()
        environ["birzha.user"] = db_one("session_user", token_hash=hashed) if hashed else None
    return environ.get("birzha.user")


def reread_unread_counts(user):
    """The header's unread counts of `user`, read with the user at the start of the request, read
    again after this request has read something (a conversation, an order's notifications)."""
    user.update(db_one("user_unread_counts", user_id=user["id"]) or {})


def set_current_user(user):
    """Signs this request in as `user` (the API's Bearer token, or the viewer a page's statement read
    by the session: see user_or_login) for current_user() and the checks that use it."""
    request.environ["birzha.user"] = user
    request.environ["birzha.user_loaded"] = True


def csrf_token():
    """HMAC of the session token (signed in) or of an anonymous cookie (guests)."""
    environ = request.environ
    if environ.get("birzha.csrf"):
        return environ["birzha.csrf"]
    basis = session_token() if current_user() else None
    if not basis:
        basis = request.get_cookie(ANON_COOKIE)
        if not basis or len(basis) > 100:
            basis = secrets.token_urlsafe(24)
            set_cookie(ANON_COOKIE, basis, 30 * 86400)
        basis = "anon:" + basis
    token = hmac.new(request.app.config["secret_key"], basis.encode(), hashlib.sha256).hexdigest()
    environ["birzha.csrf"] = token
    return token


def csrf_field(token=None):
    """A form's hidden CSRF field, with `token` (a kept macro's) or the request's own. macros.html
    exports it as `csrf`: a function, not a macro, since Jinja's calling of a macro cost a page
    more than the field itself (2% of a cabinet, which has two forms)."""
    return markupsafe.Markup(f'<input type="hidden" name="csrf_token" value="{markupsafe.escape(token or csrf_token())}">')


templates.globals["csrf_field"] = csrf_field


def posted_form():
    """request.forms (Bottle parses the body once and keeps it); a 400 when its parser cannot read
    the body or its Content-Type. Besides MultipartError, the parser raises ValueError (a
    Content-Type parameter without "=", a part header or field that is not UTF-8, a part's
    Content-Length that is not a number) and LookupError (a charset Python does not know)."""
    try:
        return request.forms
    except (bottle.MultipartError, ValueError, LookupError):
        raise HTTPError(400, _("The form data could not be read. Reload the page and try again."))


def check_csrf():
    """403 unless the form field or X-CSRF-Token header carries this visitor's token."""
    sent = request.headers.get("X-CSRF-Token") or posted_form().getunicode("csrf_token") or ""
    expected = csrf_token()
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise error_response(403, _("The form has expired or did not come from this site. Reload the page and try again."))


def flash(message, kind="ok"):
    """Queues a message for the next page; kept in a short-lived cookie."""
    existing = pop_flashes(peek=True)
    existing.append([kind, message])
    response.set_cookie("birzha_flash", quote(json.dumps(existing)), path="/", httponly=True,
                        samesite="Lax", max_age=60, secure=request.app.config["cookie_secure"])


def pop_flashes(peek=False):
    environ = request.environ
    if "birzha.flashes" in environ:
        return environ["birzha.flashes"]
    raw = request.get_cookie("birzha_flash")
    flashes = []
    if raw and len(raw) <= 4096:  # ours are short; no browser keeps a longer cookie
        try:
            flashes = [[str(k), str(m)] for k, m in json.loads(unquote(raw))][:5]
        except (ValueError, TypeError, RecursionError):  # not ours: JSON of another shape, or nested deep
            flashes = []
    if not peek:
        if raw:
            response.delete_cookie("birzha_flash", path="/")
        environ["birzha.flashes"] = flashes
    return flashes


def redirect(location, message=None, kind="ok"):
    """303 See Other with an optional flash message."""
    if message:
        flash(message, kind)
    resp = response.copy(cls=HTTPResponse)  # keeps the cookies set so far
    resp.status = 303
    resp.body = ""
    resp.set_header("Location", location)
    raise resp


def safe_next(target, default="/"):
    """Only local paths: no scheme, no host, no protocol-relative or backslash tricks."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(ch) < 32 for ch in target):
        return default
    return target


def login_required(view):
    """Guests go to /login?next=…; blocked users never get here (their session is gone)."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        user_or_login(current_user())
        return view(*args, **kwargs)
    return wrapper


def user_or_login(user):
    """The request's user, given (a page that read its viewer in its own statement, by
    session_token_hash() from session_viewers, one statement less) or current_user()'s; a guest (or
    a session that has ended) goes to /login?next=… and comes back here once signed in."""
    if user is None:
        redirect("/login?next=" + quote(request.fullpath + (
            "?" + request.query_string if request.query_string else ""), safe="/"))
    set_current_user(user)
    return user


def role_required(*roles, staff=False):
    """Signed in and of one of these roles (or staff when staff=True); otherwise 403."""
    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(*args, **kwargs):
            check_role(current_user(), roles, staff)
            return view(*args, **kwargs)
        return wrapper
    return decorate


def check_role(user, roles=(), staff=False):
    """A 403 unless the signed-in `user` is of one of these roles (or staff when staff=True)."""
    if staff and not user["is_staff"]:
        raise error_response(403, _("This page is for Birzha staff only."))
    if roles and user["role"] not in roles:
        raise error_response(403, _("This action is not available for your account."))


def csrf_protect(view):
    """Every state-changing route is wrapped in this."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        check_csrf()
        return view(*args, **kwargs)
    wrapper.csrf_protected = True
    return wrapper


# ---------------------------------------------------------------------------------------------
# Forms: read and validate input; never trust the browser

class Form:
    """Reads request.forms into clean values and per-field error messages."""

    def __init__(self, source=None):
        self.source = source if source is not None else request.forms
        self.values, self.errors = {}, {}

    def raw(self, name):
        value = self.source.getunicode(name)
        if value is None and name in self.source:
            self.errors[name] = _("This text is not valid UTF-8.")
            return ""
        return value or ""

    def text(self, name, *, required=True, min_len=0, max_len=200, multiline=False):
        value = self.raw(name).replace("\r\n", "\n")
        value = value if multiline else value.strip()
        self.values[name] = value
        if name in self.errors:
            return value
        if "\x00" in value or (not multiline and any(ord(ch) < 32 for ch in value)):
            self.errors[name] = _("The text contains control characters.")
        elif required and not value.strip():
            self.errors[name] = _("This field is required.")
        elif value and len(value.strip()) < min_len:
            self.errors[name] = _("At least %(n)s characters, please.", n=min_len)
        elif len(value) > max_len:
            self.errors[name] = _("At most %(n)s characters, please.", n=max_len)
        return value

    def _given(self, name, required):
        """The stripped text of a field, or None when it is empty (an error if required) or bad."""
        text = self.raw(name).strip()
        self.values[name] = text
        if name in self.errors:
            return None
        if not text:
            if required:
                self.errors[name] = _("This field is required.")
            return None
        return text

    def integer(self, name, *, required=True, min_value=None, max_value=None):
        text = self._given(name, required)
        if text is None:
            return None
        # People write "12 000" (and word processors "12\u00a0000"): spaces between digits are fine.
        text = re.sub(r"(?<=\d)[ \u00a0\u202f\u2009](?=\d)", "", text)
        if not re.fullmatch(r"[+-]?\d{1,18}", text):
            self.errors[name] = _("Enter a whole number.")
            return None
        number = int(text)
        if min_value is not None and number < min_value:
            self.errors[name] = _("The smallest allowed value is %(n)s.", n=min_value)
        elif max_value is not None and number > max_value:
            self.errors[name] = _("The largest allowed value is %(n)s.", n=max_value)
        return number

    def date(self, name, *, required=False, not_before=None, unchanged=None):
        """A YYYY-MM-DD date; one before `not_before` is refused unless it is `unchanged` (an
        edit may keep a deadline that has passed since)."""
        text = self._given(name, required)
        if text is None:
            return None
        try:
            value = datetime.date.fromisoformat(text)
        except ValueError:
            self.errors[name] = _("Enter a date as YYYY-MM-DD.")
            return None
        if not_before and value < not_before and value != unchanged:
            self.errors[name] = _("The date cannot be in the past.")
        return value

    def choice(self, name, options, *, required=True):
        value = self.raw(name).strip()
        self.values[name] = value
        if name in self.errors:
            return None
        if not value and not required:
            return None
        if value not in options:
            self.errors[name] = _("Choose one of the options.")
            return None
        return value

    def email(self, name):
        value = self.text(name, max_len=254)
        if name not in self.errors and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            self.errors[name] = _("Enter a valid email address.")
        return value.lower()

    @property
    def ok(self):
        return not self.errors


# ---------------------------------------------------------------------------------------------
# Errors: a page (or JSON problem) in the visitor's language, never a traceback

ERROR_TITLES = {
    400: "Bad request", 401: "Authentication required", 403: "Access denied", 404: "Page not found",
    405: "Method not allowed", 409: "Conflict", 411: "Length required", 413: "Request too large",
    415: "Unsupported media type", 422: "Unprocessable content", 429: "Too many attempts", 500: "Something went wrong",
    503: "Service unavailable",
}


def error_page(status, message=None, *, problem=None, **headers):
    """Renders the error page (under /api/: problem+json, with the `problem` extension members).
    It cannot fail: if rendering does, the answer is a static page with the same status."""
    response.status = status
    for name, value in headers.items():
        response.set_header(name.replace("_", "-"), value)
    try:
        return render_error(status, message, problem)
    except Exception:
        logging.getLogger("birzha").exception("the error page for %s failed; sent the static one", status)
        return static_error_page(status)


def render_error(status, message, problem):
    if request.path.startswith("/api/"):
        end_transaction(commit=False)
        response.content_type = "application/problem+json"
        title = _(ERROR_TITLES.get(status, "Error"))
        return json.dumps({"type": "about:blank", "title": title, "status": status,
                           "detail": message or title, **(problem or {})})
    user = None
    if not request.environ.get("birzha.db_down"):
        try:
            user = current_user()
        except Exception:
            user = None
    order_match = re.match(r"/orders/(\d{1,18})(/|$)", request.path)
    page = template("error.html").render(
        order_link=f"/orders/{order_match.group(1)}" if order_match and status != 404 else None,
        support_email=request.app.config.get("support_email", ""), status=status, title=_(ERROR_TITLES.get(status, "Error")), message=message or "",
        user=user, flashes=[], lang=current_lang(),
        path=request.fullpath)
    end_transaction(commit=False)  # an error never keeps half a change
    return page


STATIC_ERROR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{status}</title><link rel="stylesheet" href="/static/style.css"></head>
<body><main><h1>{status}</h1><p><a href="/">Birzha</a></p></main></body></html>
"""


def static_error_page(status):
    """The last resort: no template, no translation, no database; only the status."""
    try:
        end_transaction(commit=False)  # the lease is off the request even if this fails
    except Exception:
        pass
    response.status = status
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if request.path.startswith("/api/"):
        response.content_type = "application/problem+json"
        return json.dumps({"type": "about:blank", "title": phrase, "status": status, "detail": phrase})
    response.content_type = "text/html; charset=utf-8"
    return STATIC_ERROR_PAGE.format(status=html.escape(f"{status} {phrase}"))


def error_response(status, message=None, *, problem=None, **headers):
    """An HTTPResponse to raise: the rendered error page with its status."""
    body = error_page(status, message, problem=problem, **headers)
    resp = response.copy(cls=HTTPResponse)
    resp.status = status
    resp.body = body
    return resp


def not_found(message=None):
    return error_response(404, message or _("There is no such page."))


def handle_error(err):
    """Bottle's error handler (an HTTPError, or 500 for an exception). It cannot fail: bottle
    would answer its bare "Critical error" page."""
    try:
        return error_page_for(err)
    except Exception:
        logging.getLogger("birzha").exception("the error handler failed; sent the static page")
        return static_error_page(err.status_code)


def error_page_for(err):
    status = err.status_code
    message = None
    if status == 500:
        end_transaction(commit=False)
        exc = request.environ.get("bottle.exc_info", (None, None))[1]
        if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
            request.environ["birzha.db_down"] = True
            return error_page(503, _("The database is not available right now. Please try again in a minute."))
        request.environ["birzha.db_down"] = True  # do not touch a connection in an unknown state
    elif isinstance(err.body, str) and err.body and status != 404:
        message = err.body
    return error_page(status, message)


