"""The rough edges a person meets in a real browser (issue 12), checked in-process through WebTest."""
import datetime
import re
import zoneinfo

import pytest

from conftest import text_of
from db import Q
import web

VALID_ORDER = {"title": "Logo for a coffee shop", "description": "Warm colours, a simple sign.",
               "category": "design", "budget": "5000", "deadline": ""}


def new_order_id(resp):
    assert resp.status_int == 303, resp.text[:2000]
    return int(resp.headers["Location"].rstrip("/").rsplit("/", 1)[1])


@pytest.mark.parametrize("written", ["12 000", "12\u00a0000", " 12\u202f000 "])
def test_a_budget_written_with_spaces_between_digits_is_accepted(client, make_user, sign_in, db, written):
    sign_in(client, make_user("customer"))
    order_id = new_order_id(client.post_form("/orders", dict(VALID_ORDER, budget=written)))
    assert db.execute("SELECT budget FROM orders WHERE id = %s", (order_id,)).fetchone()["budget"] == 12000


@pytest.mark.parametrize("written", ["12  000", "12 00 0x", "1 2e3", " "])
def test_spaces_do_not_make_other_text_a_number(client, make_user, sign_in, written):
    sign_in(client, make_user("customer"))
    resp = client.post_form("/orders", dict(VALID_ORDER, budget=written))
    assert resp.status_int == 400 and 'id="budget-error"' in resp.text


def test_cancelling_needs_the_confirm_box_ticked_even_without_javascript(client, make_user, make_order, sign_in, db):
    anna = make_user("customer")
    order = make_order(anna)
    sign_in(client, anna)
    page = client.get(f"/orders/{order['id']}").text
    form = re.search(rf'<form method="post" action="/orders/{order["id"]}/cancel".*?</form>', page, re.S).group(0)
    assert 'data-confirm="' in form and re.search(r'<input type="checkbox" name="confirm" value="yes" required', form)

    refused = client.post_form(f"/orders/{order['id']}/cancel", {"reason": "Changed my mind"})
    assert refused.status_int == 400 and 'id="cancel-confirm-error"' in refused.text
    assert db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"] == "open"

    done = client.post_form(f"/orders/{order['id']}/cancel", {"reason": "Changed my mind", "confirm": "yes"})
    assert done.status_int == 303
    assert db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"] == "cancelled"


def test_an_error_about_an_order_links_back_to_the_order_and_the_feed(client, make_user, make_order, sign_in):
    order = make_order(make_user("customer"), status="cancelled")
    sign_in(client, make_user("performer"))
    lost = client.post_form(f"/orders/{order['id']}/take")
    assert lost.status_int == 409
    assert f'href="/orders/{order["id"]}"' in lost.text and 'href="/orders"' in lost.text
    nowhere = client.get("/orders/999999", status=404)
    assert 'href="/orders/999999"' not in nowhere.text  # no link back to what does not exist


def test_the_contact_page_shows_the_configured_support_address(client, app, make_user, db):
    app.config["support_email"] = "help@birzha.test"
    try:
        assert "mailto:help@birzha.test" in client.get("/contact").text
        assert 'href="/contact"' in client.get("/").text  # the footer of every page
        blocked = make_user("customer", blocked=True)
        login = client.post_form("/login", {"email": blocked["email"], "password": "correct horse battery"})
        assert login.status_int == 403 and 'href="/contact"' in login.text
        app.config["support_email"] = ""
        assert "not configured" in client.get("/contact").text
    finally:
        app.config["support_email"] = "support@birzha.example"


def test_a_customer_profile_has_no_performer_fields_and_keeps_what_is_stored(client, make_user, sign_in, db):
    anna = make_user("customer")
    db.execute("UPDATE users SET experience_years = 3 WHERE id = %s", (anna["id"],))
    sign_in(client, anna)
    page = client.get("/profile").text
    assert 'name="experience_years"' not in page and 'name="experience_text"' not in page
    saved = client.post_form("/profile", {"name": "Anna", "phone": "", "messenger": "", "bio": "Hi",
                                          "timezone": "Europe/Moscow"})
    assert saved.status_int == 303
    assert db.execute("SELECT experience_years FROM users WHERE id = %s", (anna["id"],)).fetchone()[
        "experience_years"] == 3
    vera = make_user("performer")
    sign_in(client, vera)
    assert 'name="experience_years"' in client.get("/profile").text
    assert "years of experience" not in client.get(f"/performers/{vera['id']}").text  # 0 is not shown


def test_sign_up_marks_required_fields_and_summarises_errors(client):
    form = client.get("/signup").text
    assert form.count('class="required"') == 3 and "Fields marked * are required." in form
    resp = client.post_form("/signup", {"role": "", "name": "", "email": "nope", "password": "x"})
    assert resp.status_int == 400
    summary = re.search(r'<div class="form-error" role="alert" id="signup-errors">.*?</div>', resp.text, re.S).group(0)
    for anchor in ("#f-role-customer", "#f-name", "#f-email", "#f-password"):
        assert f'href="{anchor}"' in summary


