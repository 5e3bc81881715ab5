"""Operators and DBAs: migrations, the tick, backup and restore, and every command on the
project-local server when DATABASE_URL is not set."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

import commands
import db as database
from db import Q
from conftest import _with_database
from devserver import LocalPostgres, postgres_program

ROOT = Path(database.ROOT)

# Data as version 1 of the schema held it: people, orders in every state, a rating, a session.
VERSION_1_DATA = """
INSERT INTO users (role, email, password_hash, name) VALUES
    ('customer', 'anna@example.test', 'x', 'Anna'),
    ('customer', 'boris@example.test', 'x', 'Boris'),
    ('performer', 'vera@example.test', 'x', 'Vera'),
    ('performer', 'gleb@example.test', 'x', 'Gleb');
INSERT INTO orders (customer_id, category_id, title, description, budget)
SELECT c.id, 1, 'Order ' || n, 'Described', 1000 * n
FROM users c, generate_series(1, 4) AS n
WHERE c.role = 'customer';
UPDATE orders SET status = 'in_progress', performer_id = (SELECT id FROM users WHERE email = 'vera@example.test')
WHERE title IN ('Order 2', 'Order 3');
UPDATE orders SET status = 'done' WHERE title = 'Order 3';
UPDATE orders SET rating = 9, review = 'Fine work' WHERE title = 'Order 3' AND status = 'done';
UPDATE orders SET status = 'cancelled', cancel_reason = 'Changed my mind' WHERE title = 'Order 4';
INSERT INTO sessions (token_hash, user_id, expires_at)
SELECT sha256(email::bytea), id, now() + interval '1 day' FROM users;
"""

TABLES = ("users", "customer_stats", "performer_stats", "categories", "orders", "order_history", "sessions")


@pytest.fixture
def empty_db_url(pg_admin_uri):
    """A database with nothing in it (not cloned from the template)."""
    made = []

    def make():
        name = f"birzha_empty_{os.getpid()}_{len(made)}_{os.urandom(3).hex()}"
        with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _with_database(pg_admin_uri, name)
    yield make
    with psycopg.connect(pg_admin_uri, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rows_of(url):
    with psycopg.connect(url, row_factory=dict_row) as connection:
        return {table: connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in TABLES}


def audit(url):
    with psycopg.connect(url, row_factory=dict_row) as connection:
        return connection.execute("SELECT * FROM audit_counters()").fetchall()


def normalised_schema(url):
    """pg_dump --schema-only as a sorted list of lines: the order of columns and statements,
    comments, settings and blank lines aside, two databases with the same schema give the same."""
    dump = subprocess.run([postgres_program("pg_dump"), "--schema-only", "--no-owner", url],
                          capture_output=True, text=True, check=True).stdout
    lines = []
    for line in dump.splitlines():
        line = line.strip().rstrip(",")
        if not line or line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")):
            continue
        lines.append(line)
    return sorted(lines)


def migrate_to(connection, version):
    """Builds an older database: the migrations up to `version`, each recording it, as `migrate` does."""
    for number, path in database.migrations():
        if number <= version:
            with connection.transaction():
                connection.execute(path.read_text(encoding="utf-8"))
                connection.execute(Q["schema_version_set"], {"version": number})


def test_a_version_1_database_with_data_migrates_to_exactly_the_current_schema(empty_db_url):
    old, fresh = empty_db_url(), empty_db_url()
    first = database.migrations()[0][1]
    with psycopg.connect(old, autocommit=True) as connection:
        connection.execute(first.read_text(encoding="utf-8"))
        connection.execute(VERSION_1_DATA)
    before = rows_of(old)
    assert len(before["orders"]) == 8 and audit(old) == []

    applied = database.migrate(old, log=lambda _line: None)
    assert applied == [number for number, _path in database.migrations()[1:]]
    assert database.apply_schema(fresh) == "created"
    assert normalised_schema(old) == normalised_schema(fresh)

    after = rows_of(old)
    for table in TABLES:
        assert len(after[table]) == len(before[table]), table
        assert [row["id"] for row in after[table] if "id" in row] == [row["id"] for row in before[table] if "id" in row]
    assert audit(old) == []
    with psycopg.connect(old) as connection:
        assert database.schema_version(connection) == database.SCHEMA_VERSION
    assert database.migrate(old, log=lambda _line: None) == []  # nothing pending: nothing runs


# Data as version 4 held it: each customer's orders 1 open, 2 and 3 in progress, 4 done and rated
# (Boris's rating hidden), 5 done unrated, 6 cancelled while open, 7 cancelled in progress (keeping
# its performer); Boris blocked, so his open order is out of its category's count.
VERSION_4_DATA = """
INSERT INTO users (role, email, password_hash, name) VALUES
    ('customer', 'anna@example.test', 'x', 'Anna'),
    ('customer', 'boris@example.test', 'x', 'Boris'),
    ('performer', 'vera@example.test', 'x', 'Vera'),
    ('performer', 'gleb@example.test', 'x', 'Gleb');
