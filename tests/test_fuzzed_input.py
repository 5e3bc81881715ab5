"""Fuzzing every form and every API route (issue 14): hypothesis sends generated input as each kind
of user (a guest, a customer, a performer, staff, a blocked user): text from every Unicode plane,
NUL, bytes that are not UTF-8 in the body, the headers and the cookies, numbers at and past every
limit, arrays and objects where a scalar belongs, fields missing and repeated, files with odd names.
Whatever arrives, the answer is never a 500; a refused request (4xx) leaves the database and the
files on disk exactly as they were; after an accepted one every counter still matches a recount.

Bounded, and the same requests at every run: for each route its valid request as each kind of
user, the requests that once failed, then FUZZ_EXAMPLES generated ones (15; set the variable
higher for a deeper run by hand) from a seed of the route's own.
"""
import contextlib
import dataclasses
import functools
import json
import os
import re
import zlib
from urllib.parse import quote_from_bytes

import bcrypt
import bottle
import pytest
import webtest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from psycopg import sql

import api
import app as birzha
import web
from accounts import API_TOKEN_PREFIX
from conftest import PASSWORD, csrf_for, open_session
from db import Q
from orders import BUDGET_MAX
from test_hostile_input import BAD_COOKIES, NOT_UTF8, failure
from test_security import fill_url
from test_talk import files_dir, stored  # noqa: F401  (files_dir is a fixture)

KINDS = ("guest", "customer", "performer", "staff", "blocked")

# The examples of a route (and the routes of a group) share one database on purpose: every example
# builds the order it acts on and opens its own session, and the check after it (nothing changed
# when refused, the counters exact when accepted) is what makes the sharing sound. A fixed seed per
# route (fuzz_route) and no example database: every run sends the same requests. deadline=None:
# the machine is shared and slow at times.
# Generating text of 10,000 characters can be slow on a busy machine: the health checks on the
# speed and size of generation are off, max_examples is the bound.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "15")), database=None, deadline=None,
                print_blob=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# Values: what a field, a JSON member or a header may carry

class RawJson(str):
    """JSON text put into a body as it is: what json.dumps cannot write (a number of 5000 digits)."""


def plane_character(plane):
    return st.integers(plane << 16, (plane << 16) | 0xFFFF).map(chr)


# Any code point of any of the 17 planes (surrogates, private use and unassigned ones included),
# and the characters that break things most often.
CHARACTER = st.one_of(st.integers(0, 16).flatmap(plane_character),
                      st.sampled_from("\x00\t\n\r\x1b\x7f\x85\u00a0\u2028\u202e\ufeff\ufffd\ud800\udfff\U0010ffff"))
TEXT = st.text(CHARACTER, max_size=20)
LENGTHS = (2, 3, 8, 60, 61, 72, 73, 100, 101, 200, 201, 254, 255, 300, 1000, 1001, 2000, 2001, 5000, 5001,
           10000, 10001)
LONG_TEXT = st.builds(lambda char, n: char * n, st.sampled_from(("x", "ж", "😀", " ")), st.sampled_from(LENGTHS))
LIMITS = (0, 1, 2, 7, 8, 10, 11, 59, 60, 61, 80, 81, 100, 101, 365, 366, 1000, 5000, 5001, BUDGET_MAX,
          BUDGET_MAX + 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 10**12 - 1, 10**12, 10**17, 10**17 + 1,
          10**18, 10**100)
INTEGER = st.builds(lambda n, negative: -n if negative else n, st.sampled_from(LIMITS), st.booleans())
NUMBER_TEXT = st.one_of(
    INTEGER.map(str),
    st.builds(lambda n, form: form.format(n), st.sampled_from(LIMITS),
              st.sampled_from(("+{}", " {} ", "{}.0", "{}e0", "0{}", "{} 000", "{}\u00a0000", "{}_0", "0x{}"))),
    st.sampled_from(("１２", "٣", "߁", "NaN", "-0", "Infinity", "1e309", "½", "²", "1,5", "0" * 13 + "1")))
