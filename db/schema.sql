-- Birzha: the whole database, applied once to an empty database by `python app.py initdb`.
-- The rules that matter (the order state machine, ownership, counters) live here, so that
-- the application and a DBA in psql are held to the same rules.

CREATE TABLE schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL
);
COMMENT ON TABLE schema_version IS 'One row: the schema version this database was built with; the app refuses any other.';
INSERT INTO schema_version (version) VALUES (22);

CREATE TYPE user_role AS ENUM ('customer', 'performer');
COMMENT ON TYPE user_role IS 'Chosen at sign-up, never changed: a customer posts orders, a performer takes them.';

CREATE TYPE order_status AS ENUM ('open', 'in_progress', 'delivered', 'disputed', 'done', 'cancelled');
COMMENT ON TYPE order_status IS 'The states of an order. The only moves: open -> in_progress (taken, or an offer accepted) or cancelled; in_progress -> delivered (work handed in), open (the performer withdraws, or staff reopen), cancelled or disputed; delivered -> done (accepted by the customer or, after some days, by the system), in_progress (a revision) or disputed; disputed -> done or cancelled (staff settle it); done and cancelled are final.';

CREATE TYPE order_mode AS ENUM ('take', 'offers');
COMMENT ON TYPE order_mode IS 'How an order finds its performer: take (the first performer to take it gets it, at its budget) or offers (performers send offers and the customer accepts one).';
CREATE TYPE offer_status AS ENUM ('active', 'withdrawn', 'accepted', 'declined');
COMMENT ON TYPE offer_status IS 'An offer is active until its performer withdraws it, the customer accepts it, or it is declined (another offer accepted, or the order left open); only an active offer changes.';
-- ---------------------------------------------------------------------------------------------
-- People

CREATE TABLE users (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    role             user_role NOT NULL,
    email            text NOT NULL CHECK (length(email) BETWEEN 3 AND 254 AND email LIKE '%_@_%'),
    password_hash    text NOT NULL,
    name             text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    phone            text NOT NULL DEFAULT '' CHECK (length(phone) <= 40),
    messenger        text NOT NULL DEFAULT '' CHECK (length(messenger) <= 100),
    experience_years smallint NOT NULL DEFAULT 0 CHECK (experience_years BETWEEN 0 AND 80),
    experience_text  text NOT NULL DEFAULT '' CHECK (length(experience_text) <= 2000),
    bio              text NOT NULL DEFAULT '' CHECK (length(bio) <= 2000),
    is_staff         boolean NOT NULL DEFAULT false,
    is_blocked       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    email_notifications boolean NOT NULL DEFAULT true,
    lang             text NOT NULL DEFAULT 'ru' CHECK (lang IN ('ru', 'en')),
    timezone         text NOT NULL DEFAULT 'Europe/Moscow' CHECK (length(timezone) BETWEEN 1 AND 64),
    -- the target of the composite foreign keys that pin an order's customer and performer to a role
    UNIQUE (id, role)
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_created_at_idx ON users (created_at);
CREATE INDEX users_blocked_idx ON users (id) WHERE is_blocked;
COMMENT ON INDEX users_blocked_idx IS 'The blocked users (a few): the feed''s orders (feed_orders) leave out theirs by a hash of these ids, built once per statement.';
COMMENT ON TABLE users IS 'Accounts. email is the login (unique case-insensitively); role is fixed at sign-up.';
COMMENT ON INDEX users_email_key IS 'One account per email, whatever its case.';
COMMENT ON COLUMN users.email_notifications IS 'Whether each new notification of this user is also sent by e-mail (a mail_outbox row); on by default, switched on the profile page.';
COMMENT ON COLUMN users.lang IS 'The language of the interface the user last chose (ru or en): their e-mail is written in it.';
COMMENT ON COLUMN users.timezone IS 'IANA time zone the interface shows this user''s dates in (profile setting; the app checks the name).';

CREATE TABLE customer_stats (
    customer_id       bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    orders_placed     integer NOT NULL DEFAULT 0 CHECK (orders_placed >= 0),
    orders_open       integer NOT NULL DEFAULT 0 CHECK (orders_open >= 0),
    orders_in_progress integer NOT NULL DEFAULT 0 CHECK (orders_in_progress >= 0),
    orders_done       integer NOT NULL DEFAULT 0 CHECK (orders_done >= 0),
    orders_cancelled  integer NOT NULL DEFAULT 0 CHECK (orders_cancelled >= 0),
    orders_delivered  integer NOT NULL DEFAULT 0 CHECK (orders_delivered >= 0),
    orders_disputed   integer NOT NULL DEFAULT 0 CHECK (orders_disputed >= 0)
);
COMMENT ON TABLE customer_stats IS 'Counters of a customer''s orders: every order placed, and how many are open, in progress, delivered, disputed, done and cancelled now. Kept exact by the trigger orders_count_contribution on orders; never written by the app.';

CREATE TABLE performer_stats (
    performer_id     bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    orders_completed integer NOT NULL DEFAULT 0 CHECK (orders_completed >= 0),
    orders_in_progress integer NOT NULL DEFAULT 0 CHECK (orders_in_progress >= 0),
    rating_sum       integer NOT NULL DEFAULT 0 CHECK (rating_sum >= 0),
    rating_count     integer NOT NULL DEFAULT 0 CHECK (rating_count >= 0),
    rating_avg       numeric(4, 2) GENERATED ALWAYS AS
                         (CASE WHEN rating_count > 0 THEN round(rating_sum::numeric / rating_count, 2) END) STORED,
    orders_delivered integer NOT NULL DEFAULT 0 CHECK (orders_delivered >= 0),
    orders_disputed  integer NOT NULL DEFAULT 0 CHECK (orders_disputed >= 0)
);
-- The catalogue's order (unrated last: ratings are 1..10; ties by ascending id), all descending,
-- so its keyset cursor is one row comparison the index ranges over.
CREATE INDEX performer_stats_rank_idx ON performer_stats
    ((coalesce(rating_avg, 0)) DESC, orders_completed DESC, (-performer_id) DESC);
COMMENT ON INDEX performer_stats_rank_idx IS 'The catalogue''s and the home page''s order; their keyset cursor is a row comparison on these three keys.';
COMMENT ON TABLE performer_stats IS 'Counters of a performer''s work: orders done and in progress, the sum and count of the ratings staff have not hidden, and the average derived from them. Kept exact by the trigger orders_count_contribution on orders; never written by the app.';

CREATE FUNCTION users_create_stats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role = 'customer' THEN
        INSERT INTO customer_stats (customer_id) VALUES (NEW.id);
    ELSE
        INSERT INTO performer_stats (performer_id) VALUES (NEW.id);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION users_create_stats() IS 'Gives every new account the counters row of its role.';
CREATE TRIGGER users_create_stats AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_create_stats();
COMMENT ON TRIGGER users_create_stats ON users IS 'Creates the customer_stats or performer_stats row of a new account.';

CREATE FUNCTION users_guard_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role IS DISTINCT FROM OLD.role THEN
        RAISE EXCEPTION 'user %: the role is chosen at sign-up and cannot change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
COMMENT ON FUNCTION users_guard_update() IS 'Refuses a change of role and stamps updated_at.';
CREATE TRIGGER users_guard_update BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_guard_update();
COMMENT ON TRIGGER users_guard_update ON users IS 'A role never changes (orders point at (id, role)).';

CREATE TABLE categories (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 50),
    name_ru     text NOT NULL CHECK (length(btrim(name_ru)) BETWEEN 1 AND 60),
    name_en     text NOT NULL CHECK (length(btrim(name_en)) BETWEEN 1 AND 60),
    is_hidden   boolean NOT NULL DEFAULT false,
    open_orders integer NOT NULL DEFAULT 0 CHECK (open_orders >= 0)
);
COMMENT ON TABLE categories IS 'Kinds of work. A hidden category takes no new orders. open_orders counts the open orders in the feed (of customers not blocked), kept by triggers.';

