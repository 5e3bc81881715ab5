-- Every SQL statement the application runs, each under `-- name: <verb_first_name>`.
-- Parameters are psycopg named placeholders: %(name)s. Python never builds SQL from input.

-- =============================================================================================
-- Core: schema, health, the acting user

-- name: schema_version_read
SELECT version
FROM schema_version

-- name: schema_has_tables
SELECT count(*) AS n
FROM pg_tables
WHERE schemaname = 'public'

-- name: health_check
SELECT 1 AS ok

-- name: actor_set
-- Who acts and why, for the history and audit triggers, until the end of this transaction.
SELECT set_config('birzha.actor_id', %(actor_id)s, true),
       set_config('birzha.note', %(note)s, true)

-- name: counters_audit
SELECT counter, subject_id, stored, actual
FROM audit_counters()

-- name: counters_recalc
SELECT recalc_counters() AS fixed

-- name: categories_list
SELECT id, slug, name_ru, name_en, is_hidden, open_orders
FROM categories
WHERE NOT is_hidden
ORDER BY id

-- =============================================================================================
-- Sessions and accounts (core)

-- name: session_create
INSERT INTO sessions (token_hash, user_id, expires_at, user_agent)
VALUES (%(token_hash)s, %(user_id)s, now() + make_interval(days => %(days)s), left(%(user_agent)s, 300))

-- name: session_user
-- The signed-in user behind a cookie; blocked users and expired sessions give nothing.
SELECT u.id, u.role, u.name, u.email, u.is_staff, u.is_blocked
FROM sessions s
JOIN users u ON u.id = s.user_id
WHERE s.token_hash = %(token_hash)s
  AND s.expires_at > now()
  AND NOT u.is_blocked

-- name: session_delete
DELETE FROM sessions
WHERE token_hash = %(token_hash)s

-- name: sessions_delete_expired
DELETE FROM sessions
WHERE expires_at < now()

-- name: user_create
INSERT INTO users (role, email, password_hash, name)
VALUES (%(role)s, %(email)s, %(password_hash)s, %(name)s)
ON CONFLICT DO NOTHING
RETURNING id, role, name, email, is_staff

-- name: user_by_email
SELECT id, role, name, email, password_hash, is_staff, is_blocked
FROM users
WHERE lower(email) = lower(%(email)s)

-- name: user_make_staff
UPDATE users
SET is_staff = true,
    password_hash = %(password_hash)s
WHERE lower(email) = lower(%(email)s)
RETURNING id

-- name: user_count
SELECT count(*) AS n
FROM users

-- name: performer_categories_add
INSERT INTO performer_categories (performer_id, category_id)
SELECT %(performer_id)s, id
FROM categories
WHERE slug = ANY(%(slugs)s)
ON CONFLICT DO NOTHING

-- =============================================================================================
-- Orders (core)

-- name: order_create
INSERT INTO orders (customer_id, category_id, title, description, budget, deadline)
SELECT u.id, c.id, %(title)s, %(description)s, %(budget)s, %(deadline)s
FROM users u, categories c
WHERE u.id = %(customer_id)s
  AND u.role = 'customer'
  AND NOT u.is_blocked
  AND c.slug = %(category)s
  AND NOT c.is_hidden
RETURNING id

-- name: order_take
UPDATE orders o
SET status = 'in_progress',
    performer_id = p.id
FROM users p
WHERE o.id = %(order_id)s
  AND o.status = 'open'
  AND p.id = %(performer_id)s
  AND p.role = 'performer'
  AND NOT p.is_blocked
  AND o.customer_id <> p.id
  AND NOT EXISTS (SELECT 1 FROM users c WHERE c.id = o.customer_id AND c.is_blocked)
RETURNING o.id

-- name: order_complete
UPDATE orders
SET status = 'done'
WHERE id = %(order_id)s
  AND status = 'in_progress'
  AND performer_id = %(performer_id)s
RETURNING id

-- name: order_cancel
-- By the order's customer, or by staff (is_staff is checked here, not in Python).
UPDATE orders o
SET status = 'cancelled',
    cancel_reason = nullif(%(reason)s, '')
FROM users actor
WHERE o.id = %(order_id)s
  AND o.status IN ('open', 'in_progress')
  AND actor.id = %(actor_id)s
  AND NOT actor.is_blocked
  AND (o.customer_id = actor.id OR actor.is_staff)
RETURNING o.id

-- name: order_reopen
-- Staff only: unassign the performer and put the order back in the feed.
UPDATE orders o
SET status = 'open',
    performer_id = NULL
FROM users actor
WHERE o.id = %(order_id)s
  AND o.status = 'in_progress'
  AND actor.id = %(actor_id)s
  AND actor.is_staff
  AND NOT actor.is_blocked
RETURNING o.id

-- name: order_rate
UPDATE orders
SET rating = %(rating)s,
    review = nullif(%(review)s, '')
WHERE id = %(order_id)s
  AND status = 'done'
  AND rating IS NULL
  AND customer_id = %(customer_id)s
RETURNING id

-- name: orders_latest_open
SELECT o.id, o.title, o.budget, o.deadline, o.created_at,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users u ON u.id = o.customer_id
WHERE o.status = 'open'
  AND NOT u.is_blocked
ORDER BY o.created_at DESC, o.id DESC
LIMIT %(limit)s

-- =============================================================================================
-- Accounts: sign-up, sign-in, throttling, profiles, the performer catalogue (issue 3)

-- (end of the accounts section)

-- =============================================================================================
-- Orders: the feed, order pages, forms, the cabinets, the home page (issue 4)

-- (end of the orders section)

-- =============================================================================================
-- Admin area (issue 5)

-- (end of the admin section)
