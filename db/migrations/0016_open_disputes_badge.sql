-- The admin area's count of open disputes in a view of its own: the navigation's statement and
-- the dashboard's read it, and its cap is written once.
CREATE VIEW open_disputes_badge AS
SELECT count(*) AS n,
       99 AS cap
FROM (SELECT 1
      FROM orders
      WHERE status = 'disputed'
      LIMIT 100) AS capped;
COMMENT ON VIEW open_disputes_badge IS 'The open disputes for the admin area''s navigation, counted up to 100 (n; shown as "99+" beyond cap): an index-only walk of orders_disputed_idx that costs the same whatever the backlog. The cap is a constant, so PostgreSQL keeps one plan for the statements that read it.';
