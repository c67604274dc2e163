-- Leases: which replica owns a piece of work, with a fencing token.
--
-- * `work` names the piece of work (`cluster:<uuid>`, `region:<name>`, …); `owner` is the
--   replica holding it until `expires_at` (milliseconds since the Unix epoch, the
--   acquiring replica's clock).
-- * `token` only ever increases: each new holder gets the previous token + 1, and a row is
--   never deleted (a release only expires it), so a token is never handed out twice.
-- * A write made for the work carries the token and is refused unless it is still the
--   current one (`Store::check_fence_in`): a replica that lost its lease while paused cannot
--   write over the new holder's work, whatever the clocks say.

CREATE TABLE leases (
    work        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    token       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
