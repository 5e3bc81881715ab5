"""Sign-up, sign-in, profiles and the performer catalogue, driven through the pages."""
import re
from types import SimpleNamespace
from urllib.parse import urlsplit

import bcrypt
import pytest

import accounts
from db import Q
from conftest import PASSWORD, text_of

CYRILLIC_72_BYTES = "пароль" * 6  # 36 letters, 2 bytes each
TOO_LONG = "The password must be at most 72 bytes long (fewer characters outside Latin)."


def form_for(page, action):
    """The form of a page that posts to `action`."""
    forms = [form for form in page.forms.values() if form.action == action]
    assert len(forms) == 1, f"expected one form posting to {action}"
    return forms[0]


def field_error(page, name):
    """The error message shown next to the field `name`, or None."""
    match = re.search(rf'<p class="field-error" id="{name}-error">(.*?)</p>', page.text, re.S)
    return match and match.group(1).strip()


def form_error(page):
    match = re.search(r'<p class="form-error"[^>]*>(.*?)</p>', page.text, re.S)
    return match and match.group(1).strip()


def location_path(resp):
    return urlsplit(resp.headers["Location"]).path


def user_count(db):
    return db.execute("SELECT count(*) AS n FROM users").fetchone()["n"]


def sessions_of(db, user_id):
    return db.execute("SELECT token_hash FROM sessions WHERE user_id = %s", (user_id,)).fetchall()


# ---------------------------------------------------------------------------------------------
# Sign-up and sign-in

@pytest.mark.parametrize("role", ["customer", "performer"])
def test_signup_form_creates_the_account_signs_in_and_goes_to_the_cabinet(client, db, role):
    page = client.get(f"/signup?role={role}")
    form = form_for(page, "/signup")
    assert form["role"].value == role  # preselected by ?role=
    form["name"] = "Nina Petrova"
    form["email"] = "Nina@Example.test"
    form["password"] = CYRILLIC_72_BYTES  # exactly 72 bytes: the longest allowed
    resp = form.submit(status=303)
    assert location_path(resp) == "/cabinet"

    user = db.execute("SELECT * FROM users WHERE email = 'nina@example.test'").fetchone()
    assert (user["role"], user["name"], user["is_staff"]) == (role, "Nina Petrova", False)
    assert bcrypt.checkpw(CYRILLIC_72_BYTES.encode(), user["password_hash"].encode())
    assert len(sessions_of(db, user["id"])) == 1

    home = client.get("/")
    assert "Welcome to Birzha, Nina Petrova!" in text_of(home)
    whoami = re.search(r'<span class="whoami">(.*?)</span>\s*<a href="/cabinet">', home.text, re.S).group(1)
    assert "Nina Petrova" in whoami and role in whoami
    assert 'action="/logout"' in home.text and 'href="/admin"' not in home.text


@pytest.mark.parametrize("role", ["customer", "performer"])
def test_login_form_signs_in_and_follows_a_local_next(client, db, make_user, role):
    user = make_user(role, name="Olga Login", staff=True)
    assert client.get("/profile", status=303).headers["Location"].endswith("/login?next=/profile")
    form = form_for(client.get("/login?next=/profile"), "/login")
    form["email"] = user["email"].upper()  # the login is case-insensitive
    form["password"] = PASSWORD
    resp = form.submit(status=303)
    assert location_path(resp) == "/profile"
    assert len(sessions_of(db, user["id"])) == 1

    page = client.get("/profile")
    assert "Welcome back, Olga Login!" in text_of(page)
    assert 'href="/admin"' in page.text and "Olga Login" in page.text  # the header knows who this is
    assert client.get("/login", status=303).headers["Location"].endswith("/cabinet")


def test_login_ignores_a_next_that_leaves_the_site(client, make_user):
    user = make_user("customer")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)",
                   "/\x01x"):
        resp = client.post_form("/login", {"email": user["email"], "password": PASSWORD, "next": target})
        assert resp.status_int == 303 and location_path(resp) == "/cabinet", target
        assert "evil" not in resp.headers["Location"]


