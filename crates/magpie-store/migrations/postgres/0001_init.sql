-- Magpie's PostgreSQL schema. Identifiers use the "C" collation: byte order, the same on every
-- node, which is also the order every transaction locks rows in (no deadlocks between nodes).

-- Users and their counters. `token_generation` is bumped to revoke every token issued so far.
-- `sync_version` is the user's change counter: every change to one of the user's conversation
-- rows takes the next value under this row's lock, so versions commit in order. A deleted
-- user keeps its row (`deleted`, profile cleared) so both counters survive a re-creation.
CREATE TABLE users (
    id               text COLLATE "C" PRIMARY KEY,
    deleted          boolean NOT NULL DEFAULT false,
    nickname         text,
    avatar_url       text,
    ext              text,
    token_generation bigint NOT NULL DEFAULT 0,
    sync_version     bigint NOT NULL DEFAULT 0,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL
);

-- One row per conversation, created with its first message. `last_seq` and `last_time` (the
-- server time of that message) are the seq allocator: an append locks the row, takes
-- last_seq + 1 and writes it back in the same transaction as the message, so seqs are gap-free
-- and unique across every node writing to this database.
CREATE TABLE conversations (
    id         text COLLATE "C" PRIMARY KEY,
    kind       text NOT NULL,
    created_at bigint NOT NULL,
    last_seq   bigint NOT NULL DEFAULT 0,
    last_time  bigint NOT NULL DEFAULT 0
);

-- Every message once, keyed by (conversation, seq): history pages are index range scans.
-- `server_time` never decreases along a conversation's seqs.
CREATE TABLE messages (
    conversation_id text COLLATE "C" NOT NULL,
    seq             bigint NOT NULL,
    id              bigint NOT NULL,
    sender          text COLLATE "C" NOT NULL,
    recipient       text COLLATE "C" NOT NULL,
    client_msg_id   text COLLATE "C" NOT NULL,
    content         text NOT NULL,
    ext             text,
    server_time     bigint NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
-- Dedupe of retries, per conversation and sender, across nodes.
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_id, sender, client_msg_id);
-- `max_message_id` is MAX(id): one index descent. Messages are never deleted, so it is the
-- largest id ever stored; an index (unlike a counter row) is no lock every writer contends on.
CREATE INDEX messages_by_id ON messages (id);

-- Each user's own view of a conversation: read state and change version.
CREATE TABLE user_conversations (
    user_id         text COLLATE "C" NOT NULL,
    conversation_id text COLLATE "C" NOT NULL,
    peer            text COLLATE "C",
    read_seq        bigint NOT NULL DEFAULT 0,
    version         bigint NOT NULL,
    updated_at      bigint NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
);
CREATE INDEX user_conversations_by_version ON user_conversations (user_id, version);

-- Snowflake node ids leased to the servers of a cluster, on the database's clock.
CREATE TABLE node_leases (
    node_id    integer PRIMARY KEY CHECK (node_id BETWEEN 0 AND 1023),
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);
