-- API tokens (`Authorization: Bearer plx_<id>_<secret>`). Only the SHA-256 of
-- the secret is kept: the secret is 32 random bytes, so a plain hash cannot
-- be brute-forced and a leaked database does not leak usable tokens.
-- Names are unique among tokens that are not revoked (checked by the store;
-- a revoked name may be reused when a token is rotated).

CREATE TABLE api_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    secret_sha256 BLOB    NOT NULL,
    -- Space-separated scope names.
    scopes        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    expires_at    INTEGER,
    revoked_at    INTEGER
);

CREATE INDEX api_tokens_name ON api_tokens (name);