CREATE TABLE performer_categories (
    performer_id   bigint NOT NULL,
    performer_role user_role NOT NULL DEFAULT 'performer' CHECK (performer_role = 'performer'),
    category_id    integer NOT NULL REFERENCES categories (id) ON DELETE CASCADE,
    PRIMARY KEY (performer_id, category_id),
    FOREIGN KEY (performer_id, performer_role) REFERENCES users (id, role) ON DELETE CASCADE
);
CREATE INDEX performer_categories_category_idx ON performer_categories (category_id, performer_id);
COMMENT ON TABLE performer_categories IS 'The categories a performer works in; only performers can have them.';

-- ---------------------------------------------------------------------------------------------
-- Orders

CREATE TABLE orders (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id    bigint NOT NULL,
    customer_role  user_role NOT NULL DEFAULT 'customer' CHECK (customer_role = 'customer'),
    performer_id   bigint,
    performer_role user_role NOT NULL DEFAULT 'performer' CHECK (performer_role = 'performer'),
    category_id    integer NOT NULL REFERENCES categories (id),
    title          text NOT NULL CHECK (length(btrim(title)) BETWEEN 3 AND 200),
    description    text NOT NULL CHECK (length(btrim(description)) BETWEEN 1 AND 10000),
    budget         integer NOT NULL CHECK (budget BETWEEN 1 AND 100000000),
    deadline       date,
    status         order_status NOT NULL DEFAULT 'open',
    rating         smallint CHECK (rating BETWEEN 1 AND 10),
    review         text CHECK (length(review) <= 5000),
    review_hidden  boolean NOT NULL DEFAULT false,
    cancel_reason  text CHECK (length(cancel_reason) <= 1000),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    taken_at       timestamptz,
    completed_at   timestamptz,
    cancelled_at   timestamptz,
    rated_at       timestamptz,
    search         tsvector GENERATED ALWAYS AS (
                       setweight(to_tsvector('russian', title), 'A') || to_tsvector('russian', description)
                   ) STORED,
    mode           order_mode NOT NULL DEFAULT 'take',
    agreed_price   integer CHECK (agreed_price BETWEEN 1 AND 100000000),
    offers_active  integer NOT NULL DEFAULT 0 CHECK (offers_active >= 0),
    delivered_at   timestamptz,
    disputed_at    timestamptz,
    FOREIGN KEY (customer_id, customer_role) REFERENCES users (id, role),
    FOREIGN KEY (performer_id, performer_role) REFERENCES users (id, role),
    CONSTRAINT orders_customer_is_not_performer CHECK (customer_id <> performer_id),
    CONSTRAINT orders_performer_when_needed CHECK (CASE status
        WHEN 'open' THEN performer_id IS NULL
        WHEN 'cancelled' THEN true
        ELSE performer_id IS NOT NULL END),
    CONSTRAINT orders_rating_only_when_done CHECK (rating IS NULL OR status = 'done'),
    CONSTRAINT orders_review_needs_rating CHECK (review IS NULL OR rating IS NOT NULL),
    CONSTRAINT orders_rated_at_with_rating CHECK ((rating IS NULL) = (rated_at IS NULL)),
    CONSTRAINT orders_hidden_needs_rating CHECK (NOT review_hidden OR rating IS NOT NULL),
    CONSTRAINT orders_taken_at_when_taken CHECK (
        (status IN ('in_progress', 'delivered', 'disputed', 'done')) <= (taken_at IS NOT NULL)),
    CONSTRAINT orders_agreed_price_with_performer CHECK ((performer_id IS NULL) = (agreed_price IS NULL)),
    CONSTRAINT orders_delivered_at_when_delivered CHECK ((status = 'delivered') <= (delivered_at IS NOT NULL)),
    CONSTRAINT orders_disputed_at_when_disputed CHECK ((status = 'disputed') <= (disputed_at IS NOT NULL)),
    CONSTRAINT orders_performer_only_when_taken CHECK (performer_id IS NULL OR taken_at IS NOT NULL),
    CONSTRAINT orders_completed_at_when_done CHECK ((status = 'done') = (completed_at IS NOT NULL)),
    CONSTRAINT orders_cancelled_at_when_cancelled CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
    CONSTRAINT orders_cancel_reason_when_cancelled CHECK (cancel_reason IS NULL OR status = 'cancelled')
);
COMMENT ON TABLE orders IS 'Orders. status moves only along the order_status type''s moves (open -> in_progress | cancelled; in_progress -> delivered | open | cancelled | disputed; delivered -> done | in_progress | disputed; disputed -> done | cancelled); only an open order is edited; a done order takes one rating, never changed. Every move is appended to order_history, and the counters of customers, performers and categories follow it.';
COMMENT ON COLUMN orders.customer_role IS 'Always customer: with the foreign key to users (id, role) it makes sure the customer is a customer.';
COMMENT ON COLUMN orders.performer_role IS 'Always performer: with the foreign key to users (id, role) it makes sure the performer is a performer.';
COMMENT ON COLUMN orders.search IS 'Full-text vector of title (weight A) and description; the russian configuration stems Russian words and, through english_stem, English ones.';
COMMENT ON COLUMN orders.mode IS 'take or offers; changed only while the order is open with no active offer.';
COMMENT ON COLUMN orders.agreed_price IS 'The price the work was agreed at: the budget when taken, the offer''s price when an offer is accepted; set exactly while a performer is assigned.';
COMMENT ON COLUMN orders.offers_active IS 'How many active offers the order has, kept exact by the trigger offers_count_active on offers.';
COMMENT ON COLUMN orders.delivered_at IS 'When the work was last handed in; the system accepts it after AUTO_ACCEPT_DAYS unanswered.';
COMMENT ON COLUMN orders.review_hidden IS 'Set by staff: the rating and review are hidden and do not count in the performer''s average.';

-- The feed: open orders, newest first or by budget, with (key, id) cursors.
CREATE INDEX orders_feed_new_idx ON orders (created_at DESC, id DESC) WHERE status = 'open';
CREATE INDEX orders_feed_budget_idx ON orders (budget DESC, id DESC) WHERE status = 'open';
CREATE INDEX orders_feed_deadline_idx ON orders ((COALESCE(deadline, 'infinity'::date)), id) WHERE status = 'open';
CREATE INDEX orders_feed_category_new_idx ON orders (category_id, created_at DESC, id DESC) WHERE status = 'open';
CREATE INDEX orders_search_idx ON orders USING gin (search);
-- The cabinets and the admin area.
CREATE INDEX orders_customer_idx ON orders (customer_id, created_at DESC, id DESC);
CREATE INDEX orders_performer_idx ON orders (performer_id, created_at DESC, id DESC) WHERE performer_id IS NOT NULL;
COMMENT ON INDEX orders_customer_idx IS 'A customer''s orders newest first, (created_at, id) keyset: the cabinet.';
COMMENT ON INDEX orders_performer_idx IS 'A performer''s orders newest first, (created_at, id) keyset: the cabinet.';
CREATE INDEX orders_created_at_brin ON orders USING brin (created_at) WITH (autosummarize = on);
COMMENT ON INDEX orders_created_at_brin IS 'Date ranges of orders (the dashboard''s new orders per day, the staff''s search by date). BRIN, not B-tree: it cannot give rows in date order, which kept the feed''s generic plan off orders_feed_new_idx.';
CREATE INDEX orders_reviews_idx ON orders (performer_id, rated_at DESC) WHERE rating IS NOT NULL;
-- The tick's auto-accept and the staff's dispute queue.
CREATE INDEX orders_delivered_idx ON orders (delivered_at) WHERE status = 'delivered';
CREATE INDEX orders_disputed_idx ON orders (disputed_at, id) WHERE status = 'disputed';
-- The newest orders change all the time (taken, delivered, done): vacuum and analyze orders after
-- about 1% of it changed rather than the default 20% / 10%, so the feed's hot end does not fill
-- with dead rows and the planner's statistics follow it.
ALTER TABLE orders SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                        autovacuum_analyze_scale_factor = 0.005, autovacuum_analyze_threshold = 1000,
                        autovacuum_vacuum_insert_scale_factor = 0.02);
-- No parallel scans of orders: the web's statements read a page of it, and a plan kept for every
-- call that guessed many rows would start two worker processes for each (5 ms, on a machine whose
-- cores serve the other requests).
ALTER TABLE orders SET (parallel_workers = 0);