def test_signup_refuses_a_taken_email_whatever_its_case(client, db, make_user):
    make_user("performer", email="taken@example.test")
    resp = client.post_form("/signup", {"role": "customer", "name": "Second", "email": "TAKEN@example.test",
                                        "password": "long enough pass"})
    assert resp.status_int == 400
    assert field_error(resp, "email") == "An account with this email already exists. Log in instead."
    assert 'value="Second"' in resp.text  # the input is kept
    assert user_count(db) == 1


SIGNUP_OK = {"role": "performer", "name": "Valid Name", "email": "valid@example.test", "password": "long enough pass"}


@pytest.mark.parametrize("field, value, message", [
    ("role", "", "Choose one of the options."),
    ("role", "admin", "Choose one of the options."),
    ("name", "   ", "This field is required."),
    ("name", "x" * 101, "At most 100 characters, please."),
    ("name", "bad\x00name", "The text contains control characters."),
    ("email", "not-an-email", "Enter a valid email address."),
    ("email", "a" * 250 + "@x.ru", "At most 254 characters, please."),
    ("password", "", "This field is required."),
    ("password", "7-bytes", "The password must be at least 8 characters long."),
    ("password", "x" * 73, TOO_LONG),
    ("password", CYRILLIC_72_BYTES + "я", TOO_LONG),  # 37 letters, 74 bytes
    ("password", "with\x00nul-byte", "The text contains control characters."),
])
def test_signup_bad_input_is_refused_by_the_field_and_creates_nobody(client, db, field, value, message):
    resp = client.post_form("/signup", dict(SIGNUP_OK, **{field: value}))
    assert resp.status_int == 400
    assert field_error(resp, field) == message
    assert [name for name in SIGNUP_OK if field_error(resp, name)] == [field]
    if field != "name":
        assert 'value="Valid Name"' in resp.text  # the other input is kept
    assert SIGNUP_OK["password"] not in resp.text  # a password is never sent back
    assert user_count(db) == 0


def test_signup_refuses_text_that_is_not_utf8(client, db):
    body = f"role=customer&name=%FF%FE&email=a%40b.ru&password=long+enough+pass&csrf_token={client.csrf()}"
    resp = client.post("/signup", params=body.encode(), content_type="application/x-www-form-urlencoded", status="*")
    assert resp.status_int == 400 and field_error(resp, "name") == "This text is not valid UTF-8."
    assert user_count(db) == 0


def test_wrong_password_and_unknown_email_get_the_same_answer(client, db, make_user):
    user = make_user("customer")
    wrong_password = client.post_form("/login", {"email": user["email"], "password": "not the password"})
    unknown_email = client.post_form("/login", {"email": "nobody@example.test", "password": "not the password"})
    assert wrong_password.status_int == unknown_email.status_int == 400
    assert form_error(wrong_password) == form_error(unknown_email) == "Wrong email or password."
    assert "not the password" not in wrong_password.text
    assert client.get("/profile", status=303)  # still a guest
    assert db.execute("SELECT count(*) AS n FROM sessions").fetchone()["n"] == 0


def test_login_without_email_or_password_is_refused_by_the_field(client):
    resp = client.post_form("/login", {"email": "", "password": ""})
    assert resp.status_int == 400
    assert field_error(resp, "email") == field_error(resp, "password") == "This field is required."


# ---------------------------------------------------------------------------------------------
# Profile

def profile_row(db, user_id):
    return db.execute("SELECT * FROM users WHERE id = %s", (user_id,)).fetchone()


def categories_of(db, user_id):
    rows = db.execute("SELECT c.slug FROM performer_categories pc JOIN categories c ON c.id = pc.category_id "
                      "WHERE pc.performer_id = %s", (user_id,)).fetchall()
    return {row["slug"] for row in rows}


PROFILE_OK = {"name": "Vera Designer", "phone": "+7 (912) 345-67-89", "messenger": "Telegram @vera",
              "experience_years": "7", "experience_text": "Logos\nand brand books", "bio": "I draw."}


