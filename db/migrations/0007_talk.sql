-- 0007: talking. Private conversations per order between its customer and one performer, with
-- unread counts kept by triggers; files on messages and deliveries (the bytes live on disk, named
-- by their SHA-256, and are described here); notifications written by triggers for every event
-- the people of an order care about, with an unread count per user; a mail outbox the tick sends
-- from; password reset links. Users gain a language for their mail and a switch for e-mail.

ALTER TABLE users
    ADD COLUMN email_notifications boolean NOT NULL DEFAULT true,
    ADD COLUMN lang text NOT NULL DEFAULT 'ru' CHECK (lang IN ('ru', 'en'));
COMMENT ON COLUMN users.email_notifications IS 'Whether each new notification of this user is also sent by e-mail (a mail_outbox row); on by default, switched on the profile page.';
COMMENT ON COLUMN users.lang IS 'The language of the interface the user last chose (ru or en): their e-mail is written in it.';

-- ---------------------------------------------------------------------------------------------
-- Unread counts of a user

CREATE TABLE user_counters (
    user_id              bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    unread_messages      integer NOT NULL DEFAULT 0 CHECK (unread_messages >= 0),
    unread_notifications integer NOT NULL DEFAULT 0 CHECK (unread_notifications >= 0)
);
COMMENT ON TABLE user_counters IS 'What a user has not read yet, for the page header: unread_messages is the sum of the unread counts of their side of every conversation (kept by the trigger conversations_count_unread), unread_notifications the number of their notifications with no read_at (kept by the notifications_count_unread_* triggers). One row per user, made with the account; never written by the app.';

INSERT INTO user_counters (user_id)
SELECT id
FROM users;

