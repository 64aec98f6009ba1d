-- SSH access grants: a token (kept only as its SHA-256) that opens a shell in one sandbox
-- until it expires or is revoked. They go with their sandbox's record.
CREATE TABLE ssh_access (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX ssh_access_sandbox ON ssh_access (sandbox_id);
CREATE INDEX ssh_access_expiry ON ssh_access (expires_at_ms);
