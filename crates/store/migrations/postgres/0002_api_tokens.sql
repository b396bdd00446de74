-- API tokens; see migrations/sqlite/0002_api_tokens.sql. Only the SHA-256 of
-- the secret is kept.

CREATE TABLE api_tokens (
    id            TEXT   PRIMARY KEY,
    name          TEXT   NOT NULL,
    secret_sha256 BYTEA  NOT NULL,
    scopes        TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT
);

CREATE INDEX api_tokens_name ON api_tokens (name);
