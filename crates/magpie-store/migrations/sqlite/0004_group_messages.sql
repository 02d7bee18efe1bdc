-- Group messages (ADR 0007). A group message is stored once and writes no row per member:
-- - `conversations.activity` is a stamp from the store-wide group activity clock (the meta
--   key `group_clock`), taken by every group message and group creation. `sync` finds a
--   member's changed group conversations by walking their memberships for stamps above the
--   device's cursor.
-- - `conversations.mention_all_seq`: the last message that mentioned everyone.
-- - `user_conversations.mention_seq`: the last message that mentioned this user by id.
-- - `group_members.visible_from_seq`: the first seq the member may read (their join point);
--   their read position never counts anything before it as unread.
-- - `group_members.receive_messages`: 0 if the member blocked the group's messages.
-- - `messages.mentions`: who a message mentions (JSON), NULL if nobody.
ALTER TABLE conversations ADD COLUMN activity INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN mention_all_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE user_conversations ADD COLUMN mention_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE group_members ADD COLUMN visible_from_seq INTEGER NOT NULL DEFAULT 1;
ALTER TABLE group_members ADD COLUMN receive_messages INTEGER NOT NULL DEFAULT 1;
ALTER TABLE messages ADD COLUMN mentions TEXT;
