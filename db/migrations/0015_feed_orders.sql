-- The feed's rows in a view of their own: each sort of the feed without filters has a statement
-- of its own (one plan kept for each), and they all read this.
CREATE VIEW feed_orders AS
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at, o.mode, o.offers_active,
       o.category_id
FROM orders o
JOIN users u ON u.id = o.customer_id
WHERE o.status = 'open'
  AND NOT u.is_blocked;
COMMENT ON VIEW feed_orders IS 'The feed''s orders (open, of customers who are not blocked) as a feed page shows them: the statements of one feed each (newest first, by budget, by deadline, a category''s) read it in the order of a partial index of orders_feed_*_idx.';