CREATE FUNCTION users_create_counters() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_counters (user_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION users_create_counters() IS 'Gives every new account its user_counters row, with nothing unread.';
CREATE TRIGGER users_create_counters AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_create_counters();
COMMENT ON TRIGGER users_create_counters ON users IS 'Creates the user_counters row of a new account.';

-- ---------------------------------------------------------------------------------------------
-- Conversations and messages

CREATE TABLE conversations (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id           bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    customer_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    performer_id       bigint NOT NULL,
    performer_role     user_role NOT NULL DEFAULT 'performer' CHECK (performer_role = 'performer'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_message_at    timestamptz NOT NULL DEFAULT now(),
    message_count      integer NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    customer_read_seq  integer NOT NULL DEFAULT 0 CHECK (customer_read_seq >= 0),
    performer_read_seq integer NOT NULL DEFAULT 0 CHECK (performer_read_seq >= 0),
    customer_unread    integer NOT NULL DEFAULT 0 CHECK (customer_unread >= 0),
    performer_unread   integer NOT NULL DEFAULT 0 CHECK (performer_unread >= 0),
    FOREIGN KEY (performer_id, performer_role) REFERENCES users (id, role) ON DELETE CASCADE,
    CONSTRAINT conversations_one_per_performer UNIQUE (order_id, performer_id),
    CONSTRAINT conversations_two_people CHECK (customer_id <> performer_id)
);
CREATE INDEX conversations_customer_idx ON conversations (customer_id, last_message_at DESC, id DESC);
CREATE INDEX conversations_performer_idx ON conversations (performer_id, last_message_at DESC, id DESC);
COMMENT ON TABLE conversations IS 'The private conversation of an order''s customer with one performer about that order, at most one per order and performer. While the order is open any performer who is not blocked may open one; once a performer is assigned, only the conversation with that performer is opened or goes on. message_count counts its messages (the last one''s seq); each side''s unread count is the messages of the other side after that side''s read mark (customer_read_seq, performer_read_seq), kept by triggers.';
COMMENT ON COLUMN conversations.customer_id IS 'Always the customer of the order (checked by conversations_guard).';
COMMENT ON COLUMN conversations.customer_read_seq IS 'The customer has read the messages up to this seq; it only moves forward. customer_unread is recounted by conversations_guard when it moves.';
COMMENT ON COLUMN conversations.performer_read_seq IS 'The performer has read the messages up to this seq; it only moves forward. performer_unread is recounted by conversations_guard when it moves.';
COMMENT ON COLUMN conversations.customer_unread IS 'Messages from the performer with a seq after customer_read_seq: +1 with each one (messages_guard), recounted when the customer reads.';
COMMENT ON COLUMN conversations.performer_unread IS 'Messages from the customer with a seq after performer_read_seq: +1 with each one (messages_guard), recounted when the performer reads.';

CREATE FUNCTION conversations_guard() RETURNS trigger
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
COMMENT ON FUNCTION conversations_guard() IS 'A new conversation is with the customer of its order and opens only while the order is open (any performer) or with the performer assigned to it, never with a blocked account; it starts with no messages, nothing read and nothing unread. Its order, people and creation time never change. A read mark only moves forward, and when it moves that side''s unread count is recounted as the other side''s messages after the mark. Reads the order FOR SHARE, so it waits for a take or an accept under way.';
CREATE TRIGGER conversations_guard BEFORE INSERT OR UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION conversations_guard();
COMMENT ON TRIGGER conversations_guard ON conversations IS 'A conversation opens only with the customer of an open order or of the assigned performer''s order, keeps its people, and recounts a side''s unread messages when that side reads.';

CREATE FUNCTION conversations_count_unread() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    subject bigint;
    delta   integer;
BEGIN
    -- The rows in id order, so two transactions never wait for each other in a circle.
    FOR subject, delta IN
        SELECT d.user_id, sum(d.n)
        FROM (VALUES
                (OLD.customer_id, -OLD.customer_unread),
                (OLD.performer_id, -OLD.performer_unread),
                (NEW.customer_id, NEW.customer_unread),
                (NEW.performer_id, NEW.performer_unread)
             ) AS d (user_id, n)
        WHERE d.user_id IS NOT NULL
        GROUP BY d.user_id
        HAVING sum(d.n) <> 0
        ORDER BY d.user_id
    LOOP
        UPDATE user_counters
        SET unread_messages = unread_messages + delta
        WHERE user_id = subject;
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION conversations_count_unread() IS 'Keeps user_counters.unread_messages exact: adds to the customer''s and the performer''s row the change of their side''s unread count (a deleted conversation takes its unread messages away), writing only the rows that change, in user id order.';
-- Not UPDATE OF the counts: a read moves them in conversations_guard, which UPDATE OF would miss.
CREATE TRIGGER conversations_count_unread AFTER UPDATE ON conversations
    FOR EACH ROW WHEN ((NEW.customer_unread, NEW.performer_unread) IS DISTINCT FROM (OLD.customer_unread, OLD.performer_unread))
    EXECUTE FUNCTION conversations_count_unread();
COMMENT ON TRIGGER conversations_count_unread ON conversations IS 'A user''s unread message count follows the unread counts of their side of each conversation, however they change (a message, a read, a repair).';
CREATE TRIGGER conversations_count_unread_delete AFTER DELETE ON conversations
    FOR EACH ROW WHEN (OLD.customer_unread + OLD.performer_unread > 0)
    EXECUTE FUNCTION conversations_count_unread();
COMMENT ON TRIGGER conversations_count_unread_delete ON conversations IS 'A deleted conversation (with its order or a person) takes its unread messages out of its people''s counts.';

CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             integer NOT NULL CHECK (seq >= 1),
    sender_id       bigint NOT NULL REFERENCES users (id),
    body            text NOT NULL CHECK (length(btrim(body)) >= 1 AND length(body) <= 5000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_seq_key UNIQUE (conversation_id, seq)
);
COMMENT ON TABLE messages IS 'The messages of a conversation, 1 to 5000 characters each, numbered 1, 2, 3… by seq in the order they were written. The sender is one of the conversation''s two people and not blocked; while the order is open every conversation of it goes on, once a performer is assigned only the one with that performer. Never changed; deleted only with their conversation.';

CREATE FUNCTION messages_guard() RETURNS trigger
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
            performer_unread = performer_unread + (NEW.sender_id = conv.customer_id)::int
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
COMMENT ON FUNCTION messages_guard() IS 'A message is written only by one of its conversation''s two people, not blocked, while the order is open or, once a performer is assigned, in that performer''s conversation (the order is read FOR SHARE). It takes the next seq of its conversation, adds one to the reader''s unread count and stamps the conversation''s last_message_at, holding the conversation''s row until commit. Messages are never updated, and deleted only with their conversation.';
CREATE TRIGGER messages_guard BEFORE INSERT OR UPDATE OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_guard();
COMMENT ON TRIGGER messages_guard ON messages IS 'Only the two people of a conversation write in it, only while its order allows it; each message is numbered and counted unread for its reader; messages stay as written.';

-- ---------------------------------------------------------------------------------------------
-- Files on messages and deliveries

CREATE TABLE files (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size         integer NOT NULL CHECK (size BETWEEN 0 AND 10485760),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 255 AND name !~ '[[:cntrl:]/\\]'),
    content_type text NOT NULL CHECK (length(content_type) <= 100
                                      AND content_type ~ '^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$'),
    uploader_id  bigint NOT NULL REFERENCES users (id),
    message_id   bigint REFERENCES messages (id) ON DELETE CASCADE,
    delivery_id  bigint REFERENCES order_deliveries (id) ON DELETE CASCADE,
    position     smallint NOT NULL CHECK (position BETWEEN 1 AND 5),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT files_one_owner CHECK (num_nonnulls(message_id, delivery_id) = 1),
    CONSTRAINT files_message_position_key UNIQUE (message_id, position),
    CONSTRAINT files_delivery_position_key UNIQUE (delivery_id, position)
);
CREATE INDEX files_sha256_idx ON files (sha256);
COMMENT ON TABLE files IS 'Files attached to a message or to a delivery (exactly one of them), at most 5 each (position 1 to 5, unique per message and per delivery), up to 10 MB each. The bytes are stored outside the database, in FILES_DIR under their SHA-256 (two files with the same bytes share them); here are their size, the name the uploader gave (no path, no control characters) and the content type they declared. Attached by the message''s sender or the delivery''s performer in the transaction that writes the message or delivery; never changed; deleted only with it.';

CREATE FUNCTION files_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.message_id IS NOT NULL AND NOT EXISTS (
               SELECT 1
               FROM messages
               WHERE id = NEW.message_id
                 AND sender_id = NEW.uploader_id
                 AND created_at = now()) THEN
            RAISE EXCEPTION 'a file is attached to a message by its sender, as the message is written'
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.delivery_id IS NOT NULL AND NOT EXISTS (
               SELECT 1
               FROM order_deliveries
               WHERE id = NEW.delivery_id
                 AND performer_id = NEW.uploader_id
                 AND created_at = now()) THEN
            RAISE EXCEPTION 'a file is attached to a delivery by its performer, as the work is handed in'
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.created_at := now();
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE'
       AND NOT EXISTS (SELECT 1 FROM messages WHERE id = OLD.message_id)
       AND NOT EXISTS (SELECT 1 FROM order_deliveries WHERE id = OLD.delivery_id) THEN
        RETURN OLD;  -- the cascade from deleting the message or the delivery
    END IF;
    RAISE EXCEPTION 'files are never changed or deleted on their own' USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON FUNCTION files_guard() IS 'A file is attached to a message only by its sender and to a delivery only by its performer, in the transaction that writes the message or delivery. Files are never updated, and deleted only with their message or delivery.';
CREATE TRIGGER files_guard BEFORE INSERT OR UPDATE OR DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION files_guard();
COMMENT ON TRIGGER files_guard ON files IS 'Files come with their message or delivery, from its author, and stay as they were.';

-- ---------------------------------------------------------------------------------------------
-- Notifications and the mail outbox

CREATE TABLE notifications (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN (
                   'offer_received', 'offer_accepted', 'offer_declined', 'order_taken', 'order_delivered',
                   'revision_requested', 'work_accepted', 'work_auto_accepted', 'order_rated',
                   'message_received', 'dispute_opened', 'dispute_resolved')),
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    params     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (user_id, id) WHERE read_at IS NULL;
COMMENT ON TABLE notifications IS 'What happened to a user''s orders, one row per event and person, written only by triggers: an offer received (to the customer); an offer accepted or declined (to its performer); the order taken in take mode, or delivered (to the customer); a revision asked, the work accepted by the customer or by the system, the order rated later (to the performer); a message received (to its reader); a dispute opened (to the other side, or both when no party acted) or resolved (to both). params holds the event''s details (names, a rating, an excerpt) as the page and the mail show them. read_at is set once, when the user reads it.';

CREATE FUNCTION notifications_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.user_id, NEW.kind, NEW.order_id, NEW.params, NEW.created_at)
       IS DISTINCT FROM (OLD.id, OLD.user_id, OLD.kind, OLD.order_id, OLD.params, OLD.created_at)
       OR (OLD.read_at IS NOT NULL AND NEW.read_at IS DISTINCT FROM OLD.read_at) THEN
        RAISE EXCEPTION 'notification %: only read_at changes, once', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION notifications_guard() IS 'A notification changes only by being read: read_at goes from empty to a time, once; everything else stays as written.';
