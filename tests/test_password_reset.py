"""Password reset by e-mail (SPEC §11), end to end through a real SMTP server: the same answer
for unknown addresses, throttled, a link valid one hour and once, stored hashed, every session
ended."""
import re

import commands
import web
from conftest import PASSWORD, text_of
from test_mail import BASE_URL, smtp  # noqa: F401  (a fixture)

NEW_PASSWORD = "a brand new secret"


def location(resp):
    return re.sub(r"^https?://[^/]+", "", resp.headers["Location"])


def ask(browser, email, status=303):
    return browser.post_form("/password/forgot", {"email": email}, status=status)


def link_in(message):
    found = re.search(re.escape(BASE_URL) + r"(/password/reset/[A-Za-z0-9_-]+)", message.get_content())
    return found.group(1)


def log_in(browser, email, password):
    return browser.post_form("/login", {"email": email, "password": password})


def test_the_whole_reset_ends_every_session_and_the_link_works_once(db, db_url, make_user, make_client, sign_in, smtp):
    user = make_user("customer", name="Anna")
    phone, laptop = sign_in(make_client("198.51.100.90"), user), sign_in(make_client("198.51.100.91"), user)
    visitor = make_client("198.51.100.92")
    assert visitor.get("/login").text.count('href="/password/forgot"') == 1
    assert visitor.get("/password/forgot").status_int == 200

    answer = ask(visitor, user["email"].upper())
    assert location(answer) == "/login"
    assert "a link to choose a new password is on its way" in text_of(answer.follow())
    row = db.execute("SELECT token_hash, used_at FROM password_resets").fetchone()
    assert row["used_at"] is None
    assert commands.tick(db_url) == 0
    [message] = smtp.messages
    assert message["To"].addresses[0].addr_spec == user["email"]
    assert message["Subject"] == "Биржа: восстановление пароля"  # her language: Russian by default
    path = link_in(message)
    token = path.rsplit("/", 1)[1]
    assert bytes(row["token_hash"]) == web.token_hash(token)
    # The token itself is nowhere in the database once its mail is sent.
    assert db.execute("SELECT count(*) AS n FROM mail_outbox WHERE reset_token IS NOT NULL").fetchone()["n"] == 0

    form = visitor.get(path)
    assert form.status_int == 200 and 'name="new_password"' in form.text
    assert form.headers["Referrer-Policy"] == "same-origin" and form.headers["Cache-Control"] == "no-store"
    short = visitor.post_form(path, {"new_password": "short"})
    assert short.status_int == 400 and "at least 8 characters" in text_of(short)
    done = visitor.post_form(path, {"new_password": NEW_PASSWORD})
    assert done.status_int == 303 and location(done) == "/login"
    assert "every session is logged out" in text_of(done.follow())

    for browser in (phone, laptop):  # both sessions are gone
        assert location(browser.get("/cabinet", status=303)).startswith("/login")
    assert db.execute("SELECT count(*) AS n FROM sessions").fetchone()["n"] == 0
    assert log_in(make_client("198.51.100.93"), user["email"], PASSWORD).status_int == 400
    assert location(log_in(make_client("198.51.100.94"), user["email"], NEW_PASSWORD)) == "/cabinet"

    # Used once: the same link again is refused, and changes nothing.
    again = visitor.post_form(path, {"new_password": "yet another secret"})
    assert again.status_int == 400 and "expired or was already used" in text_of(again)
    assert visitor.get(path, status=400).status_int == 400
    assert location(log_in(make_client("198.51.100.95"), user["email"], NEW_PASSWORD)) == "/cabinet"


def test_an_expired_link_is_refused(db, make_user, make_client):
    user = make_user("customer")
    token = "expired-token-0123456789abcdef"
    db.execute("INSERT INTO password_resets (user_id, token_hash, expires_at) VALUES (%s, %s, now() - interval '1 second')",
               (user["id"], web.token_hash(token)))
    visitor = make_client("198.51.100.96")
    page = visitor.get(f"/password/reset/{token}", status=400)
    assert "expired or was already used" in text_of(page) and 'name="new_password"' not in page.text
    assert visitor.post_form(f"/password/reset/{token}", {"new_password": NEW_PASSWORD}).status_int == 400
    assert db.execute("SELECT password_hash FROM users WHERE id = %s", (user["id"],)).fetchone()["password_hash"] == \
        user["password_hash"]
    assert visitor.get("/password/reset/bad", status=400).status_int == 400
    assert visitor.post_form("/password/reset/bad", {"new_password": NEW_PASSWORD}).status_int == 400


def test_an_unknown_address_gets_the_same_answer_and_no_mail(db, db_url, make_user, make_client, smtp):
    user = make_user("customer")
    blocked = make_user("customer", blocked=True)
    known = ask(make_client("198.51.100.97"), user["email"])
    known_page = text_of(known.follow())
    for email in ("nobody@example.test", blocked["email"]):
        unknown = ask(make_client("198.51.100.98"), email)
        assert (unknown.status_int, location(unknown)) == (known.status_int, location(known))
        assert text_of(unknown.follow()) == known_page
    commands.tick(db_url)
    assert [m["To"].addresses[0].addr_spec for m in smtp.messages] == [user["email"]]


def test_requests_are_throttled_per_email_and_per_address_alike_for_unknown_addresses(db, make_user, make_client):
    user = make_user("customer")
    for email in (user["email"], "ghost@example.test"):
        for n in range(3):
            assert ask(make_client(f"198.51.100.{100 + n}"), email).status_int == 303
        refused = ask(make_client("198.51.100.110"), email, status=429)
        assert "Too many requests for a new password" in text_of(refused) and int(refused.headers["Retry-After"]) > 3000
    one_address = make_client("192.0.2.7")
    answers = [ask(one_address, f"person{n}@example.test", status="*").status_int for n in range(11)]
    assert answers == [303] * 10 + [429]
    assert db.execute("SELECT count(*) AS n FROM password_resets").fetchone()["n"] == 3
    assert ask(make_client("198.51.100.111"), "not an email", status=400).status_int == 400


def test_using_one_link_uses_up_the_others_of_the_account(db, db_url, make_user, make_client, smtp):
    user = make_user("customer")
    visitor = make_client("198.51.100.120")
    ask(visitor, user["email"])
    ask(visitor, user["email"])
    commands.tick(db_url)
    first, second = (link_in(message) for message in smtp.messages)
    assert first != second
    assert visitor.post_form(second, {"new_password": NEW_PASSWORD}).status_int == 303
    assert visitor.post_form(first, {"new_password": "someone else's"}).status_int == 400


def test_the_language_of_the_mail_is_the_one_chosen_at_sign_up(db, db_url, make_client, smtp):
    visitor = make_client("198.51.100.121")
    visitor.get("/lang/en?next=/signup")
    assert visitor.post_form("/signup", {"role": "customer", "name": "Ann", "email": "ann@example.test",
                                         "password": PASSWORD}).status_int == 303
    assert db.execute("SELECT lang FROM users WHERE email = 'ann@example.test'").fetchone()["lang"] == "en"
    ask(make_client("198.51.100.122"), "ann@example.test")
    commands.tick(db_url)
    [message] = smtp.messages
    assert message["Subject"] == "Birzha: reset your password" and message.get_content().startswith("Hello, Ann!")
