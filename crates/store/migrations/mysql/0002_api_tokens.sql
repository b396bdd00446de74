-- API tokens; see migrations/sqlite/0002_api_tokens.sql. Only the SHA-256 of
-- the secret is kept.

CREATE TABLE api_tokens (
    id            VARCHAR(64)  NOT NULL PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    secret_sha256 VARBINARY(32) NOT NULL,
    scopes        TEXT         NOT NULL,
    created_at    BIGINT       NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    KEY api_tokens_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