def test_profile_edit_saves_the_fields_and_replaces_the_categories(client, db, make_user, sign_in):
    vera = make_user("performer", categories=["design", "seo", "business"])
    db.execute("UPDATE categories SET is_hidden = true WHERE slug = 'business'")
    sign_in(client, vera)
    page = client.get("/profile")
    assert 'value="seo" checked' in page.text and 'value="business"' not in page.text  # hidden: not offered

    resp = client.post_form("/profile", dict(PROFILE_OK, categories=["development", "seo"]))
    assert resp.status_int == 303 and location_path(resp) == "/profile"
    row = profile_row(db, vera["id"])
    assert {name: str(row[name]) for name in PROFILE_OK} == PROFILE_OK
    assert categories_of(db, vera["id"]) == {"development", "seo", "business"}  # the hidden one is kept

    resp = client.post_form("/profile", PROFILE_OK)  # no box ticked: no visible category left
    assert resp.status_int == 303 and categories_of(db, vera["id"]) == {"business"}
    assert "Your profile is saved." in text_of(client.get("/profile"))


def test_a_customer_profile_takes_no_categories(client, db, make_user, sign_in):
    anna = make_user("customer")
    sign_in(client, anna)
    page = client.get("/profile")
    assert 'name="categories"' not in page.text
    resp = client.post_form("/profile", dict(PROFILE_OK, experience_years="", categories=["design"]))
    assert resp.status_int == 303
    assert profile_row(db, anna["id"])["experience_years"] == 0
    assert categories_of(db, anna["id"]) == set()


@pytest.mark.parametrize("field, value, message", [
    ("name", "", "This field is required."),
    ("name", "x" * 101, "At most 100 characters, please."),
    ("name", "Vera\x00", "The text contains control characters."),
    ("name", "Vera\tTab", "The text contains control characters."),
    ("phone", "1" * 41, "At most 40 characters, please."),
    ("phone", "call me maybe", "A phone number has digits, spaces and + ( ) - only."),
    ("messenger", "m" * 101, "At most 100 characters, please."),
    ("experience_years", "-1", "The smallest allowed value is 0."),
    ("experience_years", "81", "The largest allowed value is 80."),
    ("experience_years", "abc", "Enter a whole number."),
    ("experience_years", "99999999999999999999", "Enter a whole number."),
    ("experience_text", "e" * 2001, "At most 2000 characters, please."),
    ("bio", "b" * 2001, "At most 2000 characters, please."),
    ("bio", "nul\x00inside", "The text contains control characters."),
    ("categories", ["design", "no-such-category"], "Choose one of the options."),
])
def test_profile_bad_input_is_refused_by_the_field_and_changes_nothing(client, db, make_user, sign_in,
                                                                      field, value, message):
    vera = make_user("performer", categories=["design"])
    sign_in(client, vera)
    before = profile_row(db, vera["id"])
    resp = client.post_form("/profile", {**PROFILE_OK, "categories": ["seo"], field: value})
    assert resp.status_int == 400
    assert field_error(resp, field) == message
    if field != "name":
        assert 'value="Vera Designer"' in resp.text  # the input is kept
    assert profile_row(db, vera["id"]) == before
    assert categories_of(db, vera["id"]) == {"design"}


@pytest.mark.parametrize("field", ["name", "bio", "experience_years"])
def test_profile_refuses_bytes_that_are_not_utf8(client, db, make_user, sign_in, field):
    vera = make_user("performer")
    sign_in(client, vera)
    before = profile_row(db, vera["id"])
    fields = dict(PROFILE_OK, csrf_token=client.csrf())
    body = "&".join(f"{name}=%FFbad" if name == field else f"{name}=ok" if name != "csrf_token"
                    else f"{name}={value}" for name, value in fields.items())
    resp = client.post("/profile", params=body.encode(), content_type="application/x-www-form-urlencoded",
                       status="*")
    assert resp.status_int == 400 and field_error(resp, field) == "This text is not valid UTF-8."
    assert profile_row(db, vera["id"]) == before


def test_password_change_needs_the_right_current_password(client, db, make_user, sign_in):
    user = make_user("customer")
    sign_in(client, user)
    resp = client.post_form("/profile/password", {"current_password": "wrong password",
                                                  "new_password": "brand new pass"})
    assert resp.status_int == 400
    assert field_error(resp, "current_password") == "The current password is wrong."
    resp = client.post_form("/profile/password", {"current_password": PASSWORD, "new_password": "short"})
    assert resp.status_int == 400
    assert field_error(resp, "new_password") == "The password must be at least 8 characters long."
    assert profile_row(db, user["id"])["password_hash"] == user["password_hash"]
    assert len(sessions_of(db, user["id"])) == 1


