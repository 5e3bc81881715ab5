-- Issue 13: the admin dashboard's figures over every user and order are computed by the tick
-- (and "check now") and stored, instead of tens of milliseconds of counting on every view.
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