DATE_TEXT = st.sampled_from(("2026-02-30", "2026-13-01", "0001-01-01", "9999-12-31", "10000-01-01", "2026-1-1",
                             "2099-06-01T00:00", "20990601", "2099-W01", "2000-01-01", "2099-12-31", "today"))
# Bytes that are not UTF-8: a lone continuation byte, an overlong NUL, an encoded surrogate, a
# code point past U+10FFFF, a truncated sequence, latin-1 text.
BAD_BYTES = st.one_of(st.sampled_from((b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
                                       b"caf\xe9", b"\x80abc", b"%FF%00")),
                      st.binary(min_size=1, max_size=12))
RAW_JSON = st.sampled_from((RawJson("1" + "0" * 5000), RawJson("1e999"), RawJson("-0"), RawJson('"\\ud800"'),
                            RawJson('"\\udfff\\ud800x"'), RawJson('"a\\u0000b"'), RawJson("[" * 3000 + "]" * 3000),
                            RawJson('{"$ref": "#"}'), RawJson("1.0"), RawJson("1E2")))
# Values a form could well carry, for the checks behind the first ones: a wrong password, someone
# else's email, a number in range, another option, a `next` that leaves the site.
PLAUSIBLE = st.sampled_from(("another password", "nobody@example.test", "Plain text", "1", "5", "10", "design",
                             "offers", "yes", "no", "cancelled", "2099-12-31", "Asia/Omsk", "/orders",
                             "//evil.example", "https://evil.example/"))
SCALAR = st.one_of(PLAUSIBLE, TEXT, NUMBER_TEXT, INTEGER, LONG_TEXT, DATE_TEXT, BAD_BYTES, st.none(), st.booleans(),
                   st.floats(), RAW_JSON)
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(TEXT, SCALAR, max_size=2))
# Names no form has, for fields that should not be there.
EXTRA_NAMES = ("", "x", "title[]", "csrf_token", "__proto__", "TITLE", "with ", "\x00", "\ud800", "имя", "n" * 300)

# A file of a multipart form: its name, its declared type, its bytes.
FILE_NAME = st.one_of(
    st.sampled_from((b"../../etc/passwd", b"..", b".", b"", b"a\x00b.txt", b'quo"te.png', b"\xff\xfe.png",
                     "файл.pdf".encode(), "😀".encode() * 100, b"x" * 1000, b"CON", b"a\\b\\c.txt",
                     b"name\r\nX-Injected: yes", b"%00.txt", "\u202egnp.exe".encode(), b" .hidden ")),
    TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=20))
FILE_TYPE = st.sampled_from((b"", b"text/html", b"image/svg+xml", b"x" * 200, b"\xff/\xfe", b"image/png",
                             b"application/octet-stream; charset=\xff", b"text/plain; name=\"a\r\nb\""))
UPLOAD = st.tuples(FILE_NAME, FILE_TYPE, st.binary(max_size=64))

# Headers with bytes that are not UTF-8 (as a WSGI server hands them on: latin-1 text) or absurd.
HEADER_VALUE = st.one_of(st.sampled_from((NOT_UTF8, "Bearer " + NOT_UTF8, "Bearer bz_" + NOT_UTF8, "\x00",
                                          "en;q=" + "9" * 300, ",;q=,;" * 50, "x" * 300)),
                         st.binary(max_size=30).map(lambda data: data.decode("latin-1")))
HEADER = st.one_of(
    st.tuples(st.sampled_from(("Accept-Language", "Authorization", "X-CSRF-Token", "User-Agent")), HEADER_VALUE),
    st.tuples(st.just("Content-Type"), st.one_of(
        HEADER_VALUE.map(lambda value: "application/json; charset=" + value),
        HEADER_VALUE.map(lambda value: "multipart/form-data; boundary=" + value),
        st.sampled_from(("text/plain", "application/x-www-form-urlencoded; charset=latin-1", "")))),
    st.tuples(st.just("Cookie"), st.one_of(st.sampled_from(BAD_COOKIES), HEADER_VALUE)))


