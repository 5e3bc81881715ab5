-- Every SQL statement the application runs, each under `-- name: <entity>_<what it does>`
-- (`order_take`, `performer_public`), grouped by the entity it is about.
-- Parameters are psycopg named placeholders: %(name)s. Python never builds SQL from input.

-- =============================================================================================
-- The schema, health and the acting user

-- name: schema_version_read
SELECT version
FROM schema_version

-- name: schema_version_set
UPDATE schema_version
SET version = %(version)s

-- name: migration_lock
-- One migration run at a time, on every machine: a second waits, then finds nothing pending.
SELECT pg_advisory_lock(hashtext('birzha.migrate'))

-- name: migration_unlock
SELECT pg_advisory_unlock(hashtext('birzha.migrate'))

-- name: schema_has_tables
SELECT count(*) AS n
FROM pg_tables
WHERE schemaname = 'public'

-- name: health_check
SELECT 1 AS ok

-- name: session_timezone_utc
-- A new connection of a server whose zone is UTC under another name (db.speak_utc).
SELECT set_config('TimeZone', 'UTC', false)

-- name: actor_set
-- Who acts and why, for the history and audit triggers, until the end of this transaction;
-- staff marks the note as a staff member's reason, shown to staff only.
SELECT set_config('birzha.actor_id', %(actor_id)s, true),
       set_config('birzha.note', %(note)s, true),
       set_config('birzha.staff', CASE WHEN %(staff)s THEN 'on' ELSE '' END, true)

-- name: tick_lock
-- One tick at a time across every machine, held until the tick's transaction ends; a second
-- tick gets false at once and does nothing.
SELECT pg_try_advisory_xact_lock(hashtext('birzha.tick')) AS locked

-- name: counter_audit_refresh
SELECT counter_audit_refresh() AS drifted

-- name: counters_audit
SELECT counter, subject_id, stored, actual
FROM audit_counters()

-- =============================================================================================
-- Sessions

-- name: session_create
INSERT INTO sessions (token_hash, user_id, expires_at, user_agent)
VALUES (%(token_hash)s, %(user_id)s, now() + make_interval(days => %(days)s), left(%(user_agent)s, 300))

-- name: session_user
-- The signed-in user behind a cookie, with what they have not read yet (for the page header);
-- blocked users and expired sessions give nothing. The cabinets read the same in their own
-- statement (session_viewers has the rule).
SELECT id, role, name, email, is_staff, is_blocked, lang, timezone, unread_messages, unread_notifications
FROM session_viewers
WHERE token_hash = %(token_hash)s

-- name: session_delete
DELETE FROM sessions
WHERE token_hash = %(token_hash)s

-- name: sessions_delete_expired
DELETE FROM sessions
WHERE expires_at < now()

-- =============================================================================================
-- Users: accounts, sign-in throttling, profiles, passwords

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

-- name: login_attempt_admit
-- May this email be tried from this address now? One atomic step (see login_attempt_admit()):
-- 0 back means the attempt is recorded and its password may be checked, more is the seconds to
-- wait and nothing is recorded. The caller commits before it checks the password.
SELECT login_attempt_admit(%(email)s, %(address)s) AS wait_seconds

-- name: login_attempts_delete_old
-- The tick's sweep of attempts past the 15-minute window, which count toward no limit (each
-- sign-in attempt also sweeps a few, in login_attempt_admit()).
DELETE FROM login_attempts
WHERE at < now() - interval '15 minutes'

-- name: login_attempts_clear
-- A correct password forgets the attempts for its email from its address, the one just
-- admitted included; failures from other addresses still count.
DELETE FROM login_attempts
WHERE lower(email) = lower(%(email)s)
  AND address = left(%(address)s, 100)

-- name: profile_read
SELECT id, role, email, name, phone, messenger, experience_years, experience_text, bio, timezone
FROM users
WHERE id = %(user_id)s

-- name: profile_update
UPDATE users
SET name = %(name)s,
    phone = %(phone)s,
    messenger = %(messenger)s,
    experience_years = %(experience_years)s,
    experience_text = %(experience_text)s,
    bio = %(bio)s,
    timezone = %(timezone)s
WHERE id = %(user_id)s
  AND NOT is_blocked
RETURNING id

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

-- =============================================================================================
-- API tokens

-- name: api_token_user
-- The user behind a Bearer token, never a blocked one: a plain read, no lock. touch_due says
-- whether last_used_at is due for api_token_touch (it is kept to the nearest 5 minutes).
SELECT u.id, u.role, u.name, u.email, u.is_staff, u.is_blocked, t.id AS token_id,
       (t.last_used_at IS NULL OR t.last_used_at < now() - interval '5 minutes') AS touch_due
FROM api_tokens t
JOIN users u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s
  AND NOT u.is_blocked