# ---------------------------------------------------------------------------------------------
# The performer catalogue and public profiles

def performer_ids(page):
    return [int(n) for n in re.findall(r'<a class="card-title" href="/performers/(\d+)">', page.text)]


@pytest.fixture
def ranked(db, make_user, make_order):
    """Six performers in their catalogue order, plus a blocked star and a customer."""
    customer = make_user("customer")

    def performer(ratings=(), unrated=0, categories=()):
        person = make_user("performer", categories=categories)
        for rating in ratings:
            make_order(customer, performer=person, status="done", rating=rating)
        for _ in range(unrated):
            make_order(customer, performer=person, status="done")
        return person["id"]

    star = performer([10], categories=["design"])
    eights_two = performer([8], unrated=1)
    eights_one = performer([8])
    unrated_three = performer(unrated=3, categories=["design"])
    newcomer_a = performer()
    newcomer_b = performer()
    blocked = performer([10], categories=["design"])
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (blocked,))
    return [star, eights_two, eights_one, unrated_three, newcomer_a, newcomer_b]


def test_catalogue_ranks_by_rating_then_completed_then_id_without_blocked_or_customers(client, ranked):
    page = client.get("/performers")
    assert performer_ids(page) == ranked
    card = re.search(rf'href="/performers/{ranked[1]}">.*?</article>', page.text, re.S).group(0)
    assert "8.0 / 10" in card and "1 rating" in card and "2 orders completed" in card
    assert "Next page" not in page.text


@pytest.mark.parametrize("page_size", [1, 2, 5])
def test_catalogue_pages_follow_the_cursor_without_gaps_or_repeats(client, ranked, monkeypatch, page_size):
    monkeypatch.setattr(accounts, "CATALOGUE_PAGE", page_size)
    assert "OFFSET" not in Q["performers_catalogue"]
    seen, url = [], "/performers"
    while url:
        page = client.get(url)
        ids = performer_ids(page)
        assert 0 < len(ids) <= page_size
        seen += ids
        link = re.search(r'href="(/performers\?after=\d+)"', page.text)
        url = link and link.group(1)
    assert seen == ranked


def test_catalogue_filters_by_category(client, ranked, db):
    assert performer_ids(client.get("/performers?category=design")) == [ranked[0], ranked[3]]
    assert performer_ids(client.get("/performers?category=texts")) == []
    client.get("/performers?category=no-such", status=404)
    db.execute("UPDATE categories SET is_hidden = true WHERE slug = 'design'")
    client.get("/performers?category=design", status=404)
    client.get("/performers?after=abc", status=400)


def test_public_profile_shows_work_and_reviews_and_contacts_only_to_signed_in_users(
        client, db, make_user, make_order, make_client, sign_in):
    vera = make_user("performer", name="Vera Public", categories=["design"])
    db.execute("UPDATE users SET phone = '+7 900 000-00-00', messenger = '@vera_tg', bio = 'Logos & <b>fonts</b>',"
               " experience_years = 12 WHERE id = %s", (vera["id"],))
    customer = make_user("customer")
    make_order(customer, performer=vera, status="done", rating=9, review="Great logo", title="Coffee logo")
    hidden = make_order(customer, performer=vera, status="done", rating=1, review="Spam review", title="Spam order")
    db.execute("UPDATE orders SET review_hidden = true WHERE id = %s", (hidden["id"],))

    page = client.get(f"/performers/{vera['id']}")
    text = text_of(page)
    for shown in ("Vera Public", "Design", "Coffee logo", "Great logo", "9 / 10", "9.0", "1 rating", "12"):
        assert shown in text, shown
    assert "Logos &amp; &lt;b&gt;fonts&lt;/b&gt;" in page.text  # escaped, never markup
    assert "Spam" not in text
    for private in (vera["email"], "+7 900 000-00-00", "@vera_tg"):
        assert private not in page.text
    assert "Log in to see the contact details." in text

    signed_in = sign_in(make_client(), customer).get(f"/performers/{vera['id']}")
    for contact in (vera["email"], "+7 900 000-00-00", "@vera_tg"):
        assert contact in signed_in.text


