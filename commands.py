"""The operators' commands behind `python app.py …`. Each is given the database URL (app.py finds
it: DATABASE_URL, or the project-local server) and returns the process's exit code."""
import os
import re
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

import db
import demo
import files
import mail
from devserver import postgres_program
from web import hash_password


def connect(url):
    return psycopg.connect(url, row_factory=dict_row)


def initdb(url):
    print({"created": "Schema created.", "current": "Schema is current."}[db.apply_schema(url)])
    return 0


def migrate(url):
    db.migrate(url)
    return 0


def seed_demo(url, only_if_empty=False):
    with connect(url) as connection:
        return demo.seed(connection, only_if_empty=only_if_empty)


def create_admin(url, email):
    """Creates a staff account (or makes an existing one staff) and prints a new password."""
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        print("That does not look like an email address.", file=sys.stderr)
        return 2
    password = secrets.token_urlsafe(12)
    params = {"email": email.lower(), "password_hash": hash_password(password)}
    with connect(url) as connection:
        row = connection.execute(db.Q["user_make_staff"], params).fetchone()
        if row is None:
            row = connection.execute(db.Q["user_create"], dict(params, role="customer", name="Admin")).fetchone()
            connection.execute(db.Q["user_make_staff"], params)
    print(f"Staff account {email} (id {row['id']}), password: {password}")
    return 0


def audit(url):
    """Prints every drifted counter; exit 1 if any."""
    with connect(url) as connection:
        drift = connection.execute(db.Q["counters_audit"]).fetchall()
    for row in drift:
        print(f"{row['counter']} #{row['subject_id']}: stored {row['stored']}, actual {row['actual']}")
    print("counters: " + ("consistent" if not drift else f"{len(drift)} drifted"))
    return 1 if drift else 0


AUTO_ACCEPT_DAYS_DEFAULT = 3
AUTO_ACCEPT_DAYS_MAX = 3650


def auto_accept_days(text):
    """AUTO_ACCEPT_DAYS: whole days a delivery waits for the customer's answer before the tick
    accepts it (0: at the next tick); unset or empty is the default. None when it is not valid."""
    text = (text or "").strip()
    if not text:
        return AUTO_ACCEPT_DAYS_DEFAULT
    if not re.fullmatch(r"[0-9]{1,4}", text) or int(text) > AUTO_ACCEPT_DAYS_MAX:
        return None
    return int(text)


def tick(url):
    """The periodic work. The housekeeping runs in one transaction under an advisory lock: a tick
    that finds another one running skips it, so any number of machines may run it from cron. It
    accepts the deliveries left unanswered for AUTO_ACCEPT_DAYS (the database's orders_auto_accept),
    purges (sessions, sign-in attempts, reset links, old mail, idempotency keys), and stores the
    counter audit. Then the due mail is sent, by every tick at once if need be: each mail is
    claimed with FOR UPDATE SKIP LOCKED and marked sent in the claiming transaction (mail.py), so
    two ticks share the outbox and never send one mail twice."""
    days = auto_accept_days(os.environ.get("AUTO_ACCEPT_DAYS"))
    if days is None:
        print(f"AUTO_ACCEPT_DAYS={os.environ.get('AUTO_ACCEPT_DAYS')!r} is not valid: give a whole number "
              f"of days from 0 (accept at the next tick) to {AUTO_ACCEPT_DAYS_MAX}; unset, it is "
              f"{AUTO_ACCEPT_DAYS_DEFAULT}.", file=sys.stderr)
        return 2
    housekeeping(url, days)
    counts = mail.send_due(url)
    waiting = f", {counts['retry']} to try again later" if counts["retry"] else ""
    print(f"tick: mail: {counts['sent']} sent, {counts['failed']} given up{waiting}.")
    return 0


