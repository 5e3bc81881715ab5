"""The operator commands: `python app.py create-admin EMAIL` and `python app.py audit`."""
import os
import re
import subprocess
import sys
from pathlib import Path

import app as birzha
import web
from conftest import PASSWORD

ROOT = Path(birzha.__file__).parent


def run_app(db_url, *args):
    env = dict(os.environ, DATABASE_URL=db_url)
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def printed_password(result):
    assert result.returncode == 0, result.stderr
    return re.search(r"password: (\S+)$", result.stdout.strip()).group(1)


def test_create_admin_makes_a_staff_account_whose_printed_password_logs_in(db_url, db, client):
    password = printed_password(run_app(db_url, "create-admin", "x@y.test"))
    account = db.execute("SELECT * FROM users WHERE email = 'x@y.test'").fetchone()
    assert account["is_staff"] and not account["is_blocked"]
    assert web.check_password(password, account["password_hash"])
    # and it opens the admin area through the ordinary login form
    login = client.post_form("/login", {"email": "x@y.test", "password": password})
    assert login.status_int == 303
    assert client.get("/admin").status_int == 200


def test_create_admin_makes_an_existing_account_staff_with_a_new_password(db_url, db, make_user, client, sign_in):
    vera = make_user("performer", email="vera@example.test")
    sign_in(client, vera)
    password = printed_password(run_app(db_url, "create-admin", "VERA@example.test"))
    account = db.execute("SELECT * FROM users WHERE id = %s", (vera["id"],)).fetchone()
    assert account["is_staff"] and account["role"] == "performer"
    assert web.check_password(password, account["password_hash"])
    assert not web.check_password(PASSWORD, account["password_hash"])
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1
    # the new password ends the sessions opened with the old one
    assert db.execute("SELECT count(*) AS n FROM sessions WHERE user_id = %s", (vera["id"],)).fetchone()["n"] == 0


def test_create_admin_refuses_what_is_not_an_email(db_url, db):
    result = run_app(db_url, "create-admin", "not-an-email")
    assert result.returncode == 2 and "email" in result.stderr
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 0


def test_audit_exits_0_when_consistent_and_1_with_the_drift_listed(db_url, db, make_user, make_order):
    customer = make_user("customer")
    performer = make_user("performer")
    make_order(customer, performer=performer, status="done", rating=8)
    clean = run_app(db_url, "audit")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "consistent" in clean.stdout

    db.execute("UPDATE performer_stats SET orders_completed = orders_completed + 5")
    drifted = run_app(db_url, "audit")
    assert drifted.returncode == 1
    assert f"performer.orders_completed #{performer['id']}: stored 6, actual 1" in drifted.stdout

    db.execute("SELECT recalc_counters()")
    assert run_app(db_url, "audit").returncode == 0


def test_python_app_py_loads_the_application_once(db_url):
    """`python app.py …` runs the module as __main__; nothing may import it again as `app`
    (that built a second application, a second pool and bcrypt's dummy hash twice)."""
    env = dict(os.environ, DATABASE_URL=db_url)
    result = subprocess.run([sys.executable, "-X", "importtime", "app.py", "audit"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "web" in imported and "app" not in imported