-- name: api_token_touch
-- Marks a token as used, at most once every 5 minutes, and never waits: a row that another
-- transaction holds (a parallel request with the same token marking it) is skipped.
WITH due AS (
    SELECT id
    FROM api_tokens
    WHERE id = %(token_id)s
      AND (last_used_at IS NULL OR last_used_at < now() - interval '5 minutes')
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE api_tokens t
SET last_used_at = now()
FROM due
WHERE t.id = due.id

-- name: api_token_create
-- At most %(max_tokens)s tokens per user: refused here with a clear answer; the trigger
-- api_tokens_limit holds the same line when two creates race.
INSERT INTO api_tokens (user_id, token_hash, label)
SELECT u.id, %(token_hash)s, %(label)s
FROM users u
WHERE u.id = %(user_id)s
  AND NOT u.is_blocked
  AND (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id) < %(max_tokens)s
RETURNING id

-- name: api_tokens_of_user
SELECT id, label, created_at, last_used_at
FROM api_tokens
WHERE user_id = %(user_id)s
ORDER BY id

-- name: api_token_revoke
-- Only one's own token: someone else's is as unknown as a token that never existed.
DELETE FROM api_tokens
WHERE id = %(token_id)s
  AND user_id = %(user_id)s
RETURNING id

-- name: api_idempotency_claim
-- An API POST with an Idempotency-Key claims it for its user before writing anything: a new key,
-- or one past its 24 hours (its old answer goes). A row back: the request runs. None: the key is
-- live and answered; a claim not yet committed makes this wait until its request ends (then the
-- answer is there, or the claim is gone and this one is made).
INSERT INTO api_idempotency (user_id, key, request, body_sha256)
VALUES (%(user_id)s, %(key)s, %(request)s, %(body_sha256)s)
ON CONFLICT (user_id, key) DO UPDATE
SET request = excluded.request,
    body_sha256 = excluded.body_sha256,
    response_status = NULL,
    response_body = NULL,
    response_location = NULL,
    created_at = now()
WHERE api_idempotency.created_at <= now() - interval '24 hours'
RETURNING user_id

-- name: api_idempotency_read
-- The live answer kept for a user's key (the same now() as the claim: what it found live is here).
SELECT request, body_sha256, response_status, response_body, response_location
FROM api_idempotency
WHERE user_id = %(user_id)s
  AND key = %(key)s
  AND created_at > now() - interval '24 hours'
  AND response_status IS NOT NULL

-- name: api_idempotency_answer
-- The answer to a claimed key, in the transaction of the write it describes.
UPDATE api_idempotency
SET response_status = %(status)s,
    response_body = %(body)s,
    response_location = %(location)s
WHERE user_id = %(user_id)s
  AND key = %(key)s
  AND response_status IS NULL

-- name: api_idempotency_release
-- A claim whose request did not succeed: the key is free again. Only an unanswered claim, which no
-- other transaction can see: a committed row always has its answer.
DELETE FROM api_idempotency
WHERE user_id = %(user_id)s
  AND key = %(key)s
  AND response_status IS NULL

-- name: api_idempotency_purge
-- The tick: keys past their 24 hours, which no request honours any more.
DELETE FROM api_idempotency
WHERE created_at <= now() - interval '24 hours'

-- =============================================================================================
-- Categories

-- name: categories_list
SELECT id, slug, name_ru, name_en, is_hidden, open_orders
FROM categories
WHERE NOT is_hidden
ORDER BY id

-- name: feed_categories
-- Every category, hidden ones too (their open orders stay in the feed until taken or cancelled):
-- the feed names its cards' categories from these, lists the visible ones, and adds up the
-- counters for how many open orders it has.
SELECT id, slug, name_ru, name_en, is_hidden, open_orders
FROM categories
ORDER BY id

-- name: category_visible_by_slug
SELECT id, slug, name_ru, name_en
FROM categories
WHERE slug = %(slug)s
  AND NOT is_hidden

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

-- name: performer_categories_add
INSERT INTO performer_categories (performer_id, category_id)
SELECT %(performer_id)s, id
FROM categories
WHERE slug = ANY(%(slugs)s)
ON CONFLICT DO NOTHING

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

-- =============================================================================================
-- Performers: the catalogue, public profiles, counters, reviews

-- name: performers_catalogue
-- Performers not blocked, best average first (unrated last), then most completed, then id.
-- Keyset pagination: %(after)s is the id of the last performer shown; the next page starts after
-- that performer's place in the order. The order is the keys of performer_stats_rank_idx, all
-- descending — (coalesce(rating_avg, 0), orders_completed, -performer_id): ratings are 1..10, so
-- 0 puts the unrated last, and -id keeps ties in ascending id — and the cursor is one row
-- comparison on them, an index condition: a deep page costs what the first one does. The first
-- page starts above the top; an unknown performer as cursor gives an empty page. The performer's
-- categories come as ids, hidden ones too: the page names them from the visible categories it
-- lists anyway (accounts.catalogue_page; a JSON object per category and row was a third of this
-- query's time).
-- One plan for every page: the cursor is read by the same subqueries whether given or not, and
-- LIMIT is the constant 21 (a page of accounts.CATALOGUE_PAGE and one more), so PostgreSQL keeps
-- the generic plan of the prepared statement instead of planning each call (0.13 ms of 0.22 at a
-- million orders). A cursor folded away when absent, a LIMIT given as a value (costed as a tenth
-- of the rows) or an optional category condition each made the generic plan look dearer; a
-- category's page has a query of its own (performers_catalogue_in_category).
WITH cursor AS (
    SELECT coalesce(k.rating_avg, 0) AS rating, k.orders_completed AS completed, -k.performer_id AS rank_id
    FROM performer_stats k
    WHERE k.performer_id = %(after)s::bigint
    UNION ALL
    SELECT 11, 2147483647, 0
    WHERE %(after)s::bigint IS NULL
)
SELECT u.id, u.name, s.rating_avg, s.rating_count, s.orders_completed,
       ARRAY(SELECT pc.category_id
             FROM performer_categories pc
             WHERE pc.performer_id = u.id
             ORDER BY pc.category_id) AS category_ids
FROM performer_stats s
JOIN users u ON u.id = s.performer_id
WHERE u.role = 'performer'
  AND NOT u.is_blocked
  AND (coalesce(s.rating_avg, 0), s.orders_completed, -s.performer_id)
      < ((SELECT rating FROM cursor), (SELECT completed FROM cursor), (SELECT rank_id FROM cursor))
ORDER BY coalesce(s.rating_avg, 0) DESC, s.orders_completed DESC, -s.performer_id DESC
LIMIT 21

-- name: performers_catalogue_in_category
-- performers_catalogue of one category's performers, planned for its values at each call: there
-- the cursor folds to constants, the rank index is walked and the category's performers are
-- picked on the way. With the cursor read through subqueries the planner expected a third of
-- the performers past it, and at 5,000 performers started from the category's 1,429 instead,
-- with a sort (5.4 ms against 0.8).
SELECT u.id, u.name, s.rating_avg, s.rating_count, s.orders_completed,
       ARRAY(SELECT pc.category_id
             FROM performer_categories pc
             WHERE pc.performer_id = u.id
             ORDER BY pc.category_id) AS category_ids
FROM performer_stats s
JOIN users u ON u.id = s.performer_id
WHERE u.role = 'performer'
  AND NOT u.is_blocked
  AND EXISTS (SELECT 1
              FROM performer_categories pc
              WHERE pc.performer_id = u.id
                AND pc.category_id = %(category_id)s::integer)
  AND (coalesce(s.rating_avg, 0), s.orders_completed, -s.performer_id)
      < (CASE WHEN %(after)s::bigint IS NULL
              THEN 11
              ELSE (SELECT coalesce(k.rating_avg, 0) FROM performer_stats k WHERE k.performer_id = %(after)s::bigint)
         END,
         CASE WHEN %(after)s::bigint IS NULL
              THEN 2147483647
              ELSE (SELECT k.orders_completed FROM performer_stats k WHERE k.performer_id = %(after)s::bigint)
         END,
         CASE WHEN %(after)s::bigint IS NULL
              THEN 0
              ELSE (SELECT -k.performer_id FROM performer_stats k WHERE k.performer_id = %(after)s::bigint)
         END)
ORDER BY coalesce(s.rating_avg, 0) DESC, s.orders_completed DESC, -s.performer_id DESC
LIMIT 21

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
-- Ratings and reviews of a performer's orders, newest first, without those hidden by staff: a
-- page of 20 and one more (a next page exists). Keyset pagination: %(after)s is the id of the last
-- order shown (another performer's order gives an empty page). One plan for every page, as
-- performers_catalogue: the cursor is read by the same subqueries whether given or not, and the
-- LIMIT is a constant.
WITH cursor AS (
    SELECT k.rated_at, k.id
    FROM orders k
    WHERE k.id = %(after)s::bigint
      AND k.performer_id = %(performer_id)s
    UNION ALL
    SELECT 'infinity'::timestamptz, 9223372036854775807
    WHERE %(after)s::bigint IS NULL
)
SELECT o.id, o.title, o.rating, o.review, o.rated_at
FROM orders o
WHERE o.performer_id = %(performer_id)s
  AND o.rating IS NOT NULL
  AND NOT o.review_hidden
  AND (o.rated_at, o.id) < ((SELECT rated_at FROM cursor), (SELECT id FROM cursor))
ORDER BY o.rated_at DESC, o.id DESC
LIMIT 21

-- (end of the accounts section)

-- name: performer_stats_read
SELECT orders_completed, orders_in_progress, orders_delivered, orders_disputed, rating_avg, rating_count
FROM performer_stats
WHERE performer_id = %(performer_id)s

-- name: home_performers_top
-- The six best performers for the home page: average rating, then completed orders. The LIMIT is
-- a constant so that PostgreSQL keeps one plan: with a parameter it costs the generic plan for a
-- tenth of the rows and plans every call.
SELECT u.id, u.name, s.rating_avg, s.rating_count, s.orders_completed
FROM performer_stats s
JOIN users u ON u.id = s.performer_id
WHERE NOT u.is_blocked
  AND s.orders_completed > 0
ORDER BY coalesce(s.rating_avg, 0) DESC, s.orders_completed DESC, -s.performer_id DESC
LIMIT 6

-- =============================================================================================
-- Customers

-- name: customer_stats_read
SELECT orders_placed, orders_open, orders_in_progress, orders_delivered, orders_disputed,
       orders_done, orders_cancelled
FROM customer_stats
WHERE customer_id = %(customer_id)s

-- name: customer_cabinet_page
-- A customer cabinet in one statement, its viewer's session too (as session_user reads it, by
-- the session's token hash): first its aside (part 0), the viewer (as JSON) with their counters,
-- in the order of orders.CUSTOMER_COUNTERS, and for its form of a new order the visible categories
-- by id as [slug, name in the viewer's language] pairs; then the customer's own orders, newest
-- first, optionally of one status, a keyset page after (created_at, id) (part 1). No row at all
-- when the session has ended. A statement more (the session's, the counters') was a tenth of the
-- page's CPU under load each. The aside as two arrays keeps each order's row narrow (as ten
-- columns, rows 27 wide cost back what the statement saved; as jsonb, PostgreSQL's building and
-- printing it did).
-- The order rows give the columns they show, the category named in the viewer's language: each
-- is kept rendered under all of its values (web.kept_each), which are hashed and compared per row.
-- The page's ids first, then only they are joined: once prepared, PostgreSQL may keep a generic
-- plan made for a customer of average size (a few orders), a bitmap scan and a sort; for a
-- customer with hundreds it then joined every order before sorting (1 ms instead of 0.07 at
-- 10,000 orders). Now the worst it does is sort the ids of one customer's orders.
WITH viewer AS MATERIALIZED (
    SELECT id, role, name, email, is_staff, is_blocked, lang, timezone, unread_messages, unread_notifications
    FROM session_viewers
    WHERE token_hash = %(token_hash)s)
SELECT 1 AS part, o.id, o.title, o.budget, o.status, o.mode, o.offers_active, o.created_at, o.performer_id,
       o.rating, p.name AS performer_name,
       CASE %(lang)s WHEN 'en' THEN c.name_en ELSE c.name_ru END AS category_name,
       NULL::integer[] AS counters, NULL::text[] AS category_pairs, NULL::json AS viewer
FROM (SELECT k.id
      FROM orders k
      WHERE k.customer_id = (SELECT id FROM viewer)
        AND (%(status)s::order_status IS NULL OR k.status = %(status)s::order_status)
        AND (k.created_at, k.id) < (%(after_time)s, %(after_id)s)
      ORDER BY k.created_at DESC, k.id DESC
      LIMIT %(limit)s) AS page
JOIN orders o ON o.id = page.id
JOIN categories c ON c.id = o.category_id
LEFT JOIN users p ON p.id = o.performer_id
UNION ALL
SELECT 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       ARRAY[s.orders_placed, s.orders_open, s.orders_in_progress, s.orders_delivered, s.orders_disputed,
             s.orders_done, s.orders_cancelled],
       (SELECT coalesce(array_agg(ARRAY[c.slug, CASE %(lang)s WHEN 'en' THEN c.name_en ELSE c.name_ru END] ORDER BY c.id), '{}')
        FROM categories c
        WHERE NOT c.is_hidden),
       to_json(v)
FROM viewer v
LEFT JOIN customer_stats s ON s.customer_id = v.id
ORDER BY part, created_at DESC, id DESC

-- =============================================================================================
-- Orders: create, edit and every transition

-- name: order_create
INSERT INTO orders (customer_id, category_id, title, description, budget, deadline, mode)
SELECT u.id, c.id, %(title)s, %(description)s, %(budget)s, %(deadline)s, %(mode)s
FROM users u, categories c
WHERE u.id = %(customer_id)s
  AND u.role = 'customer'
  AND NOT u.is_blocked
  AND c.slug = %(category)s
  AND NOT c.is_hidden
RETURNING id

-- name: order_update
-- The customer edits an open order; a hidden category is refused unless the order is already in
-- it, and the mode changes only while no offer is active.
UPDATE orders o
SET title = %(title)s,
    description = %(description)s,
    category_id = c.id,
    budget = %(budget)s,
    deadline = %(deadline)s,
    mode = %(mode)s
FROM categories c
WHERE o.id = %(order_id)s
  AND o.customer_id = %(customer_id)s
  AND o.status = 'open'
  AND (o.mode = %(mode)s OR o.offers_active = 0)
  AND c.slug = %(category)s
  AND (NOT c.is_hidden OR c.id = o.category_id)
RETURNING o.id

-- name: order_take
-- Take mode: the first performer gets the order, at its budget.
UPDATE orders o
SET status = 'in_progress',
    performer_id = p.id,
    agreed_price = o.budget
FROM users p
WHERE o.id = %(order_id)s
  AND o.status = 'open'
  AND o.mode = 'take'
  AND p.id = %(performer_id)s
  AND p.role = 'performer'
  AND NOT p.is_blocked
  AND o.customer_id <> p.id
  AND NOT EXISTS (SELECT 1 FROM users c WHERE c.id = o.customer_id AND c.is_blocked)
RETURNING o.id

-- name: order_deliver
-- The performer hands the work in: the order becomes delivered and the delivery (its message)
-- is recorded, in one statement.
WITH delivered AS (
    UPDATE orders
    SET status = 'delivered'
    WHERE id = %(order_id)s
      AND status = 'in_progress'
      AND performer_id = %(performer_id)s
    RETURNING id, performer_id
)
INSERT INTO order_deliveries (order_id, performer_id, message)
SELECT id, performer_id, %(message)s
FROM delivered
RETURNING order_id AS id, id AS delivery_id

-- name: order_accept
-- The customer accepts the work handed in, with an optional rating and review.
UPDATE orders
SET status = 'done',
    rating = %(rating)s,
    review = CASE WHEN %(rating)s::smallint IS NOT NULL THEN nullif(%(review)s, '') END
WHERE id = %(order_id)s
  AND status = 'delivered'
  AND customer_id = %(customer_id)s
RETURNING id

-- name: order_revision
-- The customer sends the work back; the reason goes into the history through actor_set.
UPDATE orders
SET status = 'in_progress'
WHERE id = %(order_id)s
  AND status = 'delivered'
  AND customer_id = %(customer_id)s
RETURNING id

-- name: order_withdraw
-- The performer gives an order in progress back: it returns to the feed with no performer.
UPDATE orders
SET status = 'open',
    performer_id = NULL,
    agreed_price = NULL
WHERE id = %(order_id)s
  AND status = 'in_progress'
  AND performer_id = %(performer_id)s
RETURNING id

-- name: order_dispute
-- The customer or the performer calls in staff on an order in progress or delivered.
UPDATE orders
SET status = 'disputed'
WHERE id = %(order_id)s
  AND status IN ('in_progress', 'delivered')
  AND %(user_id)s IN (customer_id, performer_id)
RETURNING id

-- name: orders_auto_accept
-- The tick: delivered orders the customer left unanswered for %(days)s days become done.
SELECT orders_auto_accept(make_interval(days => %(days)s)) AS accepted

-- name: order_cancel
-- By the order's customer only, while open, or in progress once its deadline has passed (before
-- that there is the dispute); staff cancel in the admin area, where it is logged with a reason.
UPDATE orders o
SET status = 'cancelled',
    cancel_reason = nullif(%(reason)s, '')
FROM users actor
WHERE o.id = %(order_id)s
  AND (o.status = 'open' OR (o.status = 'in_progress' AND o.deadline < current_date))
  AND actor.id = %(actor_id)s
  AND NOT actor.is_blocked
  AND o.customer_id = actor.id
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

-- name: date_today
-- The database's date: the one the deadline rule in orders_guard_transition() compares with.
SELECT current_date AS today

-- =============================================================================================
-- Offers and deliveries

-- name: offer_submit
-- A performer's offer on an open order in offers mode: the first, or a change of their active
-- one. The order is locked first (FOR SHARE), as every offer write does, then the offer.
WITH target AS (
    SELECT o.id
    FROM orders o
    JOIN users c ON c.id = o.customer_id
    WHERE o.id = %(order_id)s
      AND o.status = 'open'
      AND o.mode = 'offers'
      AND NOT c.is_blocked
    FOR SHARE OF o
)
INSERT INTO offers (order_id, performer_id, price, days, message)
SELECT t.id, p.id, %(price)s, %(days)s, %(message)s
FROM target t
JOIN users p ON p.id = %(performer_id)s
WHERE p.role = 'performer'
  AND NOT p.is_blocked
ON CONFLICT (order_id, performer_id) WHERE status = 'active'
DO UPDATE SET price = excluded.price,
              days = excluded.days,
              message = excluded.message
RETURNING id, (xmax = 0) AS created

-- name: offer_withdraw
WITH target AS (
    SELECT id
    FROM orders
    WHERE id = %(order_id)s
      AND status = 'open'
    FOR SHARE
)
UPDATE offers f
SET status = 'withdrawn'
FROM target t
WHERE f.order_id = t.id
  AND f.performer_id = %(performer_id)s
  AND f.status = 'active'
RETURNING f.id

-- name: offer_accept
-- The customer accepts an offer: one step in order_accept_offer() (order, then offer, locked).
SELECT order_accept_offer(%(order_id)s, %(offer_id)s, %(customer_id)s) AS id

-- name: offer_state_read
-- After a refused accept: the offer as it is now (none, or not active).
SELECT id, order_id, performer_id, status
FROM offers
WHERE id = %(offer_id)s
  AND order_id = %(order_id)s

-- name: offers_of_order
-- The active offers of an order, oldest first, with each performer's rating and completed count
-- (for its customer and staff); blocked performers' offers are left out.
SELECT f.id, f.performer_id, f.price, f.days, f.message, f.created_at, f.updated_at,
       p.name AS performer_name, ps.rating_avg, ps.rating_count, ps.orders_completed
FROM offers f
JOIN users p ON p.id = f.performer_id
LEFT JOIN performer_stats ps ON ps.performer_id = f.performer_id
WHERE f.order_id = %(order_id)s
  AND f.status = 'active'
  AND NOT p.is_blocked
ORDER BY f.created_at, f.id

-- name: offer_of_performer
-- A performer's own offer on an order: the active one, else the latest.
SELECT id, price, days, message, status, created_at, updated_at
FROM offers
WHERE order_id = %(order_id)s
  AND performer_id = %(performer_id)s
ORDER BY status = 'active' DESC, id DESC
LIMIT 1

-- name: performer_offers_page
-- "My offers": a performer's offers, newest first, with their orders; keyset page after (created_at, id).
-- The page's ids first, then only they are joined, as customer_cabinet_page (a generic plan made
-- for a performer of a few offers joined all 524 of the heaviest one's before sorting).
SELECT f.id, f.order_id, f.price, f.days, f.status, f.created_at,
       o.title, o.status AS order_status, o.budget
FROM (SELECT k.id
      FROM offers k
      WHERE k.performer_id = %(performer_id)s
        AND (k.created_at, k.id) < (%(after_at)s, %(after_id)s)
      ORDER BY k.created_at DESC, k.id DESC
      LIMIT 21) AS page
JOIN offers f ON f.id = page.id
JOIN orders o ON o.id = f.order_id
ORDER BY f.created_at DESC, f.id DESC

-- name: order_deliveries_list
-- The work handed in, every round, oldest first.
SELECT d.id, d.message, d.created_at, d.performer_id, p.name AS performer_name
FROM order_deliveries d
JOIN users p ON p.id = d.performer_id
WHERE d.order_id = %(order_id)s
ORDER BY d.id

-- =============================================================================================
-- Orders: pages, history, the feed and its search, cabinets, the API's view

-- name: order_page_read
-- An order with everything its page shows; the rating and review of a hidden review only for staff.
SELECT o.id, o.title, o.description, o.budget, o.deadline, o.status, o.mode, o.customer_id,
       o.performer_id, o.agreed_price, o.offers_active, o.review_hidden, o.cancel_reason,
       o.created_at, o.taken_at, o.delivered_at, o.disputed_at, o.completed_at,
       o.cancelled_at, o.rated_at, o.category_id,
       o.rating IS NOT NULL AS is_rated,
       CASE WHEN NOT o.review_hidden OR %(staff)s THEN o.rating END AS rating,
       CASE WHEN NOT o.review_hidden OR %(staff)s THEN o.review END AS review,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en,
       cu.name AS customer_name, cu.is_blocked AS customer_blocked,
       cs.orders_placed AS customer_orders_placed,
       pu.name AS performer_name, ps.rating_avg AS performer_rating_avg,
       ps.rating_count AS performer_rating_count, ps.orders_completed AS performer_orders_completed,
       o.deadline < current_date AS overdue
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
LEFT JOIN customer_stats cs ON cs.customer_id = o.customer_id
LEFT JOIN users pu ON pu.id = o.performer_id
LEFT JOIN performer_stats ps ON ps.performer_id = o.performer_id
WHERE o.id = %(order_id)s

-- name: order_state_read
-- After a refused transition: what the order looks like now, to answer 404, 403 or 409.
SELECT o.id, o.status, o.mode, o.customer_id, o.performer_id, o.rating IS NOT NULL AS is_rated,
       o.offers_active, cu.is_blocked AS customer_blocked, o.deadline < current_date AS overdue
FROM orders o
JOIN users cu ON cu.id = o.customer_id
WHERE o.id = %(order_id)s

-- name: order_history_list
-- The timeline of the order page; a staff member's note (staff_only) only when %(staff)s.
SELECT h.id, h.at, h.action, h.from_status, h.to_status, h.actor_id,
       CASE WHEN %(staff)s OR NOT h.staff_only THEN h.note END AS note,
       a.name AS actor_name, h.performer_id, p.name AS performer_name
FROM order_history h
LEFT JOIN users a ON a.id = h.actor_id
LEFT JOIN users p ON p.id = h.performer_id
WHERE h.order_id = %(order_id)s
ORDER BY h.id

-- name: orders_latest_open
-- The home page's ten newest open orders (a constant LIMIT: see home_performers_top).
SELECT o.id, o.title, o.budget, o.deadline, o.created_at, o.mode, o.offers_active,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users u ON u.id = o.customer_id
WHERE o.status = 'open'
  AND NOT u.is_blocked
ORDER BY o.created_at DESC, o.id DESC
LIMIT 10

-- name: orders_feed
-- The feed: open orders of customers who are not blocked, newest first (sort 'new'), highest
-- budget first (sort 'budget'), cheapest first (sort 'cheap', orders_feed_budget_idx read
-- backwards) or nearest deadline first, none last (sort 'deadline', orders_feed_deadline_idx), ties by id; one page after the cursor; every filter optional.
-- PostgreSQL plans it with the values bound (a custom plan; tests/test_feed.py checks it stays so),
-- which folds the CASEs to the chosen sort: the cursor becomes a row comparison that is an index
-- condition on orders_feed_new_idx or orders_feed_budget_idx, the ORDER BY their order, and a deep
-- page costs what the first one does. The cursor is always given (the first page starts after the
-- end of time / the top budget). LIMIT 21: a page of 20 and one more to know a next page exists.
-- The edge (optional) stops the walk at a window edge: searches use it, see orders_feed_search_older.
-- The feed with no filter (each sort) and a category's newest first have statements of their own
-- with one plan kept (orders_feed_newest and the next ones); this one serves every other choice.
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at, o.mode, o.offers_active,
       o.category_id
FROM orders o
JOIN users u ON u.id = o.customer_id
WHERE o.status = 'open'
  AND NOT u.is_blocked
  AND CASE WHEN %(sort)s::text = 'budget'
           THEN (o.budget, o.id) < (%(after_budget)s::integer, %(after_id)s::bigint)
           WHEN %(sort)s::text = 'cheap'
           THEN (o.budget, o.id) > (%(after_budget)s::integer, %(after_id)s::bigint)
           WHEN %(sort)s::text = 'deadline'
           THEN (COALESCE(o.deadline, 'infinity'::date), o.id) > (%(after_deadline)s::date, %(after_id)s::bigint)
           ELSE (o.created_at, o.id) < (%(after_time)s::timestamptz, %(after_id)s::bigint)
      END
  AND (%(edge_id)s::bigint IS NULL
       OR CASE WHEN %(sort)s::text = 'budget'
               THEN (o.budget, o.id) >= (%(edge_budget)s::integer, %(edge_id)s::bigint)
               WHEN %(sort)s::text = 'cheap'
               THEN (o.budget, o.id) <= (%(edge_budget)s::integer, %(edge_id)s::bigint)
               WHEN %(sort)s::text = 'deadline'
               THEN (COALESCE(o.deadline, 'infinity'::date), o.id) <= (%(edge_deadline)s::date, %(edge_id)s::bigint)
               ELSE (o.created_at, o.id) >= (%(edge_time)s::timestamptz, %(edge_id)s::bigint)
          END)
  AND (%(q)s::text IS NULL OR o.search @@ websearch_to_tsquery('russian', %(q)s::text))
  AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s::integer)
  AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s::integer)
  AND (%(max_budget)s::integer IS NULL OR o.budget <= %(max_budget)s::integer)
ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN o.budget END DESC,
         CASE WHEN %(sort)s::text = 'new' THEN o.created_at END DESC,
         CASE WHEN %(sort)s::text = 'cheap' THEN o.budget END,
         CASE WHEN %(sort)s::text = 'deadline' THEN COALESCE(o.deadline, 'infinity'::date) END,
         CASE WHEN %(sort)s::text IN ('cheap', 'deadline') THEN o.id END,
         o.id DESC
LIMIT 21

-- name: orders_feed_newest
-- The feed with no filter, newest first (the feed's own link and its pages): the rows of
-- orders_feed, by orders_feed_new_idx, in a statement of its own so that PostgreSQL keeps one
-- plan for it (orders_feed is planned for every call: 0.25 ms of backend CPU at a million orders
-- against 0.09). The cursor is read through subqueries, so the plan made for the values of the
-- first calls costs what the generic one does (see performers_catalogue). Its generic plan once
-- walked a B-tree on created_at backwards with an incremental sort, 8.7 ms at a million orders:
-- that index is a BRIN now.
SELECT f.*
FROM feed_orders f
WHERE (f.created_at, f.id) < ((SELECT %(after_time)s::timestamptz), (SELECT %(after_id)s::bigint))
ORDER BY f.created_at DESC, f.id DESC
LIMIT 21

-- name: orders_feed_highest_budget
-- The feed with no filter, highest budget first: as orders_feed_newest, by orders_feed_budget_idx.
SELECT f.*
FROM feed_orders f
WHERE (f.budget, f.id) < ((SELECT %(after_budget)s::integer), (SELECT %(after_id)s::bigint))
ORDER BY f.budget DESC, f.id DESC
LIMIT 21

-- name: orders_feed_lowest_budget
-- The feed with no filter, cheapest first: as orders_feed_newest, by orders_feed_budget_idx read
-- backwards.
SELECT f.*
FROM feed_orders f
WHERE (f.budget, f.id) > ((SELECT %(after_budget)s::integer), (SELECT %(after_id)s::bigint))
ORDER BY f.budget, f.id
LIMIT 21

-- name: orders_feed_nearest_deadline
-- The feed with no filter, nearest deadline first, none last: as orders_feed_newest, by
-- orders_feed_deadline_idx.
SELECT f.*
FROM feed_orders f
WHERE (COALESCE(f.deadline, 'infinity'::date), f.id) > ((SELECT %(after_deadline)s::date), (SELECT %(after_id)s::bigint))
ORDER BY COALESCE(f.deadline, 'infinity'::date), f.id
LIMIT 21

-- name: orders_feed_in_category
-- The feed of one category, newest first, with no other filter (the sidebar's links): as
-- orders_feed_newest, by orders_feed_category_new_idx: 0.04-0.08 ms of backend CPU at a million
-- orders where orders_feed takes 0.2-0.3.
SELECT f.*
FROM feed_orders f
WHERE f.category_id = %(category_id)s::integer
  AND (f.created_at, f.id) < ((SELECT %(after_time)s::timestamptz), (SELECT %(after_id)s::bigint))
ORDER BY f.created_at DESC, f.id DESC
LIMIT 21

-- name: orders_search_newest
-- A search newest first (the search box's, with or without a category or budget), and how many
-- open orders match in its window: one statement whose plan PostgreSQL keeps. orders_feed and
-- orders_feed_count, each planned at every call, were 0.8 ms of backend CPU per search at a
-- million orders, most of it planning.
-- It walks orders_feed_new_idx from the cursor down to the window edge (orders_feed_window_edge;
-- none when the window holds every open order left), takes the first feed_count_cap() + 1
-- matches, and returns the first 21 of them with their count (window_matches; matches_cap, the
-- cap: the page's count when this is the first page and the term common). The term is tested
-- by ts_match_vq(), the function behind @@, so that no plan can take the GIN index instead: for
-- a common word (half the open orders at a million) that read 166,000 index entries, 43 ms, and
-- a plan kept for every term cannot know which it will get. The edge bounds the walk whatever
-- the term (2,000 open orders); beyond it, orders_feed_search_older goes through the GIN index.
-- Where the window is most of the open orders (3,377 at 10,000 orders), the plan kept reads the
-- whole window by a bitmap and sorts it (1.4 ms): bounded by the edge all the same.
-- The values are read through subqueries, so the plans made for the first calls' values cost
-- what the generic one does (see orders_feed_newest). The matches carry the columns the page
-- shows (those of feed_orders), so its 21 are not looked up again by id (0.33 -> 0.30 ms a call).
WITH window_matches AS MATERIALIZED (
    SELECT o.id, o.title, o.description, o.budget, o.deadline, o.created_at, o.mode, o.offers_active, o.category_id
    FROM orders o
    JOIN users u ON u.id = o.customer_id
    WHERE o.status = 'open'
      AND NOT u.is_blocked
      AND (o.created_at, o.id) < ((SELECT %(after_time)s::timestamptz), (SELECT %(after_id)s::bigint))
      AND (o.created_at, o.id) >= ((SELECT COALESCE(%(edge_time)s::timestamptz, '-infinity')),
                                   (SELECT COALESCE(%(edge_id)s::bigint, 0)))
      AND ts_match_vq(o.search, (SELECT websearch_to_tsquery('russian', %(q)s::text)))
      AND ((SELECT %(category_id)s::integer) IS NULL OR o.category_id = (SELECT %(category_id)s::integer))
      AND ((SELECT %(min_budget)s::integer) IS NULL OR o.budget >= (SELECT %(min_budget)s::integer))
      AND ((SELECT %(max_budget)s::integer) IS NULL OR o.budget <= (SELECT %(max_budget)s::integer))
    ORDER BY o.created_at DESC, o.id DESC
    LIMIT feed_count_cap() + 1
)
SELECT m.id, m.title, left(m.description, 240) AS excerpt, m.budget, m.deadline, m.created_at, m.mode,
       m.offers_active, m.category_id,
       (SELECT count(*) FROM window_matches) AS window_matches,
       feed_count_cap() AS matches_cap
FROM window_matches m
ORDER BY m.created_at DESC, m.id DESC
LIMIT 21

-- name: orders_feed_window_edge
-- The %(window)s-th open order after the feed cursor, or nothing when fewer are left: a search
-- first looks only between the cursor and this edge (see orders_feed_search_older for why).
-- It reads only the sort's key and the id (the other keys are NULL), so it is an index-only walk
-- of the partial feed index of that sort (orders_feed_new_idx, orders_feed_budget_idx — backwards
-- for cheapest first — or orders_feed_deadline_idx): reading the heap, the planner preferred a
-- B-tree on created_at (a BRIN since), which also walks every closed order in between and every
-- dead row a burst of writes leaves behind.
SELECT o.id,
       CASE WHEN %(sort)s::text = 'new' THEN o.created_at END AS created_at,
       CASE WHEN %(sort)s::text IN ('budget', 'cheap') THEN o.budget END AS budget,
       CASE WHEN %(sort)s::text = 'deadline' THEN COALESCE(o.deadline, 'infinity'::date)::text END AS deadline_key
FROM orders o
WHERE o.status = 'open'
  AND CASE WHEN %(sort)s::text = 'budget'
           THEN (o.budget, o.id) < (%(after_budget)s::integer, %(after_id)s::bigint)
           WHEN %(sort)s::text = 'cheap'
           THEN (o.budget, o.id) > (%(after_budget)s::integer, %(after_id)s::bigint)
           WHEN %(sort)s::text = 'deadline'
           THEN (COALESCE(o.deadline, 'infinity'::date), o.id) > (%(after_deadline)s::date, %(after_id)s::bigint)
           ELSE (o.created_at, o.id) < (%(after_time)s::timestamptz, %(after_id)s::bigint)
      END
ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN o.budget END DESC,
         CASE WHEN %(sort)s::text = 'new' THEN o.created_at END DESC,
         CASE WHEN %(sort)s::text = 'cheap' THEN o.budget END,
         CASE WHEN %(sort)s::text = 'deadline' THEN COALESCE(o.deadline, 'infinity'::date) END,
         CASE WHEN %(sort)s::text IN ('cheap', 'deadline') THEN o.id END,
         o.id DESC
OFFSET %(window)s - 1
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
               WHEN %(sort)s::text = 'cheap'
               THEN (o.budget, o.id) > (%(edge_budget)s::integer, %(edge_id)s::bigint)
               WHEN %(sort)s::text = 'deadline'
               THEN (COALESCE(o.deadline, 'infinity'::date), o.id) > (%(edge_deadline)s::date, %(edge_id)s::bigint)
               ELSE (o.created_at, o.id) < (%(edge_time)s::timestamptz, %(edge_id)s::bigint)
          END
)
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at, o.mode, o.offers_active,
       o.category_id
FROM matches m
JOIN orders o ON o.id = m.id
JOIN users u ON u.id = o.customer_id
WHERE NOT u.is_blocked
  AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s::integer)
  AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s::integer)
  AND (%(max_budget)s::integer IS NULL OR o.budget <= %(max_budget)s::integer)
ORDER BY CASE WHEN %(sort)s::text = 'budget' THEN o.budget END DESC,
         CASE WHEN %(sort)s::text = 'new' THEN o.created_at END DESC,
         CASE WHEN %(sort)s::text = 'cheap' THEN o.budget END,
         CASE WHEN %(sort)s::text = 'deadline' THEN COALESCE(o.deadline, 'infinity'::date) END,
         CASE WHEN %(sort)s::text IN ('cheap', 'deadline') THEN o.id END,
         o.id DESC
LIMIT %(limit)s

-- name: orders_feed_count
-- How many open orders match the feed's filters (n), counted up to feed_count_cap() + 1 (cap: the
-- page says "more than cap" beyond). As a search page does, it counts first among the newest open
-- orders down to the window edge (orders_feed_window_edge of the first page, newest first; NULL
-- when the window holds every open order), walking the feed index, whose heap pages the feed
-- keeps in memory; only when fewer than cap + 1 match there (a rare term) does it count older
-- ones, through the indexes the planner picks for the filters (for a term, the GIN index), up to
-- cap + 1 again (a constant LIMIT, which the planner weighs as it did before; the sum is then
-- "more than cap" all the same). Counted in one pass, a common word was a sequential scan with a
-- LIMIT reading its pages from outside PostgreSQL's memory (a big table's scan gets a small ring
-- of buffers), from a different place each time (synchronized scans): 2 ms at a million orders.
WITH newest AS (
    SELECT count(*) AS n
    FROM (SELECT 1
          FROM orders o
          JOIN users u ON u.id = o.customer_id
          WHERE o.status = 'open'
            AND NOT u.is_blocked
            AND (%(edge_id)s::bigint IS NULL
                 OR (o.created_at, o.id) >= (%(edge_time)s::timestamptz, %(edge_id)s::bigint))
            AND (%(q)s::text IS NULL OR o.search @@ websearch_to_tsquery('russian', %(q)s::text))
            AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s::integer)
            AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s::integer)
            AND (%(max_budget)s::integer IS NULL OR o.budget <= %(max_budget)s::integer)
          ORDER BY o.created_at DESC, o.id DESC
          LIMIT feed_count_cap() + 1) AS window_matches
)
SELECT newest.n + (SELECT count(*)
                   FROM (SELECT 1
                         FROM orders o
                         JOIN users u ON u.id = o.customer_id
                         WHERE %(edge_id)s::bigint IS NOT NULL
                           AND newest.n <= feed_count_cap()
                           AND o.status = 'open'
                           AND NOT u.is_blocked
                           AND (o.created_at, o.id) < (%(edge_time)s::timestamptz, %(edge_id)s::bigint)
                           AND (%(q)s::text IS NULL OR o.search @@ websearch_to_tsquery('russian', %(q)s::text))
                           AND (%(category_id)s::integer IS NULL OR o.category_id = %(category_id)s::integer)
                           AND (%(min_budget)s::integer IS NULL OR o.budget >= %(min_budget)s::integer)
                           AND (%(max_budget)s::integer IS NULL OR o.budget <= %(max_budget)s::integer)
                         LIMIT feed_count_cap() + 1) AS older_matches) AS n,
       feed_count_cap() AS cap
