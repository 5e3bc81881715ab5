"""Birzha in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright, against
the app under gunicorn on 127.0.0.1. The whole exchange by hand (sign-ups, posting, search, take
and offers, a conversation with a file and its notification, delivery, revision, a rated accept,
the cabinets' counters, staff settling a dispute and blocking a user) in Russian, in English, on a
390 px phone and without JavaScript; axe-core on every main page in both languages; and no page
loads anything from anywhere but 127.0.0.1.

Without /usr/bin/chromium (or the playwright package) these tests are skipped with the reason;
.ci/run installs chromium, so they run in CI. Never `playwright install`: the browser is Debian's.
"""
import os
import re
from pathlib import Path

import pytest

import conftest

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).resolve().parent / "assets" / "axe.min.js"
PASSWORD = "correct horse battery"  # conftest.PASSWORD: make_user's accounts

pytestmark = [pytest.mark.browser, pytest.mark.server]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev requirements have it
    sync_playwright = None


@pytest.fixture(scope="module")
def chromium():
    if sync_playwright is None:
        pytest.skip("browser tests need the playwright package (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium); "
                    ".ci/run installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def gunicorn(db_url, tmp_path):
    """The app under gunicorn on 127.0.0.1, its files in this test's temporary directory; the port."""
    with conftest.gunicorn(db_url, FILES_DIR=str(tmp_path / "files")) as server:
        yield server.port


class Person:
    """One person in their own browser context: every page they open is checked as it loads."""

    def __init__(self, browser, base, *, lang="ru", width=1280, javascript=True):
        self.base, self.width, self.javascript = base, width, javascript
        self.context = browser.new_context(
            locale="ru-RU" if lang == "ru" else "en-US", java_script_enabled=javascript,
            viewport={"width": width, "height": 900}, extra_http_headers={"Accept-Language": lang})
        self.outside = []      # requests for anything not on our server
        self.failures = []     # server errors, script errors, pages wider than the viewport
        self.context.route("**/*", self._only_ours)
        self.page = self.context.new_page()
        self.page.on("dialog", lambda dialog: dialog.accept())  # the confirmation of a cancel
        self.page.on("pageerror", lambda error: self.failures.append(f"script error: {error}"))
        self.page.on("response", self._response)

    def _only_ours(self, route):
        url = route.request.url
        if url.startswith(self.base + "/") or url == self.base:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def _response(self, response):
        if response.status >= 500:
            self.failures.append(f"{response.status} {response.url}")

    def check_page(self):
        """The page just loaded: no traceback, and (at phone width) nothing wider than the viewport."""
        text = self.page.content()
        assert "Traceback" not in text, self.page.url
        if self.javascript and self.width < 600:
            wide = self.page.evaluate("""() => [document.documentElement.scrollWidth, document.body.scrollWidth,
                                                  window.innerWidth]""")
            if max(wide[0], wide[1]) > wide[2]:
                self.failures.append(f"{self.page.url} is {max(wide[:2])} px wide in a {wide[2]} px viewport")

    def go(self, path):
        response = self.page.goto(self.base + path)
        assert response is not None and response.status < 400, (path, response and response.status)
        self.check_page()
        return self

    def submit(self, form, fields=None, *, expect=None):
        """Fills a form (CSS selector of the <form>) and presses its submit button."""
        scope = self.page.locator(form)
        assert scope.count() == 1, f"{form} on {self.page.url}"
        for name, value in (fields or {}).items():
            if scope.locator(f'input[name="{name}"]:is([type=radio], [type=checkbox])').count():
                scope.locator(f'[name="{name}"][value="{value}"]').check()
            elif isinstance(value, Path):
                scope.locator(f'input[type=file][name="{name}"]').set_input_files(value)
            elif scope.locator(f'select[name="{name}"]').count():
                scope.locator(f'select[name="{name}"]').select_option(value)
            else:
                scope.locator(f'[name="{name}"]').fill(value)
        with self.page.expect_navigation():
            scope.locator("button").last.click()
        self.check_page()
        if expect is not None:
            assert re.search(expect, self.page.url), (self.page.url, expect, self.flash())
        return self

    def follow(self, link):
        """Clicks a link (a Locator) and checks the page it leads to."""
        assert link.count() == 1, f"{link} on {self.page.url}"
        with self.page.expect_navigation():
            link.click()
        self.check_page()
        return self

    def unread(self, href):
        """The unread count the header shows by its link to href; 0 without a badge."""
        badge = self.page.locator(f'.user-nav a[href="{href}"] .unread-count')
        return int(badge.inner_text()) if badge.count() else 0

    def flash(self):
        texts = self.page.locator(".flash, .form-error, .field-error").all_inner_texts()
        return " | ".join(texts)

    def text(self, selector):
        return self.page.locator(selector).inner_text().strip()

    def close(self):
        self.context.close()


def sign_up(person, role, name, email):
    person.go("/signup").submit('form[action="/signup"]', {
        "role": role, "name": name, "email": email, "password": PASSWORD}, expect=r"/cabinet$")


def post_order(person, title, budget, mode):
    person.go("/cabinet").submit('form[action="/orders"]', {
        "title": title, "description": f"{title}: details for the browser test.", "category": "design",
        "budget": budget, "mode": mode}, expect=r"/orders/\d+$")
    return int(person.page.url.rsplit("/", 1)[1])


def counter(person, href):
    return int(person.text(f'.counters a.counter[href="{href}"] b'))


def talk_with_a_file(customer, performer, order_id, attachment):
    """The performer writes with a file; the customer sees the notification, opens it (which reads
    it), downloads the file, and answers; the performer reads the answer."""
    conversation = f"/orders/{order_id}/messages"
    performer.go(f"/orders/{order_id}").follow(performer.page.locator(f'aside a[href="{conversation}"]'))
    performer.submit(f'form[action="{conversation}"]', {"body": "Эскиз во вложении.", "files": attachment},
                     expect=rf"{conversation}$")
    assert "Эскиз во вложении." in performer.text(".messages")

    customer.go("/cabinet")
    unread_notifications = customer.unread("/notifications")
    assert unread_notifications >= 1 and customer.unread("/messages") == 1
    customer.follow(customer.page.locator('.user-nav a[href="/notifications"]'))
    notice = customer.page.locator(".notification", has_text="Эскиз во вложении.")
    assert notice.evaluate("n => n.classList.contains('unread')")
    customer.follow(notice.locator("a").first)
    assert re.search(rf"{conversation}\?with=\d+$", customer.page.url), customer.page.url
    assert (customer.unread("/notifications"), customer.unread("/messages")) == (unread_notifications - 1, 0)
    message = customer.page.locator(".message", has_text="Эскиз во вложении.")
    with customer.page.expect_download() as download:
        message.locator(".files a").click()
    assert download.value.suggested_filename == attachment.name
    assert Path(download.value.path()).read_bytes() == attachment.read_bytes()
    served = customer.page.request.get(download.value.url)  # with the page's cookies
    assert served.headers["content-disposition"].startswith("attachment;")
    customer.submit(f'form[action="{conversation}"]', {"body": "Спасибо, смотрю."}, expect=rf"{conversation}\?with=\d+$")
    customer.follow(customer.page.locator('.user-nav a[href="/notifications"]'))
    assert not notice.evaluate("n => n.classList.contains('unread')")

    performer.go("/cabinet")
    assert performer.unread("/messages") == 1
    performer.follow(performer.page.locator('.user-nav a[href="/messages"]'))
    performer.follow(performer.page.locator(f'a[href="{conversation}"]'))
    assert "Спасибо, смотрю." in performer.text(".messages")


def exchange_by_hand(chromium, port, make_user, attachment, *, lang="ru", width=1280, javascript=True):
    """Everything a customer, a performer and staff do, each in their own browser; returns the people."""
    base = f"http://127.0.0.1:{port}"
    people = [Person(chromium, base, lang=lang, width=width, javascript=javascript) for _ in range(3)]
    anna, vera, staff = people
    try:
        anna.go("/")
        sign_up(anna, "customer", "Анна Заказчица", "anna@browser.test")
        sign_up(vera, "performer", "Вера Дизайнер", "vera@browser.test")

        # A take-mode order with a budget as Russians write it, found by a search, taken from the feed.
        logo = post_order(anna, "Логотип для кофейни", "12 000", "take")
        assert "12 000" in anna.text(".budget").replace("\u00a0", " ")
        vera.go("/orders").submit('form.filters', {"q": "кофейни"}, expect=r"q=")
        assert vera.page.locator(f'a[href="/orders/{logo}"]').count() >= 1
        vera.submit(f'form[action="/orders/{logo}/take"]', expect=rf"/orders/{logo}$")
        talk_with_a_file(anna, vera, logo, attachment)

        # An offers-mode order: the performer offers, the customer accepts the offer.
        flyer = post_order(anna, "Флаер для выставки", "5000", "offers")
        vera.go(f"/orders/{flyer}").submit(f'form[action="/orders/{flyer}/offers"]', {
            "price": "4 500", "days": "3", "message": "Сделаю за три дня."}, expect=rf"/orders/{flyer}")
        anna.go(f"/orders/{flyer}").submit(f'form[action^="/orders/{flyer}/offers/"][action$="/accept"]',
                                           expect=rf"/orders/{flyer}$")

        # Delivery, a revision, a second delivery, an accept with a rating.
        vera.go(f"/orders/{logo}").submit(f'form[action="/orders/{logo}/deliver"]',
                                          {"message": "Макет по ссылке."}, expect=rf"/orders/{logo}$")
        anna.go(f"/orders/{logo}").submit(f'form[action="/orders/{logo}/revision"]',
                                          {"reason": "Сделайте фон светлее."}, expect=rf"/orders/{logo}$")
        vera.go(f"/orders/{logo}").submit(f'form[action="/orders/{logo}/deliver"]',
                                          {"message": "Фон светлее."}, expect=rf"/orders/{logo}$")
        anna.go(f"/orders/{logo}").submit(f'form[action="/orders/{logo}/accept"]',
                                          {"rating": "9", "review": "Отлично."}, expect=rf"/orders/{logo}$")

        # The flyer goes wrong: the performer opens a dispute; a third order is cancelled (confirmed).
        vera.go(f"/orders/{flyer}").submit(f'form[action="/orders/{flyer}/dispute"]',
                                           {"reason": "Заказчик не отвечает."}, expect=rf"/orders/{flyer}$")
        spare = post_order(anna, "Визитка", "1500", "take")
        anna.go(f"/orders/{spare}").submit(f'form[action="/orders/{spare}/cancel"]',
                                           {"reason": "Передумала", "confirm": "yes"}, expect=rf"/orders/{spare}$")

        # The counters of both cabinets.
        anna.go("/cabinet")
        assert [counter(anna, f"/cabinet?status={s}") for s in ("done", "disputed", "cancelled", "open")] == [1, 1, 1, 0]
        assert anna.page.locator(".cabinet-orders .rating").first.inner_text().strip() == "9/10"
        vera.go("/cabinet")
        assert [counter(vera, f"/cabinet?status={s}") for s in ("done", "disputed", "in_progress")] == [1, 1, 0]

        # Staff settle the dispute and block the customer.
        boss = make_user("customer", staff=True, name="Сотрудник")
        staff.go("/login").submit('form[action="/login"]', {"email": boss["email"], "password": PASSWORD},
                                  expect=r"/cabinet$")
        staff.go("/admin/disputes")
        assert staff.page.locator(f'a[href="/admin/orders/{flyer}"]').count() >= 1
        staff.go(f"/admin/orders/{flyer}").submit(f'form[action="/admin/orders/{flyer}/resolve"]', {
            "outcome": "done", "reason": "Работа сдана вовремя."}, expect=r"/admin/disputes")
        staff.go("/admin/users?q=anna%40browser.test")
        user_link = staff.page.locator('table a[href^="/admin/users/"]').first.get_attribute("href")
        staff.go(user_link).submit(f'form[action="{user_link}/block"]', {"reason": "Проверка блокировки"},
                                   expect=re.escape(user_link))
        vera.go("/cabinet")
        assert counter(vera, "/cabinet?status=done") == 2
        anna.page.goto(anna.base + "/cabinet")
        assert "/login" in anna.page.url  # the blocked customer is signed out

        for person in people:
            assert person.outside == [], person.outside
            assert person.failures == [], person.failures
        return people
    finally:
        for person in people:
            person.close()


# Russian is the default language: the phone and the no-JavaScript runs are in Russian.
@pytest.mark.parametrize("lang, width, javascript", [
    pytest.param("en", 1280, True, id="english"),
    pytest.param("ru", 390, True, id="phone-390px"),
    pytest.param("ru", 1280, False, id="no-javascript"),
])
def test_the_whole_exchange_works_by_hand_in_a_browser(chromium, gunicorn, make_user, tmp_path, lang, width,
                                                       javascript):
    sketch = tmp_path / "эскиз логотипа.txt"
    sketch.write_bytes("Знак: чашка и зерно.\n".encode() + bytes(range(256)))
    exchange_by_hand(chromium, gunicorn, make_user, sketch, lang=lang, width=width, javascript=javascript)


# ---------------------------------------------------------------------------------------------
# Every main page: axe-core, the phone width, and nothing from outside 127.0.0.1

def seeded_site(db, make_user, make_order):
    """People and orders in every state the pages show; returns (pages by who sees them, sessions)."""
    import secrets

    import web
    from db import Q

    anna = make_user("customer", name="Анна Заказчица")
    vera = make_user("performer", name="Вера Дизайнер", categories=("design",))
    gleb = make_user("performer", name="Глеб Разработчик")
    boss = make_user("customer", staff=True, name="Сотрудник")
    offers = make_order(anna, mode="offers", title="Флаер для выставки", budget=5000)
    for performer, price in ((vera, 4500), (gleb, 4800)):
        db.execute(Q["offer_submit"], {"order_id": offers["id"], "performer_id": performer["id"], "price": price,
                                       "days": 3, "message": "Сделаю за три дня."})
    open_order = make_order(anna, title="Логотип для кофейни", budget=12000)
    menu = make_order(anna, performer=vera, status="in_progress", title="Меню")
    talk = db.execute(Q["conversation_open"], {"order_id": menu["id"], "performer_id": vera["id"],
                                               "sender_id": vera["id"]}).fetchone()
    with db.transaction():  # a file comes with its message, in the same transaction
        message = db.execute(Q["message_send"], {"conversation_id": talk["id"], "sender_id": vera["id"],
                                                 "body": "Эскиз меню во вложении."}).fetchone()
        db.execute(Q["file_attach"], {"sha256": "0" * 64, "size": 48128,  # a long name is no wider than a phone
                                      "name": "menu_sketch_final_version_for_print_A4_300dpi.pdf",
                                      "content_type": "application/pdf", "uploader_id": vera["id"],
                                      "message_id": message["id"], "delivery_id": None, "position": 1})
    db.execute(Q["message_send"], {"conversation_id": talk["id"], "sender_id": anna["id"],
                                   "body": "Спасибо! Посмотрю сегодня."})
    make_order(anna, performer=vera, status="delivered", title="Баннер")
    disputed = make_order(anna, performer=gleb, status="disputed", title="Сайт")
    make_order(anna, performer=vera, status="done", rating=9, review="Отлично", title="Визитка")
    make_order(anna, status="cancelled", title="Открытка")
    sessions = {}
    for key, user in (("customer", anna), ("performer", vera), ("staff", boss)):
        token = secrets.token_urlsafe(32)
        db.execute(Q["session_create"], {"token_hash": web.token_hash(token), "user_id": user["id"],
                                         "days": 1, "user_agent": "browser test"})
        sessions[key] = token
    pages = {
        "guest": ["/", "/orders", "/orders?q=логотип", f"/orders/{open_order['id']}", "/performers",
                  f"/performers/{vera['id']}", "/login", "/signup", "/contact"],
        "customer": ["/cabinet", "/cabinet?status=done", f"/orders/{offers['id']}", f"/orders/{open_order['id']}/edit",
                     "/profile", "/notifications", "/messages", f"/orders/{menu['id']}/messages?with={vera['id']}"],
        "performer": ["/cabinet", "/cabinet/offers", f"/orders/{offers['id']}", "/profile", "/notifications",
                      f"/orders/{menu['id']}/messages"],
        "staff": ["/admin", "/admin/users", f"/admin/users/{anna['id']}", "/admin/orders",
                  f"/admin/orders/{disputed['id']}", "/admin/disputes", "/admin/categories", "/admin/reviews",
                  "/admin/log"],
    }
    return pages, sessions


def visit_every_page(chromium, port, pages, sessions, *, lang, width, bypass_csp=False):
    """Yields (who, path, Person) with each main page loaded, signed in as who."""
    import web
    base = f"http://127.0.0.1:{port}"
    for who, paths in pages.items():
        person = Person(chromium, base, lang=lang, width=width)
        if bypass_csp:  # axe is injected as an inline script, which the site's CSP rightly refuses
            person.context.close()
            person.context = chromium.new_context(locale="ru-RU" if lang == "ru" else "en-US", bypass_csp=True,
                                                  viewport={"width": width, "height": 900},
                                                  extra_http_headers={"Accept-Language": lang})
            person.context.route("**/*", person._only_ours)
            person.page = person.context.new_page()
            person.page.on("response", person._response)
            person.page.on("pageerror", lambda error, p=person: p.failures.append(f"script error: {error}"))
        if who in sessions:
            person.context.add_cookies([{"name": web.SESSION_COOKIE, "value": sessions[who], "url": base}])
        try:
            for path in paths:
                person.go(path)
                yield who, path, person
            assert person.failures == [], person.failures
            assert person.outside == [], person.outside
        finally:
            person.close()


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_every_main_page_passes_axe_and_fits_a_390px_phone(chromium, gunicorn, db, make_user, make_order, lang):
    pages, sessions = seeded_site(db, make_user, make_order)
    found = []
    for who, path, person in visit_every_page(chromium, gunicorn, pages, sessions, lang=lang, width=390,
                                              bypass_csp=True):
        assert person.page.evaluate("document.documentElement.lang") == lang
        person.page.add_script_tag(path=str(AXE))
        violations = person.page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']}))
            .violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))""")
        for violation in violations:
            # serious and critical fail; so do the two moderate rules issue 12 found and fixed
            if violation["impact"] in ("serious", "critical") or violation["id"] in ("landmark-unique", "region"):
                found.append(f"{who} {path}: {violation['id']} ({violation['impact']}) at {violation['nodes']}")
    assert found == []


def test_no_page_loads_anything_from_outside_127_0_0_1(chromium, gunicorn, db, make_user, make_order):
    pages, sessions = seeded_site(db, make_user, make_order)
    seen = []
    for who, path, person in visit_every_page(chromium, gunicorn, pages, sessions, lang="ru", width=1280):
        seen.append(path)
        # the stylesheet, the icon and the script came from our server (the route lets nothing else through)
        assert person.outside == [], (who, path, person.outside)
    assert len(seen) == sum(len(paths) for paths in pages.values())