INSERT INTO orders (customer_id, category_id, title, description, budget)
SELECT c.id, n % 3 + 1, c.name || ' ' || n, 'Described', 1000 * n
FROM users c, generate_series(1, 7) AS n
WHERE c.role = 'customer'
ORDER BY c.id, n;
UPDATE orders SET status = 'in_progress', performer_id = (SELECT id FROM users WHERE name = 'Vera')
WHERE title ~ ' [247]$';
UPDATE orders SET status = 'in_progress', performer_id = (SELECT id FROM users WHERE name = 'Gleb')
WHERE title ~ ' [35]$';
UPDATE orders SET status = 'done' WHERE title ~ ' [45]$';
UPDATE orders SET rating = 9, review = 'Fine work' WHERE title = 'Anna 4';
UPDATE orders SET rating = 3, review = 'Late' WHERE title = 'Boris 4';
UPDATE orders SET review_hidden = true WHERE title = 'Boris 4';
UPDATE orders SET status = 'cancelled', cancel_reason = 'Changed my mind' WHERE title ~ ' [67]$';
UPDATE users SET is_blocked = true WHERE name = 'Boris';
"""


def test_a_version_4_database_with_orders_in_every_state_migrates_to_the_exchange(empty_db_url):
    url = empty_db_url()
    with psycopg.connect(url, autocommit=True) as connection:
        migrate_to(connection, 4)
        connection.execute(VERSION_4_DATA)
        assert database.schema_version(connection) == 4
    before = rows_of(url)
    assert {(o["status"], o["performer_id"] is not None) for o in before["orders"]} == {
        ("open", False), ("in_progress", True), ("done", True), ("cancelled", False), ("cancelled", True)}
    assert audit(url) == []

    assert database.migrate(url, log=lambda _line: None) == list(range(5, database.SCHEMA_VERSION + 1))
    after = rows_of(url)
    # Every row as it was, every order in take mode, agreed at its budget if it has a performer.
    for table in TABLES:
        columns = before[table][0].keys() if before[table] else ()
        assert [{key: row[key] for key in columns} for row in after[table]] == before[table], table
    for order in after["orders"]:
        assert (order["mode"], order["offers_active"], order["delivered_at"], order["disputed_at"]) == (
            "take", 0, None, None)
        assert order["agreed_price"] == (order["budget"] if order["performer_id"] else None), order["title"]
    for stats in after["customer_stats"] + after["performer_stats"]:
        assert (stats["orders_delivered"], stats["orders_disputed"]) == (0, 0)
    assert audit(url) == []

    # The exchange's moves work on the migrated orders.
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
        ids = {r["name"]: r["id"] for r in connection.execute("SELECT id, name FROM users")}
        orders = {r["title"]: r["id"] for r in connection.execute("SELECT id, title FROM orders")}

        def step(actor, query, **params):
            with connection.transaction():
                connection.execute(Q["actor_set"], {"actor_id": str(ids[actor]), "note": "", "staff": False})
                row = connection.execute(Q[query], params).fetchone()
            assert row and row["id"] is not None, (actor, query)

        def state(title):
            return connection.execute("SELECT status, performer_id, agreed_price, rating FROM orders WHERE id = %s",
                                      (orders[title],)).fetchone()

        vera_before = connection.execute("SELECT * FROM performer_stats WHERE performer_id = %s",
                                         (ids["Vera"],)).fetchone()
        step("Vera", "order_deliver", order_id=orders["Anna 2"], performer_id=ids["Vera"], message="Done")
        step("Anna", "order_revision", order_id=orders["Anna 2"], customer_id=ids["Anna"])
        step("Vera", "order_deliver", order_id=orders["Anna 2"], performer_id=ids["Vera"], message="Fixed")
        assert state("Anna 2")["status"] == "delivered"
        step("Anna", "order_accept", order_id=orders["Anna 2"], customer_id=ids["Anna"], rating=8, review="")
        assert state("Anna 2") == {"status": "done", "performer_id": ids["Vera"], "agreed_price": 2000, "rating": 8}
        vera = connection.execute("SELECT * FROM performer_stats WHERE performer_id = %s", (ids["Vera"],)).fetchone()
        assert (vera["orders_completed"], vera["orders_in_progress"], vera["rating_sum"], vera["rating_count"]) == (
            vera_before["orders_completed"] + 1, vera_before["orders_in_progress"] - 1,
            vera_before["rating_sum"] + 8, vera_before["rating_count"] + 1)
        actions = connection.execute("SELECT action FROM order_history WHERE order_id = %s ORDER BY id",
                                     (orders["Anna 2"],)).fetchall()
        assert [a["action"] for a in actions] == ["create", "take", "deliver", "revision", "deliver", "accept"]
        # Given back, taken again at the budget; disputed; an open order put in offers mode.
        step("Gleb", "order_withdraw", order_id=orders["Anna 3"], performer_id=ids["Gleb"])
        assert state("Anna 3") == {"status": "open", "performer_id": None, "agreed_price": None, "rating": None}
        step("Vera", "order_take", order_id=orders["Anna 3"], performer_id=ids["Vera"])
        assert state("Anna 3")["agreed_price"] == 3000
        step("Vera", "order_dispute", order_id=orders["Boris 2"], user_id=ids["Vera"])
        assert state("Boris 2")["status"] == "disputed"
        connection.execute("UPDATE orders SET mode = 'offers' WHERE id = %s", (orders["Anna 1"],))
        offer = connection.execute(Q["offer_submit"], {"order_id": orders["Anna 1"], "performer_id": ids["Gleb"],
                                                       "price": 700, "days": 3, "message": "Soon"}).fetchone()
        step("Anna", "offer_accept", order_id=orders["Anna 1"], offer_id=offer["id"], customer_id=ids["Anna"])
        assert state("Anna 1") == {"status": "in_progress", "performer_id": ids["Gleb"], "agreed_price": 700,
                                   "rating": None}
    assert audit(url) == []


def test_a_version_18_database_migrates_its_conversations_to_keep_their_last_message(empty_db_url):
    """Migration 0019 gives each conversation its last message's excerpt and sender; a message count
    that drifted by hand is set to its messages', since the new CHECK needs the two to agree."""
    url = empty_db_url()
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
        migrate_to(connection, 18)
        ids = {row["name"]: row["id"] for row in connection.execute(
            "INSERT INTO users (role, email, password_hash, name) VALUES "
            "('customer', 'anna@example.test', 'x', 'Anna'), "
            "('performer', 'vera@example.test', 'x', 'Vera'), "
            "('performer', 'gleb@example.test', 'x', 'Gleb') RETURNING id, name")}
        vera, gleb = ids["Vera"], ids["Gleb"]
        order = connection.execute("INSERT INTO orders (customer_id, category_id, title, description, budget) "
                                   "VALUES (%s, 1, 'A logo', 'Described', 1000) RETURNING id, customer_id",
                                   (ids["Anna"],)).fetchone()
        talk, drifted = (connection.execute("INSERT INTO conversations (order_id, customer_id, performer_id) "
                                            "VALUES (%s, %s, %s) RETURNING id",
                                            (order["id"], order["customer_id"], performer)).fetchone()["id"]
                         for performer in (vera, gleb))
        for sender, body in ((vera, "Is a vector file fine?"), (order["customer_id"], "Yes, " + "ж" * 300)):
            connection.execute("INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, %s)",
                               (talk, sender, body))
        connection.execute("INSERT INTO messages (conversation_id, sender_id, body) VALUES (%s, %s, 'Hello')",
                           (drifted, gleb))
        connection.execute("UPDATE conversations SET message_count = 5 WHERE id = %s", (drifted,))
    assert [row["counter"] for row in audit(url)] == ["conversation.message_count"]

    assert database.migrate(url, log=lambda _line: None) == [number for number, _path in database.migrations()
                                                            if number > 18]
    with psycopg.connect(url, row_factory=dict_row) as connection:
        kept = {row["id"]: row for row in connection.execute(
            "SELECT id, message_count, last_message_excerpt, last_sender_id FROM conversations")}
    assert kept[talk] == {"id": talk, "message_count": 2, "last_message_excerpt": "Yes, " + "ж" * 195,
                          "last_sender_id": order["customer_id"]}
    assert kept[drifted] == {"id": drifted, "message_count": 1, "last_message_excerpt": "Hello",
                             "last_sender_id": gleb}
    assert audit(url) == []