-- The feed's rows.
CREATE VIEW feed_orders AS
SELECT o.id, o.title, left(o.description, 240) AS excerpt, o.budget, o.deadline, o.created_at, o.mode, o.offers_active,
       o.category_id
FROM orders o
WHERE o.status = 'open'
  AND o.customer_id NOT IN (SELECT b.id FROM users b WHERE b.is_blocked);
COMMENT ON VIEW feed_orders IS 'The feed''s orders (open, of customers who are not blocked) as a feed page shows them: the statements of one feed each (newest first, by budget, by deadline, a category''s) read it in the order of a partial index of orders_feed_*_idx. Blocked customers are left out by a hash of their ids (users_blocked_idx, a hashed subplan: one probe a row), not by a join to each order''s customer (an index look-up a row, half of the statement''s CPU).';

-- How far the feed counts the matches of a search or budget filter.
CREATE FUNCTION feed_count_cap() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 100
$$;
COMMENT ON FUNCTION feed_count_cap() IS 'How many matches of a search or budget filter the feed counts at most (the page says "more than" beyond): 100. Counting to 1,000 matches of a common word cost 3-4 ms at a million orders, to 100 a tenth of that. A constant the planner folds into the statements (LIMIT feed_count_cap() + 1), so a plan kept for every call knows it.';

-- The admin area's count of open disputes.
CREATE VIEW open_disputes_badge AS
SELECT count(*) AS n,
       99 AS cap
FROM (SELECT 1
      FROM orders
      WHERE status = 'disputed'
      LIMIT 100) AS capped;
COMMENT ON VIEW open_disputes_badge IS 'The open disputes for the admin area''s navigation, counted up to 100 (n; shown as "99+" beyond cap): an index-only walk of orders_disputed_idx that costs the same whatever the backlog. The cap is a constant, so PostgreSQL keeps one plan for the statements that read it.';

CREATE TABLE order_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    action      text NOT NULL CHECK (action IN (
                    'create', 'take', 'accept_offer', 'complete', 'deliver', 'revision', 'accept', 'auto_accept',
                    'withdraw', 'dispute', 'resolve', 'cancel', 'reopen', 'reassign', 'rate', 'hide_rating',
                    'restore_rating', 'change_mode')),
    from_status order_status,
    to_status   order_status NOT NULL,
    performer_id bigint,
    note        text,
    staff_only  boolean NOT NULL DEFAULT false
);
CREATE INDEX order_history_order_idx ON order_history (order_id, id);
COMMENT ON TABLE order_history IS 'Append-only: every transition of every order (who, when, from, to, note), written by the trigger orders_record_history on orders; rows are never updated or deleted, except by the cascades from deleting their order or their actor.';

CREATE FUNCTION order_history_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A row may go only together with its order (ON DELETE CASCADE), or when its actor is deleted.
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM orders WHERE id = OLD.order_id) THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.actor_id IS NULL AND OLD.actor_id IS NOT NULL
       AND (NEW.id, NEW.order_id, NEW.at, NEW.action, NEW.from_status, NEW.to_status, NEW.note)
           IS NOT DISTINCT FROM (OLD.id, OLD.order_id, OLD.at, OLD.action, OLD.from_status, OLD.to_status, OLD.note)
       AND NOT EXISTS (SELECT 1 FROM users WHERE id = OLD.actor_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'order_history is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON COLUMN order_history.staff_only IS 'The note is a staff member''s reason (an action from the admin area): shown to staff only.';
COMMENT ON COLUMN order_history.actor_id IS 'Who acted; NULL for the system (auto_accept) or an actor since deleted.';

COMMENT ON FUNCTION order_history_append_only() IS 'Refuses UPDATE and DELETE of history rows, except the cascades from deleting an order or a user.';
CREATE TRIGGER order_history_append_only BEFORE UPDATE OR DELETE ON order_history
    FOR EACH ROW EXECUTE FUNCTION order_history_append_only();
COMMENT ON TRIGGER order_history_append_only ON order_history IS 'History is never rewritten.';

-- The state machine of SPEC §4. A CHECK sees one row version; a transition needs both.
CREATE FUNCTION orders_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    offer record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'open' OR NEW.performer_id IS NOT NULL OR NEW.rating IS NOT NULL
           OR NEW.agreed_price IS NOT NULL OR NEW.offers_active <> 0 THEN
            RAISE EXCEPTION 'a new order starts open, with no performer, price agreed, offer or rating'
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
        NEW.delivered_at := NULL;
        NEW.disputed_at := NULL;
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
    IF (NEW.taken_at, NEW.delivered_at, NEW.disputed_at, NEW.completed_at, NEW.cancelled_at, NEW.rated_at)
       IS DISTINCT FROM (OLD.taken_at, OLD.delivered_at, OLD.disputed_at, OLD.completed_at, OLD.cancelled_at, OLD.rated_at) THEN
        RAISE EXCEPTION 'order %: transition times are set by the database', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.cancel_reason IS DISTINCT FROM OLD.cancel_reason
       AND NOT (NEW.status = 'cancelled' AND OLD.status <> 'cancelled') THEN
        RAISE EXCEPTION 'order %: the cancel reason is given with the cancel and never changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    -- The offers themselves decide, not offers_active: a DBA may have put the count wrong, and an
    -- offer sent in the same statement is counted only at its end.
    IF NEW.mode <> OLD.mode THEN
        IF OLD.status <> 'open' OR NEW.status <> 'open'
           OR EXISTS (SELECT 1 FROM offers WHERE order_id = OLD.id AND status = 'active') THEN
            RAISE EXCEPTION 'order %: the mode changes only while the order is open and has no offers', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
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
        IF NEW.agreed_price IS DISTINCT FROM OLD.agreed_price THEN
            RAISE EXCEPTION 'order %: the agreed price is set when the order is taken or an offer accepted', OLD.id
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

    -- A rating comes on a done order, or with the customer's acceptance of the work.
    IF (NEW.rating IS DISTINCT FROM OLD.rating OR NEW.review IS DISTINCT FROM OLD.review)
       AND NOT (OLD.status = 'delivered' AND NEW.status = 'done') THEN
        RAISE EXCEPTION 'order %: a rating is given on a done order or with the acceptance, not with another transition', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.title, NEW.description, NEW.category_id, NEW.budget)
       IS DISTINCT FROM (OLD.title, OLD.description, OLD.category_id, OLD.budget)
       OR (NEW.deadline IS DISTINCT FROM OLD.deadline
           AND NOT (OLD.status = 'open' AND NEW.status = 'in_progress' AND OLD.mode = 'offers')) THEN
        RAISE EXCEPTION 'order %: the order cannot be edited during a transition', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.performer_id IS DISTINCT FROM OLD.performer_id
       AND NOT (OLD.status = 'open' AND NEW.status = 'in_progress')
       AND NOT (OLD.status = 'in_progress' AND NEW.status = 'open') THEN
        RAISE EXCEPTION 'order %: the performer stays the same through this transition', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.agreed_price IS DISTINCT FROM OLD.agreed_price
       AND NOT (OLD.status = 'open' AND NEW.status = 'in_progress')
       AND NOT (OLD.status = 'in_progress' AND NEW.status = 'open') THEN
        RAISE EXCEPTION 'order %: the agreed price stays the same through this transition', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;

    CASE
        WHEN OLD.status = 'open' AND NEW.status = 'in_progress' THEN
            IF OLD.mode = 'take' THEN
                -- Taken at the customer's budget.
                IF NEW.agreed_price IS DISTINCT FROM OLD.budget THEN
                    RAISE EXCEPTION 'order %: a taken order is agreed at its budget', OLD.id
                        USING ERRCODE = 'check_violation';
                END IF;
            ELSE
                -- Offers mode: the performer, price and deadline of an offer accepted in this
                -- transaction, and no other offer left active.
                SELECT f.price, f.days INTO offer
                FROM offers f
                WHERE f.order_id = OLD.id
                  AND f.performer_id = NEW.performer_id
                  AND f.status = 'accepted'
                  AND f.updated_at = now();
                IF NOT FOUND OR NEW.agreed_price IS DISTINCT FROM offer.price
                   OR NEW.deadline IS DISTINCT FROM current_date + offer.days THEN
                    RAISE EXCEPTION 'order %: in offers mode an order goes in progress only by accepting an offer, at its price and its days', OLD.id
                        USING ERRCODE = 'check_violation';
                END IF;
            END IF;
            NEW.taken_at := now();
        WHEN OLD.status = 'open' AND NEW.status = 'cancelled' THEN
            NEW.cancelled_at := now();
        WHEN OLD.status = 'in_progress' AND NEW.status = 'delivered' THEN
            NEW.delivered_at := now();
        WHEN OLD.status = 'in_progress' AND NEW.status = 'open' THEN
            IF NEW.performer_id IS NOT NULL OR NEW.agreed_price IS NOT NULL THEN
                RAISE EXCEPTION 'order %: an order back in the feed has no performer and no agreed price', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            NEW.taken_at := NULL;
        WHEN OLD.status = 'in_progress' AND NEW.status = 'cancelled' THEN
            NEW.cancelled_at := now();
        WHEN OLD.status = 'delivered' AND NEW.status = 'done' THEN
            NEW.completed_at := now();
            IF NEW.rating IS NOT NULL THEN
                NEW.rated_at := now();
            END IF;
        WHEN OLD.status = 'delivered' AND NEW.status = 'in_progress' THEN
            NULL;  -- a revision: the performer works on
        WHEN OLD.status IN ('in_progress', 'delivered') AND NEW.status = 'disputed' THEN
            NEW.disputed_at := now();
        WHEN OLD.status = 'disputed' AND NEW.status = 'done' THEN
            NEW.completed_at := now();
        WHEN OLD.status = 'disputed' AND NEW.status = 'cancelled' THEN
            NEW.cancelled_at := now();
        ELSE
            RAISE EXCEPTION 'order %: the transition % -> % is not allowed', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
    END CASE;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
