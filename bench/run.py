"""`make bench`: every scenario of issue 13 against gunicorn (2 sync workers, as the README
recommends for production), each right after a run of the /healthz floor, in one table.

Builds (or reuses) the bench data set in bench/out/pgdata (1,000,000 orders, 100,000 users: see
seed.py), starts gunicorn on 127.0.0.1, and for each scenario runs `wrk -t2 -cCONNS` (reads) or
the write mix over the API (wrk with writes.lua: create, take, deliver, accept with a rating, in
rounds of S seconds until at least --writes writes went through; the search is measured again
right after them). CPU per request is read from /proc (utime + stime) of gunicorn's processes and
of PostgreSQL's.
Usage: python bench/run.py [--orders N] [--seconds S] [--floor-seconds S] [--connections C] [--writes N] [--only WORD]
"""
import argparse
import datetime
import hashlib
import os
import re
import secrets
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
from psycopg.rows import dict_row, tuple_row

from common import Gunicorn, OUT, bench_database, machine

import web  # noqa: E402  (common puts the app on the path)

PORT = 8182


# ---------------------------------------------------------------------------------------------
# Accounts and the pages' parameters

def new_session(connection, user_id):
    """A new session of the user, its token made as signing in makes one (it names the role)."""
    (role,) = connection.cursor(row_factory=tuple_row).execute("SELECT role FROM users WHERE id = %s", (user_id,)).fetchone()
    token = web.new_session_token(role)
    connection.execute("INSERT INTO sessions (token_hash, user_id, expires_at) VALUES (%s, %s, now() + interval '1 day')",
                       (web.token_hash(token), user_id))
    return token


def session_for(connection, user_id):
    """The cookie of a new session of the user."""
    return f"{web.SESSION_COOKIE}={new_session(connection, user_id)}"


def api_token_for(connection, user_id):
    """A new API token of the user, in place of the one an earlier run made (ten at most each)."""
    token = "bz_" + secrets.token_urlsafe(24)
    connection.execute("DELETE FROM api_tokens WHERE user_id = %s AND label = 'bench'", (user_id,))
    connection.execute("INSERT INTO api_tokens (user_id, token_hash, label) VALUES (%s, %s, 'bench')",
                       (user_id, hashlib.sha256(token.encode()).digest()))
    return token


