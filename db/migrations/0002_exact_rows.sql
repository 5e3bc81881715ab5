-- 0002: exact rows. A statement written by hand in psql can no longer leave an order in an
-- impossible state, nor the counters wrong: an open order is cancelled without a performer; the
-- transition times and the cancel reason are written once, by the database; TRUNCATE of orders
-- is refused. The counters trigger writes only the rows whose contribution changes, in id order.
-- Every comment states its rule instead of pointing at a document.
-- Applied in one transaction on top of 0001, it gives the schema of db/schema.sql; the migration
-- runner records the version.

-- A performer on an order means it was taken (a cancelled order keeps the performer who had it), and
-- only a cancelled order has a cancel reason. A row made by hand that breaks either makes this
-- statement fail and name the constraint; mend that row first.
ALTER TABLE orders
    ADD CONSTRAINT orders_performer_only_when_taken CHECK (performer_id IS NULL OR taken_at IS NOT NULL),
    ADD CONSTRAINT orders_cancel_reason_when_cancelled CHECK (cancel_reason IS NULL OR status = 'cancelled');

-- The state machine: an open order is cancelled without a performer; a statement never writes a
-- transition time; the cancel reason is written by the cancel alone.
CREATE OR REPLACE FUNCTION orders_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'open' OR NEW.performer_id IS NOT NULL OR NEW.rating IS NOT NULL THEN
            RAISE EXCEPTION 'a new order starts open, with no performer and no rating'
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.deadline < current_date THEN
            RAISE EXCEPTION 'the deadline % is in the past', NEW.deadline USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM categories WHERE id = NEW.category_id AND is_hidden) THEN
            RAISE EXCEPTION 'category % is hidden and takes no new orders', NEW.category_id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.created_at := now();
        NEW.updated_at := now();
        NEW.taken_at := NULL;
        NEW.completed_at := NULL;
        NEW.cancelled_at := NULL;
        NEW.rated_at := NULL;
        RETURN NEW;
    END IF;

    IF NEW.customer_id <> OLD.customer_id OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'order %: the customer and the creation time never change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    -- The times are stamped below by the transition (or the rating) they record; a statement never
    -- writes one, with a transition or without.
    IF (NEW.taken_at, NEW.completed_at, NEW.cancelled_at, NEW.rated_at)
       IS DISTINCT FROM (OLD.taken_at, OLD.completed_at, OLD.cancelled_at, OLD.rated_at) THEN
        RAISE EXCEPTION 'order %: transition times are set by the database', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.cancel_reason IS DISTINCT FROM OLD.cancel_reason
       AND NOT (NEW.status = 'cancelled' AND OLD.status <> 'cancelled') THEN
        RAISE EXCEPTION 'order %: the cancel reason is given with the cancel and never changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;

    IF NEW.status = OLD.status THEN
        IF (NEW.title, NEW.description, NEW.category_id, NEW.budget, NEW.deadline)
           IS DISTINCT FROM (OLD.title, OLD.description, OLD.category_id, OLD.budget, OLD.deadline) THEN
            IF OLD.status <> 'open' THEN
                RAISE EXCEPTION 'order %: only an open order can be edited', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.deadline IS DISTINCT FROM OLD.deadline AND NEW.deadline < current_date THEN
                RAISE EXCEPTION 'the deadline % is in the past', NEW.deadline USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.category_id <> OLD.category_id
               AND EXISTS (SELECT 1 FROM categories WHERE id = NEW.category_id AND is_hidden) THEN
                RAISE EXCEPTION 'category % is hidden and takes no new orders', NEW.category_id
                    USING ERRCODE = 'check_violation';
            END IF;
        END IF;
        IF NEW.performer_id IS DISTINCT FROM OLD.performer_id AND OLD.status <> 'in_progress' THEN
            RAISE EXCEPTION 'order %: the performer can be changed only while the order is in progress', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.rating IS NOT NULL AND (NEW.rating IS DISTINCT FROM OLD.rating
                                       OR NEW.review IS DISTINCT FROM OLD.review) THEN
            RAISE EXCEPTION 'order %: the rating is already set and cannot change', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.rating IS NULL AND NEW.rating IS NOT NULL THEN
            NEW.rated_at := now();
        END IF;
        NEW.updated_at := now();
        RETURN NEW;
    END IF;

    IF NEW.rating IS DISTINCT FROM OLD.rating OR NEW.review IS DISTINCT FROM OLD.review THEN
        RAISE EXCEPTION 'order %: a rating is given on a done order, not together with a transition', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.title, NEW.description, NEW.category_id, NEW.budget, NEW.deadline)
       IS DISTINCT FROM (OLD.title, OLD.description, OLD.category_id, OLD.budget, OLD.deadline) THEN
        RAISE EXCEPTION 'order %: the order cannot be edited during a transition', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;

    CASE
        WHEN OLD.status = 'open' AND NEW.status = 'in_progress' THEN
            NEW.taken_at := now();
        WHEN OLD.status = 'open' AND NEW.status = 'cancelled' THEN
            IF NEW.performer_id IS NOT NULL THEN
                RAISE EXCEPTION 'order %: an open order has no performer, and is cancelled without one', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            NEW.cancelled_at := now();
        WHEN OLD.status = 'in_progress' AND NEW.status = 'done' THEN
            IF NEW.performer_id IS DISTINCT FROM OLD.performer_id THEN
                RAISE EXCEPTION 'order %: only the performer who took it completes it', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            NEW.completed_at := now();
        WHEN OLD.status = 'in_progress' AND NEW.status = 'cancelled' THEN
            IF NEW.performer_id IS DISTINCT FROM OLD.performer_id THEN
                RAISE EXCEPTION 'order %: a cancelled order keeps the performer it had', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            NEW.cancelled_at := now();
        WHEN OLD.status = 'in_progress' AND NEW.status = 'open' THEN
            NEW.taken_at := NULL;
        ELSE
            RAISE EXCEPTION 'order %: the transition % -> % is not allowed', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
    END CASE;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
