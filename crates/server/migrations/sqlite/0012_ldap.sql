-- LDAP / Active Directory sign-in (issue #15, part 2). Numbered 0012: 0011 is another
-- branch's; sqlx applies versions in order and does not need them contiguous.
--
-- * `ldap_servers`: the directory servers, in order; position 0 serves the default domain,
--   the others the `domain` they name. The bind password is kept only sealed
--   (ChaCha20-Poly1305 under the data directory's `secret.key`, like linked AWS keys).
-- * `ldap_searches`: the ordered user searches; the first that finds a name wins.
-- * `teams.ldap_group_dn`: a team whose directory users are the members of that group.
-- * `users.directory_dn`: set for a user the directory created (its entry's DN); such a
--   user signs in with the directory's password only. `disabled_at`: the directory no
--   longer finds it (deleted, disabled, out of every search): it exists for nothing until a
--   sign-in or sync finds it again.

CREATE TABLE ldap_servers (
    position        INTEGER PRIMARY KEY,
    url             TEXT NOT NULL,
    tls             TEXT NOT NULL CHECK (tls IN ('ldaps', 'starttls', 'none')),
    ca_pem          TEXT,
    bind_dn         TEXT NOT NULL,
    password_nonce  BLOB NOT NULL,
    password_sealed BLOB NOT NULL,
    domain          TEXT
);

CREATE TABLE ldap_searches (
    position            INTEGER PRIMARY KEY,
    base_dn             TEXT NOT NULL,
    scope               TEXT NOT NULL CHECK (scope IN ('base', 'one', 'sub')),
    filter              TEXT NOT NULL,
    username_attribute  TEXT NOT NULL,
    full_name_attribute TEXT
);

ALTER TABLE teams ADD COLUMN ldap_group_dn TEXT;
ALTER TABLE users ADD COLUMN directory_dn TEXT;
ALTER TABLE users ADD COLUMN full_name TEXT;
ALTER TABLE users ADD COLUMN disabled_at INTEGER;
