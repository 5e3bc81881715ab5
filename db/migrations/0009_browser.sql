-- Issue 12 (in a real browser). Dates are shown in the viewer's time zone, a profile setting (an
-- IANA name that the app checks against its zoneinfo database; Moscow until they choose).
ALTER TABLE users
    ADD COLUMN timezone text NOT NULL DEFAULT 'Europe/Moscow' CHECK (length(timezone) BETWEEN 1 AND 64);
COMMENT ON COLUMN users.timezone IS 'IANA time zone the interface shows this user''s dates in (profile setting; the app checks the name).';

-- The feed's "nearest deadline first" sort (orders without a deadline last), page after page.
CREATE INDEX orders_feed_deadline_idx ON orders ((COALESCE(deadline, 'infinity'::date)), id) WHERE status = 'open';