CREATE TRIGGER notifications_guard BEFORE UPDATE ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_guard();
COMMENT ON TRIGGER notifications_guard ON notifications IS 'Notifications are only marked read, once.';

CREATE FUNCTION notifications_count_unread() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    subject bigint;
    delta   integer;
BEGIN
    -- One update per user whose count changes, in user id order (a statement that notifies or
    -- reads for several people locks their rows in one fixed order).
    IF TG_OP = 'INSERT' THEN
        FOR subject, delta IN
            SELECT user_id, count(*)
            FROM new_rows
            WHERE read_at IS NULL
            GROUP BY user_id
            ORDER BY user_id
        LOOP
            UPDATE user_counters SET unread_notifications = unread_notifications + delta WHERE user_id = subject;
        END LOOP;
    ELSIF TG_OP = 'UPDATE' THEN
        FOR subject, delta IN
            SELECT d.user_id, sum(d.n)
            FROM (SELECT user_id, -1 AS n FROM old_rows WHERE read_at IS NULL
                  UNION ALL
                  SELECT user_id, 1 FROM new_rows WHERE read_at IS NULL) AS d
            GROUP BY d.user_id
            HAVING sum(d.n) <> 0
            ORDER BY d.user_id
        LOOP
            UPDATE user_counters SET unread_notifications = unread_notifications + delta WHERE user_id = subject;
        END LOOP;
    ELSE
        FOR subject, delta IN
            SELECT user_id, count(*)
            FROM old_rows
            WHERE read_at IS NULL
            GROUP BY user_id
            ORDER BY user_id
        LOOP
            UPDATE user_counters SET unread_notifications = unread_notifications - delta WHERE user_id = subject;
        END LOOP;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION notifications_count_unread() IS 'Keeps user_counters.unread_notifications exact, once per statement: adds each user''s new unread notifications, takes away those read or deleted, writing each changed user''s row once, in user id order.';