@dataclasses.dataclass
class Spec:
    """One request, whatever the route: changes to the route's valid fields, how the body is sent,
    the credentials, extra headers and, for a multipart form, files."""
    edits: list = dataclasses.field(default_factory=list)  # (what, which field: an index or a name, value)
    body: str = "natural"  # the route's own encoding, or another one
    credentials: str = "valid"  # for a form: the CSRF token; for the API: token or session
    headers: list = dataclasses.field(default_factory=list)
    uploads: list = dataclasses.field(default_factory=list)


EDIT = st.tuples(st.sampled_from(("replace", "drop", "repeat", "add")), st.integers(0, 63), VALUE)
BODIES = ("natural", "multipart", "urlencoded", "json", "garbage", "empty", "top-level", "huge")
CREDENTIALS = ("valid", "csrf in header", "no csrf", "wrong csrf", "session", "session without csrf")


def mostly_first(options):
    """The first option half of the time (the route's own way), else any of the others."""
    return st.one_of(st.just(options[0]), st.sampled_from(options[1:]))


def mostly_none(item, max_size):
    """No items half of the time, else a few."""
    return st.one_of(st.just([]), st.lists(item, min_size=1, max_size=max_size))


# Half of the requests change only fields (so that they get past the parsing of the body and the
# credentials, to the checks of the form), the others anything.
SPEC = st.one_of(
    st.builds(Spec, edits=st.lists(EDIT, min_size=1, max_size=3)),
    st.builds(Spec, edits=st.lists(EDIT, max_size=4), body=mostly_first(BODIES),
              credentials=mostly_first(CREDENTIALS), headers=mostly_none(HEADER, 2),
              uploads=mostly_none(UPLOAD, 6)))
VALID = Spec()  # the route's valid request, as it is


# ---------------------------------------------------------------------------------------------
# The valid request of each route, and the objects it acts on

def baseline(people):
    """A valid value for every field any form or API body takes (a route ignores the others)."""
    return {
        "email": people["customer"]["email"], "password": PASSWORD, "name": "Fuzz Name", "role": "customer",
        "title": "A fuzzed order", "description": "Something to do", "category": "design", "budget": "1000",
        "deadline": "", "mode": "take", "reason": "A reason", "confirm": "yes", "message": "Here it is",
        "rating": "8", "review": "Good", "price": "900", "days": "7", "body": "Hello",
        "with": str(people["performer"]["id"]), "phone": "+7 900 000-00-00", "messenger": "@fuzz",
        "experience_years": "3", "experience_text": "Years", "bio": "A bio", "timezone": "UTC",
        "categories": "design", "current_password": PASSWORD, "new_password": "another password 2",
        "email_notifications": "on", "label": "fuzz token", "outcome": "done", "slug": "fuzz-slug",
        "name_ru": "Фазз", "name_en": "Fuzz", "id": "", "next": "/cabinet", "before": "", "after": "", "q": "",
        "sort": "", "min_budget": "", "max_budget": "",
    }


SIGNUP_EMAIL = "fuzz-newcomer@example.test"

# The order each route acts on, by the last word of its rule: in the state where the action is
# possible, so that the valid request goes through and a fuzzed one meets a live form's checks.
ORDER_FOR = {
    "take": ("open", {}), "cancel": ("open", {}), "edit": ("open", {}), "deliver": ("in_progress", {}),
    "complete": ("in_progress", {}), "withdraw": ("in_progress", {}), "accept": ("delivered", {}),
    "revision": ("delivered", {}), "dispute": ("delivered", {}), "rate": ("done", {}),
    "messages": ("disputed", {}), "resolve": ("disputed", {}), "reopen": ("cancelled", {}),
    "hide": ("done", {"rating": 8, "review": "Good"}), "restore": ("done", {"rating": 8, "review": "Good"}),
}


