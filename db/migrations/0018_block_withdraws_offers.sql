-- A blocked performer's active offers are withdrawn (users_block_listing), so that orders.offers_active
-- and the orders' pages agree; a new offer reads its performer FOR SHARE (offers_guard), so that it and a
-- block under way queue instead of an offer of a blocked performer slipping through.
CREATE OR REPLACE FUNCTION users_block_listing() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    category integer;
    n integer;
BEGIN
    -- one category at a time, in id order, as orders_count_contribution writes them: a join
    -- writes them in the order it finds them, and a move of an order between two categories at
    -- the same moment could then deadlock with it
    FOR category, n IN
        SELECT category_id, count(*)::int
        FROM orders
        WHERE customer_id = NEW.id
          AND status = 'open'
        GROUP BY category_id
        ORDER BY category_id
    LOOP
        UPDATE categories
        SET open_orders = open_orders + CASE WHEN NEW.is_blocked THEN -n ELSE n END
        WHERE id = category;
    END LOOP;
    IF NEW.is_blocked THEN
        DELETE FROM sessions WHERE user_id = NEW.id;
        -- A blocked performer's offers leave their orders (the orders' pages no longer list them,
        -- and orders.offers_active no longer counts them). The orders first, in id order, then
        -- the offers: the order in which an accept or a cancel locks them.
        PERFORM 1
        FROM orders
        WHERE id IN (SELECT order_id FROM offers WHERE performer_id = NEW.id AND status = 'active')
        ORDER BY id
        FOR NO KEY UPDATE;
        UPDATE offers
        SET status = 'withdrawn'
        WHERE performer_id = NEW.id
          AND status = 'active';
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION users_block_listing() IS 'On block: ends every session of the user, takes their open orders out of the category counts and withdraws their active offers (an unblock does not send them again); on unblock: puts the open orders back. Categories are written in id order, as orders_count_contribution writes them, and the orders of withdrawn offers are locked before their offers, as an accept locks them, so a block queues behind a move or an accept instead of deadlocking.';
COMMENT ON TRIGGER users_block_listing ON users IS 'Blocking ends sessions at once, hides open orders from the feed counts and withdraws active offers.';
CREATE OR REPLACE FUNCTION offers_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    target record;
BEGIN
    -- The order decides: FOR SHARE waits for an accept, a cancel or a take under way, then reads
    -- what it left, so an offer never lands on (or changes on) an order that has moved on.
    SELECT o.status, o.mode, o.customer_id INTO target
    FROM orders o
    WHERE o.id = NEW.order_id
    FOR SHARE;
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'active' THEN
            RAISE EXCEPTION 'a new offer is active' USING ERRCODE = 'check_violation';
        END IF;
        IF target.status <> 'open' OR target.mode <> 'offers' THEN
            RAISE EXCEPTION 'order %: offers are sent only to open orders in offers mode', NEW.order_id
                USING ERRCODE = 'check_violation';
        END IF;
        -- FOR SHARE: a block of the performer under way waits for this offer, then withdraws it
        -- (users_block_listing), or this waits for the block and refuses
        PERFORM 1 FROM users WHERE id = NEW.performer_id AND NOT is_blocked FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a blocked performer sends no offers' USING ERRCODE = 'check_violation';
        END IF;
        NEW.created_at := now();
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    IF (NEW.order_id, NEW.performer_id, NEW.created_at) IS DISTINCT FROM (OLD.order_id, OLD.performer_id, OLD.created_at) THEN
        RAISE EXCEPTION 'offer %: its order, performer and creation time never change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status <> 'active' THEN
        RAISE EXCEPTION 'offer %: a % offer never changes', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    -- An offer settles (withdrawn, accepted or declined) on the terms it had.
    IF NEW.status <> 'active' AND (NEW.price, NEW.days, NEW.message) IS DISTINCT FROM (OLD.price, OLD.days, OLD.message) THEN
        RAISE EXCEPTION 'offer %: an offer is changed or settled, not both', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    -- Declined when another offer is accepted or the order leaves open for any reason.
    IF NEW.status <> 'declined' AND target.status <> 'open' THEN
        RAISE EXCEPTION 'offer %: offers change, are withdrawn or accepted only while the order is open', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
COMMENT ON FUNCTION offers_guard() IS 'Offers go only to open orders in offers mode, from performers who are not blocked, and start active. An active offer may be changed (price, days, message), withdrawn or accepted only while its order is open, and declined at any time, never together with a change of its terms; withdrawn, accepted and declined offers never change. Its order, performer and creation time are fixed. Reads the order FOR SHARE, so it waits for a transition under way, and the performer of a new offer FOR SHARE, so it waits for a block under way (or the block for it).';
