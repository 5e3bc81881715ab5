-- Issue 14: an Idempotency-Key header on the API's POSTs. A client whose connection drops after
-- the commit retries with the same key and gets the first answer again instead of a second order.
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
