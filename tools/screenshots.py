"""`make screenshots`: PNGs of the main pages for the README, in docs/screenshots/.

Starts a throw-away PostgreSQL (the project-local kind, in a temporary directory), loads the demo
data, runs the app under gunicorn on 127.0.0.1 and photographs, in headless Chromium (Debian's
/usr/bin/chromium driven by Playwright; never `playwright install`): the home page, the feed, an
order with offers (as its customer), both cabinets, the admin dashboard and a conversation with
files (the performer sends them through the page first), at 1280 px, in Russian.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    if not os.access(CHROMIUM, os.X_OK):
        print(f"make screenshots needs Debian's Chromium at {CHROMIUM} (apt-get install chromium).", file=sys.stderr)
        return 2
    import psycopg
    from playwright.sync_api import sync_playwright
    from psycopg.rows import dict_row

    import db
    import demo
    from devserver import LocalPostgres, ensure_database

    tmp = tempfile.mkdtemp(prefix="birzha-screenshots-")
    server = LocalPostgres(os.path.join(tmp, "pgdata"), fast_and_unsafe=True)
    app_server = None
    try:
        ensure_database(server.uri(), "birzha")
        url = server.uri("birzha")
        db.apply_schema(url)
        with psycopg.connect(url, row_factory=dict_row) as connection:
            demo.seed(connection)
            connection.commit()
            offers_order = connection.execute(
                "SELECT o.id, u.email FROM orders o JOIN users u ON u.id = o.customer_id"
                " WHERE o.mode = 'offers' AND o.status = 'open'"
                " ORDER BY o.offers_active DESC, o.id LIMIT 1").fetchone()
            talk = connection.execute(  # the demo's first conversation
                "SELECT c.order_id, c.performer_id, p.email AS performer_email, cu.email AS customer_email"
                " FROM conversations c JOIN users p ON p.id = c.performer_id JOIN users cu ON cu.id = c.customer_id"
                " ORDER BY c.id LIMIT 1").fetchone()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, DATABASE_URL=url, SECRET_KEY="screenshots", SUPPORT_EMAIL="support@birzha.example",
                   FILES_DIR=os.path.join(tmp, "files"))
        app_server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--no-control-socket", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--log-level", "warning", "app:app"], cwd=ROOT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start")
                time.sleep(0.2)

        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])

            def browse(email=None):
                """A page in a fresh browser context, signed in as email if given."""
                context = browser.new_context(locale="ru-RU", viewport={"width": 1280, "height": 860},
                                              extra_http_headers={"Accept-Language": "ru"})
                page = context.new_page()
                if email:
                    page.goto(base + "/login")
                    page.fill("#f-email", email)
                    page.fill("#f-password", demo.DEMO_PASSWORD)
                    with page.expect_navigation():
                        page.locator('form[action="/login"] button').click()
                return context, page

            def shoot(name, path, email=None, full_page=False):
                context, page = browse(email)
                page.goto(base + path)
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=full_page)
                print(f"docs/screenshots/{name}.png  {path}")
                context.close()

            shoot("home", "/")
            shoot("feed", "/orders")
            shoot("order-with-offers", f"/orders/{offers_order['id']}", email=offers_order["email"])
            shoot("cabinet-customer", "/cabinet", email="anna@demo.birzha")
            shoot("cabinet-performer", "/cabinet", email="vera@demo.birzha")
            shoot("admin-dashboard", "/admin", email=demo.STAFF[0])

            # The performer answers with two files, through the conversation's form; the customer reads it.
            conversation = f"/orders/{talk['order_id']}/messages"
            context, page = browse(talk["performer_email"])
            page.goto(base + conversation)
            page.fill("#f-body", "Набросала два варианта знака: чашка с колосом и крендель. Какой ближе?")
            page.set_input_files("#f-files", [
                {"name": "логотип-вариант-1.png", "mimeType": "image/png", "buffer": bytes(182_000)},
                {"name": "логотип-вариант-2.png", "mimeType": "image/png", "buffer": bytes(167_500)}])
            with page.expect_navigation():
                page.locator(f'form[action="{conversation}"] button').click()
            context.close()
            shoot("conversation", f"{conversation}?with={talk['performer_id']}", email=talk["customer_email"])
            browser.close()
    finally:
        if app_server is not None:
            app_server.terminate()
            app_server.wait(15)
        server.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
