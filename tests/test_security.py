"""The security baseline (SPEC §8): headers, CSRF, sessions, throttling, blocked accounts."""
import ipaddress
import re
import secrets

import psycopg
import pytest

import accounts
import app as birzha
import web
from db import Q
from conftest import PASSWORD, Client, text_of

CSRF_MESSAGE = "The form has expired or did not come from this site."
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
WILDCARD = re.compile(r"<([^>]*)>")


def session_cookie_header(resp):
    headers = [value for name, value in resp.headerlist
               if name.lower() == "set-cookie" and value.startswith(web.SESSION_COOKIE + "=")]
    assert len(headers) == 1, resp.headerlist
    return headers[0]


def session_token(client):
    return client.cookies[web.SESSION_COOKIE].strip('"')


def session_hashes(db, user_id=None):
    rows = db.execute("SELECT token_hash, user_id FROM sessions").fetchall()
    return {bytes(row["token_hash"]) for row in rows if user_id in (None, row["user_id"])}


def log_in(client, user, password=PASSWORD, **kwargs):
    return client.post_form("/login", {"email": user["email"], "password": password}, **kwargs)


def signed_in(client):
    """True when the client's session still opens a page that needs one."""
    return client.get("/profile", status="*").status_int == 200


# ---------------------------------------------------------------------------------------------
# Walking the route table: every route, with real ids in its wildcards

@pytest.fixture
def world(db, make_user, make_order):
    """Some of everything, so that a URL with an id points at a real object."""
    customer = make_user("customer")
    performer = make_user("performer", categories=["design"])
    staff = make_user("customer", staff=True)
    make_order(customer)
    order = make_order(customer, performer=performer, status="in_progress")
    make_order(customer, performer=performer, status="done", rating=8, review="Good")
    category = db.execute("SELECT id FROM categories WHERE slug = 'design'").fetchone()
    return {"customer": customer, "performer": performer, "staff": staff,
            "ids": {"user": performer["id"], "performer": performer["id"], "order": order["id"],
                    "category": category["id"]}}


def fill_url(rule, ids):
    """The rule with each wildcard replaced by the id of an object of the kind its name says (the
    first key of `ids` that the name contains), else 1 (or, for a `re:a|b` wildcard, its first word)."""
    def value(match):
        name, _, conf = match.group(1).partition(":")
        choices = re.fullmatch(r"re:(\w[\w-]*)(\|[\w-]+)*", conf)
        if choices:
            return choices.group(1)
        return str(next((ids[kind] for kind in ids if kind in name.lower()), 1))
    return WILDCARD.sub(value, rule)


def routes(methods):
    return [(route.method, route.rule) for route in birzha.app.routes if route.method in methods]


def snapshot(db):
    """Everything a state-changing request could touch."""
    def rows(sql):
        return db.execute(sql).fetchall()
    return {
        "users": rows("SELECT * FROM users ORDER BY id"),
        "orders": rows("SELECT * FROM orders ORDER BY id"),
        "order_history": rows("SELECT * FROM order_history ORDER BY id"),
        "categories": rows("SELECT * FROM categories ORDER BY id"),
        "performer_categories": rows("SELECT * FROM performer_categories ORDER BY performer_id, category_id"),
        "sessions": rows("SELECT token_hash, user_id, expires_at FROM sessions ORDER BY token_hash"),
        "admin_log": rows("SELECT * FROM admin_log ORDER BY id"),
        "login_attempts": rows("SELECT * FROM login_attempts ORDER BY id"),
        "api_tokens": rows("SELECT * FROM api_tokens ORDER BY id"),
    }


