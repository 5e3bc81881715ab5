-- Who a session signs in, defined once: the session's own statement (session_user) and the pages
-- that read their viewer in their own statement (the cabinets) read this view by the token's hash.
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