CREATE TRIGGER notifications_count_unread_insert AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_count_unread();
COMMENT ON TRIGGER notifications_count_unread_insert ON notifications IS 'New unread notifications count for their user.';
CREATE TRIGGER notifications_count_unread_update AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_count_unread();
COMMENT ON TRIGGER notifications_count_unread_update ON notifications IS 'Notifications marked read stop counting for their user.';
CREATE TRIGGER notifications_count_unread_delete AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_count_unread();
COMMENT ON TRIGGER notifications_count_unread_delete ON notifications IS 'Deleted unread notifications (with their order or user) stop counting.';

CREATE TABLE password_resets (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    CONSTRAINT password_resets_one_hour CHECK (expires_at <= created_at + interval '1 hour')
);
CREATE INDEX password_resets_user_idx ON password_resets (user_id) WHERE used_at IS NULL;
CREATE INDEX password_resets_expires_idx ON password_resets (expires_at);
COMMENT ON TABLE password_resets IS 'Password reset links: only the SHA-256 of the token in the link is stored. A link is valid for at most one hour and used once: used_at is set when it sets a new password (which marks the user''s other links used too), and never cleared. Written by password_reset_request(); expired rows are purged by the tick.';

CREATE FUNCTION password_resets_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := now();
        IF NEW.used_at IS NOT NULL OR NEW.expires_at > now() + interval '1 hour' THEN
            RAISE EXCEPTION 'a new reset link is unused and valid for at most one hour' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.id, NEW.user_id, NEW.token_hash, NEW.created_at, NEW.expires_at)
       IS DISTINCT FROM (OLD.id, OLD.user_id, OLD.token_hash, OLD.created_at, OLD.expires_at)
       OR (OLD.used_at IS NOT NULL AND NEW.used_at IS DISTINCT FROM OLD.used_at) THEN
        RAISE EXCEPTION 'reset link %: only used_at changes, once', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION password_resets_guard() IS 'A reset link starts unused and valid for at most one hour from its creation (stamped here); afterwards only used_at changes, from empty to a time, once.';
CREATE TRIGGER password_resets_guard BEFORE INSERT OR UPDATE ON password_resets
    FOR EACH ROW EXECUTE FUNCTION password_resets_guard();