def test_every_response_of_every_get_route_has_the_security_headers(client, make_client, sign_in, world):
    staff = sign_in(make_client(), world["staff"])
    urls = [fill_url(rule, world["ids"]) for _method, rule in routes(("GET",))]
    assert "/performers/%d" % world["ids"]["performer"] in urls
    urls += ["/no/such/page", "/performers/1x"]
    for visitor in (client, staff):
        for url in urls:
            resp = visitor.get(url, status="*")
            assert resp.status_int < 500, url
            csp = resp.headers.get("Content-Security-Policy", "")
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp, url
            assert resp.headers.get("X-Frame-Options") == "DENY", url
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", url
            assert resp.headers.get("Referrer-Policy") == "same-origin", url
    resp = client.post("/performers", status=405)  # an error outside any route has them too
    assert resp.headers["X-Frame-Options"] == "DENY"


def test_every_state_changing_route_refuses_a_missing_or_wrong_csrf_token(db, client, make_client, sign_in, world):
    staff = sign_in(make_client(), world["staff"])
    stranger = sign_in(make_client("198.51.100.9"), world["customer"])
    # Fields that many forms take, so a route that forgot CSRF would really act.
    fields = {"email": world["staff"]["email"], "password": PASSWORD, "role": "customer", "name": "Changed",
              "title": "Changed title", "description": "Changed", "category": "design", "budget": "5",
              "reason": "csrf test", "rating": "5", "review": "Changed", "current_password": PASSWORD,
              "new_password": "a brand new password", "slug": "changed", "name_ru": "Изменено",
              "name_en": "Changed", "categories": "seo", "phone": "123"}
    walked = routes(STATE_CHANGING)
    assert ("POST", "/logout") in walked and ("POST", "/profile/password") in walked
    before = snapshot(db)
    for visitor in (client, staff):
        for method, rule in walked:
            url = fill_url(rule, world["ids"])
            for token in (None, "0" * 64, stranger.csrf()):
                body = dict(fields) if token is None else dict(fields, csrf_token=token)
                resp = getattr(visitor, method.lower())(url, body, status="*")
                if visitor is client and url.startswith("/api/") and resp.status_int == 401:
                    continue  # the API asks a guest for credentials (401) before it looks at CSRF
                assert resp.status_int == 403, f"{method} {url} with token {token!r}: {resp.status}"
                assert CSRF_MESSAGE in resp.text, f"{method} {url}: refused, but not for CSRF"
    assert snapshot(db) == before
    assert signed_in(staff)


# ---------------------------------------------------------------------------------------------
# Sessions

def test_session_cookie_is_httponly_and_lax_and_secure_when_configured(app, make_client, make_user):
    user = make_user("customer")
    cookie = session_cookie_header(log_in(make_client(), user)).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie.replace("httponly", "")
    saved = app.config["cookie_secure"]
    app.config["cookie_secure"] = True
    try:
        browser = Client(app, extra_environ={"wsgi.url_scheme": "https", "HTTP_ACCEPT_LANGUAGE": "en",
                                             "REMOTE_ADDR": "203.0.113.7"})
        cookie = session_cookie_header(log_in(browser, user)).lower()
    finally:
        app.config["cookie_secure"] = saved
    assert "httponly" in cookie and "samesite=lax" in cookie and "; secure" in cookie


def test_login_gives_a_new_token_and_forgets_the_old_one(client, make_client, db, make_user):
    user = make_user("performer")
    assert log_in(client, user).status_int == 303
    first = session_token(client)
    assert session_hashes(db, user["id"]) == {web.token_hash(first)}

    assert log_in(client, user).status_int == 303
    second = session_token(client)
    assert second != first
    assert session_hashes(db, user["id"]) == {web.token_hash(second)}
    old_cookie = make_client()
    old_cookie.set_cookie(web.SESSION_COOKIE, first)
    assert not signed_in(old_cookie)
    assert signed_in(client)


def test_a_planted_session_cookie_is_replaced_at_login(client, db, make_user):
    """Session fixation: a token the visitor arrived with is never the one that gets signed in."""
    user = make_user("customer")
    client.set_cookie(web.SESSION_COOKIE, "planted-by-someone-else")
    form = client.get("/login").forms[0]
    form["email"], form["password"] = user["email"], PASSWORD
    assert form.submit().status_int == 303
    assert session_token(client) != "planted-by-someone-else"
    assert session_hashes(db, user["id"]) == {web.token_hash(session_token(client))}


