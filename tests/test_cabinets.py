"""The exchange in the cabinets and the lists (issue 10): every status a tab, the counters of the
database, the performer's "My offers", and how many offers an order in offers mode has on the
feed, in a search and on the home page."""
import re
import secrets
from types import SimpleNamespace
from urllib.parse import quote

import pytest

import orders as orders_module
from conftest import open_session, text_of
from db import Q
import web


def titles(page, prefix="/orders/"):
    """The order titles a cabinet lists, in order."""
    return re.findall(rf'<a href="{prefix}\d+">([^<]+)</a>', page.text)


def plain(html):
    """The visible text of a piece of a page."""
    return text_of(SimpleNamespace(text=html))


def rows_of(page):
    """The visible text of each row of the page's list (a row starts with a link to an order)."""
    return [plain(row) for row in re.findall(r"<tr>\s*<td><a.*?</tr>", page.text, flags=re.S)]


def offer(db, order, performer, price=900, days=5):
    return db.execute(Q["offer_submit"], {"order_id": order["id"], "performer_id": performer["id"], "price": price,
                                          "days": days, "message": "I can do it"}).fetchone()


# ---------------------------------------------------------------------------------------------
# The customer's cabinet

@pytest.fixture
def customer_world(db, make_user, make_order):
    """A customer with an order in every status (two of them open), and someone else's order."""
    anna, vera, gleb = make_user("customer"), make_user("performer", name="Vera"), make_user("performer")
    made = {status: make_order(anna, performer=vera, status=status, title=f"Anna {status}")
            for status in ("in_progress", "delivered", "disputed", "done", "cancelled")}
    made["open"] = make_order(anna, title="Anna open")
    made["offers"] = make_order(anna, title="Anna offers", mode="offers")
    offer(db, made["offers"], vera)
    offer(db, made["offers"], gleb)
    make_order(make_user("customer"), performer=vera, status="delivered", title="Not hers")
    return {"anna": anna, "vera": vera, "orders": made}


CUSTOMER_TABS = {
    None: ["Anna offers", "Anna open", "Anna cancelled", "Anna done", "Anna disputed", "Anna delivered",
           "Anna in_progress"],
    "open": ["Anna offers", "Anna open"],
    "in_progress": ["Anna in_progress"],
    "delivered": ["Anna delivered"],
    "disputed": ["Anna disputed"],
    "done": ["Anna done"],
    "cancelled": ["Anna cancelled"],
}


def test_customer_cabinet_has_a_tab_per_status_that_lists_only_its_orders(client, sign_in, customer_world):
    sign_in(client, customer_world["anna"])
    for status, expected in CUSTOMER_TABS.items():
        page = client.get("/cabinet" + (f"?status={status}" if status else ""))
        assert titles(page) == expected, status
        active = re.search(r'<a href="(/cabinet[^"]*)" class="active">', page.text).group(1)
        assert active == "/cabinet" + (f"?status={status}" if status else ""), status
    tabs = re.findall(r'<a href="/cabinet\?status=(\w+)" class="[^"]*">', client.get("/cabinet").text)
    assert tabs == ["open", "in_progress", "delivered", "disputed", "done", "cancelled"]


def test_customer_cabinet_shows_the_databases_counters_of_every_status(client, sign_in, customer_world, db):
    sign_in(client, customer_world["anna"])
    page = text_of(client.get("/cabinet"))
    assert "7 placed 2 open 1 in progress 1 delivered 1 disputed 1 done 1 cancelled" in page
    # they are the stored counters, not a count of the page: a drift shows (and is repaired)
    db.execute("""UPDATE customer_stats SET orders_placed = 11, orders_open = 12, orders_in_progress = 13,
                  orders_delivered = 14, orders_disputed = 15, orders_done = 16, orders_cancelled = 17
                  WHERE customer_id = %s""", (customer_world["anna"]["id"],))
    assert ("11 placed 12 open 13 in progress 14 delivered 15 disputed 16 done 17 cancelled"
            in text_of(client.get("/cabinet")))
    db.execute("SELECT recalc_counters()")


def test_customer_cabinet_rows_say_a_delivery_awaits_an_answer_and_count_offers(client, sign_in, customer_world):
    sign_in(client, customer_world["anna"])
    made = customer_world["orders"]
    page = client.get("/cabinet")
    rows = dict(zip(titles(page), rows_of(page)))
    assert "delivered The work is handed in: your answer is awaited. Accept or ask for a revision" in rows["Anna delivered"]
    assert f'href="/orders/{made["delivered"]["id"]}#f-accept-rating"' in page.text
    assert [title for title, text in rows.items() if "answer is awaited" in text] == ["Anna delivered"]
    assert "open 2 offers" in rows["Anna offers"] and "offer" not in rows["Anna open"]
    assert "disputed Birzha staff are settling the dispute." in rows["Anna disputed"]
    assert f'href="/orders/{made["done"]["id"]}#f-rate-rating">Rate the work' in page.text


