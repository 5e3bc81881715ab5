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

-- name: login_throttle_wait
-- Seconds until this email and address may try to sign in again (0: go ahead). The limits are
-- 5 failures per email and 20 per address within 15 minutes; the wait ends when the 5th (20th)
-- newest failure leaves the window.
SELECT ceil(greatest(
           0,
           (SELECT extract(epoch FROM a.at + INTERVAL '15 minutes' - now())
            FROM login_attempts a
            WHERE lower(a.email) = lower(%(email)s)
              AND a.at > now() - INTERVAL '15 minutes'
            ORDER BY a.at DESC
            OFFSET 4
            LIMIT 1),
           (SELECT extract(epoch FROM a.at + INTERVAL '15 minutes' - now())
            FROM login_attempts a
            WHERE a.address = %(address)s
              AND a.at > now() - INTERVAL '15 minutes'
            ORDER BY a.at DESC
            OFFSET 19
            LIMIT 1)))::integer AS wait_seconds

-- name: login_attempt_record
-- A failed sign-in; the same statement drops this email's and address's attempts past the window.
WITH expired AS (
    DELETE FROM login_attempts
    WHERE (lower(email) = lower(%(email)s) OR address = %(address)s)
      AND at < now() - INTERVAL '15 minutes'
)
INSERT INTO login_attempts (email, address)
VALUES (left(%(email)s, 254), left(%(address)s, 100))

-- name: login_attempts_clear
-- A successful sign-in forgets the email's failures.
DELETE FROM login_attempts
WHERE lower(email) = lower(%(email)s)

-- name: profile_read
SELECT id, role, email, name, phone, messenger, experience_years, experience_text, bio
FROM users
WHERE id = %(user_id)s

-- name: profile_update
UPDATE users
SET name = %(name)s,
    phone = %(phone)s,
    messenger = %(messenger)s,
    experience_years = %(experience_years)s,
    experience_text = %(experience_text)s,
    bio = %(bio)s
WHERE id = %(user_id)s
  AND NOT is_blocked
RETURNING id

-- name: profile_categories
-- The visible categories, each marked when this user works in it.
SELECT c.id, c.slug, c.name_ru, c.name_en,
       EXISTS (SELECT 1
               FROM performer_categories pc
               WHERE pc.performer_id = %(user_id)s
                 AND pc.category_id = c.id) AS chosen
FROM categories c
WHERE NOT c.is_hidden
ORDER BY c.id

-- name: performer_categories_drop_unchosen
-- Of the visible categories, drops those not chosen (hidden ones are kept for when they return).
DELETE FROM performer_categories pc
USING users u, categories c
WHERE pc.performer_id = %(user_id)s
  AND u.id = pc.performer_id
  AND u.role = 'performer'
  AND c.id = pc.category_id
  AND NOT c.is_hidden
  AND c.slug <> ALL(%(slugs)s::text[])

-- name: performer_categories_add_chosen
INSERT INTO performer_categories (performer_id, category_id)
SELECT u.id, c.id
FROM users u
JOIN categories c ON c.slug = ANY(%(slugs)s::text[])
WHERE u.id = %(user_id)s
  AND u.role = 'performer'
  AND NOT c.is_hidden
ON CONFLICT DO NOTHING

-- name: user_password_hash
SELECT email, password_hash
FROM users
WHERE id = %(user_id)s

-- name: user_password_change
-- Compare-and-set: only while the hash is the one the current password was checked against.
-- The trigger users_end_sessions_on_password_change then ends every session of the user.
UPDATE users
SET password_hash = %(new_hash)s
WHERE id = %(user_id)s
  AND password_hash = %(old_hash)s
  AND NOT is_blocked
RETURNING id

-- name: category_visible_by_slug
SELECT id, slug, name_ru, name_en
FROM categories
WHERE slug = %(slug)s
  AND NOT is_hidden

-- name: performers_catalogue
-- Performers not blocked, best average first (unrated last), then most completed, then id.
-- Keyset pagination: %(after)s is the id of the last performer shown; the next page starts after
-- that performer's place in the order.
WITH cursor_row AS (
    SELECT rating_avg, orders_completed, performer_id
    FROM performer_stats
    WHERE performer_id = %(after)s
)
SELECT u.id, u.name, s.rating_avg, s.rating_count, s.orders_completed,
       (SELECT coalesce(json_agg(json_build_object('slug', c.slug, 'name_ru', c.name_ru,
                                                   'name_en', c.name_en) ORDER BY c.id), '[]')
        FROM performer_categories pc
        JOIN categories c ON c.id = pc.category_id
        WHERE pc.performer_id = u.id
          AND NOT c.is_hidden) AS categories