def test_logout_ends_this_session_only(client, make_client, db, make_user):
    user = make_user("customer")
    other_device = make_client()
    log_in(client, user)
    log_in(other_device, user)
    token = session_token(client)
    resp = client.post_form("/logout")
    assert resp.status_int == 303 and resp.headers["Location"].endswith("/")
    assert web.token_hash(token) not in session_hashes(db)
    assert not signed_in(client)
    replay = make_client()
    replay.set_cookie(web.SESSION_COOKIE, token)  # a copied cookie is dead too
    assert not signed_in(replay)
    assert signed_in(other_device) and len(session_hashes(db, user["id"])) == 1


def test_password_change_ends_every_session_and_keeps_the_changer_signed_in(client, make_client, db, make_user):
    user = make_user("performer")
    other_device = make_client("198.51.100.20")
    log_in(client, user)
    log_in(other_device, user)
    old_token = session_token(client)
    resp = client.post_form("/profile/password", {"current_password": PASSWORD,
                                                  "new_password": "a brand new password"})
    assert resp.status_int == 303 and resp.headers["Location"].endswith("/profile")
    assert not signed_in(other_device)
    assert signed_in(client) and session_token(client) != old_token
    assert session_hashes(db, user["id"]) == {web.token_hash(session_token(client))}
    assert log_in(make_client(), user).status_int == 400  # the old password is gone
    assert log_in(make_client(), user, "a brand new password").status_int == 303


def test_a_blocked_user_cannot_log_in_and_their_open_session_stops_working(client, make_client, db, make_user):
    user = make_user("performer")
    log_in(client, user)
    assert signed_in(client)
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (user["id"],))
    assert not signed_in(client)
    assert session_hashes(db, user["id"]) == set()

    wrong = log_in(make_client(), user, "not the password")
    assert wrong.status_int == 400 and "Wrong email or password." in text_of(wrong)
    right = log_in(make_client(), user)
    assert right.status_int == 403 and "This account is blocked." in text_of(right)
    assert session_hashes(db, user["id"]) == set()


# ---------------------------------------------------------------------------------------------
# Throttling

def attempts_for(db, email):
    return db.execute("SELECT count(*) AS n FROM login_attempts WHERE email = %s", (email,)).fetchone()["n"]


def attempts_from(db, address):
    return db.execute("SELECT count(*) AS n FROM login_attempts WHERE address = %s", (address,)).fetchone()["n"]


def test_sixth_attempt_for_one_account_from_one_address_is_refused_with_the_time_to_wait(client, db, make_user):
    user = make_user("customer")
    for _ in range(5):
        assert log_in(client, user, "wrong password").status_int == 400
    resp = log_in(client, user)  # even the right password waits
    assert resp.status_int == 429
    assert 840 < int(resp.headers["Retry-After"]) <= 900
    assert "Try again in 15 minutes." in text_of(resp)
    assert session_hashes(db) == set()
    assert attempts_for(db, user["email"]) == 5  # a refused attempt is not counted again


def test_a_strangers_failures_from_another_address_do_not_lock_the_owner_out(client, make_client, db, make_user):
    owner = make_user("customer")
    stranger = make_client("198.51.100.66")
    for _ in range(5):
        assert log_in(stranger, owner, "wrong password").status_int == 400
    assert log_in(stranger, owner).status_int == 429
    assert log_in(client, owner).status_int == 303
    resp = client.post_form("/profile/password", {"current_password": PASSWORD, "new_password": "a brand new password"})
    assert resp.status_int == 303
    assert log_in(make_client("198.51.100.67"), owner, "a brand new password").status_int == 303


