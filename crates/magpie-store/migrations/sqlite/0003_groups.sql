-- Groups: the group row (info, options, attributes, counters, and the `version` every change
-- bumps), its members, its block list, and join applications / invitations. A destroyed
-- group's rows are all deleted, so its id can be used again.
CREATE TABLE groups (
    id                             TEXT PRIMARY KEY NOT NULL,
    name                           TEXT NOT NULL,
    avatar_url                     TEXT,
    introduction                   TEXT,
    announcement                   TEXT,
    ext                            TEXT,
    owner                          TEXT NOT NULL,
    join_policy                    TEXT NOT NULL,
    invite_needs_accept            INTEGER NOT NULL,
    members_can_invite             INTEGER NOT NULL,
    max_members                    INTEGER NOT NULL,
    history_visible_to_new_members INTEGER NOT NULL,
    all_muted                      INTEGER NOT NULL DEFAULT 0,
    member_count                   INTEGER NOT NULL,
    version                        INTEGER NOT NULL,
    attributes                     TEXT,
    attributes_version             INTEGER NOT NULL DEFAULT 0,
    counters                       TEXT,
    created_at                     INTEGER NOT NULL,
    updated_at                     INTEGER NOT NULL
) WITHOUT ROWID;

-- Members, clustered by group (a group's member pages are contiguous). `attributes` is a JSON
-- object (NULL when empty).
CREATE TABLE group_members (
    group_id               TEXT NOT NULL,
    user_id                TEXT NOT NULL,
    role                   TEXT NOT NULL,
    joined_at              INTEGER NOT NULL,
    nickname               TEXT,
    attributes             TEXT,
    muted_until            INTEGER,
    allowed_when_all_muted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
-- A user's groups, by group id.
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);
-- A group's owner and admins (or members) by user id, without reading the others.
CREATE INDEX group_members_by_role ON group_members (group_id, role, user_id);

-- The block list. `blocked_until` NULL: until unblocked; an entry past its time is ignored.
CREATE TABLE group_blocks (
    group_id      TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    blocked_until INTEGER,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;

-- Join applications and invitations. AUTOINCREMENT: an id is never handed out twice, even
-- after a destroyed group's applications are deleted.
CREATE TABLE group_applications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    from_user   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    message     TEXT,
    state       TEXT NOT NULL,
    handled_by  TEXT,
    reason      TEXT,
    created_at  INTEGER NOT NULL,
    handled_at  INTEGER
);
-- At most one pending application per (group, kind, user): also how a repeat is found.
CREATE UNIQUE INDEX group_applications_pending ON group_applications (group_id, kind, user_id)
    WHERE state = 'pending';
-- The three listings, newest first: joins to some groups, invitations for a user, what a
-- user sent.
CREATE INDEX group_applications_by_group ON group_applications (group_id, kind, id);
CREATE INDEX group_applications_by_user ON group_applications (user_id, kind, id);
CREATE INDEX group_applications_by_sender ON group_applications (from_user, id);