FROM users u
JOIN performer_stats s ON s.performer_id = u.id
LEFT JOIN cursor_row k ON true
WHERE u.role = 'performer'
  AND NOT u.is_blocked
  AND (%(category_id)s::integer IS NULL
       OR EXISTS (SELECT 1
                  FROM performer_categories pc
                  WHERE pc.performer_id = u.id
                    AND pc.category_id = %(category_id)s))
  AND (%(after)s::bigint IS NULL
       OR s.rating_avg < k.rating_avg
       OR (s.rating_avg IS NULL AND k.rating_avg IS NOT NULL)
       OR (s.rating_avg IS NOT DISTINCT FROM k.rating_avg
           AND (s.orders_completed < k.orders_completed
                OR (s.orders_completed = k.orders_completed AND s.performer_id > k.performer_id))))
ORDER BY s.rating_avg DESC NULLS LAST, s.orders_completed DESC, s.performer_id
LIMIT %(limit)s

-- name: performer_public
-- A performer's public profile; blocked performers and customers have none.
SELECT u.id, u.name, u.email, u.phone, u.messenger, u.bio, u.experience_years,
       u.experience_text, u.created_at, s.rating_avg, s.rating_count, s.orders_completed,
       (SELECT coalesce(json_agg(json_build_object('slug', c.slug, 'name_ru', c.name_ru,
                                                   'name_en', c.name_en) ORDER BY c.id), '[]')
        FROM performer_categories pc
        JOIN categories c ON c.id = pc.category_id
        WHERE pc.performer_id = u.id
          AND NOT c.is_hidden) AS categories
FROM users u
JOIN performer_stats s ON s.performer_id = u.id
WHERE u.id = %(performer_id)s
  AND u.role = 'performer'
  AND NOT u.is_blocked

-- name: performer_reviews
-- Ratings and reviews of a performer's orders, newest first, without those hidden by staff.
-- Keyset pagination: %(after)s is the id of the last order shown.
SELECT o.id, o.title, o.rating, o.review, o.rated_at
FROM orders o
WHERE o.performer_id = %(performer_id)s
  AND o.rating IS NOT NULL
  AND NOT o.review_hidden
  AND (%(after)s::bigint IS NULL
       OR (o.rated_at, o.id) < (SELECT k.rated_at, k.id
                                FROM orders k
                                WHERE k.id = %(after)s
                                  AND k.performer_id = %(performer_id)s))
ORDER BY o.rated_at DESC, o.id DESC
LIMIT %(limit)s

-- (end of the accounts section)

-- =============================================================================================
-- Orders: the feed, order pages, forms, the cabinets, the home page (issue 4)

-- name: orders_feed
-- The feed: open orders of customers who are not blocked, newest first (sort 'new') or highest
-- budget first (sort 'budget'), ties broken by id; one page after the cursor; every filter optional.
-- PostgreSQL plans it with the values bound (a custom plan; tests/test_feed.py checks it stays so),
-- which folds the CASEs to the chosen sort: the cursor becomes a row comparison that is an index
-- condition on orders_feed_new_idx or orders_feed_budget_idx, the ORDER BY their order, and a deep
-- page costs what the first one does. The cursor is always given (the first page starts after the
-- end of time / the top budget). LIMIT 21: a page of 20 and one more to know a next page exists.
-- The edge (optional) stops the walk at a window edge: searches use it, see orders_feed_search_older.
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users u ON u.id = o.customer_id
WHERE o.status = 'open'
  AND NOT u.is_blocked
  AND CASE WHEN %(sort)s::text = 'budget'
           THEN (o.budget, o.id) < (%(after_budget)s::integer, %(after_id)s::bigint)
           ELSE (o.created_at, o.id) < (%(after_time)s::timestamptz, %(after_id)s::bigint)
      END
  AND (%(edge_id)s::bigint IS NULL
       OR CASE WHEN %(sort)s::text = 'budget'
               THEN (o.budget, o.id) >= (%(edge_budget)s::integer, %(edge_id)s::bigint)
               ELSE (o.created_at, o.id) >= (%(edge_time)s::timestamptz, %(edge_id)s::bigint)
          END)
  AND (%(q)s::text IS NULL OR o.search @@ websearch_to_tsquery('russian', %(q)s::text))
  AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s::integer)
  AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s::integer)
  AND (%(max_budget)s::integer IS NULL OR o.budget <= %(max_budget)s::integer)
ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN o.budget END DESC,
         CASE WHEN %(sort)s::text = 'new' THEN o.created_at END DESC,
         o.id DESC
