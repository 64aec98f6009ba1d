-- Preview tokens: one per sandbox (sent in X-Daytona-Preview-Token), plus signed preview
-- URL tokens with an expiry. Both go with their sandbox's record.
CREATE TABLE preview_tokens (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    token TEXT NOT NULL
);

CREATE TABLE signed_preview_tokens (
    token TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    port INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX signed_preview_tokens_sandbox ON signed_preview_tokens (sandbox_id);
CREATE INDEX signed_preview_tokens_expiry ON signed_preview_tokens (expires_at_ms);