COMMENT ON TRIGGER password_resets_guard ON password_resets IS 'A reset link lives one hour at most and is used once.';

CREATE TABLE password_reset_requests (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email   text NOT NULL CHECK (length(email) <= 254),
    address text NOT NULL CHECK (length(address) <= 100),
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_reset_requests_email_idx ON password_reset_requests (lower(email), at);
CREATE INDEX password_reset_requests_address_idx ON password_reset_requests (address, at);
CREATE INDEX password_reset_requests_at_idx ON password_reset_requests (at);
COMMENT ON TABLE password_reset_requests IS 'Every accepted "forgot password" request, whether or not its email belongs to an account, for the throttle of password_reset_request(). Rows older than an hour count for nothing and are swept.';

CREATE TABLE mail_outbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    notification_id   bigint UNIQUE REFERENCES notifications (id) ON DELETE CASCADE,
    password_reset_id bigint UNIQUE REFERENCES password_resets (id) ON DELETE CASCADE,
    reset_token       text CHECK (length(reset_token) BETWEEN 1 AND 100),
    created_at        timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text CHECK (length(last_error) <= 1000),
    sent_at           timestamptz,
    failed_at         timestamptz,
    CONSTRAINT mail_outbox_one_subject CHECK (num_nonnulls(notification_id, password_reset_id) = 1),
    CONSTRAINT mail_outbox_token_of_a_reset CHECK ((reset_token IS NOT NULL) <= (password_reset_id IS NOT NULL)),
    CONSTRAINT mail_outbox_token_until_sent CHECK (reset_token IS NULL OR (sent_at IS NULL AND failed_at IS NULL)),
    CONSTRAINT mail_outbox_settled_once CHECK (sent_at IS NULL OR failed_at IS NULL)
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at, id) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX mail_outbox_settled_idx ON mail_outbox (coalesce(sent_at, failed_at)) WHERE sent_at IS NOT NULL OR failed_at IS NOT NULL;
COMMENT ON TABLE mail_outbox IS 'E-mail waiting to be sent, one row per notification of a user who wants mail (written by the trigger notifications_mail) or per password reset link. python app.py tick sends the due rows over SMTP, each claimed FOR UPDATE SKIP LOCKED and marked sent in the transaction that claimed it, so two ticks never send one row twice. A failure adds an attempt and puts next_attempt_at off, doubling the wait each time; after the last attempt, or a permanent refusal, failed_at is set. A reset link''s token is kept in reset_token only until its mail is sent or given up.';

CREATE FUNCTION notifications_mail() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mail_outbox (user_id, notification_id)
    SELECT u.id, NEW.id
    FROM users u
    WHERE u.id = NEW.user_id
      AND u.email_notifications
      AND NOT u.is_blocked;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION notifications_mail() IS 'Puts a new notification in the mail outbox when its user wants e-mail (users.email_notifications) and is not blocked.';
CREATE TRIGGER notifications_mail AFTER INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_mail();
COMMENT ON TRIGGER notifications_mail ON notifications IS 'Each notification of a user who wants e-mail is mailed once.';