def make_token(db, user, token):
    """An API token of the user (made in SQL, as the profile page would); its id."""
    return db.execute(Q["api_token_create"], {"user_id": user["id"], "token_hash": web.token_hash(token),
                                              "label": "fuzz", "max_tokens": 10}).fetchone()["id"]


@pytest.fixture
def people(db, make_user, app, files_dir, monkeypatch):  # noqa: F811  (files_dir is a fixture)
    """The users of each kind with a password, an API token and (blocked aside) the right to act;
    a victim for the staff actions on users, a spare token to revoke, a password reset link."""
    # bcrypt at 4 rounds instead of 12: the same checks, in a 256th of the time (the fuzzed
    # sign-ins and password changes check and hash a password in every example).
    cheap_salt = functools.partial(bcrypt.gensalt, 4)
    monkeypatch.setattr(web.bcrypt, "gensalt", cheap_salt)
    monkeypatch.setattr(web, "_DUMMY_HASH", web.hash_password("no such user here"))
    result = {
        "customer": make_user("customer"), "performer": make_user("performer", categories=["design"]),
        "staff": make_user("customer", staff=True), "blocked": make_user("performer", categories=["design"]),
        "victim": make_user("performer", categories=["design"]),
    }
    db.execute("UPDATE users SET password_hash = %s", (web.hash_password(PASSWORD),))
    tokens = {kind: API_TOKEN_PREFIX + "fuzz-" + kind for kind in ("customer", "performer", "staff", "blocked")}
    for kind, token in tokens.items():
        make_token(db, result[kind], token)
    spare = make_token(db, result["customer"], API_TOKEN_PREFIX + "fuzz-spare")
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (result["blocked"]["id"],))
    reset = "fuzz-reset-link-" + "x" * 20
    db.execute(Q["password_reset_request"], {"email": result["victim"]["email"], "address": "192.0.2.1",
                                             "token": reset})
    # The staff's category actions get one of their own: the orders of the examples are in 'design'.
    category = db.execute("INSERT INTO categories (slug, name_ru, name_en) VALUES ('fuzz', 'Фазз', 'Fuzz') "
                          "RETURNING id").fetchone()
    # The object each wildcard of a rule names (test_security.fill_url): the victim of the staff's
    # actions on users, the token to revoke, the reset link, a language, a static file.
    result.update(tokens=tokens, files_dir=files_dir, db=db, app=app, ids={
        "user": result["victim"]["id"], "performer": result["performer"]["id"], "category": category["id"],
        "token_id": spare, "token": reset, "code": "en", "filename": "style.css"})
    return result


def stage(db, make_order, people, rule):
    """The ids of the rule's wildcards: a new order (and offer, and conversation) for a rule that
    acts on one, in the state its action needs."""
    ids = dict(people["ids"])
    if "<order_id" not in rule:
        return ids
    customer, performer = people["customer"], people["performer"]
    if "/offers" in rule:  # an open order in offers mode with the performer's offer on it
        order = make_order(customer, mode="offers")
        ids["offer"] = db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"],
                                                      "price": 900, "days": 7, "message": "Me"}).fetchone()["id"]
    else:
        status, extra = ORDER_FOR.get(rule.rsplit("/", 1)[-1], ("in_progress", {}))
        order = make_order(customer, performer=performer, status=status, **extra)
        if status == "disputed":  # a conversation that its people read and write, and staff read
            talk = db.execute(Q["conversation_open"], {"order_id": order["id"], "performer_id": performer["id"],
                                                       "sender_id": performer["id"]}).fetchone()
            db.execute(Q["message_send"], {"conversation_id": talk["id"], "sender_id": performer["id"],
                                           "body": "Let us talk"})
    return {"order": order["id"], **ids}  # order first: "order" is in none of the other wildcards' names


# ---------------------------------------------------------------------------------------------
# Building the request

