"""The application's plumbing: pages from the database, health, outages, schema versions, queries."""
import datetime
import hashlib
import hmac
import io
import json
import os
import secrets
import tempfile
import time
import wsgiref.util
import zoneinfo
from urllib.parse import urlencode

import threading

import psycopg
import psycopg_pool
import pytest
import webtest

import accounts
import app as birzha
import db as database
import web
from conftest import SECRET, gunicorn, http_status
from db import Q
from devserver import LocalPostgres


def test_home_feed_and_health_are_served_from_the_database(client, make_user, make_order):
    customer = make_user("customer")
    make_order(customer, title="Logo for a coffee shop", budget=5000)
    for path in ("/", "/orders"):
        page = client.get(path)
        assert page.status_int == 200 and "Logo for a coffee shop" in page.text
    assert client.get("/healthz").text == "ok\n"


def test_unknown_pages_and_huge_ids_are_404_without_a_traceback(client):
    for path in ("/no/such/page", "/orders/99999999999999999999999", "/orders/abc"):
        page = client.get(path, status=404)
        assert "Traceback" not in page.text


@pytest.fixture
def own_server():
    """A PostgreSQL of this test's own, so that stopping it disturbs no other test."""
    tmp = tempfile.mkdtemp(prefix="birzha-outage-")
    server = LocalPostgres(os.path.join(tmp, "pgdata"))
    yield server
    database.close_pool()
    server.destroy()
    os.rmdir(tmp)


def test_app_answers_503_while_the_database_is_down_and_recovers_by_itself(own_server, monkeypatch):
    url = own_server.uri("postgres")
    database.apply_schema(url)
    monkeypatch.setitem(birzha.app.config, "db.url", url)
    monkeypatch.setattr(database, "POOL_TIMEOUT", 1.0)
    client = webtest.TestApp(birzha.app, extra_environ={"HTTP_ACCEPT_LANGUAGE": "en"})
    assert client.get("/healthz").status_int == 200
    assert client.get("/").status_int == 200

    own_server.stop()
    for path in ("/healthz", "/", "/orders"):
        page = client.get(path, status=503)
        assert "Traceback" not in page.text
    assert "database is not available" in client.get("/", status=503).text

    own_server.start()
    deadline = time.monotonic() + 20
    while client.get("/healthz", status="*").status_int != 200:
        assert time.monotonic() < deadline, "the app did not recover after the database came back"
        time.sleep(0.2)
    assert client.get("/orders").status_int == 200


# Longer than psycopg_pool's own reconnect back-off covers: its attempts come about 1, 3, 7, 15
# and 31 s after the first failure, so a server back after 20 s would wait until the 31st second.
LONG_OUTAGE = 20
RECOVERY = 2  # seconds from the server accepting connections to the app serving again


def start_and_wait_until_accepting(server, url):
    """Starts the stopped server; returns the moment a connection to it first succeeded."""
    starting = threading.Thread(target=server.start)
    starting.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                return time.monotonic()
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "the server did not come back"
                time.sleep(0.05)
    finally:
        starting.join()


def serves_again_by(deadline, status):
    """True once `status()` has answered 200 ten times in a row before the deadline (under
    gunicorn the requests reach both workers, so neither can still be failing)."""
    streak = 0
    while time.monotonic() < deadline:
        streak = streak + 1 if status() == 200 else 0
        if streak == 10:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.server
def test_after_a_long_outage_the_app_serves_again_within_2_s_of_the_database_accepting_connections(own_server):
    url = own_server.uri("postgres")
    database.apply_schema(url)
    saved = birzha.app.config["db.url"]
    birzha.app.config["db.url"] = url
    in_process = webtest.TestApp(birzha.app, extra_environ={"HTTP_ACCEPT_LANGUAGE": "en"})

    def in_process_status():
        return in_process.get("/healthz", status="*").status_int
    try:
        with gunicorn(url, workers=2) as server:
            def gunicorn_status():
                return http_status(server.port)
            assert in_process_status() == gunicorn_status() == 200

            own_server.stop(mode="immediate")
            outage_ends = time.monotonic() + LONG_OUTAGE
            while time.monotonic() < outage_ends:  # requests keep coming: the pools keep failing
                assert in_process_status() == 503
                assert gunicorn_status() == 503
                time.sleep(0.5)

            accepting = start_and_wait_until_accepting(own_server, url)
            assert serves_again_by(accepting + RECOVERY, in_process_status)
            assert serves_again_by(accepting + RECOVERY, gunicorn_status)
    finally:
        birzha.app.config["db.url"] = saved


