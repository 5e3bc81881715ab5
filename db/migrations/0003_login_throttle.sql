-- 0003: sign-in throttling decided and recorded in one atomic step, per email and address.
-- Until now the app asked how long to wait, checked the password and only then recorded a
-- failure, so attempts made at the same moment all saw the same count and passed the limit
-- together; and five failures for an email from anywhere locked its owner out. Now
-- login_attempt_admit() decides and records under a per-email and a per-address lock before any
-- password is checked, and the low limit is per email and address, with a high one per email.
-- Applied in one transaction on top of 0002, it gives the schema of db/schema.sql; the migration
-- runner records the version. Rows already in login_attempts keep their meaning.

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
