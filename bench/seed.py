"""Loads a large data set (default 1,000,000 orders, 100,000 users) into a bench database, quickly.

The mix: every status (open, in_progress, delivered, disputed, done, cancelled), a quarter of
the orders in offers mode (active offers on the open ones, an accepted and a declined offer on the
ones that found a performer), ratings spread over all of 1..10 with reviews, deliveries of the
delivered and disputed orders, Russian and English titles, descriptions and names, a few blocked
customers, performers working in two categories each. A few accounts are heavy on purpose, for
the bench's cabinet and profile pages: the first customer places the first 500 orders and the
first performer does about 2,000 of the first orders.

Triggers are switched off for the bulk insert (session_replication_role = replica) and the
counters are rebuilt afterwards by recalc_counters(), so every counter is exact.
Usage: python bench/seed.py DATABASE_URL [ORDERS [USERS]]
"""
import sys
import time

import psycopg

USERS_SQL = """
INSERT INTO users (role, email, password_hash, name, bio, is_blocked, created_at)
SELECT CASE WHEN g %% 4 = 0 THEN 'performer' ELSE 'customer' END::user_role,
       'bench' || g || '@bench.test',
       %(hash)s,
       CASE WHEN g %% 2 = 0 THEN 'Исполнитель ' || g ELSE 'Bench user ' || g END,
       CASE WHEN g %% 4 = 0 THEN 'Делаю логотипы и сайты. I build landing pages and bots.' ELSE '' END,
       g %% 4 <> 0 AND g %% 997 = 0,
       now() - make_interval(days => g %% 365)
FROM generate_series(1, %(users)s) AS g
"""

# status by slot of 12: open ×4, in_progress, delivered, disputed, done ×4, cancelled
ORDERS_SQL = """
WITH ids AS (
    SELECT array_agg(id ORDER BY id) FILTER (WHERE role = 'customer' AND NOT is_blocked AND NOT is_staff) AS customers,
           array_agg(id ORDER BY id) FILTER (WHERE role = 'performer') AS performers
    FROM users
), cats AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM categories WHERE NOT is_hidden
), rows AS (
    SELECT g,
           (ARRAY['open', 'in_progress', 'open', 'done', 'delivered', 'done', 'open', 'disputed',
                  'done', 'open', 'cancelled', 'done'])[1 + g %% 12]::order_status AS status,
           now() - make_interval(secs => g * 30) AS created,
           CASE WHEN (g / 12) %% 4 = 1 THEN 'offers' ELSE 'take' END::order_mode AS mode
    FROM generate_series(1, %(orders)s) AS g
), people AS (
    SELECT r.*,
           CASE WHEN r.g <= 500 THEN ids.customers[1]
                ELSE ids.customers[2 + r.g %% (array_length(ids.customers, 1) - 1)] END AS customer,
           CASE WHEN r.status IN ('open', 'cancelled') THEN NULL
                WHEN r.g <= 3430 THEN ids.performers[1]
                ELSE ids.performers[2 + (r.g / 7) %% (array_length(ids.performers, 1) - 1)] END AS performer,
           cats.ids[1 + (r.g / 3) %% array_length(cats.ids, 1)] AS category,
           (100 + (r.g::bigint * 7919) %% 200000)::int AS budget,
           CASE WHEN r.status = 'done' AND r.g %% 5 > 0 THEN 1 + (r.g / 12) %% 10 END AS rating
    FROM rows r, ids, cats
)
INSERT INTO orders (customer_id, performer_id, category_id, title, description, budget, status, rating, review,
                    mode, agreed_price, deadline, created_at, updated_at, taken_at, delivered_at, disputed_at,
                    completed_at, cancelled_at, rated_at, cancel_reason)
SELECT p.customer,
       p.performer,
       p.category,
       CASE WHEN p.g %% 2 = 0
            THEN (ARRAY['Логотип для', 'Сайт для', 'Перевод текста для', 'Монтаж видео для',
                        'Бот в Telegram для', 'Тексты для'])[1 + p.g %% 6] || ' ' ||
                 (ARRAY['кофейни', 'магазина', 'школы', 'салона', 'клиники', 'пекарни'])[1 + (p.g / 6) %% 6]
            ELSE (ARRAY['SEO audit for a', 'Landing page for a', 'Telegram bot for a', 'Logo for a',
                        'Translation for a', 'Video editing for a'])[1 + p.g %% 6] || ' ' ||
                 (ARRAY['bakery', 'startup', 'clinic', 'coffee shop', 'school', 'salon'])[1 + (p.g / 6) %% 6]
       END || ' #' || p.g,
       CASE WHEN p.g %% 2 = 0
            THEN 'Описание заказа номер ' || p.g || '. Нужно сделать работу аккуратно и в срок, пришлите примеры.'
            ELSE 'Order number ' || p.g || '. Detailed description of the work to be done, with examples please.'
       END,
       p.budget,
       p.status,
       p.rating,
       CASE WHEN p.rating IS NOT NULL AND p.g %% 3 = 0
            THEN CASE WHEN p.g %% 2 = 0 THEN 'Отличная работа, спасибо!' ELSE 'Great work, thank you!' END END,
       p.mode,
       CASE WHEN p.performer IS NOT NULL THEN p.budget END,
       CASE WHEN p.g %% 3 = 0 THEN (p.created + interval '14 days')::date END,
       p.created,
       p.created,
       CASE WHEN p.performer IS NOT NULL THEN p.created + interval '1 minute' END,
       CASE WHEN p.status IN ('delivered', 'disputed', 'done') THEN p.created + interval '2 minutes' END,
       CASE WHEN p.status = 'disputed' THEN p.created + interval '3 minutes' END,
       CASE WHEN p.status = 'done' THEN p.created + interval '3 minutes' END,
       CASE WHEN p.status = 'cancelled' THEN p.created + interval '1 minute' END,
       CASE WHEN p.rating IS NOT NULL THEN p.created + interval '4 minutes' END,
       CASE WHEN p.status = 'cancelled' THEN 'Передумал / changed my mind' END
FROM people p
"""

