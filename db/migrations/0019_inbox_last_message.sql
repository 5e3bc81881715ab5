-- The inbox reads no message: each conversation keeps its last message's first 200 characters and
-- its sender (messages_guard sets them with each message; messages never change), checked by
-- audit_counters and repaired by recalc_counters like its counts.
ALTER TABLE conversations
    ADD COLUMN last_message_excerpt text NOT NULL DEFAULT '' CHECK (length(last_message_excerpt) <= 200),
    ADD COLUMN last_sender_id bigint;
COMMENT ON COLUMN conversations.last_message_excerpt IS 'The first 200 characters of the last message (seq = message_count), '''' before the first, for the inbox: set by messages_guard with each message (messages never change), so the inbox reads no message.';
COMMENT ON COLUMN conversations.last_sender_id IS 'Who wrote the last message (one of the two people), NULL before the first; set with last_message_excerpt.';

CREATE OR REPLACE VIEW conversation_counts_recount AS
SELECT c.id AS conversation_id,
       coalesce(m.messages, 0) AS message_count,
       coalesce(m.customer_unread, 0) AS customer_unread,
       coalesce(m.performer_unread, 0) AS performer_unread,
       coalesce(l.excerpt, '') AS last_message_excerpt,
       l.sender_id AS last_sender_id
FROM conversations c
LEFT JOIN LATERAL (SELECT count(*) AS messages,
                          count(*) FILTER (WHERE x.sender_id = c.performer_id
                                             AND x.seq > c.customer_read_seq) AS customer_unread,
                          count(*) FILTER (WHERE x.sender_id = c.customer_id
                                             AND x.seq > c.performer_read_seq) AS performer_unread
                   FROM messages x
                   WHERE x.conversation_id = c.id) AS m ON true
LEFT JOIN LATERAL (SELECT left(x.body, 200) AS excerpt, x.sender_id
                   FROM messages x
                   WHERE x.conversation_id = c.id
                   ORDER BY x.seq DESC
                   LIMIT 1) AS l ON true;
COMMENT ON VIEW conversation_counts_recount IS 'The counters of conversations recounted from messages: how many there are, for each side those of the other side after its read mark, and the last message''s excerpt and sender (for audit_counters and recalc_counters).';

-- Each conversation's last message from the recount, as recalc_counters writes it; with it a
-- message_count that drifted from its messages (only a hand edit makes one), since the CHECK
-- below needs the two to agree.
UPDATE conversations c
SET message_count = r.message_count,
    last_message_excerpt = r.last_message_excerpt,
    last_sender_id = r.last_sender_id
FROM conversation_counts_recount r
WHERE c.id = r.conversation_id
  AND (c.message_count, c.last_message_excerpt, c.last_sender_id)
      IS DISTINCT FROM (r.message_count, r.last_message_excerpt, r.last_sender_id);
ALTER TABLE conversations
    ADD CONSTRAINT conversations_last_sender_is_one_of_them CHECK (last_sender_id IN (customer_id, performer_id)),
    ADD CONSTRAINT conversations_last_sender_iff_messages CHECK ((message_count = 0) = (last_sender_id IS NULL));

CREATE OR REPLACE FUNCTION conversations_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    target record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- FOR SHARE waits for a take or an accept under way, then reads who the order went to.
        SELECT o.customer_id, o.status, o.performer_id INTO target
        FROM orders o
        WHERE o.id = NEW.order_id
        FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'order % does not exist', NEW.order_id USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF NEW.customer_id IS DISTINCT FROM target.customer_id THEN
            RAISE EXCEPTION 'order %: a conversation is with the customer of its order', NEW.order_id
                USING ERRCODE = 'check_violation';
        END IF;
        IF NOT (target.status = 'open' OR target.performer_id = NEW.performer_id) THEN
            RAISE EXCEPTION 'order %: once a performer is assigned, only that performer''s conversation is opened', NEW.order_id
                USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM users WHERE id IN (NEW.customer_id, NEW.performer_id) AND is_blocked) THEN
            RAISE EXCEPTION 'order %: no conversation is opened with a blocked account', NEW.order_id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.created_at := now();
        NEW.last_message_at := now();
        NEW.message_count := 0;
        NEW.customer_read_seq := 0;
        NEW.performer_read_seq := 0;
        NEW.customer_unread := 0;
        NEW.performer_unread := 0;
        NEW.last_message_excerpt := '';
        NEW.last_sender_id := NULL;
        RETURN NEW;
    END IF;
    IF (NEW.order_id, NEW.customer_id, NEW.performer_id, NEW.created_at)
       IS DISTINCT FROM (OLD.order_id, OLD.customer_id, OLD.performer_id, OLD.created_at) THEN
        RAISE EXCEPTION 'conversation %: its order, people and creation time never change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    -- A read mark only moves forward; when it moves, that side's unread count is recounted. The
    -- messages of this conversation are written holding its row (messages_guard), so none is
    -- half-written while this row is being updated.
    NEW.customer_read_seq := greatest(NEW.customer_read_seq, OLD.customer_read_seq);
    NEW.performer_read_seq := greatest(NEW.performer_read_seq, OLD.performer_read_seq);
    IF NEW.customer_read_seq <> OLD.customer_read_seq THEN
        NEW.customer_unread := (SELECT count(*)
                                FROM messages m
                                WHERE m.conversation_id = NEW.id
                                  AND m.sender_id = NEW.performer_id
                                  AND m.seq > NEW.customer_read_seq);
    END IF;
    IF NEW.performer_read_seq <> OLD.performer_read_seq THEN
        NEW.performer_unread := (SELECT count(*)
                                 FROM messages m
                                 WHERE m.conversation_id = NEW.id
                                   AND m.sender_id = NEW.customer_id
                                   AND m.seq > NEW.performer_read_seq);
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION conversations_guard() IS 'A new conversation is with the customer of its order and opens only while the order is open (any performer) or with the performer assigned to it, never with a blocked account; it starts with no messages (no last one), nothing read and nothing unread. Its order, people and creation time never change. A read mark only moves forward, and when it moves that side''s unread count is recounted as the other side''s messages after the mark. Reads the order FOR SHARE, so it waits for a take or an accept under way.';

CREATE OR REPLACE FUNCTION messages_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    conv   record;
    target record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT c.order_id, c.customer_id, c.performer_id INTO conv
        FROM conversations c
        WHERE c.id = NEW.conversation_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'conversation % does not exist', NEW.conversation_id USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF NEW.sender_id IS DISTINCT FROM conv.customer_id AND NEW.sender_id IS DISTINCT FROM conv.performer_id THEN
            RAISE EXCEPTION 'conversation %: a message comes from one of its two people', NEW.conversation_id
                USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM users WHERE id = NEW.sender_id AND is_blocked) THEN
            RAISE EXCEPTION 'a blocked account sends no messages' USING ERRCODE = 'check_violation';
        END IF;
        -- The order first (FOR SHARE: a take or an accept under way finishes first), as the
        -- conversation was opened; then the conversation's row, held until commit, so the
        -- messages of one conversation are numbered and counted one after another.
        SELECT o.status, o.performer_id INTO target
        FROM orders o
        WHERE o.id = conv.order_id
        FOR SHARE;
        IF NOT (target.status = 'open' OR target.performer_id = conv.performer_id) THEN
            RAISE EXCEPTION 'order %: once a performer is assigned, only that performer''s conversation goes on', conv.order_id
                USING ERRCODE = 'check_violation';
        END IF;
        UPDATE conversations
        SET message_count = message_count + 1,
            last_message_at = now(),
            customer_unread = customer_unread + (NEW.sender_id = conv.performer_id)::int,
            performer_unread = performer_unread + (NEW.sender_id = conv.customer_id)::int,
            last_message_excerpt = left(NEW.body, 200),
            last_sender_id = NEW.sender_id
        WHERE id = NEW.conversation_id
        RETURNING message_count INTO NEW.seq;
        NEW.created_at := now();
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM conversations WHERE id = OLD.conversation_id) THEN
        RETURN OLD;  -- the cascade from deleting the conversation
    END IF;
    RAISE EXCEPTION 'messages are never changed or deleted' USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON FUNCTION messages_guard() IS 'A message is written only by one of its conversation''s two people, not blocked, while the order is open or, once a performer is assigned, in that performer''s conversation (the order is read FOR SHARE). It takes the next seq of its conversation, adds one to the reader''s unread count and stamps the conversation''s last_message_at, last_message_excerpt and last_sender_id, holding the conversation''s row until commit. Messages are never updated, and deleted only with their conversation.';

CREATE OR REPLACE FUNCTION audit_counters()
RETURNS TABLE (counter text, subject_id bigint, stored bigint, actual bigint)
LANGUAGE sql STABLE AS $$
    SELECT d.counter, d.subject_id, d.stored, d.actual
    FROM (
        SELECT a.customer_id AS subject_id, x.*
        FROM customer_counts_recount a
        LEFT JOIN customer_stats s USING (customer_id)
        CROSS JOIN LATERAL (VALUES
            ('customer.orders_placed', s.orders_placed::bigint, a.orders_placed),
            ('customer.orders_open', s.orders_open, a.orders_open),
            ('customer.orders_in_progress', s.orders_in_progress, a.orders_in_progress),
            ('customer.orders_delivered', s.orders_delivered, a.orders_delivered),
            ('customer.orders_disputed', s.orders_disputed, a.orders_disputed),
            ('customer.orders_done', s.orders_done, a.orders_done),
            ('customer.orders_cancelled', s.orders_cancelled, a.orders_cancelled)
        ) AS x (counter, stored, actual)
        UNION ALL
        SELECT a.performer_id, x.*
        FROM performer_counts_recount a
        LEFT JOIN performer_stats s USING (performer_id)
        CROSS JOIN LATERAL (VALUES
            ('performer.orders_completed', s.orders_completed::bigint, a.orders_completed),
            ('performer.orders_in_progress', s.orders_in_progress, a.orders_in_progress),
            ('performer.orders_delivered', s.orders_delivered, a.orders_delivered),
            ('performer.orders_disputed', s.orders_disputed, a.orders_disputed),
            ('performer.rating_sum', s.rating_sum, a.rating_sum),
            ('performer.rating_count', s.rating_count, a.rating_count)
        ) AS x (counter, stored, actual)
        UNION ALL
        SELECT a.category_id, 'category.open_orders', c.open_orders::bigint, a.open_orders
        FROM category_counts_recount a
        JOIN categories c ON c.id = a.category_id
        UNION ALL
        SELECT r.order_id, 'order.offers_active', r.stored::bigint, r.offers_active
        FROM order_offers_recount r
        UNION ALL
        SELECT r.conversation_id, x.*
        FROM conversation_counts_recount r
        JOIN conversations c ON c.id = r.conversation_id
        CROSS JOIN LATERAL (VALUES
            ('conversation.message_count', c.message_count::bigint, r.message_count),
            ('conversation.customer_unread', c.customer_unread, r.customer_unread),
            ('conversation.performer_unread', c.performer_unread, r.performer_unread),
            ('conversation.last_sender_id', c.last_sender_id, r.last_sender_id),
            -- the excerpt as its hash: the audit's figures are numbers
            ('conversation.last_message_excerpt', hashtext(c.last_message_excerpt)::bigint,
             hashtext(r.last_message_excerpt)::bigint)
        ) AS x (counter, stored, actual)
        UNION ALL
        SELECT a.user_id, x.*
        FROM user_counts_recount a
        LEFT JOIN user_counters s USING (user_id)
        CROSS JOIN LATERAL (VALUES
            ('user.unread_messages', s.unread_messages::bigint, a.unread_messages),
            ('user.unread_notifications', s.unread_notifications, a.unread_notifications)
        ) AS x (counter, stored, actual)
    ) AS d
    WHERE d.stored IS DISTINCT FROM d.actual
    ORDER BY d.counter, d.subject_id
$$;
COMMENT ON FUNCTION audit_counters() IS 'One row per stored counter (customer_stats, performer_stats, categories.open_orders, orders.offers_active, the message and unread counts and the last message of conversations, user_counters) that differs from a recount (a missing stats or user_counters row shows as stored NULL); zero rows means every counter is exact.';

CREATE OR REPLACE FUNCTION recalc_counters() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    drift integer;
BEGIN
    SELECT count(*) INTO drift FROM audit_counters();
    INSERT INTO customer_stats (customer_id)
    SELECT id FROM users WHERE role = 'customer'
    ON CONFLICT DO NOTHING;
    INSERT INTO performer_stats (performer_id)
    SELECT id FROM users WHERE role = 'performer'
    ON CONFLICT DO NOTHING;
    INSERT INTO user_counters (user_id)
    SELECT id FROM users
    ON CONFLICT DO NOTHING;
    UPDATE customer_stats s
    SET orders_placed = a.orders_placed,
        orders_open = a.orders_open,
        orders_in_progress = a.orders_in_progress,
        orders_delivered = a.orders_delivered,
        orders_disputed = a.orders_disputed,
        orders_done = a.orders_done,
        orders_cancelled = a.orders_cancelled
    FROM customer_counts_recount a
    WHERE s.customer_id = a.customer_id
      AND (s.orders_placed, s.orders_open, s.orders_in_progress, s.orders_delivered, s.orders_disputed,
           s.orders_done, s.orders_cancelled)
          IS DISTINCT FROM (a.orders_placed, a.orders_open, a.orders_in_progress, a.orders_delivered,
                            a.orders_disputed, a.orders_done, a.orders_cancelled);
    UPDATE performer_stats s
    SET orders_completed = a.orders_completed,
        orders_in_progress = a.orders_in_progress,
        orders_delivered = a.orders_delivered,
        orders_disputed = a.orders_disputed,
        rating_sum = a.rating_sum,
        rating_count = a.rating_count
    FROM performer_counts_recount a
    WHERE s.performer_id = a.performer_id
      AND (s.orders_completed, s.orders_in_progress, s.orders_delivered, s.orders_disputed,
           s.rating_sum, s.rating_count)
          IS DISTINCT FROM (a.orders_completed, a.orders_in_progress, a.orders_delivered,
                            a.orders_disputed, a.rating_sum, a.rating_count);
    UPDATE categories c
    SET open_orders = a.open_orders
    FROM category_counts_recount a
    WHERE c.id = a.category_id
      AND c.open_orders <> a.open_orders;
    UPDATE orders o
    SET offers_active = r.offers_active
    FROM order_offers_recount r
    WHERE o.id = r.order_id
      AND r.stored <> r.offers_active;
    -- Conversations before users: their trigger moves user_counters along, then users are set.
    UPDATE conversations c
    SET message_count = r.message_count,
        customer_unread = r.customer_unread,
        performer_unread = r.performer_unread,
        last_message_excerpt = r.last_message_excerpt,
        last_sender_id = r.last_sender_id
    FROM conversation_counts_recount r
    WHERE c.id = r.conversation_id
      AND (c.message_count, c.customer_unread, c.performer_unread, c.last_message_excerpt, c.last_sender_id)
          IS DISTINCT FROM (r.message_count, r.customer_unread, r.performer_unread, r.last_message_excerpt,
                            r.last_sender_id);
    UPDATE user_counters s
    SET unread_messages = a.unread_messages,
        unread_notifications = a.unread_notifications
    FROM user_counts_recount a
    WHERE s.user_id = a.user_id
      AND (s.unread_messages, s.unread_notifications)
          IS DISTINCT FROM (a.unread_messages, a.unread_notifications);
    RETURN drift;
END $$;
COMMENT ON FUNCTION recalc_counters() IS 'Rewrites every drifted counter (customer_stats, performer_stats, categories.open_orders, orders.offers_active, the message and unread counts and the last message of conversations, user_counters) from the *_recount views; returns how many counters were wrong.';