FROM newest

-- (end of the orders section)

-- name: performer_cabinet_page
-- A performer cabinet in one statement, its viewer's session too (as customer_cabinet_page): first
-- its aside (part 0): the viewer (as JSON), the counters, in the order of
-- orders.PERFORMER_COUNTERS, and the average rating; then the five ratings and reviews the
-- performer received last, hidden ones left out, newest first (part 1; the public profile pages
-- them all, the cabinet links there); then the performer's orders, newest first, optionally of one
-- status, a keyset page after (created_at, id) (part 2). No row at all when the session has ended.
-- A review shares the columns of an order it can (id, title, rating, customer_name) and has two of
-- its own; each row is kept rendered under all of its values. An order's row gives the columns it
-- shows: the price agreed, else the budget; the time of handing in only while it waits for the
-- customer (the row shows it then alone). The tab of the performer's offers takes the aside and the
-- reviews alone (limit 0).
WITH viewer AS MATERIALIZED (
    SELECT id, role, name, email, is_staff, is_blocked, lang, timezone, unread_messages, unread_notifications
    FROM session_viewers
    WHERE token_hash = %(token_hash)s)
(SELECT 2 AS part, o.id, o.title, coalesce(o.agreed_price, o.budget) AS price, o.deadline, o.status, o.created_at,
        CASE WHEN o.status = 'delivered' THEN o.delivered_at END AS delivered_at,
        CASE WHEN NOT o.review_hidden THEN o.rating END AS rating, cu.name AS customer_name,
        CASE %(lang)s WHEN 'en' THEN c.name_en ELSE c.name_ru END AS category_name,
        NULL::text AS review, NULL::timestamptz AS rated_at, NULL::integer[] AS counters,
        NULL::numeric AS rating_avg, NULL::json AS viewer
 FROM orders o
 JOIN categories c ON c.id = o.category_id
 JOIN users cu ON cu.id = o.customer_id
 WHERE o.performer_id = (SELECT id FROM viewer)
   AND (%(status)s::order_status IS NULL OR o.status = %(status)s::order_status)
   AND (o.created_at, o.id) < (%(after_time)s, %(after_id)s)
 ORDER BY o.created_at DESC, o.id DESC
 LIMIT %(limit)s)