def test_a_connection_that_fails_as_a_request_takes_it_goes_back_to_the_pool(db_url, monkeypatch):
    """A lease whose connection fails as it is set up (it broke since the pool checked it) gives it
    back: the pool would otherwise lose a connection for good at every such failure."""
    pool = database.pool(db_url)

    def broken(self, *args, **kwargs):
        raise psycopg.OperationalError("the connection broke")
    with monkeypatch.context() as patched:
        patched.setattr(psycopg.Connection, "set_autocommit", broken)
        with pytest.raises(psycopg.OperationalError):
            database.Lease(db_url, autocommit=True)  # a pooled connection is not in autocommit
    stats = pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"] >= 1
    lease = database.Lease(db_url)  # and serves the next request
    assert lease.conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    lease.end(commit=True)


def test_a_pooled_session_reads_times_in_utc_when_the_server_calls_utc_otherwise(db_url, db):
    """A server whose zone is UTC under another name (Etc/UTC, as initdb writes on a UTC machine)
    gives the app's sessions "UTC": psycopg's datetime.timezone.utc, with no conversion of each
    time read; the dates PostgreSQL works out stay the server's. A server in another zone keeps it."""
    name = db.execute("SELECT current_database() AS name").fetchone()["name"]
    for zone, expected in (("Etc/UTC", datetime.timezone.utc), ("Europe/Moscow", zoneinfo.ZoneInfo("Europe/Moscow"))):
        db.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = '{zone}'")
        database.close_pool()
        lease = database.Lease(db_url, autocommit=True)
        try:
            row = lease.conn.execute("SELECT now() AS now, current_setting('TimeZone') AS zone").fetchone()
            today = lease.conn.execute("SELECT current_date = (now() AT TIME ZONE %s)::date AS same",
                                         (zone,)).fetchone()["same"]
        finally:
            lease.end(commit=True)
        assert row["now"].tzinfo == expected and today
        assert row["zone"] == ("UTC" if zone == "Etc/UTC" else zone)
    database.close_pool()


def test_initdb_refuses_a_database_with_an_unknown_schema_version(db_url):
    assert database.apply_schema(db_url) == "current"
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SystemExit, match="schema version 99"):
        database.apply_schema(db_url)
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("UPDATE schema_version SET version = %s", (database.SCHEMA_VERSION,))


def test_initdb_refuses_a_foreign_database(db_url):
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("DROP TABLE schema_version")
    with pytest.raises(SystemExit, match="schema version None"):
        database.apply_schema(db_url)


def test_every_named_query_is_upper_case_sql_and_parses(db):
    """Each query in db/queries.sql is prepared by PostgreSQL (catches typos before a user does)."""
    import re
    for name, sql in Q.items():
        assert re.match(r"^\(?(SELECT|INSERT|UPDATE|DELETE|WITH)\b", sql), name  # "(SELECT …) UNION ALL …" too
        prepared = re.sub(r"%\((\w+)\)s", "NULL", sql)
        db.execute("PREPARE check_query AS " + prepared)
        db.execute("DEALLOCATE check_query")


def test_every_named_query_is_used_by_the_application():
    """A query nobody runs is dead weight that still looks like a rule."""
    import pathlib
    source = "".join(path.read_text(encoding="utf-8") for path in pathlib.Path(birzha.ROOT).glob("*.py"))
    unused = [name for name in Q if f'"{name}"' not in source]
    assert unused == []


def test_expired_sessions_are_cleared_at_the_next_sign_in(client, db, make_user, sign_in):
    user = make_user("customer")
    sign_in(client, user)
    db.execute("UPDATE sessions SET expires_at = now() - interval '1 day'")
    assert client.get("/cabinet", status=303).headers["Location"].startswith("/login")
    from conftest import PASSWORD
    from test_accounts import form_for
    login = form_for(client.get("/login"), "/login")  # the browser's way: the token of the page it got
    login["email"], login["password"] = user["email"], PASSWORD
    assert login.submit(status=303).headers["Location"].endswith("/cabinet")
    assert db.execute("SELECT count(*) AS n FROM sessions WHERE expires_at < now()").fetchone()["n"] == 0
    assert client.get("/cabinet").status_int == 200


