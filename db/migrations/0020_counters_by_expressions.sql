-- The counters' trigger works out each counters row's difference as plain expressions instead of a
-- statement of VALUES and GROUP BY per kind of row (three statements a call): the same rows are
-- written, in the same order, a fifth less of the trigger's time.
CREATE OR REPLACE FUNCTION orders_count_contribution() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- An inserted row has no OLD and a deleted one no NEW: the fields of the missing one are NULL,
    -- so it is no one's and contributes nothing.
    subject         bigint;
    was             boolean;  -- the old row counts for the subject
    is_now          boolean;  -- the new row does
    d_placed        integer;
    d_open          integer;
    d_in_progress   integer;
    d_delivered     integer;
    d_disputed      integer;
    d_done          integer;
    d_cancelled     integer;
    d_completed     integer;
    d_rating_sum    integer;
    d_rating_count  integer;
    old_listed      boolean := false;
    new_listed      boolean := false;
BEGIN
    -- Performers first, then customers, then categories, and within each the rows in id order
    -- (a reassignment touches two performers, a move two categories): one fixed order, so two
    -- transactions never wait for each other in a circle. The subjects of a kind are the lower of
    -- the old row's and the new row's (least and greatest pass over a NULL), then the higher if it
    -- is another. Each difference is a plain expression (a statement of VALUES and GROUP BY per kind
    -- was a fifth of the trigger's time).
    -- A performer counts the orders in progress, delivered, disputed and done, and the ratings
    -- that are not hidden.
    subject := least(OLD.performer_id, NEW.performer_id);
    WHILE subject IS NOT NULL LOOP
        was := subject IS NOT DISTINCT FROM OLD.performer_id;
        is_now := subject IS NOT DISTINCT FROM NEW.performer_id;
        d_completed := (is_now AND NEW.status = 'done')::int - (was AND OLD.status = 'done')::int;
        d_in_progress := (is_now AND NEW.status = 'in_progress')::int - (was AND OLD.status = 'in_progress')::int;
        d_delivered := (is_now AND NEW.status = 'delivered')::int - (was AND OLD.status = 'delivered')::int;
        d_disputed := (is_now AND NEW.status = 'disputed')::int - (was AND OLD.status = 'disputed')::int;
        d_rating_sum := CASE WHEN is_now AND NOT NEW.review_hidden THEN coalesce(NEW.rating, 0) ELSE 0 END
                      - CASE WHEN was AND NOT OLD.review_hidden THEN coalesce(OLD.rating, 0) ELSE 0 END;
        d_rating_count := (is_now AND NEW.rating IS NOT NULL AND NOT NEW.review_hidden)::int
                        - (was AND OLD.rating IS NOT NULL AND NOT OLD.review_hidden)::int;
        IF (d_completed, d_in_progress, d_delivered, d_disputed, d_rating_sum, d_rating_count)
           <> (0, 0, 0, 0, 0, 0) THEN
            UPDATE performer_stats
            SET orders_completed   = orders_completed   + d_completed,
                orders_in_progress = orders_in_progress + d_in_progress,
                orders_delivered   = orders_delivered   + d_delivered,
                orders_disputed    = orders_disputed    + d_disputed,
                rating_sum         = rating_sum         + d_rating_sum,
                rating_count       = rating_count       + d_rating_count
            WHERE performer_id = subject;
        END IF;
        subject := nullif(greatest(OLD.performer_id, NEW.performer_id), subject);
    END LOOP;

    -- A customer counts every order placed, and the orders in each status.
    subject := least(OLD.customer_id, NEW.customer_id);
    WHILE subject IS NOT NULL LOOP
        was := subject IS NOT DISTINCT FROM OLD.customer_id;
        is_now := subject IS NOT DISTINCT FROM NEW.customer_id;
        d_placed := is_now::int - was::int;
        d_open := (is_now AND NEW.status = 'open')::int - (was AND OLD.status = 'open')::int;
        d_in_progress := (is_now AND NEW.status = 'in_progress')::int - (was AND OLD.status = 'in_progress')::int;
        d_delivered := (is_now AND NEW.status = 'delivered')::int - (was AND OLD.status = 'delivered')::int;
        d_disputed := (is_now AND NEW.status = 'disputed')::int - (was AND OLD.status = 'disputed')::int;
        d_done := (is_now AND NEW.status = 'done')::int - (was AND OLD.status = 'done')::int;
        d_cancelled := (is_now AND NEW.status = 'cancelled')::int - (was AND OLD.status = 'cancelled')::int;
        IF (d_placed, d_open, d_in_progress, d_delivered, d_disputed, d_done, d_cancelled)
           <> (0, 0, 0, 0, 0, 0, 0) THEN
            UPDATE customer_stats
            SET orders_placed      = orders_placed      + d_placed,
                orders_open        = orders_open        + d_open,
                orders_in_progress = orders_in_progress + d_in_progress,
                orders_delivered   = orders_delivered   + d_delivered,
                orders_disputed    = orders_disputed    + d_disputed,
                orders_done        = orders_done        + d_done,
                orders_cancelled   = orders_cancelled   + d_cancelled
            WHERE customer_id = subject;
        END IF;
        subject := nullif(greatest(OLD.customer_id, NEW.customer_id), subject);
    END LOOP;

    -- A category counts its open orders of customers who are not blocked. An order open before and
    -- after, of the same customer in the same category, counts the same: nothing to look up.
    IF TG_OP = 'UPDATE' AND OLD.status = 'open' AND NEW.status = 'open'
       AND OLD.customer_id = NEW.customer_id AND OLD.category_id = NEW.category_id THEN
        RETURN NULL;
    END IF;
    -- FOR SHARE waits for a concurrent block or unblock, whose own recount (users_block_listing)
    -- then sees this order.
    IF OLD.status = 'open' THEN
        SELECT NOT is_blocked INTO old_listed FROM users WHERE id = OLD.customer_id FOR SHARE;
    END IF;
    IF NEW.status = 'open' THEN
        SELECT NOT is_blocked INTO new_listed FROM users WHERE id = NEW.customer_id FOR SHARE;
    END IF;
    subject := least(OLD.category_id, NEW.category_id);
    WHILE subject IS NOT NULL LOOP
        d_open := (subject IS NOT DISTINCT FROM NEW.category_id AND new_listed)::int
                - (subject IS NOT DISTINCT FROM OLD.category_id AND old_listed)::int;
        IF d_open <> 0 THEN
            UPDATE categories
            SET open_orders = open_orders + d_open
            WHERE id = subject;
        END IF;
        subject := nullif(greatest(OLD.category_id, NEW.category_id), subject);
    END LOOP;
    RETURN NULL;
END $$;