def prepare(url, writers):
    """Sessions, tokens and the ids the scenarios need, read from the data set."""
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as c:
        one = lambda sql, *a: c.execute(sql, a).fetchone()  # noqa: E731
        staff = one("""INSERT INTO users (role, email, password_hash, name, is_staff)
                       VALUES ('customer', 'bench-staff@bench.test', 'x', 'Bench staff', true)
                       ON CONFLICT (lower(email)) DO UPDATE SET is_staff = true RETURNING id""")["id"]
        # 1,000 pages deep, or as deep as a small data set goes
        deep = one("""SELECT created_at, id FROM orders WHERE status = 'open'
                      ORDER BY created_at DESC, id DESC
                      OFFSET least(19999, (SELECT count(*) FROM orders WHERE status = 'open') - 21) LIMIT 1""")
        catalogue_deep = one("""SELECT s.performer_id AS id FROM performer_stats s JOIN users u ON u.id = s.performer_id
                                WHERE NOT u.is_blocked
                                ORDER BY s.rating_avg DESC NULLS LAST, s.orders_completed DESC, s.performer_id
                                OFFSET least(1979, (SELECT count(*) FROM performer_stats) - 21) LIMIT 1""")
        order = one("""SELECT id FROM orders WHERE status = 'done' AND mode = 'offers' AND review IS NOT NULL
                       ORDER BY id LIMIT 1""")["id"]
        # writers: pairs of a customer and a performer with API tokens, none of them the heavy accounts
        people = c.execute("""(SELECT id, role::text FROM users WHERE role = 'customer' AND NOT is_blocked
                                AND NOT is_staff ORDER BY id DESC LIMIT %(n)s)
                              UNION ALL
                              (SELECT id, role::text FROM users WHERE role = 'performer' AND NOT is_blocked
                               ORDER BY id DESC LIMIT %(n)s)""", {"n": writers}).fetchall()
        customers = [p["id"] for p in people if p["role"] == "customer"]
        performers = [p["id"] for p in people if p["role"] == "performer"]
        # A round of the write mix ends by time, in the middle of some orders: those left open would
        # pile up at the top of the feed run after run (638 after a day's runs, a third of the
        # search's window of 2,000). Their customers cancel them, as the app's order_cancel would.
        c.execute("""UPDATE orders SET status = 'cancelled', cancel_reason = 'left open by a bench write mix'
                     WHERE customer_id = ANY(%s) AND status = 'open' AND title LIKE 'Bench write %%'""",
                  (customers,))
        # the heavy accounts of the data set, not a writer that earlier runs' write mixes made heavy
        writer_ids = customers + performers
        customer = one("""SELECT customer_id AS id, count(*) AS n FROM orders WHERE customer_id <> ALL(%s)
                          GROUP BY 1 ORDER BY count(*) DESC LIMIT 1""", writer_ids)
        performer = one("""SELECT performer_id AS id, count(*) AS n FROM orders WHERE performer_id IS NOT NULL
                           AND performer_id <> ALL(%s) GROUP BY 1 ORDER BY count(*) DESC LIMIT 1""", writer_ids)
        reviewed = one("""SELECT performer_id AS id, count(*) AS n FROM orders WHERE rating IS NOT NULL
                          AND performer_id <> ALL(%s) GROUP BY 1 ORDER BY count(*) DESC LIMIT 1""", writer_ids)
        pairs = [(api_token_for(c, cu), api_token_for(c, pe)) for cu, pe in zip(customers, performers)]
        signed_in(c)
        conversations = inbox_for(c, customer["id"], INBOX_CONVERSATIONS)
        cursor = quote(f"{deep['created_at'].isoformat()}_{deep['id']}")
        return {
            "staff": session_for(c, staff),
            "customer": session_for(c, customer["id"]), "customer_orders": customer["n"],
            "conversations": conversations,
            "performer": session_for(c, performer["id"]), "performer_orders": performer["n"],
            "reviewed": reviewed["id"], "reviews": reviewed["n"],
            "deep_cursor": cursor, "catalogue_after": catalogue_deep["id"], "order": order,
            "pairs": pairs,
        }


INBOX_CONVERSATIONS = 200
SIGNED_IN_SHARE = 5  # one user in five has a session


def signed_in(connection):
    """Sessions for one user in five, as a site of this size has, refreshed when they near their
    end. With the few hundred that the runs' own sign-ins leave, PostgreSQL's plan reads the
    table whole rather than its primary key: 22 µs a signed-in request instead of a few (mean
    execution time in pg_stat_statements under load, eleventh session)."""
    connection.execute(f"""INSERT INTO sessions (token_hash, user_id, expires_at)
                           SELECT sha256(('bench-session-' || u.id)::bytea), u.id, now() + interval '14 days'
                           FROM users u
                           WHERE u.id % {SIGNED_IN_SHARE} = 0
                             AND NOT u.is_blocked
                           ON CONFLICT (token_hash) DO UPDATE
                           SET expires_at = EXCLUDED.expires_at
                           WHERE sessions.expires_at < now() + interval '7 days'""")
    connection.execute("ANALYZE sessions")


def inbox_for(connection, customer_id, wanted):
    """Gives the customer `wanted` conversations (each a performer's message on one of the
    customer's taken orders), through the app's own queries; returns how many they have."""
    import db
    have = connection.execute("SELECT count(*) AS n FROM conversations WHERE customer_id = %s",
                              (customer_id,)).fetchone()["n"]
    orders = connection.execute(
        """SELECT o.id, o.performer_id FROM orders o
           WHERE o.customer_id = %s AND o.performer_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.order_id = o.id)
           ORDER BY o.id LIMIT %s""", (customer_id, max(0, wanted - have))).fetchall()
    for order in orders:
        talk = connection.execute(db.Q["conversation_open"], {
            "order_id": order["id"], "performer_id": order["performer_id"],
            "sender_id": order["performer_id"]}).fetchone()
        connection.execute(db.Q["message_send"], {"conversation_id": talk["id"], "sender_id": order["performer_id"],
                                                  "body": f"Вопрос по заказу {order['id']} / a question"})
    return have + len(orders)