CREATE FUNCTION password_reset_request(request_email text, request_address text, token text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    the_email   text := left(request_email, 254);
    the_address text := left(request_address, 100);
    wait        integer;
    reset_id    bigint;
    account     bigint;
BEGIN
    -- Each statement below must see what was committed before it: only READ COMMITTED gives a
    -- statement in a function a snapshot of its own, taken after the locks are held.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'password_reset_request() needs READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    DELETE FROM password_reset_requests
    WHERE id IN (SELECT id
                 FROM password_reset_requests
                 WHERE at < now() - interval '1 hour'
                 ORDER BY at
                 LIMIT 100
                 FOR UPDATE SKIP LOCKED);
    PERFORM pg_advisory_xact_lock(hashtext('password_reset_requests.email'), hashtext(lower(the_email)));
    PERFORM pg_advisory_xact_lock(hashtext('password_reset_requests.address'), hashtext(the_address));
    SELECT ceil(greatest(
               0,
               (SELECT extract(epoch FROM r.at + interval '1 hour' - now())
                FROM password_reset_requests r
                WHERE lower(r.email) = lower(the_email)
                  AND r.at > now() - interval '1 hour'
                ORDER BY r.at DESC
                OFFSET 2
                LIMIT 1),
               (SELECT extract(epoch FROM r.at + interval '1 hour' - now())
                FROM password_reset_requests r
                WHERE r.address = the_address
                  AND r.at > now() - interval '1 hour'
                ORDER BY r.at DESC
                OFFSET 9
                LIMIT 1)))::integer
    INTO wait;
    IF wait > 0 THEN
        RETURN wait;
    END IF;
    INSERT INTO password_reset_requests (email, address)
    VALUES (the_email, the_address);
    SELECT id INTO account
    FROM users
    WHERE lower(email) = lower(the_email)
      AND NOT is_blocked;
    IF FOUND THEN
        INSERT INTO password_resets (user_id, token_hash, expires_at)
        VALUES (account, sha256(convert_to(token, 'UTF8')), now() + interval '1 hour')
        RETURNING id INTO reset_id;
        INSERT INTO mail_outbox (user_id, password_reset_id, reset_token)
        VALUES (account, reset_id, token);
    END IF;
    RETURN 0;
END $$;
COMMENT ON FUNCTION password_reset_request(text, text, text) IS 'A "forgot password" request for an email from an address, decided and recorded in one step. In any hour at most 3 requests are accepted for one email (case-insensitive) and 10 from one address, counted whether or not the email belongs to an account, so the answer never tells which emails exist. It takes a transaction-level advisory lock on the email, then one on the address, before counting, so requests at the same moment never pass a limit together. An accepted request is recorded; when the email is that of an account that is not blocked, a reset link valid for one hour is stored (the SHA-256 of the token) and its mail queued with the token. Returns 0 when accepted, else the whole seconds until every limit it reached has freed up (nothing is recorded). Sweeps up to 100 requests older than an hour. Refuses to run outside READ COMMITTED.';

-- ---------------------------------------------------------------------------------------------
-- The events that notify people

CREATE FUNCTION orders_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    actor bigint := nullif(current_setting('birzha.actor_id', true), '')::bigint;
    note  text := nullif(current_setting('birzha.note', true), '');
    staff boolean := coalesce(current_setting('birzha.staff', true), '') = 'on';
BEGIN
    IF NEW.status <> OLD.status THEN
        IF OLD.status = 'open' AND NEW.status = 'in_progress' AND OLD.mode = 'take' THEN
            INSERT INTO notifications (user_id, kind, order_id, params)
            SELECT NEW.customer_id, 'order_taken', NEW.id,
                   jsonb_build_object('performer_id', p.id, 'performer_name', p.name)
            FROM users p
            WHERE p.id = NEW.performer_id;
        ELSIF OLD.status = 'in_progress' AND NEW.status = 'delivered' THEN
            INSERT INTO notifications (user_id, kind, order_id, params)
            SELECT NEW.customer_id, 'order_delivered', NEW.id,
                   jsonb_build_object('performer_id', p.id, 'performer_name', p.name)
            FROM users p
            WHERE p.id = NEW.performer_id;
        ELSIF OLD.status = 'delivered' AND NEW.status = 'in_progress' THEN
            INSERT INTO notifications (user_id, kind, order_id, params)
            VALUES (NEW.performer_id, 'revision_requested', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object('reason', CASE WHEN NOT staff THEN left(note, 1000) END)));
        ELSIF OLD.status = 'delivered' AND NEW.status = 'done' THEN
            INSERT INTO notifications (user_id, kind, order_id, params)
            VALUES (NEW.performer_id,
                    CASE WHEN current_setting('birzha.system', true) = 'auto_accept' THEN 'work_auto_accepted' ELSE 'work_accepted' END,
                    NEW.id,
                    jsonb_strip_nulls(jsonb_build_object('rating', NEW.rating)));
        ELSIF NEW.status = 'disputed' THEN
            -- To the other side; to both when neither of them acted.
            INSERT INTO notifications (user_id, kind, order_id, params)
            SELECT s.user_id, 'dispute_opened', NEW.id,
                   jsonb_strip_nulls(jsonb_build_object('by_name', a.name,
                                                        'reason', CASE WHEN NOT staff THEN left(note, 1000) END))
            FROM (VALUES (NEW.customer_id), (NEW.performer_id)) AS s (user_id)
            LEFT JOIN users a ON a.id = actor
            WHERE s.user_id IS DISTINCT FROM actor
            ORDER BY s.user_id;
        ELSIF OLD.status = 'disputed' THEN
            INSERT INTO notifications (user_id, kind, order_id, params)
            SELECT s.user_id, 'dispute_resolved', NEW.id, jsonb_build_object('outcome', NEW.status)
            FROM (VALUES (NEW.customer_id), (NEW.performer_id)) AS s (user_id)
            ORDER BY s.user_id;
        END IF;
    ELSIF OLD.rating IS NULL AND NEW.rating IS NOT NULL THEN
        INSERT INTO notifications (user_id, kind, order_id, params)
        VALUES (NEW.performer_id, 'order_rated', NEW.id, jsonb_build_object('rating', NEW.rating));
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION orders_notify() IS 'Writes the notifications of an order''s transitions: taken in take mode -> its customer (order_taken; in offers mode the performer hears of it as offer_accepted); delivered -> the customer (order_delivered); sent back for a revision -> the performer (revision_requested, with the reason); accepted -> the performer (work_accepted, with the rating given with it, if any; work_auto_accepted when orders_auto_accept() acts as the system); disputed -> the side that did not open the dispute, both when neither did (dispute_opened, with the reason); settled by staff -> both (dispute_resolved, with the outcome); a rating given later on a done order -> the performer (order_rated). Staff notes are never copied into a notification.';
CREATE TRIGGER orders_notify AFTER UPDATE OF status, rating ON orders
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status OR NEW.rating IS DISTINCT FROM OLD.rating)
    EXECUTE FUNCTION orders_notify();
