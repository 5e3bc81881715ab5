-- TRUNCATE fires no row trigger: the append-only and guarded tables (order_history,
-- order_deliveries, files, admin_log), whose row triggers allow no DELETE of their own, refuse it.
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
