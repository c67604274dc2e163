-- Dashboard sessions and the failed-login throttle, shared by every replica of an
-- installation (issue #14): a browser's next request and an attacker's next guess may
-- reach any replica. Portable SQL (SQLite and PostgreSQL: ../postgres/0015_shared_sessions.sql).
--
-- * `dashboard_sessions`: one row per logged-in browser (`crate::app::sessions`). The key is
--   the hex SHA-256 of the cookie's random 256-bit id; the id itself is never stored, so the
--   table (or a dump of it) opens no session. `via_kind`/`via_value` is the credential the
--   session was opened with ('key' and the API key's id, 'password' and the hex SHA-256 of
--   the stored argon2 hash, 'directory' and ''): a session ends when it no longer holds. No
--   CSRF token is stored either: it is derived from the cookie's id (a hash with its own
--   label), so only a request that carries the cookie can learn it. Expired rows are deleted
--   at each login, and the oldest when MAX_SESSIONS are held.
-- * `login_throttle`: the throttle's counters (`crate::login`), one row per (kind, subject):
--   kind 'pair' (subject: client and username), 'client', 'user' — failures, the last one and
--   the end of the current block, in Unix milliseconds — and kind 'trust' (a client that
--   signed in as a user: `last_ms` is when). Clients are an IPv4 address or an IPv6 /64 in
--   hex, usernames their hex SHA-256. Written only on a failure, and on a success only to
--   forget a pair's failures (when there were any) or to refresh an old trust row.
-- * Numbered 0015 while 0014 is written elsewhere: sqlx applies every migration the
--   database has not seen, whatever its number.

CREATE TABLE dashboard_sessions (
    id_hash     TEXT PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES users(username),
    via_kind    TEXT NOT NULL CHECK (via_kind IN ('key', 'password', 'directory')),
    via_value   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions(expires_at);
CREATE INDEX dashboard_sessions_by_user ON dashboard_sessions(username);

CREATE TABLE login_throttle (
    kind        TEXT NOT NULL CHECK (kind IN ('pair', 'client', 'user', 'trust')),
    subject     TEXT NOT NULL,
    failures    BIGINT NOT NULL,
    last_ms     BIGINT NOT NULL,
    blocked_until_ms BIGINT,
    PRIMARY KEY (kind, subject)
);
CREATE INDEX login_throttle_by_age ON login_throttle(kind, last_ms);