COMMENT ON FUNCTION orders_guard_transition() IS
    'The order state machine: open -> in_progress (take mode: taken at the budget; offers mode: only with an offer accepted in the same transaction, at its price, due today plus its days) | cancelled; in_progress -> delivered | open (no performer, no agreed price) | cancelled | disputed; delivered -> done (a rating may come with it) | in_progress (a revision) | disputed; disputed -> done | cancelled. Refuses everything else, edits of orders that are not open, a performer or price changed outside taking and giving back, a mode change once offers are active, and a change of a set rating. Stamps taken_at, delivered_at, disputed_at, completed_at, cancelled_at and rated_at itself and refuses any statement that writes them; cancel_reason is written only by the cancel.';
CREATE TRIGGER orders_guard_transition BEFORE INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_guard_transition();
COMMENT ON TRIGGER orders_guard_transition ON orders IS 'Lets status move only along the order_status moves (open -> in_progress | cancelled; in_progress -> delivered | open | cancelled | disputed; delivered -> done | in_progress | disputed; disputed -> done | cancelled), a done order take one rating, and an open order be edited; refuses every other change, and any statement that writes a transition time.';

-- Counters: one row trigger adds, for each counters row the order feeds, the new row's
-- contribution less the old row's, and writes only the rows where that difference is not zero.
CREATE FUNCTION orders_count_contribution() RETURNS trigger
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
COMMENT ON FUNCTION orders_count_contribution() IS
    'Keeps customer_stats, performer_stats and categories.open_orders exact: for each counters row an order feeds (its customer''s placed and per-status counts; its performer''s in progress, delivered, disputed, done and ratings; its category''s open orders), adds the new row''s contribution less the old row''s, and writes only the rows where that difference is not zero (a rating or a hidden review writes the performer''s row alone). Rows are written performers, customers, categories, each in id order, so crossing reassignments or category moves queue instead of deadlocking.';
CREATE TRIGGER orders_count_contribution AFTER INSERT OR DELETE OR UPDATE OF status, performer_id, customer_id, category_id, rating, review_hidden ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_count_contribution();
COMMENT ON TRIGGER orders_count_contribution ON orders IS 'Counters of customers, performers and categories follow every insert, delete, transition, reassignment, rating and hidden review.';

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

CREATE FUNCTION orders_record_history() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    act   text;
    actor bigint := nullif(current_setting('birzha.actor_id', true), '')::bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        act := 'create';
    ELSIF NEW.status <> OLD.status THEN
        act := CASE
            WHEN OLD.status = 'open' AND NEW.status = 'in_progress' AND OLD.mode = 'offers' THEN 'accept_offer'
            WHEN OLD.status = 'open' AND NEW.status = 'in_progress' THEN 'take'
            WHEN NEW.status = 'delivered' THEN 'deliver'
            WHEN OLD.status = 'delivered' AND NEW.status = 'in_progress' THEN 'revision'
            WHEN OLD.status = 'delivered' AND NEW.status = 'done'
                 AND current_setting('birzha.system', true) = 'auto_accept' THEN 'auto_accept'
            WHEN OLD.status = 'delivered' AND NEW.status = 'done' THEN 'accept'
            WHEN NEW.status = 'disputed' THEN 'dispute'
            WHEN OLD.status = 'disputed' THEN 'resolve'
            WHEN NEW.status = 'cancelled' THEN 'cancel'
            WHEN NEW.status = 'open' AND actor = OLD.performer_id THEN 'withdraw'
            ELSE 'reopen' END;
    ELSIF NEW.performer_id IS DISTINCT FROM OLD.performer_id THEN
        act := 'reassign';
    ELSIF OLD.rating IS NULL AND NEW.rating IS NOT NULL THEN
        act := 'rate';
    ELSIF NEW.review_hidden AND NOT OLD.review_hidden THEN
        act := 'hide_rating';
    ELSIF OLD.review_hidden AND NOT NEW.review_hidden THEN
        act := 'restore_rating';
    ELSIF NEW.mode <> OLD.mode THEN
        act := 'change_mode';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO order_history (order_id, actor_id, action, from_status, to_status, performer_id, note, staff_only)
    VALUES (NEW.id,
            actor,
            act,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
            NEW.status,
            NEW.performer_id,
            nullif(current_setting('birzha.note', true), ''),
            coalesce(current_setting('birzha.staff', true), '') = 'on');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION orders_record_history() IS
    'Appends one order_history row per creation, transition (take, accept_offer, deliver, revision, accept, auto_accept when orders_auto_accept() acts as the system, withdraw when the performer gives it back, reopen, dispute, resolve, cancel), reassignment, rating, hidden or restored review and mode change; the actor, the note and whether the note is staff-only come from the transaction-local settings birzha.actor_id, birzha.note and birzha.staff.';
CREATE TRIGGER orders_record_history AFTER INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_record_history();
COMMENT ON TRIGGER orders_record_history ON orders IS 'Every transition lands in order_history.';

-- ---------------------------------------------------------------------------------------------
-- Offers and deliveries

CREATE TABLE offers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id       bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    performer_id   bigint NOT NULL,
    performer_role user_role NOT NULL DEFAULT 'performer' CHECK (performer_role = 'performer'),
    price          integer NOT NULL CHECK (price BETWEEN 1 AND 100000000),
    days           smallint NOT NULL CHECK (days BETWEEN 1 AND 365),
    message        text NOT NULL CHECK (length(btrim(message)) BETWEEN 1 AND 2000),
    status         offer_status NOT NULL DEFAULT 'active',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (performer_id, performer_role) REFERENCES users (id, role) ON DELETE CASCADE
);
CREATE UNIQUE INDEX offers_one_live_idx ON offers (order_id, performer_id) WHERE status = 'active';
CREATE INDEX offers_order_idx ON offers (order_id, created_at);
CREATE INDEX offers_performer_idx ON offers (performer_id, created_at DESC, id DESC);
COMMENT ON TABLE offers IS 'Performers'' offers on orders in offers mode: a price in whole roubles, days to do it, a message. At most one active offer per performer and order; it is changed or withdrawn while the order is open. When the customer accepts one, the order goes in progress at its price with a deadline of today plus its days, and every other active offer is declined; an order that leaves open declines the ones left.';
COMMENT ON INDEX offers_one_live_idx IS 'One active offer per performer per order; withdrawn, accepted and declined ones stay as history.';