# ---------------------------------------------------------------------------------------------
# The performer's cabinet

@pytest.fixture
def performer_world(db, make_user, make_order):
    vera, gleb, anna = make_user("performer", name="Vera"), make_user("performer"), make_user("customer")
    made = {status: make_order(anna, performer=vera, status=status, title=f"Vera {status}")
            for status in ("in_progress", "delivered", "disputed", "done", "cancelled")}
    make_order(anna, performer=gleb, status="in_progress", title="Gleb's work")
    make_order(anna, title="Nobody's yet")
    return {"vera": vera, "gleb": gleb, "anna": anna, "orders": made}


PERFORMER_TABS = {
    None: ["Vera cancelled", "Vera done", "Vera disputed", "Vera delivered", "Vera in_progress"],
    "in_progress": ["Vera in_progress"],
    "delivered": ["Vera delivered"],
    "disputed": ["Vera disputed"],
    "done": ["Vera done"],
    "cancelled": ["Vera cancelled"],
}


def test_performer_cabinet_has_a_tab_per_status_the_counters_and_a_way_to_hand_in(
        client, sign_in, performer_world, db):
    sign_in(client, performer_world["vera"])
    for status, expected in PERFORMER_TABS.items():
        page = client.get("/cabinet" + (f"?status={status}" if status else ""))
        assert titles(page) == expected, status
    page = client.get("/cabinet")
    tabs = re.findall(r'<a href="(/cabinet[^"]*)" class="[^"]*">', page.text)
    assert tabs == ["/cabinet", "/cabinet?status=in_progress", "/cabinet?status=delivered",
                    "/cabinet?status=disputed", "/cabinet?status=done", "/cabinet?status=cancelled",
                    "/cabinet/offers"]
    assert "1 completed 1 in progress 1 delivered 1 disputed" in text_of(page)
    busy = performer_world["orders"]["in_progress"]["id"]
    # handing in takes a message: the row links to the order page's form, it posts nothing itself
    assert f'href="/orders/{busy}#f-deliver-message">Hand in the work' in page.text
    assert f'action="/orders/{busy}/complete"' not in page.text and f'action="/orders/{busy}/deliver"' not in page.text
    assert "waiting for the customer to accept it or ask for a revision" in text_of(client.get("/cabinet?status=delivered"))
    db.execute("""UPDATE performer_stats SET orders_completed = 3, orders_in_progress = 4, orders_delivered = 5,
                  orders_disputed = 6, rating_count = 7, rating_sum = 59
                  WHERE performer_id = %s""", (performer_world["vera"]["id"],))
    for url in ("/cabinet", "/cabinet/offers"):
        assert "3 completed 4 in progress 5 delivered 6 disputed 8.4 average of 7 ratings" in text_of(client.get(url))
    db.execute("SELECT recalc_counters()")


def test_performer_cabinet_shows_the_five_latest_reviews_and_links_to_all_on_the_profile(
        client, sign_in, db, make_user, make_order):
    vera, gleb, anna = make_user("performer"), make_user("performer"), make_user("customer")
    rated = [make_order(anna, performer=vera, status="done", rating=1 + n % 10, review=f"Review number {n:02}",
                        title=f"Rated order {n:02}") for n in range(23)]
    db.execute("UPDATE orders SET review_hidden = true WHERE id = %s", (rated[-1]["id"],))
    sign_in(client, vera)
    page = client.get("/cabinet")
    shown = re.findall(r"Review number (\d\d)", text_of(page))
    assert shown == ["21", "20", "19", "18", "17"]  # 22 is hidden
    assert "23 completed" in text_of(page) and "average of 22 ratings" in text_of(page)
    link = page.html.find("a", string=re.compile("All ratings"))
    assert link.get_text(strip=True) == "All ratings (22) on your public profile →"
    profile = client.get(link["href"])
    assert profile.request.path == f"/performers/{vera['id']}" and link["href"].endswith("#reviews")
    assert 'id="reviews"' in profile.text and "Review number 02" in profile.text
    # no link while the cabinet shows them all
    db.execute("UPDATE orders SET review_hidden = true WHERE id = ANY(%s)", ([o["id"] for o in rated[:18]],))
    page = text_of(client.get("/cabinet"))
    assert re.findall(r"Review number (\d\d)", page) == ["21", "20", "19", "18"] and "All ratings" not in page
    sign_in(client, gleb)
    page = text_of(client.get("/cabinet"))
    assert "No ratings yet." in page and "0 completed" in page and "Review number" not in page and "All ratings" not in page