def field_names(rule, method):
    """The fields an API route takes (its body's or its query's, from the OpenAPI document); None
    for a form, which is sent every field of the baseline."""
    if not rule.startswith("/api/"):
        return None
    operation = api.OPENAPI["paths"].get(re.sub(r"<(\w+)[^>]*>", r"{\1}", rule), {}).get(method.lower(), {})
    if method == "GET":
        return {parameter["name"]: "string" for parameter in operation.get("parameters", [])
                if parameter["in"] == "query"}
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = api.OPENAPI["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return {name: "integer" if "integer" in json.dumps(prop) else "string"
            for name, prop in schema.get("properties", {}).items()}


def fields_of(rule, method, people):
    """The valid fields of the route as (name, value) pairs, in its own types."""
    values = dict(baseline(people), email=SIGNUP_EMAIL) if rule == "/signup" else baseline(people)
    names = field_names(rule, method)
    if names is None:
        return list(values.items())
    pairs = []
    for name, kind in names.items():
        value = values.get(name, "")
        if value != "":  # an empty baseline is a field left out
            pairs.append((name, int(value) if kind == "integer" else value))
    return pairs


def edited(pairs, edits, targets):
    """The pairs with the edits applied: a field replaced, dropped, repeated (one of the targets,
    else of the pairs), or one added."""
    pairs = list(pairs)
    names = list(targets) or [name for name, _value in pairs] or list(EXTRA_NAMES)
    for what, which, value in edits:
        if what == "add":
            pairs.append((EXTRA_NAMES[which % len(EXTRA_NAMES)], value))
            continue
        name = which if isinstance(which, str) else names[which % len(names)]
        if what in ("replace", "drop"):
            pairs = [(n, v) for n, v in pairs if n != name]
        if what != "drop":
            pairs.append((name, value))
    return pairs


def as_bytes(value):
    """Text as UTF-8 (a lone surrogate as the bytes it would be, which are not UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=repr).encode()
    return str(value).encode("utf-8", "surrogatepass")


def form_items(pairs):
    """The (name, value) bytes of a form: a list is the field repeated, None leaves it out."""
    items = []
    for name, value in pairs:
        for one in (value if isinstance(value, list) else [value]):
            if one is not None:
                items.append((as_bytes(name), as_bytes(one)))
    return items


def urlencoded(items):
    return b"&".join(quote_from_bytes(name).encode() + b"=" + quote_from_bytes(value).encode()
                     for name, value in items)


BOUNDARY = b"fuzzFUZZfuzz"


def multipart(items, uploads):
    """A multipart body written by hand: names and file names go in as they are (quotes, CR LF and
    bytes that are not UTF-8 included), as no browser would send them."""
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (BOUNDARY, name, value)
             for name, value in items]
    parts += [b'--%s\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\nContent-Type: %s\r\n\r\n%s\r\n'
              % (BOUNDARY, name, kind, data) for name, kind, data in uploads]
    return b"".join(parts) + b"--%s--\r\n" % BOUNDARY


def json_text(value):
    """A JSON value as bytes, written by hand where json.dumps would refuse or fix it: raw bytes
    inside a string, a number of 5000 digits, NaN."""
    if isinstance(value, RawJson):
        return value.encode()
    if isinstance(value, bytes):
        return b'"' + value + b'"'
    if isinstance(value, list):
        return b"[" + b",".join(json_text(one) for one in value) + b"]"
    if isinstance(value, dict):
        return json_object(value.items())
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def json_object(pairs):
    """An object written member by member, so that a repeated field is a repeated key."""
    return b"{" + b",".join(json_text(str(name)) + b":" + json_text(value) for name, value in pairs) + b"}"


HUGE = b"x" * (web.MAX_BODY_BYTES + 1)


def body_of(spec, pairs, api_route):
    """The body and its Content-Type as the spec says: the route's own encoding or another one."""
    how = spec.body
    if how == "natural":
        how = "json" if api_route else ("multipart" if spec.uploads else "urlencoded")
    if how == "json":
        return json_object(pairs), "application/json"
    if how == "urlencoded":
        return urlencoded(form_items(pairs)), "application/x-www-form-urlencoded"
    if how == "multipart":
        return multipart(form_items(pairs), spec.uploads), "multipart/form-data; boundary=" + BOUNDARY.decode()
    if how == "top-level":  # a JSON value that is not an object
        return json_text([value for _name, value in pairs] or None), "application/json"
    if how == "garbage":
        return b"".join(as_bytes(value) for _name, value in pairs[:3]) + b"\xff%ZZ&=&&{", \
            "application/json" if api_route else "application/x-www-form-urlencoded"
    if how == "huge":
        return HUGE, "application/json" if api_route else "application/x-www-form-urlencoded"
    return b"", None