CREATE FUNCTION offers_guard() RETURNS trigger
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
CREATE TRIGGER offers_guard BEFORE INSERT OR UPDATE ON offers
    FOR EACH ROW EXECUTE FUNCTION offers_guard();
COMMENT ON TRIGGER offers_guard ON offers IS 'An offer is sent, changed, withdrawn or accepted only on an open order in offers mode; a settled offer never changes.';

CREATE FUNCTION offers_accepted_with_order() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1
                   FROM orders
                   WHERE id = NEW.order_id
                     AND performer_id = NEW.performer_id
                     AND agreed_price = NEW.price
                     AND taken_at = NEW.updated_at) THEN
        RAISE EXCEPTION 'offer %: an offer is accepted only together with its order going in progress to its performer at its price', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION offers_accepted_with_order() IS 'At the end of the transaction that accepts an offer, its order must have gone in progress in that transaction, to the offer''s performer at the offer''s price.';
CREATE CONSTRAINT TRIGGER offers_accepted_with_order AFTER UPDATE OF status ON offers
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.status = 'accepted' AND OLD.status <> 'accepted')
    EXECUTE FUNCTION offers_accepted_with_order();
COMMENT ON TRIGGER offers_accepted_with_order ON offers IS 'An accepted offer has its order taken by its performer at its price in the same transaction (checked at commit).';

CREATE FUNCTION offers_count_active() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    delta integer := (TG_OP <> 'DELETE' AND NEW.status = 'active')::int
                   - (TG_OP <> 'INSERT' AND OLD.status = 'active')::int;
BEGIN
    IF delta <> 0 THEN
        UPDATE orders
        SET offers_active = offers_active + delta
        WHERE id = coalesce(NEW.order_id, OLD.order_id);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION offers_count_active() IS 'Keeps orders.offers_active, the number of active offers of each order, exact: +1 when an offer becomes active, -1 when it stops being active or is deleted.';
CREATE TRIGGER offers_count_active AFTER INSERT OR DELETE OR UPDATE OF status ON offers
    FOR EACH ROW EXECUTE FUNCTION offers_count_active();
COMMENT ON TRIGGER offers_count_active ON offers IS 'orders.offers_active follows every offer sent, withdrawn, accepted, declined or deleted.';

CREATE FUNCTION offers_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of offers is refused: it would bypass orders.offers_active; use DELETE, whose triggers keep it exact'
        USING ERRCODE = 'feature_not_supported';
END $$;
COMMENT ON FUNCTION offers_refuse_truncate() IS 'Refuses TRUNCATE of offers, which fires no row trigger and would leave orders.offers_active counting offers that are gone.';
CREATE TRIGGER offers_refuse_truncate BEFORE TRUNCATE ON offers
    FOR EACH STATEMENT EXECUTE FUNCTION offers_refuse_truncate();
COMMENT ON TRIGGER offers_refuse_truncate ON offers IS 'Offers go by DELETE, so orders.offers_active follows.';

CREATE FUNCTION orders_decline_offers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE offers
    SET status = 'declined'
    WHERE order_id = NEW.id
      AND status = 'active';
    RETURN NULL;
END $$;
COMMENT ON FUNCTION orders_decline_offers() IS 'Declines every offer still active on an order that has left open (another offer was accepted, the order was cancelled or taken).';
-- Not only when offers_active says there are some: a DBA may have put the count wrong, and an
-- offer sent in the statement that moves the order is counted only at its end.
CREATE TRIGGER orders_decline_offers AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status = 'open' AND NEW.status <> 'open')
    EXECUTE FUNCTION orders_decline_offers();
COMMENT ON TRIGGER orders_decline_offers ON orders IS 'An order that leaves open declines the offers still active on it.';

CREATE FUNCTION order_accept_offer(the_order bigint, the_offer bigint, the_customer bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    chosen record;
BEGIN
    -- The order first, then the offer: the order that every offer write also locks first.
    PERFORM 1
    FROM orders o
    JOIN users c ON c.id = o.customer_id
    WHERE o.id = the_order
      AND o.customer_id = the_customer
      AND o.status = 'open'
      AND o.mode = 'offers'
      AND NOT c.is_blocked
    FOR UPDATE OF o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT f.id, f.performer_id, f.price, f.days INTO chosen
    FROM offers f
    JOIN users p ON p.id = f.performer_id
    WHERE f.id = the_offer
      AND f.order_id = the_order
      AND f.status = 'active'
      AND NOT p.is_blocked
    FOR UPDATE OF f;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE offers
    SET status = 'accepted'
    WHERE id = chosen.id;
    UPDATE orders
    SET status = 'in_progress',
        performer_id = chosen.performer_id,
        agreed_price = chosen.price,
        deadline = current_date + chosen.days
    WHERE id = the_order;
    RETURN the_order;
END $$;
COMMENT ON FUNCTION order_accept_offer(bigint, bigint, bigint) IS 'The customer accepts an active offer on their open order in offers mode: the order goes in progress to the offer''s performer at its price, due today plus its days, and the other active offers are declined, all in one step. Returns the order id, or NULL when the order or the offer is not (or no longer) as required: of two accepts at once, the second finds the order taken. Locks the order, then the offer.';

CREATE TABLE order_deliveries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    performer_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message      text NOT NULL CHECK (length(btrim(message)) BETWEEN 1 AND 5000),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_deliveries_order_idx ON order_deliveries (order_id, id);
COMMENT ON TABLE order_deliveries IS 'The work handed in: one row per delivery of an order (a revision asks for another), with the performer''s message; written in the same statement that moves the order to delivered, and never changed.';

CREATE FUNCTION order_deliveries_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1
                       FROM orders
                       WHERE id = NEW.order_id
                         AND performer_id = NEW.performer_id
                         AND status = 'delivered'
                         AND delivered_at = now()) THEN
            RAISE EXCEPTION 'order %: a delivery is recorded only as its performer delivers the order', NEW.order_id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.created_at := now();
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM orders WHERE id = OLD.order_id) THEN
        RETURN OLD;  -- the cascade from deleting the order
    END IF;
    RAISE EXCEPTION 'deliveries are never changed or deleted' USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON FUNCTION order_deliveries_guard() IS 'A delivery is inserted only by the order''s performer in the transaction that moves the order to delivered; it is never updated, and deleted only with its order.';
CREATE TRIGGER order_deliveries_guard BEFORE INSERT OR UPDATE OR DELETE ON order_deliveries
    FOR EACH ROW EXECUTE FUNCTION order_deliveries_guard();
COMMENT ON TRIGGER order_deliveries_guard ON order_deliveries IS 'Deliveries come with the delivered transition and stay as they were.';

