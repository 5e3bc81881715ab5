-- The feed leaves out the open orders of blocked customers by a hash of the blocked users' ids,
-- read once per statement through a partial index of them, instead of joining every order it
-- shows to its customer: the join was half of PostgreSQL's CPU for a feed page (the first page
-- by budget 160 µs against 94, newest first 128 against 70, at a million orders).
CREATE INDEX users_blocked_idx ON users (id) WHERE is_blocked;
COMMENT ON INDEX users_blocked_idx IS 'The blocked users (a few): the feed''s orders (feed_orders) leave out theirs by a hash of these ids, built once per statement.';

CREATE OR REPLACE VIEW feed_orders AS
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at, o.mode, o.offers_active,
       o.category_id
FROM orders o
WHERE o.status = 'open'
  AND o.customer_id NOT IN (SELECT b.id FROM users b WHERE b.is_blocked);
COMMENT ON VIEW feed_orders IS 'The feed''s orders (open, of customers who are not blocked) as a feed page shows them: the statements of one feed each (newest first, by budget, by deadline, a category''s) read it in the order of a partial index of orders_feed_*_idx. Blocked customers are left out by a hash of their ids (users_blocked_idx, a hashed subplan: one probe a row), not by a join to each order''s customer (an index look-up a row, half of the statement''s CPU).';