def test_kept_catalogue_cards_and_reviews_follow_the_performer_the_language_and_the_viewer(
        client, db, make_user, make_order, make_client, sign_in):
    """The catalogue's cards and a profile's reviews are rendered once and kept (web.kept): a new
    rating or a renamed category changes a card, each language gets its names, each viewer their
    time zone."""
    vera = make_user("performer", name="Vera Kept", categories=["design"])
    customer = make_user("customer")
    order = make_order(customer, performer=vera, status="done", rating=9, review="Great logo", title="Coffee logo")
    db.execute("SET session_replication_role = replica")  # past the trigger that stamps rated_at
    db.execute("UPDATE orders SET rated_at = '2026-01-15 21:30+00' WHERE id = %s", (order["id"],))
    db.execute("RESET session_replication_role")

    make_user("performer", name="Gleb Kept")

    def card(page, n=0):
        return text_of(SimpleNamespace(text=re.findall(r'<article class="card performer-card">.*?</article>',
                                                       page.text, re.S)[n]))

    assert card(client.get("/performers")) == "Vera Kept 9.0 / 10 1 rating · 1 order completed Design"
    assert card(client.get("/performers"), 1) == "Gleb Kept no ratings yet 0 orders completed"
    client.set_cookie("lang", "ru")
    assert card(client.get("/performers")) == "Vera Kept 9.0 / 10 1 оценка · 1 заказ выполнен Дизайн"
    assert card(client.get("/performers"), 1) == "Gleb Kept оценок пока нет 0 заказов выполнено"
    client.set_cookie("lang", "en")
    make_order(customer, performer=vera, status="done", rating=5)
    db.execute("UPDATE categories SET name_en = 'Design and art' WHERE slug = 'design'")
    assert card(client.get("/performers")) == "Vera Kept 7.0 / 10 2 ratings · 2 orders completed Design and art"

    moscow = 'title="2026-01-16 00:30 MSK">2026-01-16 00:30</time>'
    assert moscow in client.get(f"/performers/{vera['id']}").text
    far = make_user("customer")
    db.execute("UPDATE users SET timezone = 'Asia/Vladivostok' WHERE id = %s", (far["id"],))
    page = sign_in(make_client(), far).get(f"/performers/{vera['id']}").text
    assert moscow not in page and 'title="2026-01-16 07:30 +10">2026-01-16 07:30</time>' in page


def test_public_profile_is_404_for_unknown_ids_customers_and_blocked_performers(client, make_user):
    customer = make_user("customer")
    blocked = make_user("performer", blocked=True)
    for path in ("/performers/999999", f"/performers/{customer['id']}", f"/performers/{blocked['id']}",
                 "/performers/99999999999999999999999", "/performers/0"):
        assert client.get(path, status=404).status_int == 404


def test_reviews_page_with_a_cursor(client, make_user, make_order, monkeypatch):
    monkeypatch.setattr(accounts, "REVIEWS_PAGE", 2)
    vera = make_user("performer")
    customer = make_user("customer")
    titles = [f"Order number {n}" for n in range(5)]
    for title in titles:
        make_order(customer, performer=vera, status="done", rating=7, title=title)
    seen, url = [], f"/performers/{vera['id']}"
    while url:
        page = client.get(url)
        seen += re.findall(r"Order number \d", page.text)
        link = re.search(rf'href="(/performers/{vera["id"]}\?after=\d+)"', page.text)
        url = link and link.group(1)
    assert sorted(seen) == titles and len(seen) == 5


def test_log_out_works_from_an_error_page(client, make_user, sign_in, db):
    sign_in(client, make_user("customer"))
    page = client.get("/no/such/page", status=404)
    form = form_for(page, "/logout")
    assert form.submit(status=303).headers["Location"].endswith("/")
    assert db.execute("SELECT count(*) AS n FROM sessions").fetchone()["n"] == 0