CREATE FUNCTION orders_auto_accept(after interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    accepted integer;
BEGIN
    -- No acting user: the history records the system, as auto_accept.
    PERFORM set_config('birzha.actor_id', '', true),
            set_config('birzha.note', '', true),
            set_config('birzha.staff', '', true),
            set_config('birzha.system', 'auto_accept', true);
    UPDATE orders
    SET status = 'done'
    WHERE status = 'delivered'
      AND delivered_at <= now() - after;
    GET DIAGNOSTICS accepted = ROW_COUNT;
    PERFORM set_config('birzha.system', '', true);
    RETURN accepted;
END $$;
COMMENT ON FUNCTION orders_auto_accept(interval) IS 'Accepts, as the system, every delivered order that the customer has left unanswered for `after` since its delivery: it becomes done, the history says auto_accept with no acting user. Returns how many. A revision or dispute at the same moment wins or loses by the row lock: exactly one of them applies.';

-- Blocking a customer takes their open orders out of the feed, and their category counts.
CREATE FUNCTION users_block_listing() RETURNS trigger
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
CREATE TRIGGER users_block_listing AFTER UPDATE OF is_blocked ON users
    FOR EACH ROW WHEN (NEW.is_blocked IS DISTINCT FROM OLD.is_blocked)
    EXECUTE FUNCTION users_block_listing();
COMMENT ON TRIGGER users_block_listing ON users IS 'Blocking ends sessions at once, hides open orders from the feed counts and withdraws active offers.';

-- ---------------------------------------------------------------------------------------------
-- Sessions, sign-in throttling, API tokens

CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    user_agent   text NOT NULL DEFAULT '' CHECK (length(user_agent) <= 300)
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
COMMENT ON TABLE sessions IS 'Server-side sessions: only the SHA-256 of the cookie token is stored.';

CREATE FUNCTION users_end_sessions_on_password_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sessions WHERE user_id = NEW.id;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION users_end_sessions_on_password_change() IS 'Ends every session of a user whose password changed.';
CREATE TRIGGER users_end_sessions_on_password_change AFTER UPDATE OF password_hash ON users
    FOR EACH ROW WHEN (NEW.password_hash IS DISTINCT FROM OLD.password_hash)
    EXECUTE FUNCTION users_end_sessions_on_password_change();
COMMENT ON TRIGGER users_end_sessions_on_password_change ON users IS 'A new password logs out every session (the app then opens a fresh one for the person who changed it).';

CREATE TABLE login_attempts (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email     text NOT NULL,
    address   text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_email_idx ON login_attempts (lower(email), at);
CREATE INDEX login_attempts_address_idx ON login_attempts (address, at);
CREATE INDEX login_attempts_at_idx ON login_attempts (at);
COMMENT ON TABLE login_attempts IS 'Sign-in attempts that were let through to a password check, written by login_attempt_admit() before the check; a correct password deletes the rows of its email from its address, so what stays are failures. Rows older than 15 minutes count for nothing and are swept.';

CREATE FUNCTION login_attempt_admit(attempt_email text, attempt_address text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    the_email   text := left(attempt_email, 254);
    the_address text := left(attempt_address, 100);
    wait        integer;
BEGIN
    -- Each statement below must see what was committed before it: only READ COMMITTED gives a
    -- statement in a function a snapshot of its own, taken after the locks are held.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'login_attempt_admit() needs READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- Sweep: up to 100 rows past the window, wherever they are, skipping rows others hold.
    DELETE FROM login_attempts
    WHERE id IN (SELECT id
                 FROM login_attempts
                 WHERE at < now() - INTERVAL '15 minutes'
                 ORDER BY at
                 LIMIT 100
                 FOR UPDATE SKIP LOCKED);
    -- One decision at a time per email (which covers the email with this address) and per
    -- address, held until this transaction ends; always the email first, so two attempts never
    -- wait for each other in a circle.
    PERFORM pg_advisory_xact_lock(hashtext('login_attempts.email'), hashtext(lower(the_email)));
    PERFORM pg_advisory_xact_lock(hashtext('login_attempts.address'), hashtext(the_address));
    -- Each limit holds until the attempt that reached it (the 5th, 50th or 20th newest of the
    -- window) leaves the window; the longest of those is the wait.
    SELECT ceil(greatest(
               0,
               (SELECT extract(epoch FROM a.at + INTERVAL '15 minutes' - now())
                FROM login_attempts a
                WHERE lower(a.email) = lower(the_email)
                  AND a.address = the_address
                  AND a.at > now() - INTERVAL '15 minutes'
                ORDER BY a.at DESC
                OFFSET 4
                LIMIT 1),
               (SELECT extract(epoch FROM a.at + INTERVAL '15 minutes' - now())
                FROM login_attempts a
                WHERE lower(a.email) = lower(the_email)
                  AND a.at > now() - INTERVAL '15 minutes'
                ORDER BY a.at DESC
                OFFSET 49
                LIMIT 1),
               (SELECT extract(epoch FROM a.at + INTERVAL '15 minutes' - now())
                FROM login_attempts a
                WHERE a.address = the_address
                  AND a.at > now() - INTERVAL '15 minutes'
                ORDER BY a.at DESC
                OFFSET 19
                LIMIT 1)))::integer
    INTO wait;
    IF wait = 0 THEN
        INSERT INTO login_attempts (email, address)
        VALUES (the_email, the_address);
    END IF;
    RETURN wait;
END $$;
COMMENT ON FUNCTION login_attempt_admit(text, text) IS 'Decides whether a sign-in attempt for an email from an address may check a password, and records it if so, as one step. In any 15 minutes at most 5 attempts are let through for one email (case-insensitive) from one address, 50 for one email from all addresses together, and 20 from one address for all emails together; so a stranger failing from elsewhere cannot cheaply lock the owner out, nor one address guess many accounts. It takes a transaction-level advisory lock on the email, then one on the address, before counting, so attempts at the same moment are decided one after another and never pass a limit together; the caller commits at once, before checking the password, and when the password is right deletes the rows of that email from that address. Returns 0 when the attempt is recorded, else the whole seconds until every limit it reached has freed up again (nothing is recorded). Also sweeps up to 100 rows older than the window. Refuses to run outside READ COMMITTED, where its counts could miss attempts committed while it waited for the locks.';

CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    label        text NOT NULL CHECK (length(label) BETWEEN 1 AND 60),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id);
COMMENT ON TABLE api_tokens IS 'Personal API tokens (Authorization: Bearer); only the SHA-256 is stored.';

CREATE FUNCTION api_tokens_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Lock the owner first, so two tokens created at the same moment are counted one after the other.
    PERFORM 1 FROM users WHERE id = NEW.user_id FOR UPDATE;
    IF (SELECT count(*) FROM api_tokens WHERE user_id = NEW.user_id) >= 10 THEN
        RAISE EXCEPTION 'user % already has 10 API tokens', NEW.user_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION api_tokens_limit() IS 'At most 10 API tokens per user, also under concurrent creation.';
CREATE TRIGGER api_tokens_limit BEFORE INSERT ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION api_tokens_limit();
COMMENT ON TRIGGER api_tokens_limit ON api_tokens IS 'Refuses an eleventh token of one user.';

CREATE TABLE api_idempotency (
    user_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key               text NOT NULL CHECK (length(key) BETWEEN 1 AND 255 AND key ~ '^[ -~]+$'),
    request           text NOT NULL CHECK (length(request) BETWEEN 1 AND 300),
    body_sha256       bytea NOT NULL CHECK (length(body_sha256) = 32),
    response_status   smallint CHECK (response_status BETWEEN 200 AND 299),
    response_body     text,
    response_location text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key),
    CHECK ((response_status IS NULL) = (response_body IS NULL))
);
CREATE INDEX api_idempotency_created_idx ON api_idempotency (created_at);
COMMENT ON TABLE api_idempotency IS 'The Idempotency-Key of API POSTs, per user, for 24 hours: the request it was first sent with and the successful answer given, replayed to a retry with the same method, path and body. The row is claimed before the request writes anything and gets its answer in the same transaction as the write, so a committed row always has its answer and a failed request leaves none; a second request with the key waits on the claim''s row lock until the first ends. Rows older than 24 hours count for nothing and are purged by the tick.';
COMMENT ON COLUMN api_idempotency.key IS 'The Idempotency-Key header as sent: 1 to 255 printable ASCII characters.';
COMMENT ON COLUMN api_idempotency.request IS 'Method and path of the first request with this key, e.g. POST /api/v1/orders.';
COMMENT ON COLUMN api_idempotency.body_sha256 IS 'SHA-256 of the first request''s body bytes: a retry must send the same body.';
COMMENT ON COLUMN api_idempotency.response_status IS 'The status of the answer (2xx only: a refused request writes nothing and keeps no answer); NULL only inside the claiming transaction.';
COMMENT ON COLUMN api_idempotency.response_body IS 'The JSON body of the answer, as sent (text, byte for byte).';
COMMENT ON COLUMN api_idempotency.response_location IS 'The Location header of the answer, if it had one.';

-- ---------------------------------------------------------------------------------------------
-- Staff

CREATE TABLE admin_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    staff_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    action      text NOT NULL CHECK (length(action) BETWEEN 1 AND 60),
    target_type text NOT NULL CHECK (target_type IN ('user', 'order', 'category', 'review', 'counters')),
    target_id   bigint,
    reason      text NOT NULL DEFAULT '' CHECK (length(reason) <= 1000),
    before      jsonb,
    after       jsonb
);
CREATE INDEX admin_log_at_idx ON admin_log (at DESC, id DESC);
CREATE INDEX admin_log_target_idx ON admin_log (target_type, target_id);
COMMENT ON TABLE admin_log IS 'Append-only: every staff action, written in the same transaction as the action.';