def test_one_account_is_tried_at_most_fifty_times_from_all_addresses_together(client, make_client, db, make_user):
    user = make_user("customer")
    db.execute("INSERT INTO login_attempts (email, address) "
               "SELECT %s, '198.51.100.' || n FROM generate_series(1, 49) AS n", (user["email"],))
    assert log_in(make_client("192.0.2.50"), user, "wrong password").status_int == 400
    resp = log_in(client, user)  # a fresh address, the right password: the account waits
    assert resp.status_int == 429 and 840 < int(resp.headers["Retry-After"]) <= 900
    assert attempts_for(db, user["email"]) == 50
    assert log_in(client, make_user("customer")).status_int == 303  # other accounts from here are fine


def test_twenty_first_attempt_from_one_address_is_refused(client, make_client, db, make_user):
    user = make_user("customer")
    db.execute("INSERT INTO login_attempts (email, address) "
               "SELECT 'guess' || n || '@example.test', '203.0.113.7' FROM generate_series(1, 18) AS n")
    for n in (19, 20):
        assert log_in(client, {"email": f"guess{n}@example.test"}, "wrong password").status_int == 400
    assert attempts_from(db, "203.0.113.7") == 20
    resp = log_in(client, user)
    assert resp.status_int == 429 and resp.headers["Retry-After"]
    assert log_in(make_client("198.51.100.77"), user).status_int == 303  # another address is not held up


def test_forwarded_for_does_not_escape_the_address_limit(client, db, make_user):
    user = make_user("customer")
    db.execute("INSERT INTO login_attempts (email, address) "
               "SELECT 'guess' || n || '@example.test', '203.0.113.7' FROM generate_series(1, 20) AS n")
    resp = log_in(client, user, headers={"X-Forwarded-For": "192.0.2.1"})
    assert resp.status_int == 429


PROXIES = "10.0.0.0/24, 2001:db8:ffff::1"


@pytest.mark.parametrize("peer,forwarded_for,client", [
    ("10.0.0.2", "192.0.2.1", "192.0.2.1"),
    ("10.0.0.2", "192.0.2.1, 10.0.0.3", "192.0.2.1"),           # through a second proxy of ours
    ("10.0.0.2", "6.6.6.6, 192.0.2.1", "192.0.2.1"),            # the client's own hop is not believed
    ("10.0.0.2", "not-an-address, 192.0.2.1", "192.0.2.1"),     # nor its garbage
    ("2001:db8:ffff::1", "2001:DB8::7", "2001:db8::7"),
    ("::ffff:10.0.0.2", "192.0.2.1", "192.0.2.1"),
    ("10.0.0.2", "10.0.0.9, 10.0.0.3", "10.0.0.9"),             # from inside: the first of our proxies
])
def test_forwarded_for_from_a_trusted_proxy_names_the_client(app, make_client, db, make_user, monkeypatch,
                                                             peer, forwarded_for, client):
    monkeypatch.setitem(app.config, "trusted_proxies", birzha.trusted_proxies(PROXIES))
    user = make_user("customer")
    resp = log_in(make_client(peer), user, "wrong password", headers={"X-Forwarded-For": forwarded_for})
    assert resp.status_int == 400
    assert db.execute("SELECT address FROM login_attempts").fetchall() == [{"address": client}]


@pytest.mark.parametrize("peer,forwarded_for", [
    ("203.0.113.7", "192.0.2.1"),              # not from a trusted proxy: the header is anyone's
    ("10.0.0.2", None),
    ("10.0.0.2", ""),
    ("10.0.0.2", "192.0.2.1:4711"),            # not an address
    ("10.0.0.2", "192.0.2.1, garbage"),        # garbage where our proxy's hop should be
    ("10.0.0.2", "192.0.2.1, "),
    ("10.0.0.2", "example.test"),
])
def test_forwarded_for_that_cannot_be_believed_leaves_the_peer_address(app, make_client, db, make_user, monkeypatch,
                                                                       peer, forwarded_for):
    monkeypatch.setitem(app.config, "trusted_proxies", birzha.trusted_proxies(PROXIES))
    user = make_user("customer")
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    assert log_in(make_client(peer), user, "wrong password", headers=headers).status_int == 400
    assert db.execute("SELECT address FROM login_attempts").fetchall() == [{"address": peer}]