COMMENT ON FUNCTION orders_guard_transition() IS
    'The order state machine: open -> in_progress | cancelled; in_progress -> done | cancelled | open; done takes one rating. An order cancelled while open has no performer; one completed or cancelled in progress keeps its performer. Refuses everything else, edits of non-open orders and a change of a set rating. Stamps taken_at, completed_at, cancelled_at and rated_at itself and refuses any statement that writes them; cancel_reason is written only by the cancel.';

-- TRUNCATE fires no row triggers, so it would take orders away behind the counters' back. It is
-- refused on orders; TRUNCATE ... CASCADE of users or categories reaches orders and is refused too.
CREATE FUNCTION orders_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of orders is refused: it would bypass the counters of customers, performers and categories; use DELETE, whose triggers keep them exact'
        USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON FUNCTION orders_refuse_truncate() IS 'Refuses TRUNCATE of orders, which fires no row trigger and would leave customer_stats, performer_stats and categories.open_orders counting orders that are gone; DELETE keeps them exact.';
CREATE TRIGGER orders_refuse_truncate BEFORE TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_refuse_truncate();
COMMENT ON TRIGGER orders_refuse_truncate ON orders IS 'Orders are never truncated, not even by a TRUNCATE ... CASCADE of users or categories: they go by DELETE, so the counters follow.';