UNION ALL
(SELECT 1, o.id, o.title, NULL, NULL, NULL, NULL, NULL, o.rating, cu.name, NULL, o.review, o.rated_at, NULL, NULL, NULL
 FROM orders o
 JOIN users cu ON cu.id = o.customer_id
 WHERE o.performer_id = (SELECT id FROM viewer)
   AND o.rating IS NOT NULL
   AND NOT o.review_hidden
 ORDER BY o.rated_at DESC, o.id DESC
 LIMIT 5)
UNION ALL
SELECT 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       ARRAY[s.orders_completed, s.orders_in_progress, s.orders_delivered, s.orders_disputed, s.rating_count],
       s.rating_avg, to_json(v)
FROM viewer v
LEFT JOIN performer_stats s ON s.performer_id = v.id
ORDER BY part, created_at DESC, rated_at DESC, id DESC

-- name: api_orders_by_ids
-- Orders as the API shows them, in the order of %(ids)s; the rating and review of a hidden review
-- only for staff.
SELECT o.id, o.title, o.description, o.budget, o.deadline, o.status, o.mode, o.customer_id, o.performer_id,
       o.agreed_price, o.offers_active, o.cancel_reason, o.created_at, o.taken_at, o.delivered_at,
       o.disputed_at, o.completed_at, o.cancelled_at, o.rated_at,
       CASE WHEN NOT o.review_hidden OR %(staff)s THEN o.rating END AS rating,
       CASE WHEN NOT o.review_hidden OR %(staff)s THEN o.review END AS review,
       c.slug AS category_slug, c.name_ru AS category_name_ru, c.name_en AS category_name_en,
       cu.name AS customer_name, pu.name AS performer_name
FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS wanted (id, position)
JOIN orders o ON o.id = wanted.id
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
LEFT JOIN users pu ON pu.id = o.performer_id
ORDER BY wanted.position

-- (end of the API section)

-- =============================================================================================
-- Admin area: dashboard, users, orders, categories, reviews, the audit log, exports

-- Every staff action below is one statement: the change, guarded by its state, by "not on
-- yourself" and by the actor still being active staff, plus its admin_log row; when nothing
-- changed it logs nothing and returns no row (the route then reads to pick 404/403/409).

-- name: admin_dashboard_read
-- The dashboard's figures as the tick (or "check now") last computed them (NULLs before its first
-- run), the stored counter audit (audit_*: when it ran, how long ago, what drifted; NULLs before
-- the first audit), the open disputes of the navigation (disputes_*: open_disputes_badge) and the
-- ten best performers (top_performers, a JSON array, best first; their average as text, as the
-- numeric shows it), in one statement: as four they were a fifth of the page's time. The LIMIT
-- is a constant: see home_performers_top. The viewer of the session of token_hash too (JSON,
-- NULL when none is live), as the cabinets read theirs: the page is for staff only.
WITH viewer AS (
    SELECT id, role, name, email, is_staff, is_blocked, lang, timezone, unread_messages, unread_notifications
    FROM session_viewers
    WHERE token_hash = %(token_hash)s)
SELECT (SELECT to_json(v) FROM viewer v) AS viewer,
       f.computed_at,
       now() - f.computed_at AS age,
       f.users_by_role,
       f.orders_by_status,
       f.new_per_day,
       a.checked_at AS audit_checked_at,
       now() - a.checked_at AS audit_age,
       a.drifted AS audit_drifted,
       a.drift AS audit_drift,
       d.n AS disputes_n,
       d.cap AS disputes_cap,
       to_jsonb(ARRAY(
           SELECT jsonb_build_object('id', u.id, 'name', u.name, 'is_blocked', u.is_blocked,
                                     'orders_completed', s.orders_completed,
                                     'orders_in_progress', s.orders_in_progress,
                                     'rating_count', s.rating_count, 'rating_avg', s.rating_avg::text)
           FROM performer_stats s
           JOIN users u ON u.id = s.performer_id
           ORDER BY coalesce(s.rating_avg, 0) DESC, s.orders_completed DESC, -s.performer_id DESC
           LIMIT 10)) AS top_performers
FROM (VALUES (1)) AS one
LEFT JOIN dashboard_figures f ON true
LEFT JOIN counter_audit a ON true
CROSS JOIN open_disputes_badge d

-- name: dashboard_figures_refresh
SELECT dashboard_figures_refresh() AS computed_at

