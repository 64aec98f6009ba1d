-- Snapshots: named images sandboxes are created from. The built-in `host` snapshot is not
-- stored (the API lists it first).
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image_name TEXT,
    state TEXT NOT NULL,
    size INTEGER,
    entrypoint TEXT NOT NULL DEFAULT '[]',
    cpu INTEGER NOT NULL,
    memory_gib INTEGER NOT NULL,
    disk_gib INTEGER NOT NULL,
    error_reason TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    last_used_at_ms INTEGER
);