# ---------------------------------------------------------------------------------------------
# Measuring

def cpu_seconds(pids):
    total = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total[pid] = times.user + times.system
        except psutil.Error:
            pass
    return total


class Cpu:
    """CPU seconds of gunicorn (master and workers) and of PostgreSQL (postmaster and children)."""

    def __init__(self, gunicorn_pid):
        self.gunicorn = psutil.Process(gunicorn_pid)
        with open(OUT / "pgdata" / "postmaster.pid") as pid_file:
            self.postgres = psutil.Process(int(pid_file.readline()))

    def snapshot(self):
        app = [self.gunicorn.pid] + [p.pid for p in self.gunicorn.children(recursive=True)]
        pg = [self.postgres.pid] + [p.pid for p in self.postgres.children(recursive=True)]
        return cpu_seconds(app), cpu_seconds(pg)

    @staticmethod
    def spent(before, after):
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def ms(text):
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url, seconds, connections, headers=()):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for header in headers:
        command += ["-H", header]
    return wrk_result(subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout)


def wrk_result(out):
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": requests,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
            "p99": ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
            "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, socket.groups())) if socket else 0)}


def write_mix(url, pairs, seconds, writes):
    """The write mix (bench/writes.lua): one wrk thread and connection per pair of a customer and a
    performer, each walking its orders through create, take, deliver and accept over the API; in
    rounds of `seconds` until at least `writes` went through (wrk stops by time, not by count).
    One result for them all: req/s over their time, the median p50 and the highest p99."""
    tokens = ";".join(f"{customer},{performer}" for customer, performer in pairs)
    env = dict(os.environ, BENCH_WRITE_TOKENS=tokens)
    command = ["wrk", f"-t{len(pairs)}", f"-c{len(pairs)}", f"-d{seconds}s", "--latency", "--timeout", "5s",
               "-s", str(Path(__file__).with_name("writes.lua")), url]
    rounds = []
    while not rounds or sum(r["requests"] - r["errors"] for r in rounds) < writes:
        rounds.append(wrk_result(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout))
    requests = sum(r["requests"] for r in rounds)
    return {"requests": requests, "rps": requests / (seconds * len(rounds)), "rounds": len(rounds),
            "p50": statistics.median(r["p50"] for r in rounds), "p99": max(r["p99"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds)}


# ---------------------------------------------------------------------------------------------

def scenarios(p):
    logo = quote("логотип")
    anonymous = ()
    return [
        ("the floor itself: /healthz", "/healthz", anonymous),
        ("feed, first page", "/orders", anonymous),
        ("feed by category", "/orders?category=design", anonymous),
        ("feed by budget", "/orders?sort=budget", anonymous),
        ("feed 1,000 pages deep", f"/orders?after={p['deep_cursor']}", anonymous),
        ("search q=логотип", f"/orders?q={logo}", anonymous),
        ("order page", f"/orders/{p['order']}", anonymous),
        ("catalogue", "/performers", anonymous),
        ("catalogue, 100th page", f"/performers?after={p['catalogue_after']}", anonymous),
        (f"public profile ({p['reviews']} reviews)", f"/performers/{p['reviewed']}", anonymous),
        (f"customer cabinet ({p['customer_orders']} orders)", "/cabinet", ("Cookie: " + p["customer"],)),
        (f"performer cabinet ({p['performer_orders']} orders)", "/cabinet", ("Cookie: " + p["performer"],)),
        (f"inbox ({p['conversations']} conversations)", "/messages", ("Cookie: " + p["customer"],)),
        ("admin dashboard", "/admin", ("Cookie: " + p["staff"],)),
        ("write mix over the API", None, None),
        ("search q=логотип right after the write mix", f"/orders?q={logo}", anonymous),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=int(os.environ.get("BENCH_ORDERS", 1_000_000)))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--floor-seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--writes", type=int, default=20_000,
                        help="the write mix goes on until this many writes (issue 13: the search right after 20,000)")
    parser.add_argument("--only")
    args = parser.parse_args()
    _server, url = bench_database(args.orders)
    params = prepare(url, args.writers)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE orders")  # the state a bench starts from: autovacuum caught up
        counts = c.execute("SELECT count(*), count(*) FILTER (WHERE status = 'open') FROM orders").fetchone()
        users = c.execute("SELECT count(*) FROM users").fetchone()[0]
    print(f"# make bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"{counts[0]:,} orders ({counts[1]:,} open), {users:,} users; gunicorn 2 sync workers; "
          f"wrk -t2 -c{args.connections} {args.seconds} s per scenario, /healthz {args.floor_seconds} s before each\n")
    rows = []
    with Gunicorn(url, port=PORT, workers=2) as web:
        cpu = Cpu(web.process.pid)
        wrote = False  # the scenario just run was the write mix
        for label, path, headers in scenarios(params):
            if args.only and args.only not in label:
                continue
            # the scenario after the write mix comes right after the writes: its floor is read after it
            right_after, wrote = wrote, path is None
            if not right_after:
                floor = wrk(web.base + "/healthz", args.floor_seconds, args.connections)
            before = cpu.snapshot()
            if path is None:
                with psycopg.connect(url) as c:
                    written_before = c.execute("SELECT count(*) FROM order_history").fetchone()[0]
                result = write_mix(web.base + "/", params["pairs"], args.seconds, args.writes)
                with psycopg.connect(url) as c:
                    written = c.execute("SELECT count(*) FROM order_history").fetchone()[0] - written_before
                    drift = c.execute("SELECT count(*) FROM audit_counters()").fetchone()[0]
                done, spent = result["requests"] - result["errors"], args.seconds * result["rounds"]
                label += (f" ({done:,} writes in {spent} s, {done / spent:.0f}/s; {written:,} order_history rows; "
                          f"audit_counters(): {drift} rows)")
            else:
                result = wrk(web.base + path, args.seconds, args.connections, headers)
            after = cpu.snapshot()
            if right_after:
                floor = wrk(web.base + "/healthz", args.floor_seconds, args.connections)
            app_ms = Cpu.spent(before[0], after[0]) * 1000 / max(result["requests"], 1)
            pg_ms = Cpu.spent(before[1], after[1]) * 1000 / max(result["requests"], 1)
            rss = [round(psutil.Process(pid).memory_info().rss / 2**20) for pid in web.worker_pids()]
            row = (f"| {label} | {result['rps']:.0f} | {result['p50']:.1f} | {result['p99']:.1f} | "
                   f"{result['errors']} | {floor['rps']:.0f} | {result['rps'] / max(floor['rps'], 1):.0%} | "
                   f"{app_ms:.2f} + {pg_ms:.2f} | {'/'.join(map(str, rss))} |")
            if not rows:
                print("| scenario | req/s | p50 ms | p99 ms | errors | /healthz req/s just before (after, for the search after the writes) | share of the floor "
                      "| CPU ms per request (app + PostgreSQL) | worker RSS MiB |")
                print("|---|---|---|---|---|---|---|---|---|")
            rows.append((label, result["rps"], floor["rps"]))
            print(row, flush=True)
    if not rows:
        return f"no scenario's name contains {args.only!r}"
    # A floor read for 5 s moves by ±10% from one reading to the next: against their median, a
    # scenario's share does not move with the one reading taken just before it.
    median = statistics.median(floor for _label, _rps, floor in rows)
    print(f"\n| scenario | share of the run's median floor ({median:.0f} req/s, of {len(rows)} readings) |")
    print("|---|---|")
    for label, rps, _floor in rows:
        print(f"| {label.split(' (')[0] if label.startswith('write mix') else label} | {rps / median:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
