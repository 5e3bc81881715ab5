-- 0005: the statuses of the exchange, delivered (work handed in, waiting for the customer) and
-- disputed (staff settle it). A new enum value cannot be used in the transaction that adds it,
-- so they come in a migration of their own; 0006 puts them to work.

ALTER TYPE order_status ADD VALUE 'delivered' AFTER 'in_progress';
ALTER TYPE order_status ADD VALUE 'disputed' AFTER 'delivered';