def test_kept_cabinet_rows_follow_the_order_the_language_and_the_viewers_time_zone(
        make_client, sign_in, db, make_user, make_order):
    """The cabinets' rows and the blank order form are rendered once and kept (web.kept): a row
    changes with its order, each language gets its words, each viewer their time zone."""
    anna, vera = make_user("customer"), make_user("performer", name="Vera Kept")
    order = make_order(anna, performer=vera, status="delivered", title="Kept row")
    # moments older than a day, shown as dates: the same words in every language
    db.execute("SET session_replication_role = replica")  # past the trigger that stamps created_at
    db.execute("UPDATE orders SET created_at = '2026-01-15 21:30+00', delivered_at = '2026-01-16 08:00+00' "
               "WHERE id = %s", (order["id"],))
    db.execute("RESET session_replication_role")
    customer, performer = sign_in(make_client(), anna), sign_in(make_client(), vera)
    moscow = '<time datetime="2026-01-15T21:30:00+00:00" title="2026-01-16 00:30 MSK">2026-01-16 00:30</time>'
    assert moscow in customer.get("/cabinet").text and moscow in performer.get("/cabinet").text
    db.execute("UPDATE users SET timezone = 'Asia/Vladivostok' WHERE id = %s", (vera["id"],))
    page = performer.get("/cabinet").text
    assert moscow not in page and 'title="2026-01-16 07:30 +10">2026-01-16 07:30</time>' in page
    assert 'title="2026-01-16 18:00 +10">2026-01-16 18:00</time>: waiting for the customer' in page
    assert moscow in customer.get("/cabinet").text
    assert rows_of(customer.get("/cabinet"))[0].startswith("Kept row Design")
    assert "The work is handed in" in customer.get("/cabinet").text
    customer.set_cookie("lang", "ru")
    page = customer.get("/cabinet")
    assert "The work is handed in" not in page.text and "Работа сдана" in page.text
    assert "Choose a category" not in page.text and "Дизайн" in page.text
    customer.set_cookie("lang", "en")
    db.execute(Q["order_accept"], {"order_id": order["id"], "customer_id": anna["id"], "rating": 8, "review": ""})
    row = rows_of(customer.get("/cabinet"))[0]
    assert "Kept row Design · 2026-01-16 00:30 done your rating: 8/10" in row and "handed in" not in row
    db.execute("UPDATE categories SET name_en = 'Design and art' WHERE slug = 'design'")
    page = customer.get("/cabinet").text
    assert '<option value="design" >Design and art</option>' in page and "Kept row</a><div class=\"meta\">Design and art" in page
    # the form of a new order offers the visible categories in their order, a hidden one no more
    db.execute("UPDATE categories SET is_hidden = true WHERE slug = 'business'")
    visible = [row["slug"] for row in db.execute("SELECT slug FROM categories WHERE NOT is_hidden ORDER BY id")]
    assert re.findall(r'<option value="([a-z-]+)"', customer.get("/cabinet").text) == visible
    assert "business" not in visible and len(visible) >= 5
    # the counters, the tabs and the performer's ratings beside the orders are kept too
    assert re.search(r'href="/cabinet\?status=done"><b>1</b><span>done', page)
    assert '<a href="/cabinet" class="active">All</a>' in page
    done_tab = customer.get("/cabinet?status=done").text
    assert '<a href="/cabinet" class="">All</a>' in done_tab and 'href="/cabinet?status=done" class="active"' in done_tab
    db.execute("SET session_replication_role = replica")
    db.execute("UPDATE orders SET rated_at = '2026-01-17 08:00+00' WHERE id = %s", (order["id"],))
    db.execute("RESET session_replication_role")
    aside = performer.get("/cabinet").text.split("<aside>")[1]
    assert "8 / 10" in aside and 'title="2026-01-17 18:00 +10">2026-01-17 18:00</time>' in aside
    db.execute("UPDATE users SET timezone = 'Europe/Moscow' WHERE id = %s", (vera["id"],))
    aside = performer.get("/cabinet").text.split("<aside>")[1]
    assert 'title="2026-01-17 11:00 MSK">2026-01-17 11:00</time>' in aside
    performer.set_cookie("lang", "ru")
    assert "средняя из 1 оценки" in performer.get("/cabinet").text


