"""Birzha: a freelance order exchange. One Bottle application; PostgreSQL keeps the rules.

This module assembles: the configuration, the route modules merged into one application, and
the operators' command line. The plumbing lives in db.py (pool, named queries) and web.py (the
request: transaction, errors, sessions, forms, templates, language).
"""
import ipaddress
import logging
import os
import secrets
import sys

import accounts
import admin
import api
import basics
import commands
import devserver
import files
import messages
import orders
import web

ROOT = devserver.ROOT


def secret_key():
    """SECRET_KEY from the environment; else the development key that `make run` keeps beside
    the local server's data; else a key of this process alone (forms then break across workers
    and restarts, so production must set SECRET_KEY)."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"].encode()
    path = devserver.local_pgdata() / "secret_key"
    if path.exists():
        return path.read_bytes()
    if __name__ != "__main__":  # serving, not running a command
        logging.getLogger("birzha").warning("SECRET_KEY is not set: using a key of this process only.")
    return secrets.token_hex(32).encode()


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
    "secret_key": secret_key(),
    "cookie_secure": os.environ.get("COOKIE_SECURE", "") == "1",
    "trusted_proxies": trusted_proxies(os.environ.get("TRUSTED_PROXIES", "")),
    "files_dir": str(files.default_dir()),  # FILES_DIR: where the bytes of attached files live
    "support_email": os.environ.get("SUPPORT_EMAIL", "support@birzha.example").strip(),
})
for area in (basics, accounts, orders, admin, api, messages):
    app.merge(area.routes)


# ---------------------------------------------------------------------------------------------
# Command line: python app.py COMMAND (with no DATABASE_URL, on the project-local server)

USAGE = """usage: python app.py COMMAND
  initdb               build the schema on an empty database
  migrate              apply the pending db/migrations (an empty database gets the whole schema)
  seed-demo [--if-empty]  demo people and orders
  create-admin EMAIL   a staff account (or make one staff), with a new password printed
  audit                counter drift; exit 1 if any
  tick                 the periodic work (run it every minute from cron or a systemd timer)
  backup FILE          pg_dump of the database (custom format)
  restore FILE [--force]  pg_restore into an empty database (--force: over this one)
With no DATABASE_URL the commands use the project-local PostgreSQL in .pgdata/, starting it for
the command when `make run` is not running."""

COMMANDS = {
    # name: (arguments taken, function(url, *arguments, **flags), flags allowed)
    "initdb": (0, commands.initdb, {}),
    "migrate": (0, commands.migrate, {}),
    "seed-demo": (0, commands.seed_demo, {"--if-empty": "only_if_empty"}),
    "create-admin": (1, commands.create_admin, {}),
    "audit": (0, commands.audit, {}),
    "tick": (0, commands.tick, {}),
    "backup": (1, commands.backup, {}),
    "restore": (1, commands.restore, {"--force": "force"}),
}


def cli(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.splitlines()[0] + "\n" + USAGE)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command: {name}\n{USAGE}", file=sys.stderr)
        return 2
    count, command, allowed = COMMANDS[name]
    flags = {allowed[arg]: True for arg in rest if arg in allowed}
    arguments = [arg for arg in rest if arg not in allowed]
    if len(arguments) != count or any(arg.startswith("--") for arg in arguments):
        print(USAGE, file=sys.stderr)
        return 2
    with devserver.database_url() as url:
        return command(url, *arguments, **flags)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
