-- Access control (issue #15): users with several API keys and an optional password,
-- organizations that own node clusters and swarms, teams, and grants of a role to a team.
-- Portable SQL (SQLite and PostgreSQL): TEXT/BIGINT columns, no AUTOINCREMENT, no
-- INSERT OR IGNORE.
--
-- * `api_keys`: one row per named key; only a salted SHA-256 of the key is stored (keys are
--   160 random bits, so a fast hash cannot be brute-forced; a password, chosen by a person,
--   gets argon2 in `users.password_hash`). A key is revoked by stamping `revoked_at`; the
--   row stays, so a revoked key's name and id remain in the audit trail.
-- * `users.admin`: the server administrator, who sees and does everything. The bootstrap
--   user (and any user of an existing installation: there was only the bootstrap admin) is one.
-- * `owners`: which organization owns each resource, one row per resource of any kind
--   (node clusters and swarms now, volumes and backups later) rather than an `org` column
--   on each table: the resource tables and their queries stay as they were, and a visibility
--   filter is one join whatever the kind. `parent` is the swarm a swarm's node cluster
--   belongs to: a grant on a swarm covers its two clusters and their nodes.
-- * `grants`: a team's role on one resource (`resource` = its uuid) or on every resource of
--   the organization (`resource` = '*'), and on the organization itself (members, grants)
--   when the role is `admin` on '*'.

CREATE TABLE organizations (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE teams (
    org         TEXT NOT NULL REFERENCES organizations(name),
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (org, name)
);

CREATE TABLE team_members (
    org         TEXT NOT NULL,
    team        TEXT NOT NULL,
    username    TEXT NOT NULL REFERENCES users(username),
    PRIMARY KEY (org, team, username),
    FOREIGN KEY (org, team) REFERENCES teams(org, name)
);
CREATE INDEX team_members_by_user ON team_members(username);

CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    org         TEXT NOT NULL,
    team        TEXT NOT NULL,
    resource    TEXT NOT NULL,      -- a resource uuid, or '*' for all of the organization's
    role        TEXT NOT NULL CHECK (role IN ('view', 'operate', 'manage', 'admin')),
    created_at  BIGINT NOT NULL,
    UNIQUE (org, team, resource),
    FOREIGN KEY (org, team) REFERENCES teams(org, name)
);

CREATE TABLE owners (
    resource    TEXT PRIMARY KEY,   -- the uuid of a node cluster or a swarm
    kind        TEXT NOT NULL,      -- 'nodecluster' | 'swarm'
    org         TEXT NOT NULL REFERENCES organizations(name),
    parent      TEXT                -- a swarm's node cluster: the swarm's uuid
);
CREATE INDEX owners_by_org ON owners(org);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,   -- uuid, how a key is named in revoke and in listings
    username    TEXT NOT NULL REFERENCES users(username),
    name        TEXT NOT NULL,
    salt        TEXT NOT NULL,      -- hex, random per key
    hash        TEXT NOT NULL,      -- hex SHA-256(salt || key)
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    UNIQUE (username, name)
);
CREATE INDEX api_keys_by_user ON api_keys(username);

ALTER TABLE users ADD COLUMN password_hash TEXT;   -- argon2 PHC string; NULL: keys only
ALTER TABLE users ADD COLUMN admin BIGINT NOT NULL DEFAULT 0;
-- A removed user's row stays (actions, keys and tokens name it) but it no longer exists for
-- sign-in, sessions or listings.
ALTER TABLE users ADD COLUMN deleted_at BIGINT;

-- Existing data: the bootstrap admin stays the server administrator and keeps its key (now
-- its key named 'default'); every existing cluster and swarm goes to the 'default'
-- organization.
UPDATE users SET admin = 1;
INSERT INTO api_keys (id, username, name, salt, hash, created_at)
    SELECT 'key-' || username, username, 'default', api_key_salt, api_key_hash, created_at
    FROM users WHERE api_key_hash <> '';
INSERT INTO organizations (name, created_at) VALUES ('default', 0);
INSERT INTO owners (resource, kind, org, parent)
    SELECT s.uuid, 'swarm', 'default', NULL FROM swarms s;
INSERT INTO owners (resource, kind, org, parent)
    SELECT c.uuid, 'nodecluster', 'default',
           (SELECT s.uuid FROM swarms s
            WHERE s.manager_cluster = c.uuid OR s.worker_cluster = c.uuid)
    FROM clusters c;
