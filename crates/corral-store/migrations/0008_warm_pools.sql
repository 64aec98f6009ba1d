-- Warm pools: sandboxes of one snapshot and shape kept started ahead of demand. Only the pool
-- is stored; its running sandboxes are the engine's (unrecorded until claimed).
CREATE TABLE warm_pools (
    id TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    target TEXT NOT NULL,
    size INTEGER NOT NULL,
    cpu INTEGER NOT NULL,
    memory_gib INTEGER NOT NULL,
    disk_gib INTEGER NOT NULL,
    os_user TEXT NOT NULL,
    error_reason TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (snapshot, target, cpu, memory_gib, disk_gib)
);