def credentials(spec, kind, people, api_route):
    """Cookie and header of the kind of user: their session (a new one) or, for the API, their
    token; a guest and a blocked user have the anonymous cookie that pages give them."""
    anon = "fuzz-" + kind
    cookies = [f"{web.ANON_COOKIE}={anon}"]
    session = open_session(people["db"], people[kind]) if kind != "guest" else None
    use_session = not api_route or spec.credentials.startswith("session")
    headers = {}
    if session and use_session:
        cookies.append(f"{web.SESSION_COOKIE}={session}")
    elif api_route and kind != "guest":
        headers["Authorization"] = "Bearer " + people["tokens"][kind]
    # A blocked user's session counts for nothing: the pages they get carry a guest's token.
    csrf = csrf_for(session if session and kind != "blocked" else "anon:" + anon)
    if spec.credentials in ("no csrf", "session without csrf"):
        csrf = None
    elif spec.credentials == "wrong csrf":
        csrf = csrf_for("anon:someone else")
    headers["Cookie"] = "; ".join(cookies)
    if csrf and (api_route or spec.credentials == "csrf in header"):
        headers["X-CSRF-Token"] = csrf
    return headers, csrf


def build(spec, kind, people, method, rule, url, targets):
    """The request of the spec, as a webob request."""
    api_route = rule.startswith("/api/")
    headers, csrf = credentials(spec, kind, people, api_route)
    pairs = fields_of(rule, method, people)
    if not api_route and csrf and spec.credentials != "csrf in header":
        pairs.insert(0, ("csrf_token", csrf))
    pairs = edited(pairs, spec.edits, targets)
    request = webtest.TestRequest.blank(url, method=method, environ={"REMOTE_ADDR": "198.51.100.9"})
    if method == "GET":
        request.environ["QUERY_STRING"] = urlencoded(form_items(pairs)).decode("latin-1")
    if method != "GET" or spec.body != "natural":  # a GET with a body now and then
        body, content_type = body_of(spec, pairs, api_route)
        request.body = body
        if content_type:
            headers["Content-Type"] = content_type
    headers["Accept-Language"] = "en"
    for name, value in spec.headers:
        headers[name] = headers[name] + "; " + value if name == "Cookie" else value
    for name, value in headers.items():
        request.headers[name] = value
    return request


# ---------------------------------------------------------------------------------------------
# The checks

