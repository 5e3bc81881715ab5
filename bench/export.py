"""Bench: streaming CSV export of 1,000,000 orders — time and the gunicorn worker's peak memory.

Usage: python bench/export.py   (uses the bench database of bench/feed.py)
"""
import datetime
import hashlib
import secrets
import sys
import threading
import time
import urllib.request

import psutil
import psycopg

from common import Gunicorn, bench_database, machine


def staff_session(url):
    """A staff account and a session token for it, straight in SQL."""
    token = secrets.token_urlsafe(32)
    with psycopg.connect(url) as connection:
        user_id = connection.execute(
            """INSERT INTO users (role, email, password_hash, name, is_staff)
               VALUES ('customer', 'bench-staff@bench.test', 'x', 'Bench staff', true)
               ON CONFLICT (lower(email)) DO UPDATE SET is_staff = true RETURNING id""").fetchone()[0]
        connection.execute("INSERT INTO sessions (token_hash, user_id, expires_at) VALUES (%s, %s, now() + interval '1 hour')",
                           (hashlib.sha256(token.encode()).digest(), user_id))
    return token


def main():
    server, url = bench_database()
    token = staff_session(url)
    print(f"# export bench, {datetime.date.today()}, {machine()}\n")
    print("| export | rows | MB | seconds | worker RSS before | worker RSS peak |\n|---|---|---|---|---|---|")
    with Gunicorn(url, workers=1) as web:
        worker = psutil.Process(web.worker_pids()[0])
        for path in ("/admin/export/orders.csv", "/admin/export/users.csv"):
            before = worker.memory_info().rss
            peak = [before]
            done = threading.Event()

            def watch():
                while not done.is_set():
                    peak[0] = max(peak[0], worker.memory_info().rss)
                    time.sleep(0.05)
            watcher = threading.Thread(target=watch)
            watcher.start()
            started = time.monotonic()
            request = urllib.request.Request(web.base + path, headers={"Cookie": f"birzha_session={token}"})
            size = rows = 0
            with urllib.request.urlopen(request, timeout=600) as body:
                for line in body:
                    size += len(line)
                    rows += 1
            elapsed = time.monotonic() - started
            done.set()
            watcher.join()
            print(f"| {path} | {rows - 1} lines | {size / 2**20:.0f} | {elapsed:.1f} | "
                  f"{before / 2**20:.0f} MiB | {peak[0] / 2**20:.0f} MiB |")
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
