-- Dashboard sessions and the failed-login throttle: PostgreSQL dialect of
-- ../sqlite/0015_shared_sessions.sql, which says what each table and column is for.

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