def fingerprint(db):
    """Every table's row count and a hash of its rows (in the order of their text): any write shows.
    One statement over the tables the catalog lists, so a table added later is covered too."""
    tables = [row["tablename"] for row in db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    query = sql.SQL("\nUNION ALL\n").join(
        sql.SQL("SELECT {name} AS name, count(*) || ' ' || md5(string_agg(t::text, E'\\n' ORDER BY t::text)) AS digest "
                "FROM {table} AS t").format(name=sql.Literal(table), table=sql.Identifier(table))
        for table in tables)
    return {row["name"]: row["digest"] for row in db.execute(query)}


# Refusals that write, and rightly: a sign-in attempt is recorded and committed before the password
# is checked (so that parallel guesses cannot all slip under the limit), so a wrong password at
# the login form or on the password change form is a refused request that counts. Nothing else
# may change (a Bearer token's last use, say, is rolled back with the refusal).
WRITES_WHEN_REFUSED = {"/login": {"login_attempts"}, "/profile/password": {"login_attempts"}}


def check(db, people, make_order, method, rule, kind, spec, targets=()):
    """Sends the spec's request to the route as this kind of user, on an order made for it."""
    ids = stage(db, make_order, people, rule)
    request = build(spec, kind, people, method, rule, fill_url(rule, ids), targets)
    before, files_before = fingerprint(db), stored(people["files_dir"])
    resp = webtest.TestApp(people["app"], lint=False).do_request(request, status="*", expect_errors=True)
    what = (method, rule, kind, resp.status)
    assert failure(resp) is None, (what, resp.body[-2000:])
    if 400 <= resp.status_int < 500:
        after = fingerprint(db)
        changed = sorted(name for name in before
                         if name not in WRITES_WHEN_REFUSED.get(rule, ()) and before[name] != after[name])
        assert changed == [], (what, "a refused request changed", changed)
        assert stored(people["files_dir"]) == files_before, (what, "a refused request left files")
    else:
        assert db.execute("SELECT * FROM audit_counters()").fetchall() == [], (what, "counter drift")


# Requests that once failed, sent to every route: a multipart part header that is not UTF-8 and a
# Content-Type parameter without "=" got a 500 (Bottle's parser raised, see web.posted_form); an
# empty message marked the conversation read (messages.render_view).
ONCE_FAILED = [
    ("customer", Spec(body="multipart", uploads=[(b"a.png", b"\xff/\xfe", b"x")])),
    ("guest", Spec(headers=[("Content-Type", "application/x-www-form-urlencoded; charset")])),
    ("staff", Spec(credentials="session", headers=[("Content-Type", "application/json; charset")])),
    ("customer", Spec(edits=[("replace", "body", "")])),
]


@contextlib.contextmanager
def noting_reads(names):
    """Notes in `names` (a dict, for its order) each field a request reads from its query or form."""
    getunicode, getall = bottle.FormsDict.getunicode, bottle.FormsDict.getall

    def noted(read):
        def wrapper(self, name, *args, **kwargs):
            names.setdefault(name)
            return read(self, name, *args, **kwargs)
        return wrapper
    bottle.FormsDict.getunicode, bottle.FormsDict.getall = noted(getunicode), noted(getall)
    try:
        yield names
    finally:
        bottle.FormsDict.getunicode, bottle.FormsDict.getall = getunicode, getall


def fuzz_route(fuzz, method, rule):
    """The route's valid request as each kind of user, noting the fields it reads (the ones the
    edits change: the baseline has many more); then the requests that once failed, and generated
    ones. The seed is the route's own: each route gets its own examples, every run the same ones."""
    with noting_reads({}) as names:
        for kind in KINDS:
            fuzz(method, rule, kind, VALID)
    targets = [name for name in names if name != "csrf_token"]  # the credentials vary it

    def request(kind, spec):
        fuzz(method, rule, kind, spec, targets)
    for kind, spec in ONCE_FAILED:
        request = example(kind=kind, spec=spec)(request)
    run = given(kind=st.sampled_from(KINDS), spec=SPEC)(request)
    FUZZ(seed(zlib.crc32(f"{method} {rule}".encode()))(run))()


@pytest.fixture
def fuzz(db, people, make_order):
    """check() bound to this test's database and people."""
    return functools.partial(check, db, people, make_order)


# Every route, by the module that defines it and its method: one database for each group (one
# for each route would cost more than its requests). A GET route's query is its form.
AREAS = {}
for route in birzha.app.routes:
    AREAS.setdefault((route.callback.__module__, route.method), []).append(route.rule)


@pytest.mark.parametrize("area", sorted(AREAS), ids="-".join)
def test_fuzzed_requests_never_get_a_500_and_when_refused_change_nothing(fuzz, area):
    _module, method = area
    for rule in AREAS[area]:
        fuzz_route(fuzz, method, rule)