# Offers-mode orders: 3 active offers on an open one; an accepted and a declined one on one that
# found its performer; 2 declined ones on a cancelled one.
OFFERS_SQL = """
WITH performers AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM users WHERE role = 'performer'
), targets AS (
    SELECT o.id, o.status, o.performer_id, o.budget, o.created_at, n
    FROM orders o, generate_series(0, 2) AS n
    WHERE o.mode = 'offers'
)
INSERT INTO offers (order_id, performer_id, price, days, message, status, created_at, updated_at)
SELECT t.id,
       CASE WHEN t.n = 0 AND t.performer_id IS NOT NULL THEN t.performer_id
            ELSE p.ids[1 + (t.id * 3 + t.n) % array_length(p.ids, 1)] END,
       CASE WHEN t.n = 0 AND t.performer_id IS NOT NULL THEN t.budget ELSE t.budget + 100 * t.n END,
       3 + t.n,
       CASE WHEN t.n % 2 = 0 THEN 'Сделаю быстро и качественно.' ELSE 'I can do it this week.' END,
       CASE WHEN t.status = 'open' THEN 'active'
            WHEN t.status = 'cancelled' THEN 'declined'
            WHEN t.n = 0 THEN 'accepted'
            ELSE 'declined' END::offer_status,
       t.created_at + make_interval(secs => 10 + t.n),
       t.created_at + make_interval(secs => 10 + t.n)
FROM targets t, performers p
WHERE NOT (t.n = 2 AND t.status NOT IN ('open', 'cancelled'))
  AND (t.performer_id IS NULL OR t.n = 0
       OR p.ids[1 + (t.id * 3 + t.n) % array_length(p.ids, 1)] <> t.performer_id)
"""

DELIVERIES_SQL = """
INSERT INTO order_deliveries (order_id, performer_id, message, created_at)
SELECT id, performer_id,
       CASE WHEN id % 2 = 0 THEN 'Готово, проверьте, пожалуйста.' ELSE 'Done, please have a look.' END,
       delivered_at
FROM orders
WHERE status IN ('delivered', 'disputed')
"""

CATEGORIES_SQL = """
INSERT INTO performer_categories (performer_id, category_id)
SELECT u.id, c.ids[1 + (u.id + n) % array_length(c.ids, 1)]
FROM users u,
     (SELECT array_agg(id ORDER BY id) AS ids FROM categories) c,
     generate_series(0, 1) AS n
WHERE u.role = 'performer'
ON CONFLICT DO NOTHING
"""


def seed(url, orders=1_000_000, users=100_000, quiet=False):
    import bcrypt
    started = time.monotonic()
    with psycopg.connect(url) as connection:
        if connection.execute("SELECT count(*) FROM orders").fetchone()[0] >= orders:
            if not quiet:
                print(f"bench data: already {orders} orders")
            return
        password_hash = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(4)).decode()
        connection.execute("SET session_replication_role = replica")
        connection.execute(USERS_SQL, {"hash": password_hash, "users": users})
        connection.execute("""INSERT INTO customer_stats (customer_id) SELECT id FROM users WHERE role = 'customer'
                              ON CONFLICT DO NOTHING""")
        connection.execute("""INSERT INTO performer_stats (performer_id) SELECT id FROM users WHERE role = 'performer'
                              ON CONFLICT DO NOTHING""")
        connection.execute(CATEGORIES_SQL)
        connection.execute(ORDERS_SQL, {"orders": orders})
        connection.execute(OFFERS_SQL)
        connection.execute(DELIVERIES_SQL)
        connection.execute("SET session_replication_role = DEFAULT")
        connection.execute("SELECT recalc_counters()")
        connection.commit()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    if not quiet:
        print(f"bench data: {orders} orders, {users} users in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    seed(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