# ---------------------------------------------------------------------------------------------
# My offers

def offer_rows(page):
    return re.findall(r'<tr>\s*<td><a href="/orders/(\d+)">', page.text)


def test_my_offers_lists_only_the_performers_own_offers_with_order_price_days_and_status(
        client, sign_in, db, make_user, make_order):
    vera, gleb, anna = make_user("performer"), make_user("performer"), make_user("customer")
    active = make_order(anna, mode="offers", title="Poster", budget=2000)
    offer(db, active, vera, price=1500, days=3)
    offer(db, active, gleb, price=1400, days=2)             # Gleb's: never on Vera's list
    withdrawn = make_order(anna, mode="offers", title="Banner")
    offer(db, withdrawn, vera)
    db.execute(Q["offer_withdraw"], {"order_id": withdrawn["id"], "performer_id": vera["id"]})
    won = make_order(anna, mode="offers", title="Leaflet")
    mine = offer(db, won, vera, price=700, days=10)
    declined = make_order(anna, mode="offers", title="Flyer")
    offer(db, declined, vera)
    for order, winner in ((won, mine), (declined, offer(db, declined, gleb))):
        assert db.execute(Q["offer_accept"], {"order_id": order["id"], "offer_id": winner["id"],
                                              "customer_id": anna["id"]}).fetchone()["id"] == order["id"]
    sign_in(client, vera)
    page = client.get("/cabinet/offers")
    assert re.search(r'<a href="/cabinet/offers" class="active">My offers</a>', page.text)
    assert [re.sub(r" · (just now|\d+ \w+ ago|\d{4}-\d\d-\d\d \d\d:\d\d)", "", row) for row in rows_of(page)] == [
        "Flyer in progress · budget 1 000 ₽ 900 ₽ 5 days declined",
        "Leaflet in progress · budget 1 000 ₽ 700 ₽ 10 days accepted",
        "Banner open · budget 1 000 ₽ 900 ₽ 5 days withdrawn",
        "Poster open · budget 2 000 ₽ 1 500 ₽ 3 days active"]
    assert "1 400" not in text_of(page)
    assert "You have sent no offers yet." in text_of(sign_in(client, make_user("performer")).get("/cabinet/offers"))


def test_my_offers_pages_newest_first_without_gaps_or_repeats(client, sign_in, db, make_user, make_order):
    vera, anna = make_user("performer"), make_user("customer")
    made = [make_order(anna, mode="offers", title=f"Offer order {n:02}") for n in range(23)]
    for order in made:
        offer(db, order, vera)
    sign_in(client, vera)
    first = client.get("/cabinet/offers")
    newest_first = [str(order["id"]) for order in reversed(made)]
    assert offer_rows(first) == newest_first[:20]
    next_url = re.search(r'href="([^"]+)">Next page', first.text).group(1).replace("&amp;", "&")
    second = client.get(next_url)
    assert offer_rows(second) == newest_first[20:]
    assert "Next page" not in second.text and 'href="/cabinet/offers">← First page' in second.text
    assert client.get("/cabinet/offers?after=garbage", status=400)


@pytest.mark.parametrize("role", ["customer", "performer"])
def test_a_cabinet_pages_its_orders_newest_first_without_gaps_or_repeats_and_keeps_its_tab(
        client, sign_in, make_user, make_order, role):
    anna, vera = make_user("customer"), make_user("performer")
    made = [make_order(anna, performer=vera, status="done" if n % 4 else "in_progress", title=f"Paged order {n:02}")
            for n in range(45)]
    sign_in(client, anna if role == "customer" else vera)
    for tab, expected in ((None, made), ("done", [order for order in made if order["status"] == "done"])):
        url, seen = "/cabinet" + (f"?status={tab}" if tab else ""), []
        while url:
            page = client.get(url)
            seen.append(titles(page))
            found = re.search(r'href="([^"]+)">Next page', page.text)
            url = found and found.group(1).replace("&amp;", "&")
            assert url is None or (f"status={tab}" in url if tab else "status" not in url)
        assert [title for shown in seen for title in shown] == [order["title"] for order in reversed(expected)]
        assert [len(shown) for shown in seen] == ([20, 20, 5] if tab is None else [20, 13])


def test_my_offers_is_for_performers(client, make_client, sign_in, make_user):
    assert make_client().get("/cabinet/offers", status=303).headers["Location"].endswith("/login?next=/cabinet/offers")
    assert sign_in(client, make_user("customer")).get("/cabinet/offers", status=403)
    assert "/cabinet/offers" not in client.get("/cabinet").text


