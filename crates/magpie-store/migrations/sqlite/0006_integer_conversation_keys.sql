-- Messages name their conversation by an integer key instead of its text id (ADR 0010).
--
-- Every index of `messages` starts with the conversation: with text ids (47 bytes for a
-- one-to-one conversation of short user ids, ~77 with UUID user ids) each index entry and each
-- row carried them, each insert compared them on the way down both indexes, and a page held
-- a fifth as many entries. The c2c write pattern replayed (docs/BENCHMARKS.md): WAL pages per
-- message 1.19 -> 0.61 in batches of 400.
--
-- `conversations.key` is assigned when the conversation row is written (the largest key plus
-- one, by the only writer) and never changes; the text id stays the conversation's name
-- everywhere else.
ALTER TABLE conversations ADD COLUMN key INTEGER;

-- Every conversation with a message has its row already (it is written with the first
-- message); a database that lost one gets it back rather than losing the messages.
INSERT INTO conversations (id, kind, created_at)
SELECT conversation_id,
       CASE substr(conversation_id, 1, instr(conversation_id, ':') - 1)
           WHEN 'grp' THEN 'group' WHEN 'room' THEN 'room' WHEN 'thr' THEN 'thread'
           ELSE 'c2c' END,
       MIN(server_time)
FROM messages GROUP BY conversation_id
ON CONFLICT (id) DO NOTHING;

UPDATE conversations SET key = numbered.n
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM conversations) AS numbered
WHERE numbered.id = conversations.id;
CREATE UNIQUE INDEX conversations_by_key ON conversations (key);

CREATE TABLE messages_by_key (
    conversation_key INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    id               INTEGER NOT NULL,
    sender           TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    client_msg_id    TEXT NOT NULL,
    content          TEXT NOT NULL,
    ext              TEXT,
    server_time      INTEGER NOT NULL,
    mentions         TEXT
);
INSERT INTO messages_by_key
    (conversation_key, seq, id, sender, recipient, client_msg_id, content, ext, server_time, mentions)
SELECT c.key, m.seq, m.id, m.sender, m.recipient, m.client_msg_id, m.content, m.ext,
       m.server_time, m.mentions
FROM messages m JOIN conversations c ON c.id = m.conversation_id ORDER BY m.rowid;
DROP TABLE messages;
ALTER TABLE messages_by_key RENAME TO messages;
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_key, seq);
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_key, sender, client_msg_id);
