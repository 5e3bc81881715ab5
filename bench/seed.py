"""Loads a large data set (default 1,000,000 orders) into a bench database, quickly.

Triggers are switched off for the bulk insert (session_replication_role = replica) and the
counters are rebuilt afterwards by recalc_counters(), so the data is as consistent as the app's.
Usage: python bench/seed.py DATABASE_URL [ORDERS]
"""
import sys
import time

import psycopg

USERS_SQL = """
INSERT INTO users (role, email, password_hash, name, created_at)
SELECT CASE WHEN g %% 4 = 0 THEN 'performer' ELSE 'customer' END::user_role,
       'bench' || g || '@bench.test',
       %(hash)s,
       'Bench user ' || g,
       now() - make_interval(days => g %% 365)
FROM generate_series(1, %(users)s) AS g
"""

ORDERS_SQL = """
WITH ids AS (
    SELECT array_agg(id) FILTER (WHERE role = 'customer') AS customers,
           array_agg(id) FILTER (WHERE role = 'performer') AS performers
    FROM users
), cats AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM categories
), rows AS (
    SELECT g,
           (ARRAY['open', 'open', 'in_progress', 'done', 'done', 'cancelled'])[1 + g %% 6]::order_status AS status,
           now() - make_interval(secs => g * 30) AS created
    FROM generate_series(1, %(orders)s) AS g
)
INSERT INTO orders (customer_id, performer_id, category_id, title, description, budget, status, rating,
                    created_at, updated_at, taken_at, completed_at, cancelled_at, rated_at)
SELECT ids.customers[1 + r.g %% array_length(ids.customers, 1)],
       CASE WHEN r.status IN ('in_progress', 'done') THEN ids.performers[1 + (r.g / 7) %% array_length(ids.performers, 1)] END,
       cats.ids[1 + (r.g / 3) %% array_length(cats.ids, 1)],
       (ARRAY['Логотип для', 'Сайт для', 'Перевод текста для', 'SEO audit for', 'Landing page for',
              'Telegram bot for', 'Монтаж видео для'])[1 + r.g %% 7] || ' ' ||
       (ARRAY['кофейни', 'bakery', 'магазина', 'startup', 'школы', 'clinic', 'салона'])[1 + (r.g / 7) %% 7] || ' #' || r.g,
       'Описание заказа номер ' || r.g || '. Detailed description of the work to be done, order ' || r.g,
       (100 + (r.g::bigint * 7919) %% 200000)::int,
       r.status,
       CASE WHEN r.status = 'done' AND r.g %% 3 > 0 THEN 1 + r.g %% 10 END,
       r.created, r.created,
       CASE WHEN r.status IN ('in_progress', 'done') THEN r.created + interval '1 hour' END,
       CASE WHEN r.status = 'done' THEN r.created + interval '2 days' END,
       CASE WHEN r.status = 'cancelled' THEN r.created + interval '1 day' END,
       CASE WHEN r.status = 'done' AND r.g %% 3 > 0 THEN r.created + interval '3 days' END
FROM rows r, ids, cats
"""


def seed(url, orders=1_000_000, users=20_000):
    import bcrypt
    started = time.monotonic()
    with psycopg.connect(url) as connection:
        if connection.execute("SELECT count(*) FROM orders").fetchone()[0] >= orders:
            print(f"bench data: already {orders} orders")
            return
        password_hash = bcrypt.hashpw(b"bench-password", bcrypt.gensalt()).decode()
        connection.execute("SET session_replication_role = replica")
        connection.execute(USERS_SQL, {"hash": password_hash, "users": users})
        connection.execute("""INSERT INTO customer_stats (customer_id) SELECT id FROM users WHERE role = 'customer'
                              ON CONFLICT DO NOTHING""")
        connection.execute("""INSERT INTO performer_stats (performer_id) SELECT id FROM users WHERE role = 'performer'
                              ON CONFLICT DO NOTHING""")
        connection.execute(ORDERS_SQL, {"orders": orders})
        connection.execute("SET session_replication_role = DEFAULT")
        connection.execute("SELECT recalc_counters()")
        connection.commit()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    print(f"bench data: {orders} orders, {users} users in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    seed(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000)