def test_the_order_form_marks_the_description_required(client, make_user, sign_in):
    sign_in(client, make_user("customer"))
    page = client.get("/cabinet").text
    assert re.search(r'<label for="f-description">Description <span class="required"', page)


def test_dates_show_in_the_viewers_time_zone_recent_ones_relative(client, make_user, sign_in, db):
    anna = make_user("customer")
    sign_in(client, anna)

    def token_made(at, label="cli"):
        db.execute("DELETE FROM api_tokens WHERE user_id = %s", (anna["id"],))
        db.execute("INSERT INTO api_tokens (user_id, token_hash, label, created_at) VALUES (%s, %s, %s, %s)",
                   (anna["id"], bytes(32), label, at))
        return client.get("/profile").text

    moment = datetime.datetime(2026, 1, 15, 21, 30, tzinfo=datetime.timezone.utc)
    page = token_made(moment)
    assert '<time datetime="2026-01-15T21:30:00+00:00" title="2026-01-16 00:30 MSK">2026-01-16 00:30</time>' in page
    assert client.post_form("/profile", {"name": "Anna", "timezone": "Asia/Vladivostok"}).status_int == 303
    assert 'title="2026-01-16 07:30 +10">2026-01-16 07:30</time>' in client.get("/profile").text
    assert client.post_form("/profile", {"name": "Anna", "timezone": "Mars/Olympus"}).status_int == 400

    now = datetime.datetime.now(datetime.timezone.utc)
    assert re.search(r'title="[^"]+ \+10">just now</time>', token_made(now))
    assert "2 hours ago</time>" in token_made(now - datetime.timedelta(hours=2, minutes=5))
    assert "5 minutes ago</time>" in token_made(now - datetime.timedelta(minutes=5, seconds=20))
    client.set_cookie("lang", "ru")
    assert "2 часа назад</time>" in token_made(now - datetime.timedelta(hours=2, minutes=5))
    assert "21 минуту назад</time>" in token_made(now - datetime.timedelta(minutes=21, seconds=5))


def test_a_moment_reads_the_same_whatever_time_zone_it_comes_in():
    """A list's dates (web.moments_shown) read the same in whatever zone psycopg gives them (UTC,
    UTC under another name, the server's zone when it has another), in any order."""
    with web.language("ru"):
        shown = web.moments_shown()
    now = datetime.datetime.now(datetime.timezone.utc)
    zones = [datetime.timezone.utc, zoneinfo.ZoneInfo("Etc/UTC"), zoneinfo.ZoneInfo("America/New_York"),
             zoneinfo.ZoneInfo("UTC"), zoneinfo.ZoneInfo("Europe/Berlin"), datetime.timezone.utc]
    for ago, words in ((datetime.timedelta(minutes=5, seconds=10), ">5 минут назад<"),
                       (datetime.timedelta(hours=2, minutes=1), ">2 часа назад<"),
                       (datetime.timedelta(days=3), None)):
        moment = now - ago
        forms = {str(shown(moment.astimezone(zone))) for zone in zones}
        assert len(forms) == 1, (ago, forms)
        form = forms.pop()
        assert f'datetime="{moment.isoformat(timespec="seconds")}"' in form, form
        assert (words in form) if words else ("назад" not in form), form


def test_staff_are_badged_as_staff_and_the_history_reads_cleanly(client, make_user, make_order, sign_in, db):
    boss = make_user("customer", staff=True)
    sign_in(client, boss)
    assert re.search(r'<span class="whoami">[^<]*<span class="badge">staff</span>', client.get("/").text)
    vera = make_user("performer", name="Vera Designer")
    order = make_order(make_user("customer"), performer=vera, status="done", rating=8)
    admin_page = text_of(client.get(f"/admin/orders/{order['id']}"))
    assert "rated done → done" not in admin_page and "Vera Designer · performer" in admin_page


def test_the_admin_log_shows_before_and_after_as_fields_not_json(client, make_user, sign_in, db):
    boss = make_user("customer", staff=True)
    target = make_user("performer")
    sign_in(client, boss)
    assert client.post_form(f"/admin/users/{target['id']}/block", {"reason": "Spam"}).status_int in (302, 303)
    page = client.get("/admin/log").text
    assert '<dl class="log-values">' in page and "{&#34;" not in page and '{"' not in page


def test_the_customers_cabinet_shows_the_rating_they_gave(client, make_user, make_order, sign_in):
    anna = make_user("customer")
    make_order(anna, performer=make_user("performer"), status="done", rating=7)
    sign_in(client, anna)
    assert re.search(r'your rating: <span class="rating">7/10</span>', client.get("/cabinet").text)


def test_every_page_has_a_skip_link_and_labelled_navigation(client):
    page = client.get("/orders").text
    assert '<a class="skip-link" href="#content">' in page and '<main class="wrap" id="content"' in page
    assert '<nav class="main-nav" aria-label="Site">' in page and '<nav class="user-nav" aria-label="Account">' in page