def test_schema_sql_declares_the_version_of_the_last_migration():
    declared = re.search(r"INSERT INTO schema_version \(version\) VALUES \((\d+)\)",
                         (ROOT / "db" / "schema.sql").read_text(encoding="utf-8")).group(1)
    assert int(declared) == database.SCHEMA_VERSION == database.migrations()[-1][0]


def test_initdb_on_an_older_database_says_to_migrate(empty_db_url):
    url = empty_db_url()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(database.migrations()[0][1].read_text(encoding="utf-8"))
    with pytest.raises(SystemExit, match="python app.py migrate"):
        database.apply_schema(url)


def test_backup_then_restore_into_an_empty_database_gives_the_same_rows(
        db_url, db, empty_db_url, make_user, make_order, tmp_path, capsys):
    customer, performer = make_user("customer"), make_user("performer")
    make_order(customer, title="Стройка: смета")
    make_order(customer, performer=performer, status="done", rating=7, review="Хорошо")
    make_order(customer, status="cancelled")
    backup = str(tmp_path / "birzha.dump")
    assert commands.backup(db_url, backup) == 0

    target = empty_db_url()
    assert commands.restore(target, backup) == 0
    assert rows_of(target) == rows_of(db_url)
    assert audit(target) == []
    assert commands.restore(target, backup) == 2  # not empty any more: refused without --force
    assert "not empty" in capsys.readouterr().err
    assert commands.restore(target, backup, force=True) == 0
    assert rows_of(target) == rows_of(db_url)


