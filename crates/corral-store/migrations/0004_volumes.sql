-- Volumes: persistent storage sandboxes mount. A deleted volume keeps its row (state
-- 'deleted', for `includeDeleted` listings) and frees its name.
CREATE TABLE volumes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    state TEXT NOT NULL,
    error_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_used_at TEXT
);
CREATE UNIQUE INDEX volumes_live_name ON volumes (organization_id, name) WHERE state != 'deleted';