COMMENT ON TRIGGER orders_notify ON orders IS 'The customer and the performer are notified of the transitions and the rating that concern them.';

CREATE FUNCTION offers_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO notifications (user_id, kind, order_id, params)
        SELECT o.customer_id, 'offer_received', o.id,
               jsonb_build_object('offer_id', n.id, 'performer_id', p.id, 'performer_name', p.name,
                                  'price', n.price, 'days', n.days)
        FROM new_rows n
        JOIN orders o ON o.id = n.order_id
        JOIN users p ON p.id = n.performer_id
        ORDER BY o.customer_id, n.id;
    ELSE
        INSERT INTO notifications (user_id, kind, order_id, params)
        SELECT n.performer_id,
               CASE n.status WHEN 'accepted' THEN 'offer_accepted' ELSE 'offer_declined' END,
               n.order_id,
               jsonb_build_object('offer_id', n.id, 'price', n.price, 'days', n.days)
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id
        WHERE o.status = 'active'
          AND n.status IN ('accepted', 'declined')
        ORDER BY n.performer_id, n.id;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION offers_notify() IS 'Writes the notifications of offers, once per statement: a new offer -> the order''s customer (offer_received, with the performer, price and days); an active offer accepted or declined (another one accepted, or the order left open) -> its performer (offer_accepted, offer_declined). A changed or withdrawn offer notifies no one.';
CREATE TRIGGER offers_notify_insert AFTER INSERT ON offers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION offers_notify();
COMMENT ON TRIGGER offers_notify_insert ON offers IS 'The customer hears of every offer that arrives.';
CREATE TRIGGER offers_notify_update AFTER UPDATE ON offers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION offers_notify();
COMMENT ON TRIGGER offers_notify_update ON offers IS 'A performer hears when their offer is accepted or declined.';

CREATE FUNCTION messages_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notifications (user_id, kind, order_id, params)
    SELECT CASE WHEN NEW.sender_id = c.customer_id THEN c.performer_id ELSE c.customer_id END,
           'message_received', c.order_id,
           jsonb_build_object('conversation_id', c.id, 'performer_id', c.performer_id, 'message_id', NEW.id,
                              'sender_id', s.id, 'sender_name', s.name, 'excerpt', left(NEW.body, 200))
    FROM conversations c
    JOIN users s ON s.id = NEW.sender_id
    WHERE c.id = NEW.conversation_id;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION messages_notify() IS 'Notifies the reader of a new message (the conversation''s other person): message_received, with the sender and the first 200 characters.';
CREATE TRIGGER messages_notify AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_notify();
COMMENT ON TRIGGER messages_notify ON messages IS 'Every message notifies its reader.';

-- ---------------------------------------------------------------------------------------------
-- TRUNCATE fires no row trigger: the tables whose rows feed counters refuse it.

