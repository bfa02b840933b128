-- An Idempotency-Key belongs to its caller and its route: the same key on a direct order and
-- on a checkout (the saga's kind names the route) is two requests, not one reused key.
DROP INDEX order_sagas_idempotency_idx;
CREATE UNIQUE INDEX order_sagas_idempotency_idx ON order_sagas (user_id, kind, idempotency_key);
