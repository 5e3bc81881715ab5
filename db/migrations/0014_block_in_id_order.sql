-- Blocking a customer wrote the counts of their categories in the order a join found them; a
-- move of an order between two categories writes them in id order: at the same moment they could
-- deadlock. Now the block writes them in id order too.
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
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION users_block_listing() IS 'On block: ends every session of the user and takes their open orders out of the category counts; on unblock: puts them back. Categories are written in id order, as orders_count_contribution writes them, so a block and a move of an order between categories queue instead of deadlocking.';