def housekeeping(url, days):
    with connect(url) as connection:
        if not connection.execute(db.Q["tick_lock"]).fetchone()["locked"]:
            print("tick: another tick is running; nothing to do.")
            return
        accepted = connection.execute(db.Q["orders_auto_accept"], {"days": days}).fetchone()["accepted"]
        sessions = connection.execute(db.Q["sessions_delete_expired"]).rowcount
        attempts = connection.execute(db.Q["login_attempts_delete_old"]).rowcount
        connection.execute(db.Q["password_resets_purge"])
        connection.execute(db.Q["mail_outbox_purge"])
        keys = connection.execute(db.Q["api_idempotency_purge"]).rowcount
        drifted = connection.execute(db.Q["counter_audit_refresh"]).fetchone()["drifted"]
        connection.execute(db.Q["dashboard_figures_refresh"])
    print(f"tick: {accepted} delivered orders accepted automatically (unanswered for {days} days); "
          f"{sessions} expired sessions, {attempts} old sign-in attempts and {keys} idempotency keys "
          f"past 24 hours purged; "
          f"counters: {'consistent' if not drifted else f'{drifted} drifted'}.")


def files_archive(path):
    """Where the files of a backup go: FILE.files.tar beside the dump FILE."""
    return Path(str(path) + ".files.tar")


def backup(url, path):
    """A pg_dump of the whole database in the custom format, and beside it FILE.files.tar with
    the attached files of FILES_DIR (restore with `restore`). The dump is taken first: a file
    attached while the archive is written is in the archive or not, but every file the dump
    describes is in it (files are only ever added)."""
    subprocess.run([postgres_program("pg_dump"), "--format=custom", "--no-owner", "--file", path, url],
                   check=True)
    directory = files.default_dir()
    count = 0
    with tarfile.open(files_archive(path), "w") as archive:
        if directory.exists():
            for blob in sorted(directory.glob("[0-9a-f][0-9a-f]/*")):
                if blob.is_file() and re.fullmatch(r"[0-9a-f]{64}", blob.name):
                    archive.add(blob, arcname=f"{blob.parent.name}/{blob.name}")
                    count += 1
    print(f"Backup written to {path} and {count} attached files to {files_archive(path)}.")
    return 0


def restore(url, path, force=False):
    """pg_restore of a backup into an empty database; with `force`, into a Birzha database whose
    objects the backup's replace (pg_restore --clean). The attached files of FILE.files.tar, if
    there is one, are put back into FILES_DIR (files already there are kept)."""
    with connect(url) as connection:
        empty = db.schema_version(connection) == 0
    if not empty and not force:
        print("This database is not empty: restore refuses to mix a backup into it. Point "
              "DATABASE_URL at an empty database, or add --force to replace what the backup holds.",
              file=sys.stderr)
        return 2
    clean = [] if empty else ["--clean", "--if-exists"]
    subprocess.run([postgres_program("pg_restore"), "--no-owner", "--exit-on-error", "--single-transaction",
                    *clean, "--dbname", url, path], check=True)
    restored = restore_files(files_archive(path), files.default_dir())
    print(f"Restored {path}" + (f" and {restored} attached files." if restored is not None else "."))
    return 0


def restore_files(archive_path, directory):
    """Puts the files of a backup's archive back; None when there is no archive. Only regular
    files named as SHA-256 blobs are read, and only their bytes: each is stored as an upload is
    (files.store_stream, under the SHA-256 of what it holds), so nothing lands outside FILES_DIR
    and no mode, owner or link of the archive's is taken, whatever the archive says (tarfile's own
    extraction filters need Python 3.11.4). A file whose bytes are not those its name says is
    not counted."""
    if not archive_path.exists():
        return None
    count = 0
    with tarfile.open(archive_path) as archive:
        for member in archive.getmembers():
            if not (member.isfile() and re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{64}", member.name)
                    and member.name[:2] == member.name[3:5]):
                continue
            sha256 = member.name[3:]
            if not files.blob_path(directory, sha256).exists():
                with archive.extractfile(member) as stream:
                    if files.store_stream(stream, directory) != sha256:
                        print(f"restore: {member.name} in {archive_path} does not hold the bytes its name "
                              "says: not restored under that name.", file=sys.stderr)
                        continue
            count += 1
    return count