CREATE FUNCTION admin_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.staff_id IS NULL AND OLD.staff_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM users WHERE id = OLD.staff_id) THEN
        RETURN NEW;  -- the ON DELETE SET NULL of a deleted staff account
    END IF;
    RAISE EXCEPTION 'admin_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON FUNCTION admin_log_append_only() IS 'Refuses UPDATE and DELETE of the audit log.';
CREATE TRIGGER admin_log_append_only BEFORE UPDATE OR DELETE ON admin_log
    FOR EACH ROW EXECUTE FUNCTION admin_log_append_only();
COMMENT ON TRIGGER admin_log_append_only ON admin_log IS 'The audit log is never rewritten.';

-- ---------------------------------------------------------------------------------------------
-- Unread counts of a user

CREATE TABLE user_counters (
    user_id              bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    unread_messages      integer NOT NULL DEFAULT 0 CHECK (unread_messages >= 0),
    unread_notifications integer NOT NULL DEFAULT 0 CHECK (unread_notifications >= 0)
);
COMMENT ON TABLE user_counters IS 'What a user has not read yet, for the page header: unread_messages is the sum of the unread counts of their side of every conversation (kept by the trigger conversations_count_unread), unread_notifications the number of their notifications with no read_at (kept by the notifications_count_unread_* triggers). One row per user, made with the account; never written by the app.';

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

