-- The search's statement with one plan (orders_search_newest): the feed's count cap in one place,
-- for it and orders_feed_count, and no parallel scans of orders.
CREATE FUNCTION feed_count_cap() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 100
$$;
COMMENT ON FUNCTION feed_count_cap() IS 'How many matches of a search or budget filter the feed counts at most (the page says "more than" beyond): 100. Counting to 1,000 matches of a common word cost 3-4 ms at a million orders, to 100 a tenth of that. A constant the planner folds into the statements (LIMIT feed_count_cap() + 1), so a plan kept for every call knows it.';

-- No parallel scans of orders: the web's statements read a page of it, and a plan kept for every
-- call that guessed many rows would start two worker processes for each (5 ms, on a machine whose
-- cores serve the other requests).
ALTER TABLE orders SET (parallel_workers = 0);
