-- 0008: performance at a million orders (issue 13).
-- The catalogue ranks performers by (coalesce(rating_avg, 0), orders_completed, -performer_id),
-- all descending, so its keyset is one row comparison the index ranges over (ratings are 1..10:
-- 0 puts the unrated last, as NULLS LAST did; -id keeps ties in ascending id order).
DROP INDEX performer_stats_rank_idx;
CREATE INDEX performer_stats_rank_idx ON performer_stats
    ((coalesce(rating_avg, 0)) DESC, orders_completed DESC, (-performer_id) DESC);
COMMENT ON INDEX performer_stats_rank_idx IS 'The catalogue''s and the home page''s order; their keyset cursor is a row comparison on these three keys.';
-- The cabinets' "all" tab reads a customer's (a performer's) orders newest first straight from
-- an index, instead of sorting every order of theirs; a status tab filters the same walk.
DROP INDEX orders_customer_idx;
DROP INDEX orders_performer_idx;
CREATE INDEX orders_customer_idx ON orders (customer_id, created_at DESC, id DESC);
CREATE INDEX orders_performer_idx ON orders (performer_id, created_at DESC, id DESC) WHERE performer_id IS NOT NULL;
COMMENT ON INDEX orders_customer_idx IS 'A customer''s orders newest first, (created_at, id) keyset: the cabinet.';
COMMENT ON INDEX orders_performer_idx IS 'A performer''s orders newest first, (created_at, id) keyset: the cabinet.';
-- The newest orders change all the time (taken, delivered, done): vacuum and analyze orders after
-- about 1% of it changed rather than the default 20% / 10%, so the feed's hot end does not fill
-- with dead rows and the planner's statistics follow it.
ALTER TABLE orders SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                        autovacuum_analyze_scale_factor = 0.005, autovacuum_analyze_threshold = 1000,
                        autovacuum_vacuum_insert_scale_factor = 0.02);