def test_a_tick_that_finds_another_running_does_nothing_and_the_next_does_the_work(db_url, db, make_user, sign_in):
    user = make_user("customer")
    db.execute("INSERT INTO sessions (token_hash, user_id, expires_at) VALUES (sha256('old'), %s, now() - interval '1 hour')",
               (user["id"],))
    db.execute("INSERT INTO login_attempts (email, address, at) VALUES ('a@b.cc', '203.0.113.1', now() - interval '2 days')")
    with psycopg.connect(db_url) as other:  # another machine's tick, mid-way through its transaction
        other.execute("SELECT pg_advisory_xact_lock(hashtext('birzha.tick'))")
        assert commands.tick(db_url) == 0
        assert db.execute("SELECT count(*) AS n FROM sessions").fetchone()["n"] == 1
        assert db.execute("SELECT count(*) AS n FROM counter_audit").fetchone()["n"] == 0
    assert commands.tick(db_url) == 0
    assert db.execute("SELECT count(*) AS n FROM sessions").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM login_attempts").fetchone()["n"] == 0
    assert db.execute("SELECT drifted FROM counter_audit").fetchone()["drifted"] == 0


def test_two_ticks_at_once_do_the_work_once(db_url, db):
    """Both start together; the one that gets the lock stores the audit, the other finds it held."""
    env = dict(os.environ, DATABASE_URL=db_url)
    # The winner sleeps inside its transaction, so the two overlap whatever the scheduling.
    db.execute("""CREATE FUNCTION test_slow_audit() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$""")
    db.execute("CREATE TRIGGER test_slow_audit BEFORE INSERT OR UPDATE ON counter_audit "
               "FOR EACH ROW EXECUTE FUNCTION test_slow_audit()")
    ticks = [subprocess.Popen([sys.executable, "app.py", "tick"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [tick.communicate(timeout=60)[0] for tick in ticks]
    assert all(tick.returncode == 0 for tick in ticks)
    assert sorted("another tick is running" in output for output in outputs) == [False, True], outputs


def delivered_ago(db, order, age):
    """Moves an order's delivery back in time (the guard refuses any statement that writes it)."""
    with db.transaction():
        db.execute("ALTER TABLE orders DISABLE TRIGGER orders_guard_transition")
        db.execute("UPDATE orders SET delivered_at = now() - %s::interval WHERE id = %s", (age, order["id"]))
        db.execute("ALTER TABLE orders ENABLE TRIGGER orders_guard_transition")


def exchange_counters(db, customer, performer):
    return (db.execute("SELECT orders_delivered, orders_done FROM customer_stats WHERE customer_id = %s",
                       (customer["id"],)).fetchone(),
            db.execute("SELECT orders_delivered, orders_completed FROM performer_stats WHERE performer_id = %s",
                       (performer["id"],)).fetchone())


def status_of(db, order):
    return db.execute("SELECT status FROM orders WHERE id = %s", (order["id"],)).fetchone()["status"]


def test_the_tick_accepts_deliveries_unanswered_for_auto_accept_days_as_the_system(
        db_url, db, make_user, make_order, monkeypatch, capsys):
    monkeypatch.delenv("AUTO_ACCEPT_DAYS", raising=False)  # the default: 3 days
    customer, performer = make_user("customer"), make_user("performer")
    old = make_order(customer, performer=performer, status="delivered", title="Waited too long")
    new = make_order(customer, performer=performer, status="delivered", title="Still in time")
    delivered_ago(db, old, "3 days 1 minute")
    delivered_ago(db, new, "2 days 23 hours")
    with psycopg.connect(db_url) as other:  # a tick running elsewhere: this one accepts nothing
        other.execute("SELECT pg_advisory_xact_lock(hashtext('birzha.tick'))")
        assert commands.tick(db_url) == 0
    assert status_of(db, old) == "delivered"
    capsys.readouterr()

    assert commands.tick(db_url) == 0
    assert "1 delivered orders accepted automatically (unanswered for 3 days)" in capsys.readouterr().out
    assert (status_of(db, old), status_of(db, new)) == ("done", "delivered")
    last = db.execute("SELECT action, actor_id, from_status, to_status, note FROM order_history "
                      "WHERE order_id = %s ORDER BY id DESC LIMIT 1", (old["id"],)).fetchone()
    assert last == {"action": "auto_accept", "actor_id": None, "from_status": "delivered", "to_status": "done",
                    "note": None}
    assert exchange_counters(db, customer, performer) == ({"orders_delivered": 1, "orders_done": 1},
                                                          {"orders_delivered": 1, "orders_completed": 1})
    assert db.execute("SELECT drifted FROM counter_audit").fetchone()["drifted"] == 0
    assert commands.tick(db_url) == 0  # nothing more to accept
    assert "0 delivered orders accepted" in capsys.readouterr().out
    assert status_of(db, new) == "delivered"


def test_with_auto_accept_days_0_the_next_tick_accepts_a_delivery(db_url, db, make_user, make_order, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("AUTO_ACCEPT_DAYS", "0")
    customer, performer = make_user("customer"), make_user("performer")
    order = make_order(customer, performer=performer, status="delivered")
    assert commands.tick(db_url) == 0
    assert "1 delivered orders accepted automatically (unanswered for 0 days)" in capsys.readouterr().out
    assert status_of(db, order) == "done"
    assert exchange_counters(db, customer, performer) == ({"orders_delivered": 0, "orders_done": 1},
                                                          {"orders_delivered": 0, "orders_completed": 1})


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", "3 days", "3651", "٣"])
def test_a_bad_auto_accept_days_is_a_clear_error_and_the_tick_does_nothing(
        db_url, db, make_user, make_order, monkeypatch, capsys, value):
    monkeypatch.setenv("AUTO_ACCEPT_DAYS", value)
    order = make_order(make_user("customer"), performer=make_user("performer"), status="delivered")
    delivered_ago(db, order, "30 days")
    assert commands.tick(db_url) == 2
    err = capsys.readouterr().err
    assert f"AUTO_ACCEPT_DAYS={value!r} is not valid" in err and "from 0" in err
    assert status_of(db, order) == "delivered"
    assert db.execute("SELECT count(*) AS n FROM counter_audit").fetchone()["n"] == 0


def test_python_app_py_tick_exits_2_on_a_bad_auto_accept_days(db_url):
    env = dict(os.environ, DATABASE_URL=db_url, AUTO_ACCEPT_DAYS="three")
    result = subprocess.run([sys.executable, "app.py", "tick"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "AUTO_ACCEPT_DAYS='three' is not valid" in result.stderr


# ---------------------------------------------------------------------------------------------
# Commands with no DATABASE_URL: the project-local server

def run(pgdata, *args, stdin=None, program="app.py"):
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["LOCAL_PGDATA"] = str(pgdata)
    result = subprocess.run([sys.executable, program, *args], cwd=ROOT, env=env, input=stdin,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def local_pgdata():
    tmp = tempfile.mkdtemp(prefix="birzha-local-")
    pgdata = Path(tmp) / "pgdata"
    yield pgdata
    if (pgdata / "PG_VERSION").exists():
        LocalPostgres(pgdata).destroy()
    subprocess.run(["rm", "-rf", tmp], check=True)


def test_every_command_works_on_the_local_server_and_stops_only_what_it_started(local_pgdata, tmp_path):
    backup = str(tmp_path / "local.dump")
    # Not running: each command starts the server, does its work, and stops it again.
    assert "created" in run(local_pgdata, "migrate")
    assert not LocalPostgres.is_running(local_pgdata)
    assert "current" in run(local_pgdata, "initdb")
    assert "Demo data loaded" in run(local_pgdata, "seed-demo", "--if-empty")
    assert "password:" in run(local_pgdata, "create-admin", "ops@example.test")
    assert "consistent" in run(local_pgdata, "audit")
    assert "consistent" in run(local_pgdata, "tick")
    assert "Backup written" in run(local_pgdata, "backup", backup)
    assert not LocalPostgres.is_running(local_pgdata)
    assert (local_pgdata / "secret_key").exists()

    # Running (as under `make run`): the commands use it and leave it running.
    server = LocalPostgres(local_pgdata)
    assert LocalPostgres.is_running(local_pgdata)
    assert "current" in run(local_pgdata, "migrate")
    assert "Restored" in run(local_pgdata, "restore", backup, "--force")
    assert "consistent" in run(local_pgdata, "tick")
    assert re.search(r"^\s*12\s*$", run(local_pgdata, "psql", program="devserver.py",
                                         stdin="SELECT count(*) FROM orders WHERE title <> '';"), re.M)
    statements = run(local_pgdata, "psql", program="devserver.py",
                     stdin="SELECT count(*) > 0 FROM pg_stat_statements;")
    assert re.search(r"^\s*t\s*$", statements, re.M)  # loaded, for a DBA's heaviest statements
    assert LocalPostgres.is_running(local_pgdata)
    server.stop()