-- name: admin_counters_recalc
-- Repairs every drifted counter and logs what drifted (the first 100) and how many were fixed.
-- audit_counters() here reads the statement's snapshot, so it sees the drift before the repair.
WITH staff AS (
    SELECT id
    FROM users
    WHERE id = %(staff_id)s
      AND is_staff
      AND NOT is_blocked
), drift AS (
    SELECT coalesce(jsonb_agg(to_jsonb(a)), '[]'::jsonb) AS rows
    FROM (SELECT * FROM audit_counters() LIMIT 100) AS a
), repaired AS (
    SELECT recalc_counters() AS fixed
    FROM staff
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s, 'recalc_counters', 'counters', NULL, %(reason)s,
       jsonb_build_object('drift', d.rows),
       jsonb_build_object('fixed', r.fixed)
FROM repaired r
CROSS JOIN drift d
RETURNING id, after

-- name: admin_users_search
-- q matches a part of the name or email (strpos: no LIKE wildcards to escape); keyset by id.
SELECT id,
       role,
       name,
       email,
       is_staff,
       is_blocked,
       created_at
FROM users
WHERE (%(q)s::text = ''
       OR strpos(lower(name), lower(%(q)s::text)) > 0
       OR strpos(lower(email), lower(%(q)s::text)) > 0)
  AND (%(role)s::user_role IS NULL OR role = %(role)s::user_role)
  AND (%(staff)s::boolean IS NULL OR is_staff = %(staff)s::boolean)
  AND (%(blocked)s::boolean IS NULL OR is_blocked = %(blocked)s::boolean)
  AND (%(after_id)s::bigint IS NULL OR id < %(after_id)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s

-- name: admin_user_get
SELECT u.id,
       u.role,
       u.email,
       u.name,
       u.phone,
       u.messenger,
       u.experience_years,
       u.experience_text,
       u.bio,
       u.is_staff,
       u.is_blocked,
       u.created_at,
       u.updated_at,
       (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND s.expires_at > now()) AS sessions,
       cs.orders_placed,
       cs.orders_open,
       cs.orders_in_progress AS customer_in_progress,
       cs.orders_delivered AS customer_delivered,
       cs.orders_disputed AS customer_disputed,
       cs.orders_done,
       cs.orders_cancelled,
       ps.orders_completed,
       ps.orders_in_progress AS performer_in_progress,
       ps.orders_delivered AS performer_delivered,
       ps.orders_disputed AS performer_disputed,
       ps.rating_sum,
       ps.rating_count,
       ps.rating_avg
FROM users u
LEFT JOIN customer_stats cs ON cs.customer_id = u.id
LEFT JOIN performer_stats ps ON ps.performer_id = u.id
WHERE u.id = %(user_id)s

-- name: admin_user_orders
SELECT o.id,
       o.title,
       o.status,
       o.budget,
       o.created_at,
       o.customer_id,
       o.performer_id,
       c.slug AS category_slug,
       c.name_ru AS category_name_ru,
       c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
WHERE o.customer_id = %(user_id)s
   OR o.performer_id = %(user_id)s
ORDER BY o.id DESC
LIMIT %(limit)s

-- name: admin_user_set_blocked
-- Block or unblock another user. The users_block_listing trigger ends their sessions and
-- takes their open orders out of the category counts.
WITH before AS (
    SELECT id, is_blocked
    FROM users
    WHERE id = %(user_id)s
), changed AS (
    UPDATE users
    SET is_blocked = %(blocked)s::boolean
    WHERE id = %(user_id)s
      AND id <> %(staff_id)s
      AND is_blocked <> %(blocked)s::boolean
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, is_blocked
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s,
       CASE WHEN c.is_blocked THEN 'block' ELSE 'unblock' END,
       'user', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_user_set_staff
-- Grant or revoke staff rights of another user (never one's own).
WITH before AS (
    SELECT id, is_staff
    FROM users
    WHERE id = %(user_id)s
), changed AS (
    UPDATE users
    SET is_staff = %(staff)s::boolean
    WHERE id = %(user_id)s
      AND id <> %(staff_id)s
      AND is_staff <> %(staff)s::boolean
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, is_staff
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s,
       CASE WHEN c.is_staff THEN 'grant_staff' ELSE 'revoke_staff' END,
       'user', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_orders_search
-- q: words of the title (the title is weight A of the indexed search vector).
SELECT o.id,
       o.title,
       o.status,
       o.budget,
       o.created_at,
       o.customer_id,
       cu.name AS customer_name,
       o.performer_id,
       pe.name AS performer_name,
       c.slug AS category_slug,
       c.name_ru AS category_name_ru,
       c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
LEFT JOIN users pe ON pe.id = o.performer_id
WHERE (%(q)s::text = ''
       OR (o.search @@ websearch_to_tsquery('russian', %(q)s::text)
           AND ts_filter(o.search, '{a}') @@ websearch_to_tsquery('russian', %(q)s::text)))
  AND (%(status)s::order_status IS NULL OR o.status = %(status)s::order_status)
  AND (%(category)s::text IS NULL OR c.slug = %(category)s::text)
  AND (%(customer_id)s::bigint IS NULL OR o.customer_id = %(customer_id)s::bigint)
  AND (%(performer_id)s::bigint IS NULL OR o.performer_id = %(performer_id)s::bigint)
  AND (%(created_from)s::date IS NULL OR o.created_at >= %(created_from)s::date)
  AND (%(created_to)s::date IS NULL OR o.created_at < %(created_to)s::date + 1)
  AND (%(after_id)s::bigint IS NULL OR o.id < %(after_id)s::bigint)
ORDER BY o.id DESC
LIMIT %(limit)s

-- name: admin_order_get
SELECT o.id,
       o.title,
       o.description,
       o.status,
       o.mode,
       o.budget,
       o.agreed_price,
       o.offers_active,
       o.deadline,
       o.rating,
       o.review,
       o.review_hidden,
       o.cancel_reason,
       o.created_at,
       o.taken_at,
       o.delivered_at,
       o.disputed_at,
       o.completed_at,
       o.cancelled_at,
       o.rated_at,
       o.customer_id,
       cu.name AS customer_name,
       cu.email AS customer_email,
       cu.is_blocked AS customer_blocked,
       o.performer_id,
       pe.name AS performer_name,
       pe.email AS performer_email,
       c.slug AS category_slug,
       c.name_ru AS category_name_ru,
       c.name_en AS category_name_en
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
LEFT JOIN users pe ON pe.id = o.performer_id
WHERE o.id = %(order_id)s

-- name: admin_order_history
SELECT h.id,
       h.at,
       h.action,
       h.from_status,
       h.to_status,
       h.note,
       h.actor_id,
       a.name AS actor_name,
       a.is_staff AS actor_is_staff,
       h.performer_id,
       p.name AS performer_name
FROM order_history h
LEFT JOIN users a ON a.id = h.actor_id
LEFT JOIN users p ON p.id = h.performer_id
WHERE h.order_id = %(order_id)s
ORDER BY h.id

-- name: admin_order_cancel
-- Staff cancel an open or in-progress order; the reason goes to the audit log and, through
-- act_as(staff=True), to the history as a staff-only note (not to the public cancel_reason).
WITH before AS (
    SELECT id, status, performer_id
    FROM orders
    WHERE id = %(order_id)s
), changed AS (
    UPDATE orders
    SET status = 'cancelled'
    WHERE id = %(order_id)s
      AND status IN ('open', 'in_progress')
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, status, performer_id
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s, 'cancel_order', 'order', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_order_reopen
-- Staff put an in-progress order back in the feed and unassign its performer.
WITH before AS (
    SELECT id, status, performer_id
    FROM orders
    WHERE id = %(order_id)s
), changed AS (
    UPDATE orders
    SET status = 'open',
        performer_id = NULL,
        agreed_price = NULL
    WHERE id = %(order_id)s
      AND status = 'in_progress'
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, status, performer_id
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s, 'reopen_order', 'order', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_order_resolve
-- Staff settle a dispute: the order becomes done or cancelled, logged with the reason.
WITH before AS (
    SELECT id, status, performer_id
    FROM orders
    WHERE id = %(order_id)s
), changed AS (
    UPDATE orders
    SET status = %(outcome)s::order_status
    WHERE id = %(order_id)s
      AND status = 'disputed'
      AND %(outcome)s IN ('done', 'cancelled')
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, status, performer_id
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s, 'resolve_dispute', 'order', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_disputes_queue
-- Disputed orders, the longest waiting first (keyset page after (disputed_at, id), on the partial
-- index orders_disputed_idx), with both sides' names, who opened the dispute and why.
SELECT o.id, o.title, o.disputed_at, o.agreed_price, o.customer_id, cu.name AS customer_name,
       o.performer_id, pu.name AS performer_name,
       d.note AS reason, d.actor_id AS opened_by_id, a.name AS opened_by
FROM orders o
JOIN users cu ON cu.id = o.customer_id
JOIN users pu ON pu.id = o.performer_id
LEFT JOIN LATERAL (SELECT h.note, h.actor_id
                   FROM order_history h
                   WHERE h.order_id = o.id
                     AND h.action = 'dispute'
                   ORDER BY h.id DESC
                   LIMIT 1) AS d ON true
LEFT JOIN users a ON a.id = d.actor_id
WHERE o.status = 'disputed'
  AND (o.disputed_at, o.id) > (%(after_at)s::timestamptz, %(after_id)s::bigint)
ORDER BY o.disputed_at, o.id
LIMIT %(limit)s

-- name: admin_disputes_open
-- For the admin area's navigation: the open disputes, up to a cap (see the view).
SELECT n, cap
FROM open_disputes_badge

-- name: admin_categories_all
-- Hidden ones included (categories_list shows only the visible ones).
SELECT id,
       slug,
       name_ru,
       name_en,
       is_hidden,
       open_orders
FROM categories
ORDER BY id

-- name: admin_category_get
SELECT id,
       slug,
       name_ru,
       name_en,
       is_hidden
FROM categories
WHERE id = %(category_id)s

-- name: admin_category_slug_taken
SELECT EXISTS (SELECT 1 FROM categories WHERE slug = %(slug)s) AS taken

-- name: admin_category_add
WITH added AS (
    INSERT INTO categories (slug, name_ru, name_en)
    SELECT %(slug)s, %(name_ru)s, %(name_en)s
    WHERE EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    ON CONFLICT (slug) DO NOTHING
    RETURNING id, slug, name_ru, name_en, is_hidden
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s, 'add_category', 'category', a.id, %(reason)s, NULL, to_jsonb(a)
FROM added a
RETURNING id, target_id

-- name: admin_category_rename
WITH before AS (
    SELECT id, name_ru, name_en
    FROM categories
    WHERE id = %(category_id)s
), changed AS (
    UPDATE categories
    SET name_ru = %(name_ru)s,
        name_en = %(name_en)s
    WHERE id = %(category_id)s
      AND (name_ru, name_en) IS DISTINCT FROM (%(name_ru)s::text, %(name_en)s::text)
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, name_ru, name_en
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s, 'rename_category', 'category', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_category_set_hidden
-- A hidden category takes no new orders (orders_guard_transition) and leaves categories_list.
WITH before AS (
    SELECT id, is_hidden
    FROM categories
    WHERE id = %(category_id)s
), changed AS (
    UPDATE categories
    SET is_hidden = %(hidden)s::boolean
    WHERE id = %(category_id)s
      AND is_hidden <> %(hidden)s::boolean
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, is_hidden
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s,
       CASE WHEN c.is_hidden THEN 'hide_category' ELSE 'unhide_category' END,
       'category', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_reviews_list
SELECT o.id,
       o.title,
       o.rating,
       o.review,
       o.review_hidden,
       o.rated_at,
       o.performer_id,
       pe.name AS performer_name,
       o.customer_id,
       cu.name AS customer_name
FROM orders o
JOIN users pe ON pe.id = o.performer_id
JOIN users cu ON cu.id = o.customer_id
WHERE o.rating IS NOT NULL
  AND (%(hidden)s::boolean IS NULL OR o.review_hidden = %(hidden)s::boolean)
  AND (%(performer_id)s::bigint IS NULL OR o.performer_id = %(performer_id)s::bigint)
  AND (%(order_id)s::bigint IS NULL OR o.id = %(order_id)s::bigint)
  AND (%(after_id)s::bigint IS NULL OR o.id < %(after_id)s::bigint)
ORDER BY o.id DESC
LIMIT %(limit)s

-- name: admin_review_set_hidden
-- Hide or restore a rating and its review; performer_stats follow via orders_count_contribution.
-- Call act_as() first: order_history records hide_rating / restore_rating with the staff actor.
WITH before AS (
    SELECT id, rating, review_hidden
    FROM orders
    WHERE id = %(order_id)s
), changed AS (
    UPDATE orders
    SET review_hidden = %(hidden)s::boolean
    WHERE id = %(order_id)s
      AND rating IS NOT NULL
      AND review_hidden <> %(hidden)s::boolean
      AND EXISTS (SELECT 1 FROM users s WHERE s.id = %(staff_id)s AND s.is_staff AND NOT s.is_blocked)
    RETURNING id, rating, review_hidden
)
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, before, after)
SELECT %(staff_id)s,
       CASE WHEN c.review_hidden THEN 'hide_review' ELSE 'restore_review' END,
       'review', c.id, %(reason)s, to_jsonb(b), to_jsonb(c)
FROM changed c
JOIN before b USING (id)
RETURNING id

-- name: admin_log_list
SELECT l.id,
       l.at,
       l.staff_id,
       s.name AS staff_name,
       l.action,
       l.target_type,
       l.target_id,
       l.reason,
       l.before,
       l.after
FROM admin_log l
LEFT JOIN users s ON s.id = l.staff_id
WHERE (%(action)s::text IS NULL OR l.action = %(action)s::text)
  AND (%(target_types)s::text[] IS NULL OR l.target_type = ANY(%(target_types)s::text[]))
  AND (%(target_id)s::bigint IS NULL OR l.target_id = %(target_id)s::bigint)
  AND (%(by_staff_id)s::bigint IS NULL OR l.staff_id = %(by_staff_id)s::bigint)
  AND (%(after_id)s::bigint IS NULL OR l.id < %(after_id)s::bigint)
ORDER BY l.id DESC
LIMIT %(limit)s

-- name: admin_export_users
SELECT id,
       role,
       email,
       name,
       phone,
       messenger,
       experience_years,
       is_staff,
       is_blocked,
       created_at
FROM users
ORDER BY id

-- name: admin_export_orders
SELECT o.id,
       o.created_at,
       o.status,
       c.slug AS category,
       o.title,
       o.budget,
       o.deadline,
       o.customer_id,
       cu.name AS customer_name,
       o.performer_id,
       pe.name AS performer_name,
       o.rating,
       o.review_hidden,
       o.cancel_reason
FROM orders o
JOIN categories c ON c.id = o.category_id
JOIN users cu ON cu.id = o.customer_id
LEFT JOIN users pe ON pe.id = o.performer_id
ORDER BY o.id

-- (end of the admin section)

-- =============================================================================================
-- Talking: conversations, messages, files, notifications, mail, password resets (issue 11)

-- name: user_lang_set
-- The language of the interface the user chose: their mail is written in it.
UPDATE users
SET lang = %(lang)s
WHERE id = %(user_id)s
  AND lang <> %(lang)s

-- name: user_email_notifications_set
UPDATE users
SET email_notifications = %(on)s
WHERE id = %(user_id)s
  AND email_notifications <> %(on)s

-- name: order_contacts
-- The phone and messenger of an order's customer and performer, for the two of them once a
-- performer is assigned.
SELECT cu.phone AS customer_phone, cu.messenger AS customer_messenger,
       pu.phone AS performer_phone, pu.messenger AS performer_messenger
FROM orders o
JOIN users cu ON cu.id = o.customer_id
JOIN users pu ON pu.id = o.performer_id
WHERE o.id = %(order_id)s
  AND %(user_id)s IN (o.customer_id, o.performer_id)

-- name: conversation_open
-- The conversation of an order with a performer, opened if it is not there yet: by that performer
-- (while the order is open, or once it is theirs), or by the customer with the performer assigned
-- to the order or one who sent an offer on it. Nothing when the sender may not (conversations_guard
-- checks the order again, FOR SHARE); nothing also when another request opened it at this moment.
WITH found AS (
    SELECT c.id
    FROM conversations c
    WHERE c.order_id = %(order_id)s
      AND c.performer_id = %(performer_id)s
      AND %(sender_id)s IN (c.customer_id, c.performer_id)
), made AS (
    INSERT INTO conversations (order_id, customer_id, performer_id)
    SELECT o.id, o.customer_id, p.id
    FROM orders o
    JOIN users p ON p.id = %(performer_id)s
    JOIN users cu ON cu.id = o.customer_id
    WHERE o.id = %(order_id)s
      AND NOT EXISTS (SELECT 1 FROM found)
      AND p.role = 'performer'
      AND NOT p.is_blocked
      AND NOT cu.is_blocked
      AND (o.status = 'open' OR o.performer_id = p.id)
      AND (%(sender_id)s = p.id
           OR (%(sender_id)s = o.customer_id
               AND (o.performer_id = p.id
                    OR EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.performer_id = p.id))))
    ON CONFLICT (order_id, performer_id) DO NOTHING
    RETURNING id
)
SELECT id
FROM found
UNION ALL
SELECT id
FROM made

-- name: message_send
-- A message from one of the conversation's two people, not blocked, while the order is open or
-- in the assigned performer's conversation; messages_guard numbers it and counts it unread.
INSERT INTO messages (conversation_id, sender_id, body)
SELECT c.id, u.id, %(body)s
FROM conversations c
JOIN orders o ON o.id = c.order_id
JOIN users u ON u.id = %(sender_id)s
WHERE c.id = %(conversation_id)s
  AND u.id IN (c.customer_id, c.performer_id)
  AND NOT u.is_blocked
  AND (o.status = 'open' OR o.performer_id = c.performer_id)
RETURNING id, seq, created_at

-- name: conversation_of
-- The conversation of an order with one performer, with both names and the order's state.
SELECT c.id, c.order_id, c.customer_id, c.performer_id, c.message_count, c.last_message_at,
       c.customer_unread, c.performer_unread, cu.name AS customer_name, pu.name AS performer_name,
       (o.status = 'open' OR o.performer_id = c.performer_id) AS goes_on
FROM conversations c
JOIN orders o ON o.id = c.order_id
JOIN users cu ON cu.id = c.customer_id
JOIN users pu ON pu.id = c.performer_id
WHERE c.order_id = %(order_id)s
  AND c.performer_id = %(performer_id)s

-- name: conversations_of_order
-- The customer's conversations about one order, the latest first, with the customer's unread count.
SELECT c.id, c.performer_id, pu.name AS performer_name, c.message_count, c.last_message_at,
       c.customer_unread AS unread,
       (o.status = 'open' OR o.performer_id = c.performer_id) AS goes_on
FROM conversations c
JOIN orders o ON o.id = c.order_id
JOIN users pu ON pu.id = c.performer_id
WHERE c.order_id = %(order_id)s
  AND c.customer_id = %(customer_id)s
ORDER BY c.last_message_at DESC, c.id DESC

-- name: customer_may_write_to
-- Whether an order's customer may open a conversation with this performer: the one assigned, or
-- one who sent an offer on it.
SELECT EXISTS (SELECT 1
               FROM orders o
               JOIN users p ON p.id = %(performer_id)s
               WHERE o.id = %(order_id)s
                 AND p.role = 'performer'
                 AND (o.status = 'open' OR o.performer_id = p.id)
                 AND (o.performer_id = p.id
                      OR EXISTS (SELECT 1 FROM offers f WHERE f.order_id = o.id AND f.performer_id = p.id)))
       AS may

-- name: messages_of_conversation
-- The latest %(limit)s messages of a conversation before seq %(before)s, oldest first on the page.
SELECT m.id, m.seq, m.sender_id, u.name AS sender_name, m.body, m.created_at
FROM (SELECT *
      FROM messages
      WHERE conversation_id = %(conversation_id)s
        AND seq < %(before)s
      ORDER BY seq DESC
      LIMIT %(limit)s) AS m
JOIN users u ON u.id = m.sender_id
ORDER BY m.seq

-- name: conversation_mark_read
-- The reader has read everything in the conversation: their read mark moves to the last message
-- (conversations_guard recounts their unread messages). Writes only when something is unread.
UPDATE conversations
SET customer_read_seq = CASE WHEN customer_id = %(user_id)s THEN message_count ELSE customer_read_seq END,
    performer_read_seq = CASE WHEN performer_id = %(user_id)s THEN message_count ELSE performer_read_seq END
WHERE id = %(conversation_id)s
  AND %(user_id)s IN (customer_id, performer_id)
  AND CASE WHEN customer_id = %(user_id)s THEN customer_read_seq ELSE performer_read_seq END < message_count
RETURNING id

-- name: notifications_read_for_conversation
-- Reading a conversation also reads the notifications of its messages.
UPDATE notifications
SET read_at = now()
WHERE user_id = %(user_id)s
  AND read_at IS NULL
  AND kind = 'message_received'
  AND order_id = %(order_id)s
  AND params ->> 'conversation_id' = %(conversation_id)s::text

-- name: conversations_inbox
-- The user's conversations with at least one message, the latest first, with their side's unread
-- count and the last message; keyset page after (last_message_at, id). The page is found first,
-- walking the user's side's index in order (a user is the customer or the performer of theirs,
-- never both: one walk finds nothing), then only its rows are joined: with "customer or
-- performer" in one condition no index gave the order, and every conversation of the user was
-- joined and sorted (0.6 ms for 200, growing with them). The walk takes the columns shown with
-- it, so the page is not looked up again (that join read the whole table by a hash where it is
-- small: a third of the statement). Each conversation keeps its last message's first 200
-- characters and sender (messages_guard), so no message is read: looking each page's last message
-- up was 6% of the inbox's CPU under load (bench/ab.py). The inbox shows 140 of them
-- (Jinja's truncate(140) reads no further than 145).
WITH mine AS (
    (SELECT k.id, k.order_id, k.customer_id, k.performer_id, k.last_message_at, k.message_count,
            k.customer_unread AS unread, k.last_message_excerpt, k.last_sender_id
     FROM conversations k
     WHERE k.customer_id = %(user_id)s
       AND k.message_count > 0
       AND (k.last_message_at, k.id) < (%(after_at)s, %(after_id)s)
     ORDER BY k.last_message_at DESC, k.id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT k.id, k.order_id, k.customer_id, k.performer_id, k.last_message_at, k.message_count,
            k.performer_unread AS unread, k.last_message_excerpt, k.last_sender_id
     FROM conversations k
     WHERE k.performer_id = %(user_id)s
       AND k.message_count > 0
       AND (k.last_message_at, k.id) < (%(after_at)s, %(after_id)s)
     ORDER BY k.last_message_at DESC, k.id DESC
     LIMIT %(limit)s)
), page AS (
    SELECT *
    FROM mine
    ORDER BY last_message_at DESC, id DESC
    LIMIT %(limit)s
)
SELECT c.id, c.order_id, o.title, c.customer_id, c.performer_id, cu.name AS customer_name,
       pu.name AS performer_name, c.last_message_at, c.message_count, c.unread,
       (o.status = 'open' OR o.performer_id = c.performer_id) AS goes_on,
       c.last_message_excerpt AS last_body, c.last_sender_id
FROM page c
JOIN orders o ON o.id = c.order_id
JOIN users cu ON cu.id = c.customer_id
JOIN users pu ON pu.id = c.performer_id
ORDER BY c.last_message_at DESC, c.id DESC

-- name: admin_log_conversation_read
-- A staff member who is not one of its people reads a conversation (or one of its files): allowed
-- only while the order is disputed, and written to the audit log by the same statement.
INSERT INTO admin_log (staff_id, action, target_type, target_id, reason, after)
SELECT s.id, %(action)s, 'order', o.id, '',
       jsonb_strip_nulls(jsonb_build_object('conversation_id', c.id, 'performer_id', c.performer_id,
                                            'file_id', %(file_id)s::bigint))
FROM conversations c
JOIN orders o ON o.id = c.order_id
JOIN users s ON s.id = %(staff_id)s
WHERE c.id = %(conversation_id)s
  AND o.status = 'disputed'
  AND s.is_staff
  AND NOT s.is_blocked
  AND s.id NOT IN (c.customer_id, c.performer_id)
RETURNING id

-- name: file_attach
-- files_guard checks that the uploader wrote the message or delivery in this transaction.
INSERT INTO files (sha256, size, name, content_type, uploader_id, message_id, delivery_id, position)
VALUES (%(sha256)s, %(size)s, %(name)s, %(content_type)s, %(uploader_id)s, %(message_id)s, %(delivery_id)s,
        %(position)s)
RETURNING id

-- name: files_of_messages
SELECT id, message_id, name, size, content_type
FROM files
WHERE message_id = ANY(%(message_ids)s::bigint[])
ORDER BY message_id, position

-- name: files_of_order_deliveries
SELECT f.id, f.delivery_id, f.name, f.size, f.content_type
FROM files f
JOIN order_deliveries d ON d.id = f.delivery_id
WHERE d.order_id = %(order_id)s
ORDER BY f.delivery_id, f.position

-- name: file_for_reader
-- A file with the reader's right to it: 'party' for the two people of its conversation, and for a
-- delivery's file the order's customer, its performer and the delivery's performer; 'dispute' for
-- staff on a message's file while the order is disputed (the read must be logged); 'staff' for
-- staff on a delivery's file (deliveries are on the order page staff read); NULL for anyone else.
SELECT f.id, f.sha256, f.size, f.name, f.content_type, f.message_id, f.delivery_id,
       c.id AS conversation_id, coalesce(c.order_id, d.order_id) AS order_id,
       CASE
           WHEN f.message_id IS NOT NULL AND %(user_id)s IN (c.customer_id, c.performer_id) THEN 'party'
           WHEN f.delivery_id IS NOT NULL AND %(user_id)s IN (o.customer_id, o.performer_id, d.performer_id) THEN 'party'
           WHEN NOT u.is_staff THEN NULL
           WHEN f.message_id IS NOT NULL AND o.status = 'disputed' THEN 'dispute'
           WHEN f.delivery_id IS NOT NULL THEN 'staff'
       END AS access
FROM files f
JOIN users u ON u.id = %(user_id)s
LEFT JOIN messages m ON m.id = f.message_id
LEFT JOIN conversations c ON c.id = m.conversation_id
LEFT JOIN order_deliveries d ON d.id = f.delivery_id
JOIN orders o ON o.id = coalesce(c.order_id, d.order_id)
WHERE f.id = %(file_id)s

-- name: notifications_page
-- A user's notifications, newest first; keyset page after an id, with the order's title.
SELECT n.id, n.kind, n.order_id, n.params, n.created_at, n.read_at, o.title AS order_title,
       o.customer_id = n.user_id AS for_customer
FROM notifications n
JOIN orders o ON o.id = n.order_id
WHERE n.user_id = %(user_id)s
  AND n.id < %(after_id)s
ORDER BY n.id DESC
LIMIT %(limit)s

-- name: notification_read
UPDATE notifications
SET read_at = now()
WHERE id = %(id)s
  AND user_id = %(user_id)s
  AND read_at IS NULL
RETURNING id

-- name: notifications_read_for_order
-- Opening an order's page reads the viewer's notifications that lead there (every kind but
-- messages, which lead to their conversation).
UPDATE notifications
SET read_at = now()
WHERE user_id = %(user_id)s
  AND order_id = %(order_id)s
  AND read_at IS NULL
  AND kind <> 'message_received'

-- name: notification_exists
SELECT id
FROM notifications
WHERE id = %(id)s
  AND user_id = %(user_id)s

-- name: notifications_read_all
UPDATE notifications
SET read_at = now()
WHERE user_id = %(user_id)s
  AND read_at IS NULL

-- name: user_unread_counts
SELECT unread_messages, unread_notifications
FROM user_counters
WHERE user_id = %(user_id)s

-- name: mail_claim
-- One due mail, claimed by this sender until its transaction ends; rows another sender holds are
-- skipped, so two ticks never take the same one. Everything the mail says comes with it.
SELECT m.id, m.attempts, m.reset_token, m.notification_id, m.password_reset_id,
       u.email, u.name, u.lang, u.is_blocked, u.email_notifications,
       n.kind, n.params, n.order_id, o.title AS order_title, o.customer_id = u.id AS for_customer
FROM mail_outbox m
JOIN users u ON u.id = m.user_id
LEFT JOIN notifications n ON n.id = m.notification_id
LEFT JOIN orders o ON o.id = n.order_id
WHERE m.sent_at IS NULL
  AND m.failed_at IS NULL
  AND m.next_attempt_at <= now()
ORDER BY m.next_attempt_at, m.id
LIMIT 1
FOR UPDATE OF m SKIP LOCKED

-- name: mail_sent
UPDATE mail_outbox
SET sent_at = now(),
    attempts = attempts + 1,
    reset_token = NULL,
    last_error = NULL
WHERE id = %(id)s
  AND sent_at IS NULL

-- name: mail_failed
-- A failed attempt: the next one after %(wait)s seconds, or none (failed_at) when %(final)s.
UPDATE mail_outbox
SET attempts = attempts + 1,
    last_error = left(%(error)s, 1000),
    next_attempt_at = now() + make_interval(secs => %(wait)s),
    failed_at = CASE WHEN %(final)s THEN now() END,
    reset_token = CASE WHEN %(final)s THEN NULL ELSE reset_token END
WHERE id = %(id)s
  AND sent_at IS NULL

-- name: mail_outbox_purge
-- The tick: mail sent or given up more than 30 days ago.
DELETE FROM mail_outbox
WHERE coalesce(sent_at, failed_at) < now() - interval '30 days'

-- name: password_reset_request
-- A "forgot password" request: throttled, recorded, and a link mailed when the email is an
-- account's, all in password_reset_request(); 0 back means accepted, more the seconds to wait.
SELECT password_reset_request(%(email)s, %(address)s, %(token)s) AS wait_seconds

-- name: password_reset_valid
SELECT r.id, r.user_id
FROM password_resets r
JOIN users u ON u.id = r.user_id
WHERE r.token_hash = %(token_hash)s
  AND r.used_at IS NULL
  AND r.expires_at > now()
  AND NOT u.is_blocked

-- name: password_reset_use
-- A reset link sets the new password once: the link is marked used (a second use finds it used,
-- after waiting for the first), the user's other links too, and the trigger
-- users_end_sessions_on_password_change ends every session.
WITH claimed AS (
    UPDATE password_resets r
    SET used_at = now()
    FROM users u
    WHERE r.token_hash = %(token_hash)s
      AND r.used_at IS NULL
      AND r.expires_at > now()
      AND u.id = r.user_id
      AND NOT u.is_blocked
    RETURNING r.id, r.user_id
), others AS (
    UPDATE password_resets r
    SET used_at = now()
    FROM claimed c
    WHERE r.user_id = c.user_id
      AND r.id <> c.id
      AND r.used_at IS NULL
)
UPDATE users u
SET password_hash = %(password_hash)s
FROM claimed c
WHERE u.id = c.user_id
RETURNING u.id, u.email

-- name: password_resets_purge
-- The tick: expired links (their unsent mail goes with them) and requests past the throttle's hour.
WITH links AS (
    DELETE FROM password_resets
    WHERE expires_at < now()
)
DELETE FROM password_reset_requests
WHERE at < now() - interval '1 hour'

-- name: user_mail_settings
SELECT email_notifications, lang
FROM users
WHERE id = %(user_id)s

-- name: mail_outbox_settle_all
-- Demo data only: the mail of the made-up story counts as sent, so the first tick sends nothing.
UPDATE mail_outbox
SET sent_at = now(),
    reset_token = NULL
WHERE sent_at IS NULL
  AND failed_at IS NULL
