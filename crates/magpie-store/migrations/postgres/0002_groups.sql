-- Groups: the group row (info, options, attributes, counters, and the `version` every change
-- bumps), its members, its block list, and join applications / invitations. A destroyed
-- group's rows are all deleted, so its id can be used again. Every write to a group locks its
-- row first (then user rows, by id: the global lock order), so the row serializes the
-- group's writers on every node and `member_count` stays exact.
CREATE TABLE groups (
    id                             text COLLATE "C" PRIMARY KEY,
    name                           text NOT NULL,
    avatar_url                     text,
    introduction                   text,
    announcement                   text,
    ext                            text,
    owner                          text COLLATE "C" NOT NULL,
    join_policy                    text NOT NULL,
    invite_needs_accept            boolean NOT NULL,
    members_can_invite             boolean NOT NULL,
    max_members                    bigint NOT NULL,
    history_visible_to_new_members boolean NOT NULL,
    all_muted                      boolean NOT NULL DEFAULT false,
    member_count                   bigint NOT NULL,
    version                        bigint NOT NULL,
    attributes                     text,
    attributes_version             bigint NOT NULL DEFAULT 0,
    counters                       text,
    created_at                     bigint NOT NULL,
    updated_at                     bigint NOT NULL
);

-- Members. `attributes` is a JSON object (NULL when empty).
CREATE TABLE group_members (
    group_id               text COLLATE "C" NOT NULL,
    user_id                text COLLATE "C" NOT NULL,
    role                   text NOT NULL,
    joined_at              bigint NOT NULL,
    nickname               text,
    attributes             text,
    muted_until            bigint,
    allowed_when_all_muted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (group_id, user_id)
);
-- A user's groups, by group id.
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);
-- A group's owner and admins (or members) by user id, without reading the others.
CREATE INDEX group_members_by_role ON group_members (group_id, role, user_id);

-- The block list. `blocked_until` NULL: until unblocked; an entry past its time is ignored.
CREATE TABLE group_blocks (
    group_id      text COLLATE "C" NOT NULL,
    user_id       text COLLATE "C" NOT NULL,
    blocked_until bigint,
    PRIMARY KEY (group_id, user_id)
);

-- Join applications and invitations; ids come from a sequence and are never reused.
CREATE TABLE group_applications (
    id          bigserial PRIMARY KEY,
    group_id    text COLLATE "C" NOT NULL,
    kind        text NOT NULL,
    from_user   text COLLATE "C" NOT NULL,
    user_id     text COLLATE "C" NOT NULL,
    message     text,
    state       text NOT NULL,
    handled_by  text COLLATE "C",
    reason      text,
    created_at  bigint NOT NULL,
    handled_at  bigint
);
-- At most one pending application per (group, kind, user), on every node at once: also how
-- a repeat is found.
CREATE UNIQUE INDEX group_applications_pending ON group_applications (group_id, kind, user_id)
    WHERE state = 'pending';
-- The three listings, newest first: joins to some groups, invitations for a user, what a
-- user sent.
CREATE INDEX group_applications_by_group ON group_applications (group_id, kind, id);
CREATE INDEX group_applications_by_user ON group_applications (user_id, kind, id);
CREATE INDEX group_applications_by_sender ON group_applications (from_user, id);
