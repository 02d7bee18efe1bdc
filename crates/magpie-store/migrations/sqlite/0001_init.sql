-- Users and their counters. `token_generation` is bumped to revoke every token issued so far;
-- `sync_version` is the user's change counter that `sync` pages by. A deleted user keeps its
-- row (`deleted = 1`, profile cleared) so that both counters survive a re-creation of the same
-- id: the old tokens stay revoked and old sync cursors stay behind the counter.
CREATE TABLE users (
    id               TEXT PRIMARY KEY NOT NULL,
    deleted          INTEGER NOT NULL DEFAULT 0,
    nickname         TEXT,
    avatar_url       TEXT,
    ext              TEXT,
    token_generation INTEGER NOT NULL DEFAULT 0,
    sync_version     INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per conversation of any kind, written with its first message. Its last seq is the
-- largest seq in `messages` (a cheap lookup on that table's key), so no counter row has to be
-- rewritten for every message.
CREATE TABLE conversations (
    id         TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Every message is stored once, whatever the number of recipients. The table is clustered by
-- (conversation, seq): history pages are contiguous reads, and a message's insert touches the
-- tail page of its conversation. `server_time` never decreases along a conversation's seqs
-- (the writer enforces it), so time-anchored history is found by searching seqs.
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    id              INTEGER NOT NULL,
    sender          TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    content         TEXT NOT NULL,
    ext             TEXT,
    server_time     INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
-- A retry of a send goes to the same conversation, so dedupe is per conversation; keyed by
-- conversation first, a batch's dedupe entries land on the same pages as its messages'
-- conversations rather than on one page per sender.
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_id, sender, client_msg_id);

-- Each user's own view of a conversation: read state now, pinned / muted / draft later.
CREATE TABLE user_conversations (
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    peer            TEXT,
    read_seq        INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX user_conversations_by_version ON user_conversations (user_id, version);

-- Small facts about the store. `max_message_id` is the largest message id ever stored, kept
-- per commit, so id generators can start above it without scanning `messages`.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
