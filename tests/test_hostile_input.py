"""Hostile input on every route: whatever arrives, the answer is a page with a 2xx-4xx status,
never a 500 and never a traceback. Walks the route table, so new routes are covered too."""
from urllib.parse import quote

import pytest
from webtest import TestApp

import web
from conftest import PASSWORD, Client, csrf_for, open_session
from test_security import STATE_CHANGING, fill_url, routes, world  # noqa: F401  (world is a fixture)

HOSTILE_VALUES = [
    "\x00", "%00", "' OR 1=1 --", "<script>alert(1)</script>", "-1", "0", "99999999999999999999999",
    "1e309", "NaN", "../../etc/passwd", "x" * 5000, "２０２６-01-01", "\u202e\u0000", "[]", "{}",
]
FIELD_NAMES = ["q", "after", "status", "category", "role", "staff", "blocked", "sort", "min_budget",
               "max_budget", "from", "to", "customer", "performer", "action", "target_type", "next", "lang"]
FORM_FIELDS = ["title", "description", "category", "budget", "deadline", "rating", "review", "reason",
               "name", "email", "password", "role", "phone", "messenger", "experience_years",
               "experience_text", "bio", "current_password", "new_password", "slug", "name_ru",
               "name_en", "next", "categories"]


def assert_no_crash(resp, what):
    assert resp.status_int < 500, (what, resp.status)
    assert "Traceback" not in resp.text and "psycopg" not in resp.text, what


@pytest.fixture
def clients(app, world, sign_in):
    """A guest and a signed-in client of each kind."""
    result = {"guest": Client(app, extra_environ={"REMOTE_ADDR": "198.51.100.1"})}
    for kind in ("customer", "performer", "staff"):
        result[kind] = sign_in(Client(app, extra_environ={"REMOTE_ADDR": "198.51.100.2"}), world[kind])
    return result


def test_hostile_query_strings_on_every_get_route_never_crash(clients, world):
    for _method, rule in routes(("GET",)):
        url = fill_url(rule, world["ids"])
        for who, client in clients.items():
            for value in HOSTILE_VALUES:
                params = [(name, value) for name in FIELD_NAMES]
                assert_no_crash(client.get(url, params=params, status="*"), (who, url, value))
            raw = b"&".join(name.encode() + b"=%FF%FE%00" for name in FIELD_NAMES)
            assert_no_crash(client.get(url + "?" + raw.decode("latin-1"), status="*"), (who, url, "bytes"))


def test_hostile_forms_on_every_post_route_never_crash(clients, world):
    for method, rule in routes(STATE_CHANGING):
        url = fill_url(rule, world["ids"])
        for who, client in clients.items():
            for value in ("\x00", "x" * 20000, "-5", "99999999999999999999", "<b>", "", "2026-02-30"):
                fields = {name: value for name in FORM_FIELDS}
                assert_no_crash(client.post_form(url, fields), (who, url, value))
            body = "&".join(f"{name}=%FF%00" for name in FORM_FIELDS) + "&csrf_token=" + client.csrf()
            resp = client.post(url, params=body.encode(), content_type="application/x-www-form-urlencoded",
                               status="*")
            assert_no_crash(resp, (who, url, "bytes"))


# ---------------------------------------------------------------------------------------------
# Headers and cookies: bytes that are not UTF-8, values no browser sends

NOT_UTF8 = "\xe9"  # the byte 0xE9 alone, as a WSGI server hands it on (PEP 3333: latin-1)
DEEP_JSON = "[" * 3000
BAD_HEADERS = [
    ("Accept-Language", NOT_UTF8), ("Authorization", "Bearer " + NOT_UTF8), ("Authorization", NOT_UTF8),
    ("X-CSRF-Token", NOT_UTF8), ("User-Agent", NOT_UTF8), ("Referer", NOT_UTF8), ("Host", NOT_UTF8),
    ("X-Forwarded-For", NOT_UTF8), ("Content-Type", "application/json; charset=" + NOT_UTF8),
    ("If-Modified-Since", NOT_UTF8), ("If-None-Match", NOT_UTF8), ("Range", "bytes=" + NOT_UTF8),
    ("Accept-Language", "en;q=" + "9" * 5000), ("Accept-Language", ",;q=,;" * 2000),
    ("Content-Length", "abc"), ("Content-Length", "-5"), ("Transfer-Encoding", NOT_UTF8),
]
BAD_COOKIES = [
    "birzha_flash=" + quote(DEEP_JSON), 'birzha_flash="' + DEEP_JSON + '"', "birzha_flash=" + NOT_UTF8,
    "birzha_flash=" + quote('{"a": 1}'), "birzha_flash=" + quote('[["ok", "%s"]]' % ("x" * 3000)),
    "birzha_flash=%FF%FE", "birzha_flash=" + quote("1" * 5000),
    "lang=" + NOT_UTF8, "birzha_anon=" + NOT_UTF8, "birzha_session=" + NOT_UTF8,
    "birzha_session=" + "x" * 5000, NOT_UTF8 * 10, '"=' + NOT_UTF8 + '; ;;=; a="\\',
    "a@b=1", "x{=1; lang=en", "lang=en; a/b=2",  # names Python's cookie parser refuses outright
]


def walk_urls(world):
    """(method, url) of every GET and POST route, ids filled in; the static route gets a real file."""
    walked = []
    for method, rule in routes(("GET", "POST")):
        url = fill_url(rule, world["ids"])
        walked.append((method, "/static/style.css" if rule.startswith("/static/") else url))
    return walked