def test_a_body_over_a_megabyte_is_refused_with_413_before_anything_reads_it(client, db):
    page = client.post("/signup", params=b"name=" + b"x" * (2 * 1024 * 1024),
                       content_type="application/x-www-form-urlencoded", status=413)
    assert "too large" in page.text and "Traceback" not in page.text
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 0


class CountingInput:
    """wsgi.input that counts the bytes the application reads from it."""

    def __init__(self, data):
        self.stream, self.bytes_read = io.BytesIO(data), 0

    def read(self, size=-1):
        data = self.stream.read(size)
        self.bytes_read += len(data)
        return data

    def readline(self, size=-1):
        data = self.stream.readline(size)
        self.bytes_read += len(data)
        return data


def chunked(body, size=64 * 1024):
    """The body in HTTP/1.1 chunked framing, as a server without a body limit passes it on."""
    parts = (body[i:i + size] for i in range(0, len(body), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def chunked_request(app, path, body, **headers):
    """POSTs `body` with Transfer-Encoding: chunked (no Content-Length) in-process through WSGI;
    returns (status, content type, response text, bytes of the body the app read)."""
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    wsgi_input = CountingInput(chunked(body))
    environ.update({"REQUEST_METHOD": "POST", "PATH_INFO": path, "wsgi.input": wsgi_input,
                    "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_ACCEPT_LANGUAGE": "en", **headers})
    environ.pop("CONTENT_LENGTH", None)
    started = {}

    def start_response(status, response_headers, exc_info=None):
        started.update(status=int(status.split()[0]), headers=dict(response_headers))
    result = app(environ, start_response)
    try:
        text = b"".join(result).decode()
    finally:
        getattr(result, "close", lambda: None)()
    return started["status"], started["headers"]["Content-Type"], text, wsgi_input.bytes_read


HUGE = 20 * 1024 * 1024


def test_a_chunked_api_body_is_refused_with_411_before_anything_reads_it(app, db, make_user):
    customer = make_user("customer")
    token = accounts.API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.execute(Q["api_token_create"], {"user_id": customer["id"], "token_hash": web.token_hash(token),
                                       "label": "script", "max_tokens": 10})
    order = {"title": "Logo for a bakery", "description": "Warm colours", "category": "design", "budget": 5000}
    body = json.dumps(order).encode() + b" " * HUGE  # valid JSON: read whole, it would be an order
    status, content_type, text, bytes_read = chunked_request(
        app, "/api/v1/orders", body, CONTENT_TYPE="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert (status, content_type) == (411, "application/problem+json")
    assert json.loads(text)["detail"] == (
        "Send the request body with a Content-Length header: a chunked body is not accepted.")
    assert bytes_read == 0
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 0


def test_a_chunked_form_body_is_refused_with_411_before_anything_reads_it(app, db, make_user):
    customer = make_user("customer")
    session = secrets.token_urlsafe(32)
    db.execute(Q["session_create"], {"token_hash": web.token_hash(session), "user_id": customer["id"],
                                     "days": 1, "user_agent": "test"})
    csrf = hmac.new(SECRET, session.encode(), hashlib.sha256).hexdigest()
    form = {"title": "Logo for a bakery", "description": "Warm colours", "category": "design",
            "budget": "5000", "csrf_token": csrf}
    body = urlencode(form).encode() + b"&padding=" + b"x" * HUGE
    status, content_type, text, bytes_read = chunked_request(
        app, "/orders", body, CONTENT_TYPE="application/x-www-form-urlencoded",
        HTTP_COOKIE=f"{web.SESSION_COOKIE}={session}")
    assert status == 411 and content_type.startswith("text/html")
    assert "a chunked body is not accepted" in text and "Traceback" not in text
    assert bytes_read == 0
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 0


@pytest.mark.parametrize("errcode, status", [("check_violation", 409), ("numeric_value_out_of_range", 400)])
def test_a_refusal_by_the_database_itself_is_a_clean_4xx_and_nothing_is_kept(
        client, db, make_user, make_order, sign_in, errcode, status):
    """The routes validate first, but if PostgreSQL still refuses a write, the answer is a 4xx page."""
    customer, performer = make_user("customer"), make_user("performer")
    order = make_order(customer)
    db.execute(f"""CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN RAISE EXCEPTION 'refused by a test rule' USING ERRCODE = '{errcode}'; END $$""")
    db.execute("CREATE TRIGGER test_refuse BEFORE INSERT ON order_history FOR EACH ROW EXECUTE FUNCTION test_refuse()")
    sign_in(client, performer)
    page = client.post_form(f"/orders/{order['id']}/take", status=status)
    assert "Traceback" not in page.text and "refused by a test rule" not in page.text
    assert db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"] == "open"
    db.execute("DROP TRIGGER test_refuse ON order_history")
    db.execute("DROP FUNCTION test_refuse()")


def test_the_modules_import_no_circle_and_none_imports_app():
    """The house of SPEC §1: app.py assembles; route modules use the plumbing below them; no
    module imports app.py, and following imports from any module never leads back to it."""
    import ast
    import importlib
    import pathlib
    root = pathlib.Path(birzha.ROOT)
    ours = {path.stem for path in root.glob("*.py")}
    imports = {}
    for name in ours:
        importlib.import_module(name)  # every module imports cleanly on its own
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
        imports[name] = found & ours
    assert [name for name, used in imports.items() if "app" in used] == []

    def reaches(start, target, seen=()):
        return any(step == target or (step not in seen and reaches(step, target, seen + (step,)))
                   for step in imports[start])
    assert [name for name in ours if reaches(name, name)] == []


REFUSE_AT_COMMIT = """
    CREATE FUNCTION test_refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'check_violation'; END $$;
    CREATE CONSTRAINT TRIGGER test_refuse_at_commit AFTER INSERT ON orders
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_at_commit();
"""


def test_a_commit_that_fails_answers_409_and_never_a_success(client, db, make_user, sign_in):
    """A deferred trigger refuses at COMMIT, after the route has already decided it succeeded."""
    from test_orders import VALID_ORDER
    db.execute(REFUSE_AT_COMMIT)
    sign_in(client, make_user("customer"))
    page = client.post_form("/orders", VALID_ORDER)
    assert page.status_int == 409 and "Traceback" not in page.text
    assert "birzha_flash" not in page.headers.get("Set-Cookie", "")  # no "Your order is published."
    assert "published" not in client.get("/cabinet").text
    api = client.post("/api/v1/orders", json.dumps(dict(VALID_ORDER, budget=5000, deadline=None)),
                      content_type="application/json", headers={"X-CSRF-Token": client.csrf()}, status=409)
    assert api.content_type == "application/problem+json" and "id" not in api.json
    assert db.execute("SELECT count(*) AS n FROM orders").fetchone()["n"] == 0


def deadlocks_on_history(db, times):
    """The next `times` writes of order history fail as a deadlock would (a sequence counts them:
    sequences are not rolled back, so the count survives the failed transaction)."""
    db.execute(f"""
        CREATE SEQUENCE test_deadlocks;
        CREATE FUNCTION test_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('test_deadlocks') <= {times} THEN
                RAISE EXCEPTION 'deadlock (forced by a test)' USING ERRCODE = 'deadlock_detected';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_deadlock BEFORE INSERT ON order_history
        FOR EACH ROW EXECUTE FUNCTION test_deadlock();""")


def attempts(db):
    return db.execute("SELECT last_value AS n FROM test_deadlocks").fetchone()["n"]


def test_a_deadlock_is_retried_once_and_the_retry_wins(client, db, make_user, make_order, sign_in):
    order = make_order(make_user("customer"))
    deadlocks_on_history(db, times=1)
    sign_in(client, make_user("performer"))
    assert client.post_form(f"/orders/{order['id']}/take").status_int == 303
    assert attempts(db) == 2
    assert db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"] == "in_progress"


def test_a_deadlock_twice_answers_409_not_503_and_the_database_stays_up(client, db, make_user, make_order, sign_in):
    order = make_order(make_user("customer"))
    deadlocks_on_history(db, times=2)
    sign_in(client, make_user("performer"))
    page = client.post_form(f"/orders/{order['id']}/take")
    assert page.status_int == 409 and "at the same moment" in page.text
    assert attempts(db) == 2  # tried once more, then gave up
    assert db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"] == "open"
    assert client.get(f"/orders/{order['id']}").status_int == 200


def test_a_lease_ended_after_its_pool_was_replaced_never_makes_a_pool(db_url):
    """Giving a connection back uses the pool that gave it: no cleanup path looks a pool up."""
    lease = database.Lease(db_url)
    database.close_pool()
    lease.end(commit=True)
    assert database._current["pool"] is None


def test_a_lease_on_a_connection_a_read_only_one_had_is_one_transaction_again(db_url, db):
    """A pooled connection keeps its cursors (one a named query) and its last mode between leases:
    a lease that writes after a read-only one (autocommit) still commits or rolls back as a whole,
    and a read-only lease after it runs each statement on its own."""
    database.close_pool()  # a pool of this test's database, whose one connection every lease takes
    read = database.Lease(db_url, autocommit=True)
    connection, cursor = read.conn, read.run("health_check", {})
    assert cursor.fetchone() == {"ok": 1} and read.run("feed_categories", {}) is not cursor
    # the same query's rows as tuples: a cursor of their own, kept as well
    as_tuples = read.run("health_check", {}, as_tuples=True)
    assert as_tuples is not cursor and as_tuples.fetchone() == (1,)
    read.end(commit=True)
    write = database.Lease(db_url)
    assert write.conn is connection and write.run("health_check", {}) is cursor
    assert write.run("health_check", {}, as_tuples=True) is as_tuples and cursor.fetchone() == {"ok": 1}
    write.conn.execute("INSERT INTO categories (slug, name_ru, name_en) VALUES ('one', 'Один', 'One')")
    write.conn.execute("INSERT INTO categories (slug, name_ru, name_en) VALUES ('two', 'Два', 'Two')")
    write.end(commit=False)
    assert db.execute("SELECT count(*) AS n FROM categories WHERE slug IN ('one', 'two')").fetchone()["n"] == 0
    again = database.Lease(db_url, autocommit=True)
    assert again.conn is connection
    again.conn.execute("INSERT INTO categories (slug, name_ru, name_en) VALUES ('three', 'Три', 'Three')")
    again.end(commit=False)  # nothing to roll back: the statement was its own transaction
    assert db.execute("SELECT count(*) AS n FROM categories WHERE slug = 'three'").fetchone()["n"] == 1


def test_a_pool_that_cannot_open_is_not_kept(monkeypatch):
    monkeypatch.setattr(database, "POOL_TIMEOUT", 0.5)
    url = "postgresql://127.0.0.1:9/nowhere?connect_timeout=1"
    for _attempt in range(2):  # each request tries afresh instead of waiting on a broken pool
        with pytest.raises(psycopg_pool.PoolTimeout):
            database.pool(url)
        assert database._current["pool"] is None


def test_while_the_database_is_unreachable_one_request_at_a_time_tries_and_at_most_twice_a_second(monkeypatch):
    attempts = []

    def unreachable(url):
        attempts.append(time.monotonic())
        time.sleep(0.2)  # a slow refusal: the others must not queue up behind it and try again
        raise psycopg.OperationalError("connection refused (a test)")
    monkeypatch.setattr(database, "reachable", unreachable)
    url = "postgresql://127.0.0.1:9/nowhere"
    failures = []

    def request():
        try:
            database.pool(url)
        except psycopg_pool.PoolTimeout as exc:
            failures.append(exc)
    threads = [threading.Thread(target=request) for _n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(failures) == 8 and len(attempts) == 1
    time.sleep(database.RECONNECT_SECONDS)
    with pytest.raises(psycopg_pool.PoolTimeout):
        database.pool(url)
    assert len(attempts) == 2 and database._current["pool"] is None
    database.close_pool()  # forgets the failure too



def test_a_pooled_connection_the_server_ended_is_replaced_without_an_error(client, db):
    """Every pooled connection is ended by the server (as a restart or an operator would): the next
    requests get fresh ones and never see the dead ones (no 503, no 500)."""
    assert client.get("/orders").status_int == 200
    pids = [row["pid"] for row in db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    assert pids
    end_backends(db, pids)
    for _request in range(3):
        assert client.get("/orders").status_int == 200


def test_handing_out_a_live_connection_costs_no_round_trip(db_url, monkeypatch):
    """The pool's check pings only a connection with something waiting on its socket."""
    pings = []
    ping = psycopg_pool.ConnectionPool.check_connection
    monkeypatch.setattr(psycopg_pool.ConnectionPool, "check_connection",
                        staticmethod(lambda conn: pings.append(conn) or ping(conn)))
    with psycopg.connect(db_url, autocommit=True) as live, psycopg.connect(db_url, autocommit=True) as ended:
        database.check_connection(live)
        assert pings == []
        end_backends(live, [ended.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            database.check_connection(ended)
        assert pings == [ended]


def end_backends(db, pids):
    """Ends these server processes and waits until they are gone (their goodbye is sent by then)."""
    db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::integer[]) AS pid", (pids,))
    for _attempt in range(500):
        if not db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone():
            return
        time.sleep(0.01)
    raise AssertionError(f"backends {pids} did not end in 5 s")