-- Counters: one row trigger adds, for each counters row the order feeds, the new row's
-- contribution less the old row's, and writes only the rows where that difference is not zero.
CREATE OR REPLACE FUNCTION orders_count_contribution() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- An inserted row has no OLD and a deleted one no NEW: the fields of the missing one are NULL,
    -- so its contribution drops out with its NULL subject.
    subject         bigint;
    d_placed        integer;
    d_open          integer;
    d_in_progress   integer;
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
    -- transactions never wait for each other in a circle.
    -- A performer counts the orders in progress and done, and the ratings that are not hidden.
    FOR subject, d_completed, d_in_progress, d_rating_sum, d_rating_count IN
        SELECT c.performer_id, sum(c.completed), sum(c.in_progress), sum(c.rating_sum), sum(c.rating_count)
        FROM (VALUES
                (OLD.performer_id,
                 -(OLD.status = 'done')::int,
                 -(OLD.status = 'in_progress')::int,
                 -CASE WHEN OLD.review_hidden THEN 0 ELSE coalesce(OLD.rating, 0) END,
                 -(OLD.rating IS NOT NULL AND NOT OLD.review_hidden)::int),
                (NEW.performer_id,
                 (NEW.status = 'done')::int,
                 (NEW.status = 'in_progress')::int,
                 CASE WHEN NEW.review_hidden THEN 0 ELSE coalesce(NEW.rating, 0) END,
                 (NEW.rating IS NOT NULL AND NOT NEW.review_hidden)::int)
             ) AS c (performer_id, completed, in_progress, rating_sum, rating_count)
        WHERE c.performer_id IS NOT NULL
        GROUP BY c.performer_id
        HAVING (sum(c.completed), sum(c.in_progress), sum(c.rating_sum), sum(c.rating_count)) <> (0, 0, 0, 0)
        ORDER BY c.performer_id
    LOOP
        UPDATE performer_stats
        SET orders_completed   = orders_completed   + d_completed,
            orders_in_progress = orders_in_progress + d_in_progress,
            rating_sum         = rating_sum         + d_rating_sum,
            rating_count       = rating_count       + d_rating_count
        WHERE performer_id = subject;
    END LOOP;

    -- A customer counts every order placed, and the orders in each status.
    FOR subject, d_placed, d_open, d_in_progress, d_done, d_cancelled IN
        SELECT c.customer_id, sum(c.placed), sum(c.open), sum(c.in_progress), sum(c.done), sum(c.cancelled)
        FROM (VALUES
                (OLD.customer_id, -1,
                 -(OLD.status = 'open')::int,
                 -(OLD.status = 'in_progress')::int,
                 -(OLD.status = 'done')::int,
                 -(OLD.status = 'cancelled')::int),
                (NEW.customer_id, 1,
                 (NEW.status = 'open')::int,
                 (NEW.status = 'in_progress')::int,
                 (NEW.status = 'done')::int,
                 (NEW.status = 'cancelled')::int)
             ) AS c (customer_id, placed, open, in_progress, done, cancelled)
        WHERE c.customer_id IS NOT NULL
        GROUP BY c.customer_id
        HAVING (sum(c.placed), sum(c.open), sum(c.in_progress), sum(c.done), sum(c.cancelled)) <> (0, 0, 0, 0, 0)
        ORDER BY c.customer_id
    LOOP
        UPDATE customer_stats
        SET orders_placed      = orders_placed      + d_placed,
            orders_open        = orders_open        + d_open,
            orders_in_progress = orders_in_progress + d_in_progress,
            orders_done        = orders_done        + d_done,
            orders_cancelled   = orders_cancelled   + d_cancelled
        WHERE customer_id = subject;
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
    FOR subject, d_open IN
        SELECT c.category_id, sum(c.open)
        FROM (VALUES
                (OLD.category_id, -old_listed::int),
                (NEW.category_id, new_listed::int)
             ) AS c (category_id, open)
        WHERE c.category_id IS NOT NULL
        GROUP BY c.category_id
        HAVING sum(c.open) <> 0
        ORDER BY c.category_id
    LOOP
        UPDATE categories
        SET open_orders = open_orders + d_open
        WHERE id = subject;
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION orders_count_contribution() IS
    'Keeps customer_stats, performer_stats and categories.open_orders exact: for each counters row an order feeds, adds the new row''s contribution less the old row''s, and writes only the rows where that difference is not zero (a rating or a hidden review writes the performer''s row alone). Rows are written performers, customers, categories, each in id order, so crossing reassignments or category moves queue instead of deadlocking.';

-- Comments that state their rule instead of pointing elsewhere.
COMMENT ON TYPE order_status IS 'The states of an order. The only moves: open -> in_progress (taken) or cancelled; in_progress -> done, cancelled, or back to open; done and cancelled are final.';
COMMENT ON TABLE customer_stats IS 'Counters of a customer''s orders: every order placed, and how many are open, in progress, done and cancelled now. Kept exact by the trigger orders_count_contribution on orders; never written by the app.';
COMMENT ON TABLE performer_stats IS 'Counters of a performer''s work: orders done and in progress, the sum and count of the ratings staff have not hidden, and the average derived from them. Kept exact by the trigger orders_count_contribution on orders; never written by the app.';
COMMENT ON TABLE orders IS 'Orders. status moves only open -> in_progress | cancelled and in_progress -> done | cancelled | open; only an open order is edited; a done order takes one rating, never changed. Every move is appended to order_history, and the counters of customers, performers and categories follow it.';
COMMENT ON TABLE order_history IS 'Append-only: every transition of every order (who, when, from, to, note), written by the trigger orders_record_history on orders; rows are never updated or deleted, except by the cascades from deleting their order or their actor.';
COMMENT ON TRIGGER orders_guard_transition ON orders IS 'Lets status move only open -> in_progress | cancelled and in_progress -> done | cancelled | open, a done order take one rating, and an open order be edited; refuses every other change, and any statement that writes a transition time.';
