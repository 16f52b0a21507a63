-- The products table of the tiercache products example. The app runs this at
-- start (idempotent); docker-compose also mounts it into Postgres's init dir
-- so the sidecar finds the table before the first app instance starts.
CREATE TABLE IF NOT EXISTS products (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL,
    price_cents bigint      NOT NULL,
    category    text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS products_category_id_idx ON products (category, id);
-- Updates and deletes carry the whole old row to the sidecar (logical
-- decoding), so a product that changes category invalidates both lists.
ALTER TABLE products REPLICA IDENTITY FULL;