-- Who a session signs in (session_user, the cabinets' statements).
CREATE VIEW session_viewers AS
SELECT s.token_hash, u.id, u.role, u.name, u.email, u.is_staff, u.is_blocked, u.lang, u.timezone,
       coalesce(uc.unread_messages, 0) AS unread_messages,
       coalesce(uc.unread_notifications, 0) AS unread_notifications
FROM sessions s
JOIN users u ON u.id = s.user_id
LEFT JOIN user_counters uc ON uc.user_id = u.id
WHERE s.expires_at > now()
  AND NOT u.is_blocked;
COMMENT ON VIEW session_viewers IS 'The user each live session signs in (not expired, the user not blocked), with what the page header shows of them (their unread counts): read by token_hash, by session_user and by the pages that read their viewer in their own statement (the cabinets). A blocked user''s or an expired session signs in nobody.';

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
    last_message_excerpt text NOT NULL DEFAULT '' CHECK (length(last_message_excerpt) <= 200),
    last_sender_id     bigint,
    FOREIGN KEY (performer_id, performer_role) REFERENCES users (id, role) ON DELETE CASCADE,
    CONSTRAINT conversations_one_per_performer UNIQUE (order_id, performer_id),
    CONSTRAINT conversations_two_people CHECK (customer_id <> performer_id),
    CONSTRAINT conversations_last_sender_is_one_of_them CHECK (last_sender_id IN (customer_id, performer_id)),
    CONSTRAINT conversations_last_sender_iff_messages CHECK ((message_count = 0) = (last_sender_id IS NULL))
);
CREATE INDEX conversations_customer_idx ON conversations (customer_id, last_message_at DESC, id DESC);
CREATE INDEX conversations_performer_idx ON conversations (performer_id, last_message_at DESC, id DESC);
COMMENT ON TABLE conversations IS 'The private conversation of an order''s customer with one performer about that order, at most one per order and performer. While the order is open any performer who is not blocked may open one; once a performer is assigned, only the conversation with that performer is opened or goes on. message_count counts its messages (the last one''s seq); each side''s unread count is the messages of the other side after that side''s read mark (customer_read_seq, performer_read_seq), kept by triggers.';
COMMENT ON COLUMN conversations.customer_id IS 'Always the customer of the order (checked by conversations_guard).';
COMMENT ON COLUMN conversations.customer_read_seq IS 'The customer has read the messages up to this seq; it only moves forward. customer_unread is recounted by conversations_guard when it moves.';
COMMENT ON COLUMN conversations.performer_read_seq IS 'The performer has read the messages up to this seq; it only moves forward. performer_unread is recounted by conversations_guard when it moves.';
COMMENT ON COLUMN conversations.customer_unread IS 'Messages from the performer with a seq after customer_read_seq: +1 with each one (messages_guard), recounted when the customer reads.';
COMMENT ON COLUMN conversations.performer_unread IS 'Messages from the customer with a seq after performer_read_seq: +1 with each one (messages_guard), recounted when the performer reads.';
COMMENT ON COLUMN conversations.last_message_excerpt IS 'The first 200 characters of the last message (seq = message_count), '''' before the first, for the inbox: set by messages_guard with each message (messages never change), so the inbox reads no message.';
COMMENT ON COLUMN conversations.last_sender_id IS 'Who wrote the last message (one of the two people), NULL before the first; set with last_message_excerpt.';

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

-- The append-only and guarded tables refuse it too: their row triggers allow no DELETE of their own.
CREATE FUNCTION guarded_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % is refused: its rows are deleted only with what they belong to, which a row trigger checks and TRUNCATE would bypass', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
COMMENT ON FUNCTION guarded_refuse_truncate() IS 'Refuses TRUNCATE of the tables whose row triggers refuse a DELETE of their own (order_history, order_deliveries, files, admin_log): TRUNCATE fires no row trigger and would empty them behind those guards.';
CREATE TRIGGER order_history_refuse_truncate BEFORE TRUNCATE ON order_history
    FOR EACH STATEMENT EXECUTE FUNCTION guarded_refuse_truncate();
COMMENT ON TRIGGER order_history_refuse_truncate ON order_history IS 'History is never emptied: it goes only with its order or its actor.';
CREATE TRIGGER order_deliveries_refuse_truncate BEFORE TRUNCATE ON order_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION guarded_refuse_truncate();
COMMENT ON TRIGGER order_deliveries_refuse_truncate ON order_deliveries IS 'Deliveries go only with their order.';
CREATE TRIGGER files_refuse_truncate BEFORE TRUNCATE ON files
    FOR EACH STATEMENT EXECUTE FUNCTION guarded_refuse_truncate();
COMMENT ON TRIGGER files_refuse_truncate ON files IS 'Files go only with their message or delivery.';
CREATE TRIGGER admin_log_refuse_truncate BEFORE TRUNCATE ON admin_log
    FOR EACH STATEMENT EXECUTE FUNCTION guarded_refuse_truncate();
COMMENT ON TRIGGER admin_log_refuse_truncate ON admin_log IS 'The audit log is never emptied.';

-- ---------------------------------------------------------------------------------------------
-- Counter audit and repair

-- One definition of the truth: what every counter would be if recounted now. Both the audit and
-- the repair read these views, so they can never disagree about what "correct" means.
CREATE VIEW customer_counts_recount AS
SELECT u.id AS customer_id,
       coalesce(a.orders_placed, 0) AS orders_placed,
       coalesce(a.orders_open, 0) AS orders_open,
       coalesce(a.orders_in_progress, 0) AS orders_in_progress,
       coalesce(a.orders_done, 0) AS orders_done,
       coalesce(a.orders_cancelled, 0) AS orders_cancelled,
       coalesce(a.orders_delivered, 0) AS orders_delivered,
       coalesce(a.orders_disputed, 0) AS orders_disputed
FROM users u
-- Aggregate the orders first, then join: a quarter of the time of joining first at 1M orders.
LEFT JOIN (SELECT customer_id,
                  count(*) AS orders_placed,
                  count(*) FILTER (WHERE status = 'open') AS orders_open,
                  count(*) FILTER (WHERE status = 'in_progress') AS orders_in_progress,
                  count(*) FILTER (WHERE status = 'done') AS orders_done,
                  count(*) FILTER (WHERE status = 'cancelled') AS orders_cancelled,
                  count(*) FILTER (WHERE status = 'delivered') AS orders_delivered,
                  count(*) FILTER (WHERE status = 'disputed') AS orders_disputed
           FROM orders
           GROUP BY customer_id) AS a ON a.customer_id = u.id
WHERE u.role = 'customer';
COMMENT ON VIEW customer_counts_recount IS 'customer_stats recounted from orders (for audit_counters and recalc_counters).';

CREATE VIEW performer_counts_recount AS
SELECT u.id AS performer_id,
       coalesce(a.orders_completed, 0) AS orders_completed,
       coalesce(a.orders_in_progress, 0) AS orders_in_progress,
       coalesce(a.rating_sum, 0) AS rating_sum,
       coalesce(a.rating_count, 0) AS rating_count,
       coalesce(a.orders_delivered, 0) AS orders_delivered,
       coalesce(a.orders_disputed, 0) AS orders_disputed
FROM users u
-- Only orders in progress, delivered, disputed and done count for a performer (a cancelled one
-- keeps its performer).
LEFT JOIN (SELECT performer_id,
                  count(*) FILTER (WHERE status = 'done') AS orders_completed,
                  count(*) FILTER (WHERE status = 'in_progress') AS orders_in_progress,
                  sum(rating) FILTER (WHERE NOT review_hidden) AS rating_sum,
                  count(rating) FILTER (WHERE NOT review_hidden) AS rating_count,
                  count(*) FILTER (WHERE status = 'delivered') AS orders_delivered,
                  count(*) FILTER (WHERE status = 'disputed') AS orders_disputed
           FROM orders
           WHERE status IN ('in_progress', 'delivered', 'disputed', 'done')
           GROUP BY performer_id) AS a ON a.performer_id = u.id
WHERE u.role = 'performer';
COMMENT ON VIEW performer_counts_recount IS 'performer_stats recounted from orders; hidden ratings do not count.';

CREATE VIEW category_counts_recount AS
-- All open orders of the category (an index-only count on orders_feed_category_new_idx) less
-- those of blocked customers (few): a seventh of the time of one big join at 1M orders.
SELECT c.id AS category_id,
       (SELECT count(*)
        FROM orders o
        WHERE o.category_id = c.id
          AND o.status = 'open')
     - (SELECT count(*)
        FROM users b
        JOIN orders o ON o.customer_id = b.id
        WHERE b.is_blocked
          AND o.category_id = c.id
          AND o.status = 'open') AS open_orders
FROM categories c;
COMMENT ON VIEW category_counts_recount IS 'categories.open_orders recounted: open orders of customers who are not blocked.';

CREATE VIEW order_offers_recount AS
SELECT o.id AS order_id,
       o.offers_active AS stored,
       coalesce(f.active, 0) AS offers_active
FROM orders o
LEFT JOIN (SELECT order_id, count(*) AS active
           FROM offers
           WHERE status = 'active'
           GROUP BY order_id) AS f ON f.order_id = o.id
WHERE o.offers_active <> 0
   OR f.active IS NOT NULL;
COMMENT ON VIEW order_offers_recount IS 'orders.offers_active recounted from offers, for the orders that have a stored count or an active offer (every other order has 0 and 0).';

CREATE VIEW conversation_counts_recount AS
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

CREATE FUNCTION audit_counters()
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

CREATE FUNCTION recalc_counters() RETURNS integer
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

CREATE TABLE counter_audit (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    checked_at timestamptz NOT NULL DEFAULT now(),
    drifted    integer NOT NULL CHECK (drifted >= 0),
    drift      jsonb NOT NULL
);
COMMENT ON TABLE counter_audit IS 'One row: the result of the latest audit_counters() run (by python app.py tick or the admin dashboard''s "check now"): when, how many counters drifted, and the first 100 of them. The dashboard reads it instead of recounting every order on every view.';

CREATE FUNCTION counter_audit_refresh() RETURNS integer
LANGUAGE sql AS $$
    WITH drift AS (
        SELECT count(*) AS drifted,
               coalesce(jsonb_agg(to_jsonb(a)) FILTER (WHERE a.n <= 100), '[]'::jsonb) AS rows
        FROM (SELECT *, row_number() OVER () AS n FROM audit_counters()) AS a
    )
    INSERT INTO counter_audit (singleton, checked_at, drifted, drift)
    SELECT true, clock_timestamp(), drifted, rows
    FROM drift
    ON CONFLICT (singleton) DO UPDATE
    SET checked_at = excluded.checked_at,
        drifted = excluded.drifted,
        drift = excluded.drift
    RETURNING drifted
$$;
COMMENT ON FUNCTION counter_audit_refresh() IS 'Runs audit_counters() and stores its result in counter_audit (the time, the number of drifted counters, the first 100 of them); returns the number drifted.';

CREATE TABLE dashboard_figures (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    computed_at      timestamptz NOT NULL,
    users_by_role    jsonb NOT NULL,
    orders_by_status jsonb NOT NULL,
    new_per_day      jsonb NOT NULL
);
COMMENT ON TABLE dashboard_figures IS 'One row: the admin dashboard''s figures over every user and order (users by role, orders by status, new users and orders per day of the last 30 days), computed by dashboard_figures_refresh() from python app.py tick (every minute) or the dashboard''s "check now". At a million orders they cost tens of milliseconds to compute, too much for every view of the dashboard.';

CREATE FUNCTION dashboard_figures_refresh() RETURNS timestamptz
LANGUAGE sql AS $$
    INSERT INTO dashboard_figures (singleton, computed_at, users_by_role, orders_by_status, new_per_day)
    SELECT true,
           clock_timestamp(),
           (SELECT coalesce(jsonb_agg(r ORDER BY r.role), '[]'::jsonb)
            FROM (SELECT role,
                         count(*) AS total,
                         count(*) FILTER (WHERE is_staff) AS staff,
                         count(*) FILTER (WHERE is_blocked) AS blocked
                  FROM users
                  GROUP BY role) AS r),
           (SELECT jsonb_agg(jsonb_build_object('status', s.status, 'total', s.total) ORDER BY s.status)
            FROM (SELECT coalesce(sum(orders_open), 0) AS open,
                         coalesce(sum(orders_in_progress), 0) AS in_progress,
                         coalesce(sum(orders_delivered), 0) AS delivered,
                         coalesce(sum(orders_disputed), 0) AS disputed,
                         coalesce(sum(orders_done), 0) AS done,
                         coalesce(sum(orders_cancelled), 0) AS cancelled
                  FROM customer_stats) AS t
            CROSS JOIN LATERAL (VALUES ('open'::order_status, t.open),
                                       ('in_progress'::order_status, t.in_progress),
                                       ('delivered'::order_status, t.delivered),
                                       ('disputed'::order_status, t.disputed),
                                       ('done'::order_status, t.done),
                                       ('cancelled'::order_status, t.cancelled)) AS s (status, total)),
           (SELECT jsonb_agg(jsonb_build_object('day', d.day, 'users', coalesce(u.n, 0), 'orders', coalesce(o.n, 0))
                             ORDER BY d.day)
            FROM generate_series(current_date - 29, current_date, interval '1 day') AS g (day)
            CROSS JOIN LATERAL (SELECT g.day::date AS day) AS d
            LEFT JOIN (SELECT created_at::date AS day,
                              count(*) AS n
                       FROM users
                       WHERE created_at >= current_date - 29
                       GROUP BY 1) AS u ON u.day = d.day
            LEFT JOIN (SELECT created_at::date AS day,
                              count(*) AS n
                       FROM orders
                       WHERE created_at >= current_date - 29
                       GROUP BY 1) AS o ON o.day = d.day)
    ON CONFLICT (singleton) DO UPDATE
    SET computed_at = excluded.computed_at,
        users_by_role = excluded.users_by_role,
        orders_by_status = excluded.orders_by_status,
        new_per_day = excluded.new_per_day
    RETURNING computed_at
$$;
COMMENT ON FUNCTION dashboard_figures_refresh() IS 'Computes the admin dashboard''s figures (users by role, orders by status from the customers'' counters, new users and orders per day of the last 30 days, in the server''s time zone) and stores them in dashboard_figures; returns when.';

-- ---------------------------------------------------------------------------------------------
-- Reference data

INSERT INTO categories (slug, name_ru, name_en) VALUES
    ('design', 'Дизайн', 'Design'),
    ('development', 'Разработка и IT', 'Development & IT'),
    ('texts', 'Тексты и переводы', 'Writing & translation'),
    ('seo', 'SEO и трафик', 'SEO & traffic'),
    ('marketing', 'Соцсети и маркетинг', 'Social media & marketing'),
    ('audio-video', 'Аудио, видео, съёмка', 'Audio, video & photo'),
    ('business', 'Бизнес и жизнь', 'Business & lifestyle');
