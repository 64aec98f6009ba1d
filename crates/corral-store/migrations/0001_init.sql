-- Sandboxes: the full record as JSON, with the columns queries filter and order on.
CREATE TABLE sandboxes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);

-- API keys: only a SHA-256 hash of each key is kept.
CREATE TABLE api_keys (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
