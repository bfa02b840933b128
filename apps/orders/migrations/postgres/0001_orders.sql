-- ShopStack orders, PostgreSQL. Seed 004's schema with exact money as integer cents, a version
-- for optimistic concurrency, the checkout saga record and the transactional outbox.
-- The SQLite migration of the same number creates the same tables and columns.

CREATE TABLE orders (
    id                 UUID PRIMARY KEY,
    user_id            VARCHAR(255) NOT NULL,
    status             VARCHAR(50)  NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'confirmed', 'shipped', 'delivered', 'cancelled')),
    total_amount_cents BIGINT       NOT NULL CHECK (total_amount_cents >= 0),
    currency           VARCHAR(3)   NOT NULL DEFAULT 'USD',
    shipping_address   TEXT         NOT NULL,
    billing_address    TEXT,
    notes              TEXT,
    source             VARCHAR(16)  NOT NULL CHECK (source IN ('direct', 'checkout')),
    version            BIGINT       NOT NULL DEFAULT 1,
    restock_pending    BOOLEAN      NOT NULL DEFAULT FALSE,
    created_at         TIMESTAMPTZ  NOT NULL,
    updated_at         TIMESTAMPTZ  NOT NULL
);
CREATE INDEX orders_created_idx ON orders (created_at DESC, id DESC);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_status_idx ON orders (status);
CREATE INDEX orders_restock_pending_idx ON orders (id) WHERE restock_pending;

CREATE TABLE order_items (
    id               UUID PRIMARY KEY,
    order_id         UUID         NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position         INTEGER      NOT NULL,
    product_id       VARCHAR(255) NOT NULL,
    quantity         INTEGER      NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT       NOT NULL CHECK (unit_price_cents >= 0),
    subtotal_cents   BIGINT       NOT NULL CHECK (subtotal_cents >= 0),
    created_at       TIMESTAMPTZ  NOT NULL,
    updated_at       TIMESTAMPTZ  NOT NULL
);
CREATE INDEX order_items_order_idx ON order_items (order_id, position);

-- One row per order being placed (see README "Checkout"). Rows of finished sagas stay until the
-- idempotency window passes, so a retried request finds its order.
CREATE TABLE order_sagas (
    order_id        UUID PRIMARY KEY,
    kind            VARCHAR(16)  NOT NULL CHECK (kind IN ('direct', 'checkout')),
    user_id         VARCHAR(255) NOT NULL,
    idempotency_key VARCHAR(255),
    request         TEXT         NOT NULL,
    cart_version    BIGINT,
    lines           TEXT,
    state           VARCHAR(16)  NOT NULL CHECK (state IN ('started', 'committed', 'ordered', 'completed', 'undoing')),
    created_at      TIMESTAMPTZ  NOT NULL,
    updated_at      TIMESTAMPTZ  NOT NULL
);
CREATE UNIQUE INDEX order_sagas_idempotency_idx ON order_sagas (user_id, idempotency_key);
-- At most one unfinished checkout per user: concurrent checkouts of one cart make one order.
CREATE UNIQUE INDEX order_sagas_one_checkout_idx ON order_sagas (user_id)
    WHERE kind = 'checkout' AND state <> 'completed';
CREATE INDEX order_sagas_state_idx ON order_sagas (state, updated_at);

-- Transactional outbox: written in the same transaction as the change it announces, relayed to
-- NATS JetStream by a background task.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    event_type   VARCHAR(64) NOT NULL,
    aggregate_id UUID        NOT NULL,
    payload      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ,
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