def test_behind_a_trusted_proxy_one_clients_failures_do_not_lock_out_the_others(app, make_client, db, make_user,
                                                                                monkeypatch):
    monkeypatch.setitem(app.config, "trusted_proxies", birzha.trusted_proxies("10.0.0.2"))
    user = make_user("customer")
    proxy = make_client("10.0.0.2")
    for n in range(20):
        assert log_in(proxy, {"email": f"guess{n}@example.test"}, "wrong password",
                      headers={"X-Forwarded-For": "192.0.2.66"}).status_int == 400
    assert log_in(proxy, user, headers={"X-Forwarded-For": "192.0.2.66"}).status_int == 429
    assert log_in(proxy, user, headers={"X-Forwarded-For": "192.0.2.1"}).status_int == 303


def test_trusted_proxies_setting_takes_addresses_and_networks_and_refuses_anything_else():
    assert birzha.trusted_proxies("") == ()
    assert birzha.trusted_proxies(" 10.0.0.1, 192.168.0.0/16 ,::1,") == (
        ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("::1/128"))
    with pytest.raises(SystemExit, match="'proxy.local' is not an address"):
        birzha.trusted_proxies("10.0.0.1, proxy.local")


def test_a_successful_login_clears_the_accounts_failures_from_its_address_only(client, make_client, db, make_user):
    user = make_user("performer")
    elsewhere = make_client("198.51.100.30")
    for _ in range(3):
        assert log_in(elsewhere, user, "wrong password").status_int == 400
    for _ in range(4):
        assert log_in(client, user, "wrong password").status_int == 400
    assert log_in(client, user).status_int == 303
    assert attempts_from(db, "203.0.113.7") == 0
    assert attempts_for(db, user["email"]) == attempts_from(db, "198.51.100.30") == 3
    fresh = make_client("203.0.113.7")  # the count from this address starts again
    for _ in range(5):
        assert log_in(fresh, user, "wrong password").status_int == 400
    assert log_in(fresh, user).status_int == 429


def test_failures_older_than_fifteen_minutes_do_not_count(client, db, make_user):
    user = make_user("customer")
    db.execute("INSERT INTO login_attempts (email, address, at) "
               "SELECT %s, '203.0.113.7', now() - interval '16 minutes' FROM generate_series(1, 30)",
               (user["email"],))
    assert log_in(client, user).status_int == 303


def test_an_attempt_sweeps_expired_attempts_of_any_email_and_address(client, db, make_user):
    user = make_user("customer")
    db.execute("INSERT INTO login_attempts (email, address, at) "
               "SELECT 'someone' || n || '@example.test', '198.51.100.' || n, now() - interval '16 minutes' "
               "FROM generate_series(1, 30) AS n")
    db.execute("INSERT INTO login_attempts (email, address, at) "
               "VALUES ('recent@example.test', '198.51.100.99', now() - interval '14 minutes')")
    assert log_in(client, user, "wrong password").status_int == 400
    left = db.execute("SELECT email FROM login_attempts ORDER BY id").fetchall()
    assert left == [{"email": "recent@example.test"}, {"email": user["email"]}]


def test_the_throttle_refuses_to_decide_where_it_could_miss_parallel_attempts(db):
    with pytest.raises(psycopg.errors.InvalidTransactionState, match="needs READ COMMITTED"):
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            db.execute(Q["login_attempt_admit"], {"email": "a@example.test", "address": "192.0.2.1"})
    assert db.execute("SELECT count(*) AS n FROM login_attempts").fetchone()["n"] == 0


def test_guessing_the_current_password_on_the_profile_is_throttled_too(client, db, make_user, sign_in):
    user = make_user("customer")
    sign_in(client, user)
    for _ in range(5):
        resp = client.post_form("/profile/password", {"current_password": "guess", "new_password": "whatever123"})
        assert resp.status_int == 400
    resp = client.post_form("/profile/password", {"current_password": PASSWORD, "new_password": "whatever123"})
    assert resp.status_int == 429 and "Try again in 15 minutes." in text_of(resp)
    assert db.execute("SELECT password_hash FROM users WHERE id = %s", (user["id"],)).fetchone()["password_hash"] \
        == user["password_hash"]