CREATE FUNCTION talk_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % is refused: it would bypass the unread counters of conversations and users; use DELETE, whose triggers keep them exact', TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported';
END $$;
COMMENT ON FUNCTION talk_refuse_truncate() IS 'Refuses TRUNCATE of conversations, messages and notifications, which fires no row trigger and would leave the unread counts of conversations and user_counters counting rows that are gone.';
CREATE TRIGGER conversations_refuse_truncate BEFORE TRUNCATE ON conversations
    FOR EACH STATEMENT EXECUTE FUNCTION talk_refuse_truncate();
COMMENT ON TRIGGER conversations_refuse_truncate ON conversations IS 'Conversations go by DELETE, so user_counters.unread_messages follows.';
CREATE TRIGGER messages_refuse_truncate BEFORE TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION talk_refuse_truncate();
COMMENT ON TRIGGER messages_refuse_truncate ON messages IS 'Messages go only with their conversation, so the unread counts follow.';
CREATE TRIGGER notifications_refuse_truncate BEFORE TRUNCATE ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION talk_refuse_truncate();
COMMENT ON TRIGGER notifications_refuse_truncate ON notifications IS 'Notifications go by DELETE, so user_counters.unread_notifications follows.';

-- ---------------------------------------------------------------------------------------------
-- Counter audit and repair: the unread counts

CREATE VIEW conversation_counts_recount AS
SELECT c.id AS conversation_id,
       coalesce(m.messages, 0) AS message_count,
       coalesce(m.customer_unread, 0) AS customer_unread,
       coalesce(m.performer_unread, 0) AS performer_unread
FROM conversations c
LEFT JOIN LATERAL (SELECT count(*) AS messages,
                          count(*) FILTER (WHERE x.sender_id = c.performer_id
                                             AND x.seq > c.customer_read_seq) AS customer_unread,
                          count(*) FILTER (WHERE x.sender_id = c.customer_id
                                             AND x.seq > c.performer_read_seq) AS performer_unread
                   FROM messages x
                   WHERE x.conversation_id = c.id) AS m ON true;
COMMENT ON VIEW conversation_counts_recount IS 'The counters of conversations recounted from messages: how many there are, and for each side those of the other side after its read mark (for audit_counters and recalc_counters).';

CREATE VIEW user_counts_recount AS
SELECT u.id AS user_id,
       coalesce(cm.unread, 0) AS unread_messages,
       coalesce(n.unread, 0) AS unread_notifications
FROM users u
LEFT JOIN (SELECT s.user_id, sum(s.unread) AS unread
           FROM (SELECT c.customer_id AS user_id, r.customer_unread AS unread
                 FROM conversations c
                 JOIN conversation_counts_recount r ON r.conversation_id = c.id
                 UNION ALL
                 SELECT c.performer_id, r.performer_unread
                 FROM conversations c
                 JOIN conversation_counts_recount r ON r.conversation_id = c.id) AS s
           GROUP BY s.user_id) AS cm ON cm.user_id = u.id
LEFT JOIN (SELECT user_id, count(*) AS unread
           FROM notifications
           WHERE read_at IS NULL
           GROUP BY user_id) AS n ON n.user_id = u.id;
COMMENT ON VIEW user_counts_recount IS 'user_counters recounted: the unread messages of every conversation side of the user (recounted from messages) and their notifications with no read_at.';

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
            ('conversation.performer_unread', c.performer_unread, r.performer_unread)
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
COMMENT ON FUNCTION audit_counters() IS 'One row per stored counter (customer_stats, performer_stats, categories.open_orders, orders.offers_active, the message and unread counts of conversations, user_counters) that differs from a recount (a missing stats or user_counters row shows as stored NULL); zero rows means every counter is exact.';

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
        performer_unread = r.performer_unread
    FROM conversation_counts_recount r
    WHERE c.id = r.conversation_id
      AND (c.message_count, c.customer_unread, c.performer_unread)
          IS DISTINCT FROM (r.message_count, r.customer_unread, r.performer_unread);
    UPDATE user_counters s
    SET unread_messages = a.unread_messages,
        unread_notifications = a.unread_notifications
    FROM user_counts_recount a
    WHERE s.user_id = a.user_id
      AND (s.unread_messages, s.unread_notifications)
          IS DISTINCT FROM (a.unread_messages, a.unread_notifications);
    RETURN drift;
END $$;
COMMENT ON FUNCTION recalc_counters() IS 'Rewrites every drifted counter (customer_stats, performer_stats, categories.open_orders, orders.offers_active, the message and unread counts of conversations, user_counters) from the *_recount views; returns how many counters were wrong.';