LIMIT 21

-- name: home_performers_top
-- The best performers for the home page: average rating, then completed orders.
SELECT u.id, u.name, s.rating_avg, s.rating_count, s.orders_completed
FROM performer_stats s
JOIN users u ON u.id = s.performer_id
WHERE NOT u.is_blocked
  AND s.orders_completed > 0
ORDER BY s.rating_avg DESC NULLS LAST, s.orders_completed DESC, s.performer_id
LIMIT %(limit)s

-- name: date_today
-- The database's date: the one the deadline rule in orders_guard_transition() compares with.
SELECT current_date AS today

-- name: order_page_read
-- An order with everything its page shows; the rating and review of a hidden review only for staff.
SELECT o.id, o.title, o.description, o.budget, o.deadline, o.status, o.customer_id, o.performer_id,
       o.review_hidden, o.cancel_reason, o.created_at, o.taken_at, o.completed_at,
       o.cancelled_at, o.rated_at, o.category_id,
       o.rating IS NOT NULL AS is_rated,
       CASE WHEN NOT o.review_hidden OR %(staff)s THEN o.rating END AS rating,
       CASE WHEN NOT o.review_hidden OR %(staff)s THEN o.review END AS review,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en,
       cu.name AS customer_name, cu.is_blocked AS customer_blocked,
       cs.orders_placed AS customer_orders_placed,
       pu.name AS performer_name, ps.rating_avg AS performer_rating_avg,
       ps.rating_count AS performer_rating_count, ps.orders_completed AS performer_orders_completed
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
LEFT JOIN customer_stats cs ON cs.customer_id = o.customer_id
LEFT JOIN users pu ON pu.id = o.performer_id
LEFT JOIN performer_stats ps ON ps.performer_id = o.performer_id
WHERE o.id = %(order_id)s

-- name: order_state_read
-- After a refused transition: what the order looks like now, to answer 404, 403 or 409.
SELECT o.id, o.status, o.customer_id, o.performer_id, o.rating IS NOT NULL AS is_rated,
       cu.is_blocked AS customer_blocked
FROM orders o
JOIN users cu ON cu.id = o.customer_id
WHERE o.id = %(order_id)s

-- name: order_history_list
SELECT h.id, h.at, h.action, h.from_status, h.to_status, h.note, h.actor_id,
       a.name AS actor_name, h.performer_id, p.name AS performer_name
FROM order_history h
LEFT JOIN users a ON a.id = h.actor_id
LEFT JOIN users p ON p.id = h.performer_id
WHERE h.order_id = %(order_id)s
ORDER BY h.id

-- name: order_update
-- The customer edits an open order; a hidden category is refused unless the order is already in it.
UPDATE orders o
SET title = %(title)s,
    description = %(description)s,
    category_id = c.id,
    budget = %(budget)s,
    deadline = %(deadline)s
FROM categories c
WHERE o.id = %(order_id)s
  AND o.customer_id = %(customer_id)s
  AND o.status = 'open'
  AND c.slug = %(category)s
  AND (NOT c.is_hidden OR c.id = o.category_id)
RETURNING o.id

-- name: customer_stats_read
SELECT orders_placed, orders_open, orders_in_progress, orders_done, orders_cancelled
FROM customer_stats
WHERE customer_id = %(customer_id)s

-- name: performer_stats_read
SELECT orders_completed, orders_in_progress, rating_avg, rating_count
FROM performer_stats
WHERE performer_id = %(performer_id)s