@pytest.fixture
def session_tokens(db, world):
    """A session of each kind of user (None for a guest), opened in SQL."""
    return {"guest": None, **{kind: open_session(db, world[kind]) for kind in ("customer", "performer", "staff")}}


def send(app, method, url, token, headers, cookies="", email="someone@example.test"):
    """One request from a fresh browser (no cookie jar to rewrite the Cookie header): the session's
    cookie, the extra cookies as they are, the form a POST route takes, with a valid CSRF token."""
    basis = token or "anon:walker"
    cookie = f"{web.SESSION_COOKIE}={token}" if token else f"{web.ANON_COOKIE}=walker"
    fields = {"email": email, "password": PASSWORD, "name": "Walker", "title": "Walk",
              "description": "Walk", "category": "design", "budget": "5", "rating": "5", "reason": "walk",
              "label": "walk", "csrf_token": csrf_for(basis)}
    headers = dict(headers, Cookie="; ".join(part for part in (cookie, cookies) if part))
    browser = TestApp(app, extra_environ={"REMOTE_ADDR": "198.51.100.3"}, lint=False)
    if method == "GET":
        return browser.get(url, headers=headers, status="*", expect_errors=True)
    return browser.post(url, fields, headers=headers, status="*", expect_errors=True)


def failure(resp):
    """What is wrong with an answer to hostile input, or None (the body is read as bytes: a
    download has no charset)."""
    if resp.status_int >= 500 or b"Critical error" in resp.body or b"Traceback" in resp.body:
        return resp.status
    return None


def test_headers_that_are_not_utf8_or_absurd_are_ignored_or_refused_on_every_route(app, world, session_tokens):
    failed, email = [], world["customer"]["email"]  # a real account: POST /login signs in
    for method, url in walk_urls(world):
        for who in ("guest", "staff"):
            for name, value in BAD_HEADERS:
                wrong = failure(send(app, method, url, session_tokens[who], {name: value}, email=email))
                if wrong:
                    failed.append((who, method, url, name, value[:20], wrong))
    assert failed == []


def test_cookies_that_are_not_utf8_or_absurd_are_ignored_on_every_route(app, world, session_tokens):
    failed, email = [], world["customer"]["email"]  # a real account: POST /login signs in
    for method, url in walk_urls(world):
        for who in ("guest", "staff"):
            for cookie in BAD_COOKIES:
                wrong = failure(send(app, method, url, session_tokens[who], {}, cookie, email=email))
                if wrong:
                    failed.append((who, method, url, cookie[:30], wrong))
    assert failed == []


def test_when_the_error_page_itself_fails_a_static_page_keeps_the_status(client, monkeypatch):
    def broken(name, *args, **kwargs):
        raise RuntimeError("the templates are gone")
    monkeypatch.setattr(web, "template", broken)
    for method, url, status in [("GET", "/no/such/page", 404), ("POST", "/orders", 403),
                                ("POST", "/performers", 405), ("GET", "/", 500)]:
        resp = client.request(url, method=method, status="*", expect_errors=True)
        assert resp.status_int == status, url
        assert resp.content_type == "text/html" and f"<h1>{status} " in resp.text, url
        assert "Critical error" not in resp.text and "Traceback" not in resp.text, url
        assert resp.headers["X-Frame-Options"] == "DENY", url
    monkeypatch.setattr(web, "_", broken)  # the problem+json of the API needs no template: break gettext
    resp = client.get("/api/v1/orders/999", status=404)
    assert resp.content_type == "application/problem+json"
    assert resp.json == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "Not Found"}


def test_what_a_header_that_is_not_utf8_still_means(app, world, session_tokens):
    """Read with U+FFFD for the bad bytes, it matches nothing: no language, no token, no CSRF."""
    staff = session_tokens["staff"]
    page = send(app, "GET", "/", None, {"Accept-Language": NOT_UTF8})
    assert page.status_int == 200 and 'lang="ru"' in page.text  # the default language
    me = send(app, "GET", "/api/v1/me", None, {"Authorization": "Bearer bz_" + NOT_UTF8, "Accept-Language": "en"})
    assert me.status_int == 401 and me.json["detail"].startswith("This API token is not valid.")
    take = send(app, "POST", f"/api/v1/orders/{world['ids']['order']}/take", staff,
                {"X-CSRF-Token": NOT_UTF8, "Accept-Language": "en"})
    assert take.status_int == 403 and "did not come from this site" in take.json["detail"]
    length = send(app, "GET", "/orders", None, {"Content-Length": "abc", "Accept-Language": "en"})
    assert length.status_int == 400 and "Content-Length header is not a number" in length.text


def test_a_flash_cookie_that_is_not_ours_is_ignored_and_deleted(app, world, session_tokens):
    for cookie in ("birzha_flash=" + quote(DEEP_JSON), 'birzha_flash="' + DEEP_JSON + '"'):
        page = send(app, "GET", "/cabinet", session_tokens["customer"], {"Accept-Language": "en"}, cookie)
        assert page.status_int == 200 and 'class="flash' not in page.text
        cookies = [value for name, value in page.headerlist if name == "Set-Cookie"]
        assert any(value.startswith('birzha_flash="";') and "Max-Age=-1" in value for value in cookies)


def test_a_cookie_the_parser_refuses_is_dropped_and_the_others_are_kept(app, world, session_tokens):
    page = send(app, "GET", "/cabinet", session_tokens["customer"], {}, "a@b=1; lang=en")
    assert page.status_int == 200 and 'lang="en"' in page.text and "Cabinet" in page.text
