-- 0002: exact rows. Closes holes through which a statement written by hand in psql could leave
-- an order in an impossible state.
-- Applied in one transaction on top of 0001, it gives the schema of db/schema.sql; the migration
-- runner records the version.

-- A performer on an order means it was taken (a cancelled order keeps the performer who had it), and
-- only a cancelled order has a cancel reason. A row made by hand that breaks either makes this
-- statement fail and name the constraint; mend that row first.
ALTER TABLE orders
    ADD CONSTRAINT orders_performer_only_when_taken CHECK (performer_id IS NULL OR taken_at IS NOT NULL),
    ADD CONSTRAINT orders_cancel_reason_when_cancelled CHECK (cancel_reason IS NULL OR status = 'cancelled');

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
