-- ShopStack orders, SQLite: the same tables and columns as the PostgreSQL migration of the same
-- number. Ids are hyphenated UUID text, timestamps RFC 3339 text in UTC, money integer cents.

CREATE TABLE orders (
    id                 TEXT PRIMARY KEY NOT NULL,
    user_id            TEXT    NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'confirmed', 'shipped', 'delivered', 'cancelled')),
    total_amount_cents INTEGER NOT NULL CHECK (total_amount_cents >= 0),
    currency           TEXT    NOT NULL DEFAULT 'USD',
    shipping_address   TEXT    NOT NULL,
    billing_address    TEXT,
    notes              TEXT,
    source             TEXT    NOT NULL CHECK (source IN ('direct', 'checkout')),
    version            INTEGER NOT NULL DEFAULT 1,
    restock_pending    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL
);
CREATE INDEX orders_created_idx ON orders (created_at DESC, id DESC);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_status_idx ON orders (status);
CREATE INDEX orders_restock_pending_idx ON orders (id) WHERE restock_pending;

CREATE TABLE order_items (
    id               TEXT PRIMARY KEY NOT NULL,
    order_id         TEXT    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    product_id       TEXT    NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    subtotal_cents   INTEGER NOT NULL CHECK (subtotal_cents >= 0),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL
);
CREATE INDEX order_items_order_idx ON order_items (order_id, position);

CREATE TABLE order_sagas (
    order_id        TEXT PRIMARY KEY NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('direct', 'checkout')),
    user_id         TEXT    NOT NULL,
    idempotency_key TEXT,
    request         TEXT    NOT NULL,
    cart_version    INTEGER,
    lines           TEXT,
    state           TEXT    NOT NULL CHECK (state IN ('started', 'committed', 'ordered', 'completed', 'undoing')),
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
CREATE UNIQUE INDEX order_sagas_idempotency_idx ON order_sagas (user_id, idempotency_key);
CREATE UNIQUE INDEX order_sagas_one_checkout_idx ON order_sagas (user_id)
    WHERE kind = 'checkout' AND state <> 'completed';
CREATE INDEX order_sagas_state_idx ON order_sagas (state, updated_at);

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    event_type   TEXT    NOT NULL,
    aggregate_id TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    published_at TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
