-- Messages are stored in arrival order (the implicit rowid), found by two indexes: (conversation,
-- seq) for history and the dedupe key for retries.
--
-- Clustered by (conversation, seq), every insert landed at its conversation's tail in the middle
-- of the table's tree: with a dozen rows per page, a full page split into its neighbours and the
-- commit wrote three or four whole pages into the WAL. Appended in rowid order, a batch's rows
-- fill the same last pages, and the random insert moves to an index whose entries are a fifth of
-- a row's size. Measured with the c2c write pattern: 3.8 -> 3.0 WAL pages per message in batches
-- of 25, 2.3 -> 1.7 in batches of 200 (docs/BENCHMARKS.md). History of one conversation is read
-- through the index; recent messages sit close together because they arrived close together.
--
-- The copy rewrites every stored message once, inside this migration's transaction. ADR 0009.
CREATE TABLE messages_by_arrival (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    id              INTEGER NOT NULL,
    sender          TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    content         TEXT NOT NULL,
    ext             TEXT,
    server_time     INTEGER NOT NULL,
    mentions        TEXT
);
INSERT INTO messages_by_arrival
    (conversation_id, seq, id, sender, recipient, client_msg_id, content, ext, server_time, mentions)
SELECT conversation_id, seq, id, sender, recipient, client_msg_id, content, ext, server_time, mentions
FROM messages ORDER BY id;
DROP TABLE messages;
ALTER TABLE messages_by_arrival RENAME TO messages;
-- `seq` is unique per conversation: the index also guards the gap-free seq rule.
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_id, sender, client_msg_id);