# ---------------------------------------------------------------------------------------------
# Caching: nothing that depends on the session is ever stored

def api_token(db, user):
    token = accounts.API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.execute(Q["api_token_create"], {"user_id": user["id"], "token_hash": web.token_hash(token),
                                       "label": "cache test", "max_tokens": 10})
    return token


def test_every_response_to_a_signed_in_request_says_no_store(db, make_client, sign_in, world):
    urls = [fill_url(rule, world["ids"]) for _method, rule in routes(("GET",))]
    urls += ["/static/style.css", "/no/such/page", "/orders/999999", "/api/v1/orders/999999"]
    assert {"/cabinet", "/profile", "/admin", "/api/v1/me"} <= set(urls)
    for kind in ("customer", "performer", "staff"):
        browser = sign_in(make_client(), world[kind])
        for url in urls:  # pages, redirects, 403s and 404s alike
            resp = browser.get(url, status="*")
            assert resp.headers.get("Cache-Control") == "no-store", (kind, url, resp.status)
        for method, rule in routes(STATE_CHANGING):  # refused for CSRF: an error page with the user on it
            resp = browser.post(fill_url(rule, world["ids"]), {"csrf_token": "0" * 64}, status="*")
            assert resp.headers.get("Cache-Control") == "no-store", (kind, method, rule, resp.status)
        bearer = make_client()
        headers = {"Authorization": f"Bearer {api_token(db, world[kind])}"}
        for url in urls:
            if url.startswith("/api/"):
                resp = bearer.get(url, headers=headers, status="*")
                assert resp.headers.get("Cache-Control") == "no-store", (kind, "Bearer", url, resp.status)
                assert not bearer.cookies, url  # no cookie came back, so Bearer alone made it no-store


def test_a_response_that_sets_or_deletes_a_cookie_says_no_store(client, world):
    def set_cookies(resp):
        return [value for name, value in resp.headerlist if name == "Set-Cookie"]
    browsing = client.get("/orders")  # a page without a form needs no CSRF token: no cookie
    assert not set_cookies(browsing) and browsing.headers["Cache-Control"] == "private, no-cache"
    first = client.get("/login")  # a guest's first form sets the cookie its CSRF tokens come from
    assert set_cookies(first) and first.headers["Cache-Control"] == "no-store"
    switch = client.get("/lang/ru?next=/orders", status=303)
    assert set_cookies(switch) and switch.headers["Cache-Control"] == "no-store"
    login = log_in(client, world["customer"])
    assert set_cookies(login) and login.headers["Cache-Control"] == "no-store"
    logout = client.post_form("/logout")
    assert any(value.startswith(web.SESSION_COOKIE + '="";') for value in set_cookies(logout))
    assert logout.headers["Cache-Control"] == "no-store"


def test_guest_pages_are_kept_by_no_shared_cache_and_static_files_stay_cacheable(client, world):
    """A guest's page varies with the language and carries CSRF tokens of the guest's own cookie:
    no shared cache may hand it to someone else, and the browser asks again before reusing it."""
    client.get("/login")  # the anonymous cookie is set once
    urls = [fill_url(rule, world["ids"]) for _method, rule in routes(("GET",)) if not rule.startswith("/static/")]
    for url in urls + ["/no/such/page"]:
        resp = client.get(url, status="*")
        if resp.headers.get("Set-Cookie"):
            continue  # e.g. /lang/…: no-store, above
        if url.startswith("/password/reset/"):  # the link's secret is in the address: kept nowhere
            assert resp.headers.get("Cache-Control") == "no-store", (url, resp.status)
            continue
        assert resp.headers.get("Cache-Control") == "private, no-cache", (url, resp.status)
    static = client.get("/static/style.css")
    assert "Cache-Control" not in static.headers and static.headers["Last-Modified"]
