-- Leases: which replica owns a piece of work, with a fencing token (PostgreSQL dialect of
-- ../sqlite/0010_leases.sql, which says what each column is for).

CREATE TABLE leases (
    work        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    token       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