def test_a_cabinet_reads_its_viewer_in_its_own_statement_and_goes_to_sign_in_once_the_session_ends(
        make_client, sign_in, db, customer_world):
    """The session's token names the role (web.SESSION_ROLES), so the cabinet's one statement reads
    the viewer too; a token of before that, or one naming another role, still opens the user's own
    cabinet, and a session that has ended opens none."""
    anna, vera = customer_world["anna"], customer_world["vera"]
    signed = sign_in(make_client(), anna)
    assert web.SESSION_ROLES[signed.cookies[web.SESSION_COOKIE].strip('"')[0]] == "customer"
    page = signed.get("/cabinet")
    assert titles(page) == CUSTOMER_TABS[None] and anna["name"] in page.text
    older = make_client()
    older.set_cookie(web.SESSION_COOKIE, open_session(db, anna, secrets.token_urlsafe(32)))
    other_letter = make_client()
    other_letter.set_cookie(web.SESSION_COOKIE, open_session(db, anna, "p." + secrets.token_urlsafe(32)))
    for browser in (older, other_letter):
        assert titles(browser.get("/cabinet")) == CUSTOMER_TABS[None]
    # the header's unread counts come with the viewer
    unread = db.execute("SELECT unread_notifications AS n FROM user_counters WHERE user_id = %s",
                        (anna["id"],)).fetchone()["n"]
    assert unread > 0 and f'title="unread notifications">{unread}</span>' in page.text
    performer = sign_in(make_client(), vera)
    assert "Anna delivered" in titles(performer.get("/cabinet")) and "Not hers" in titles(performer.get("/cabinet"))
    db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = %s", (anna["id"],))
    db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (vera["id"],))
    for browser, url in ((signed, "/cabinet?status=done"), (older, "/cabinet"), (other_letter, "/cabinet"),
                         (performer, "/cabinet"), (performer, "/cabinet/offers")):
        assert browser.get(url, status=303).headers["Location"].endswith("/login?next=" + quote(url, safe="/")), url


# ---------------------------------------------------------------------------------------------
# Offer counts on the feed, in a search, on the home page

def card_of(page, order_id):
    card = re.search(rf'<article class="card order-card">\s*<div class="card-head">\s*<a class="card-title" '
                     rf'href="/orders/{order_id}">.*?</article>', page.text, flags=re.S).group(0)
    return plain(card)


def test_feed_search_and_home_cards_show_how_many_offers_an_order_has(
        client, make_client, sign_in, db, make_user, make_order, monkeypatch):
    anna, vera, gleb, dina = (make_user("customer"), make_user("performer"), make_user("performer"),
                              make_user("performer"))
    magnet = make_order(anna, mode="offers", title="Offer magnet logo")
    quiet = make_order(anna, mode="offers", title="Quiet logo")
    taken = make_order(anna, title="Take mode logo")
    for performer in (vera, gleb, dina):
        offer(db, magnet, performer)
    db.execute(Q["offer_withdraw"], {"order_id": magnet["id"], "performer_id": dina["id"]})  # not counted
    for n in range(5):
        make_order(anna, title=f"Filler {n}")  # so that a small search window ends before the logos

    pages = {"feed": client.get("/orders"), "home": client.get("/"), "search": client.get("/orders?q=logo")}
    monkeypatch.setattr(orders_module, "SEARCH_WINDOW", 2)  # the search past the window: another query
    pages["search past the window"] = client.get("/orders?q=logo")
    for name, page in pages.items():
        assert "· 2 offers" in card_of(page, magnet["id"]), name
        assert "· 0 offers" in card_of(page, quiet["id"]), name
        assert "offer" not in card_of(page, taken["id"]), name

    # a performer is offered what the order takes: an offer, or the take button
    feed = sign_in(make_client(), gleb).get("/orders")
    assert f'href="/orders/{magnet["id"]}#f-offer-price">Send an offer' in feed.text
    assert f'action="/orders/{magnet["id"]}/take"' not in feed.text
    assert f'action="/orders/{taken["id"]}/take"' in feed.text


def test_one_offer_is_said_in_the_singular_and_in_russian(client, db, make_user, make_order):
    anna = make_user("customer")
    order = make_order(anna, mode="offers", title="Single offer")
    offer(db, order, make_user("performer"))
    assert "· 1 offer" in card_of(client.get("/orders"), order["id"])
    assert "· 1 предложение" in card_of(client.get("/orders", headers={"Accept-Language": "ru"}), order["id"])
