"""Birzha: a freelance order exchange. One Bottle application; PostgreSQL keeps the rules.

This module assembles: the configuration, the route modules merged into one application, and
the operators' command line. The plumbing lives in db.py (pool, named queries) and web.py (the
request: transaction, errors, sessions, forms, templates, language).
"""
import ipaddress
import os
import re
import secrets
import sys
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

import accounts
import admin
import api
import basics
import db
import demo
import orders
import web

ROOT = Path(__file__).resolve().parent


def development_secret_key():
    """SECRET_KEY from the environment, else a development key kept in .pgdata/ (never committed)."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"].encode()
    path = ROOT / ".pgdata" / "secret_key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(exist_ok=True)
        key = secrets.token_hex(32).encode()
        path.write_bytes(key)
        path.chmod(0o600)
        return key


def trusted_proxies(text):
    """TRUSTED_PROXIES: comma-separated addresses or CIDR networks of the reverse proxies whose
    X-Forwarded-For is believed (see web.client_address); empty trusts none."""
    networks = []
    for item in text.split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise SystemExit(f"TRUSTED_PROXIES: {item.strip()!r} is not an address or a network.") from None
    return tuple(networks)


app = web.Birzha()
app.config.update({
    "db.url": os.environ.get("DATABASE_URL", ""),
    "secret_key": development_secret_key(),
    "cookie_secure": os.environ.get("COOKIE_SECURE", "") == "1",
    "trusted_proxies": trusted_proxies(os.environ.get("TRUSTED_PROXIES", "")),
})
for area in (basics, accounts, orders, admin, api):
    app.merge(area.routes)


# ---------------------------------------------------------------------------------------------
# Command line: python app.py initdb | seed-demo | create-admin EMAIL | audit

def cli(argv):
    url = os.environ.get("DATABASE_URL")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.splitlines()[0])
        print("usage: python app.py initdb | seed-demo [--if-empty] | create-admin EMAIL | audit")
        return 0 if argv else 2
    if not url:
        print("Set DATABASE_URL (make run does it for you).", file=sys.stderr)
        return 2
    command = argv[0]
    if command == "initdb":
        print({"created": "Schema created.", "current": "Schema is current."}[db.apply_schema(url)])
        return 0
    with psycopg.connect(url, row_factory=dict_row) as connection:
        if command == "seed-demo":
            return demo.seed(connection, only_if_empty="--if-empty" in argv)
        if command == "create-admin" and len(argv) == 2:
            return create_admin(connection, argv[1])
        if command == "audit":
            drift = connection.execute(db.Q["counters_audit"]).fetchall()
            for row in drift:
                print(f"{row['counter']} #{row['subject_id']}: stored {row['stored']}, actual {row['actual']}")
            print("counters: " + ("consistent" if not drift else f"{len(drift)} drifted"))
            return 1 if drift else 0
    print(f"unknown command: {' '.join(argv)}", file=sys.stderr)
    return 2


def create_admin(connection, email):
    """Creates a staff account (or makes an existing one staff) and prints a new password."""
    password = secrets.token_urlsafe(12)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        print("That does not look like an email address.", file=sys.stderr)
        return 2
    params = {"email": email.lower(), "password_hash": web.hash_password(password)}
    row = connection.execute(db.Q["user_make_staff"], params).fetchone()
    if row is None:
        row = connection.execute(db.Q["user_create"], dict(params, role="customer", name="Admin")).fetchone()
        connection.execute(db.Q["user_make_staff"], params)
    connection.commit()
    print(f"Staff account {email} (id {row['id']}), password: {password}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