-- name: customer_orders_page
-- A customer's own orders, newest first, optionally of one status; keyset page after (created_at, id).
SELECT o.id, o.title, o.budget, o.deadline, o.status, o.created_at, o.performer_id,
       o.rating IS NOT NULL AS is_rated, p.name AS performer_name,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
LEFT JOIN users p ON p.id = o.performer_id
WHERE o.customer_id = %(customer_id)s
  AND (%(status)s::order_status IS NULL OR o.status = %(status)s::order_status)
  AND (o.created_at, o.id) < (%(after_time)s, %(after_id)s)
ORDER BY o.created_at DESC, o.id DESC
LIMIT %(limit)s

-- name: performer_orders_page
-- A performer's orders, newest first, optionally of one status; keyset page after (created_at, id).
SELECT o.id, o.title, o.budget, o.deadline, o.status, o.created_at,
       CASE WHEN NOT o.review_hidden THEN o.rating END AS rating, cu.name AS customer_name,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
WHERE o.performer_id = %(performer_id)s
  AND (%(status)s::order_status IS NULL OR o.status = %(status)s::order_status)
  AND (o.created_at, o.id) < (%(after_time)s, %(after_id)s)
ORDER BY o.created_at DESC, o.id DESC
LIMIT %(limit)s

-- name: performer_reviews_latest
-- The ratings and reviews a performer received, newest first; hidden ones are left out.
SELECT o.id, o.title, o.rating, o.review, o.rated_at, cu.name AS customer_name
FROM orders o
JOIN users cu ON cu.id = o.customer_id
WHERE o.performer_id = %(performer_id)s
  AND o.rating IS NOT NULL
  AND NOT o.review_hidden
ORDER BY o.rated_at DESC, o.id DESC
LIMIT %(limit)s

-- name: orders_feed_window_edge
-- The %(window)s-th open order after the feed cursor, or nothing when fewer are left: a search
-- first looks only between the cursor and this edge (see orders_feed_search_older for why).
WITH window_rows AS MATERIALIZED (
    SELECT o.id, o.created_at, o.budget
    FROM orders o
    WHERE o.status = 'open'
      AND CASE WHEN %(sort)s::text = 'budget'
               THEN (o.budget, o.id) < (%(after_budget)s::integer, %(after_id)s::bigint)
               ELSE (o.created_at, o.id) < (%(after_time)s::timestamptz, %(after_id)s::bigint)
          END
    ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN o.budget END DESC,
             CASE WHEN %(sort)s::text = 'new' THEN o.created_at END DESC,
             o.id DESC
    LIMIT %(window)s
)
SELECT w.id, w.created_at, w.budget
FROM window_rows w
WHERE (SELECT count(*) FROM window_rows) = %(window)s
ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN w.budget END,
         CASE WHEN %(sort)s::text = 'new' THEN w.created_at END,
         w.id
LIMIT 1

-- name: orders_feed_search_older
-- Search matches beyond the window edge. The planner cannot know how rare a term is among open
-- orders; walking the feed index in order for a rare or absent term read every open order (half
-- a second at 1M). So a search reads the window through orders_feed (bounded by the edge), and
-- only when that leaves the page short come here: the matches are found through the GIN index
-- (MATERIALIZED: a bitmap scan whose cost follows the number of matches), then sorted.
WITH matches AS MATERIALIZED (
    SELECT o.id
    FROM orders o
    WHERE o.status = 'open'
      AND o.search @@ websearch_to_tsquery('russian', %(q)s::text)
      AND CASE WHEN %(sort)s::text = 'budget'
               THEN (o.budget, o.id) < (%(edge_budget)s::integer, %(edge_id)s::bigint)
               ELSE (o.created_at, o.id) < (%(edge_time)s::timestamptz, %(edge_id)s::bigint)
          END
)
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en
FROM matches m
JOIN orders o ON o.id = m.id
JOIN categories c ON c.id = o.category_id
JOIN users u ON u.id = o.customer_id
WHERE NOT u.is_blocked
  AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s::integer)
  AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s::integer)
  AND (%(max_budget)s::integer IS NULL OR o.budget <= %(max_budget)s::integer)
ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN o.budget END DESC,
         CASE WHEN %(sort)s::text = 'new' THEN o.created_at END DESC,
         o.id DESC
LIMIT %(limit)s

-- (end of the orders section)

-- =============================================================================================
-- Admin area (issue 5)

-- (end of the admin section)
