-- Snowflake node ids leased to the servers sharing this store, so that no two live servers
-- generate message ids with the same node id. `expires_at` is in unix milliseconds (the
-- server's clock); a lease past it may be claimed by another holder.
CREATE TABLE node_leases (
    node_id    INTEGER PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
