-- 0004: the stored counter audit that python app.py tick refreshes and the admin dashboard reads.

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
