-- Group messages (ADR 0007). A group message is stored once and writes no row per member:
-- - `conversations.activity` is a stamp from the sequence `group_activity`, taken by every
--   group message and group creation under the transaction-scoped advisory lock
--   `GROUP_ACTIVITY_LOCK` just before the commit. Stamps therefore become visible in stamp
--   order, so the largest stamp a snapshot sees is a safe sync cursor: nothing below it can
--   still commit.
-- - `conversations.mention_all_seq`: the last message that mentioned everyone.
-- - `user_conversations.mention_seq`: the last message that mentioned this user by id.
-- - `group_members.visible_from_seq`: the first seq the member may read (their join point).
-- - `group_members.receive_messages`: false if the member blocked the group's messages.
-- - `messages.mentions`: who a message mentions (JSON), NULL if nobody.
CREATE SEQUENCE group_activity;
ALTER TABLE conversations ADD COLUMN activity bigint NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN mention_all_seq bigint NOT NULL DEFAULT 0;
CREATE INDEX conversations_by_activity ON conversations (activity) WHERE kind = 'group';
ALTER TABLE user_conversations ADD COLUMN mention_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE group_members ADD COLUMN visible_from_seq bigint NOT NULL DEFAULT 1;
ALTER TABLE group_members ADD COLUMN receive_messages boolean NOT NULL DEFAULT true;
ALTER TABLE messages ADD COLUMN mentions text;
