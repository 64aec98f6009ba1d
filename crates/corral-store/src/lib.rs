//! corral's durable store: [`SqliteStore`] implements the core's `SandboxStore` and
//! `ApiKeyStore` ports on SQLite in WAL mode, with migrations embedded in the binary.

#![forbid(unsafe_code)]

mod ssh_access;
mod warm_pools;

use std::path::Path;

use async_trait::async_trait;
use corral_core::ports::{
    PreviewTokenStore, SignedPreviewToken, Snapshot, SnapshotState, SnapshotStore, Volume,
    VolumeState, VolumeStore,
};
use corral_core::{ApiKeyStore, ListQuery, Page, Sandbox, SandboxStore, SortField, StoreError};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open database {path}: {source}")]
    Connect { path: String, source: sqlx::Error },
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        path: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// The SQLite-backed store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    ///
    /// WAL with `synchronous=NORMAL`: a crash of the server process loses no committed
    /// transaction; only a power loss may lose the last few.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true)
            // Reads through a shared mapping: when another connection has written, a
            // connection re-reads changed pages from the map instead of copying them in.
            .pragma("mmap_size", "268435456");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| OpenError::Connect {
                path: shown.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate {
                path: shown,
                source,
            })?;
        Ok(Self { pool })
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A time bound as SQLite's date functions read it (UTC, millisecond precision).
fn instant(t: Option<time::OffsetDateTime>) -> Option<String> {
    t.map(|t| {
        let t = t.to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    })
}

fn encode(sandbox: &Sandbox) -> Result<String, StoreError> {
    serde_json::to_string(sandbox).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(record: &str) -> Result<Sandbox, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl SandboxStore for SqliteStore {
    async fn insert(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        let result =
            sqlx::query("INSERT INTO sandboxes (id, name, state, record) VALUES (?, ?, ?, ?)")
                .bind(&sandbox.id)
                .bind(&sandbox.name)
                .bind(sandbox.state.as_str())
                .bind(encode(sandbox)?)
                .execute(&self.pool)
                .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(sandbox.name.clone())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn update(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        let result =
            sqlx::query("UPDATE sandboxes SET name = ?, state = ?, record = ? WHERE id = ?")
                .bind(&sandbox.name)
                .bind(sandbox.state.as_str())
                .bind(encode(sandbox)?)
                .bind(&sandbox.id)
                .execute(&self.pool)
                .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(sandbox.name.clone())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get(&self, id_or_name: &str) -> Result<Option<Sandbox>, StoreError> {
        // An id match wins over a name match (a name may look like another sandbox's id).
        let row = sqlx::query(
            "SELECT record FROM sandboxes WHERE id = ?1 OR name = ?1 ORDER BY (id = ?1) DESC LIMIT 1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| decode(r.get::<&str, _>(0))).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<Sandbox>, StoreError> {
        let bad = || StoreError::Corrupt(format!("bad cursor {:?}", query.cursor));
        let (after, after_key) = match &query.cursor {
            None => (0, None),
            Some(c) => corral_core::split_cursor(c).ok_or_else(bad)?,
        };
        if after_key.is_some() != query.sort.is_some() && query.cursor.is_some() {
            return Err(bad());
        }
        // The sort key (a fixed expression per field) and the keyset condition of the page.
        let (key, descending) = match query.sort {
            None => ("seq", false),
            Some(sort) => (
                match sort.field {
                    SortField::Name => "name",
                    SortField::Cpu => "json_extract(record, '$.resources.cpu')",
                    SortField::MemoryGib => "json_extract(record, '$.resources.memory_gib')",
                    SortField::DiskGib => "json_extract(record, '$.resources.disk_gib')",
                    SortField::LastActivityAt => {
                        "julianday(json_extract(record, '$.last_activity_at'))"
                    }
                    SortField::CreatedAt => "seq",
                },
                sort.descending,
            ),
        };
        let (cmp, dir) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let page_condition = if query.sort.is_none() {
            "seq > ?1".to_owned()
        } else {
            format!("(?19 IS NULL OR {key} {cmp} ?19 OR ({key} = ?19 AND seq {cmp} ?1))")
        };
        let limit = i64::from(query.limit.max(1));
        let labels =
            serde_json::to_string(&query.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let states: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
        let states =
            serde_json::to_string(&states).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let f = &query.filters;
        let snapshots =
            serde_json::to_string(&f.snapshots).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Label pairs and states arrive as JSON arrays so the statement stays fixed.
        let sql = format!(
            "SELECT seq, record, {key} AS k FROM sandboxes s
             WHERE {page_condition}
               AND NOT EXISTS (
                   SELECT 1 FROM json_each(?2) f
                   WHERE json_extract(s.record, '$.labels') IS NULL
                      OR NOT EXISTS (SELECT 1 FROM json_each(s.record, '$.labels') l
                                     WHERE l.key = f.key AND l.value = f.value))
               AND (json_array_length(?3) = 0 AND state != 'destroyed'
                    OR state IN (SELECT value FROM json_each(?3)))
               AND (?5 IS NULL OR lower(substr(id, 1, length(?5))) = lower(?5))
               AND (?6 IS NULL OR lower(substr(name, 1, length(?6))) = lower(?6))
               AND (json_array_length(?7) = 0
                    OR json_extract(record, '$.snapshot') IN (SELECT value FROM json_each(?7)))
               AND (?8 IS NULL OR json_extract(record, '$.resources.cpu') >= ?8)
               AND (?9 IS NULL OR json_extract(record, '$.resources.cpu') <= ?9)
               AND (?10 IS NULL OR json_extract(record, '$.resources.memory_gib') >= ?10)
               AND (?11 IS NULL OR json_extract(record, '$.resources.memory_gib') <= ?11)
               AND (?12 IS NULL OR json_extract(record, '$.resources.disk_gib') >= ?12)
               AND (?13 IS NULL OR json_extract(record, '$.resources.disk_gib') <= ?13)
               AND (?14 IS NULL OR json_extract(record, '$.public') = ?14)
               AND (?15 IS NULL OR julianday(json_extract(record, '$.created_at')) > julianday(?15))
               AND (?16 IS NULL OR julianday(json_extract(record, '$.created_at')) < julianday(?16))
               AND (?17 IS NULL
                    OR julianday(json_extract(record, '$.last_activity_at')) > julianday(?17))
               AND (?18 IS NULL
                    OR julianday(json_extract(record, '$.last_activity_at')) < julianday(?18))
               AND (?20 IS NULL
                    OR julianday(json_extract(record, '$.auto_destroy_at')) > julianday(?20))
               AND (?21 IS NULL
                    OR julianday(json_extract(record, '$.auto_destroy_at')) < julianday(?21))
             ORDER BY {key} {dir}, seq {dir} LIMIT ?4"
        );
        let q = sqlx::query(&sql)
            .bind(after)
            .bind(labels)
            .bind(states)
            .bind(limit + 1)
            .bind(query.id_prefix.as_deref())
            .bind(query.name_prefix.as_deref())
            .bind(snapshots)
            .bind(f.cpu.min)
            .bind(f.cpu.max)
            .bind(f.memory_gib.min)
            .bind(f.memory_gib.max)
            .bind(f.disk_gib.min)
            .bind(f.disk_gib.max)
            .bind(f.public)
            .bind(instant(f.created.after))
            .bind(instant(f.created.before))
            .bind(instant(f.last_activity.after))
            .bind(instant(f.last_activity.before));
        let q = match &after_key {
            None => q.bind(None::<i64>),
            Some(serde_json::Value::String(k)) => q.bind(k.clone()),
            Some(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(i) => q.bind(i),
                None => q.bind(n.as_f64().ok_or_else(bad)?),
            },
            Some(_) => return Err(bad()),
        };
        let q = q
            .bind(instant(f.auto_destroy.after))
            .bind(instant(f.auto_destroy.before));
        let rows = q.fetch_all(&self.pool).await.map_err(backend)?;
        let more = rows.len() as i64 > limit;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = after.to_string();
        for row in rows.iter().take(limit as usize) {
            let seq = row.get::<i64, _>(0);
            items.push(decode(row.get::<&str, _>(1))?);
            last = match query.sort.map(|s| s.field) {
                None => seq.to_string(),
                Some(SortField::Name) => {
                    format!("{seq}:{}", serde_json::Value::from(row.get::<String, _>(2)))
                }
                Some(SortField::LastActivityAt) => {
                    format!("{seq}:{}", serde_json::Value::from(row.get::<f64, _>(2)))
                }
                Some(_) => format!("{seq}:{}", row.get::<i64, _>(2)),
            };
        }
        Ok(Page {
            items,
            next_cursor: more.then_some(last),
        })
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sandboxes WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn add_key(&self, name: &str, hash: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO api_keys (hash, name) VALUES (?, ?)")
            .bind(hash)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn has_key(&self, hash: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM api_keys WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn count_keys(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }
}

#[async_trait]
impl PreviewTokenStore for SqliteStore {
    async fn preview_token(
        &self,
        sandbox_id: &str,
        candidate: &str,
    ) -> Result<Option<String>, StoreError> {
        let select = "SELECT token FROM preview_tokens WHERE sandbox_id = ?";
        // Read first: this runs on every private preview request, and a read takes no lock.
        let stored: Option<String> = sqlx::query_scalar(select)
            .bind(sandbox_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        if stored.is_some() {
            return Ok(stored);
        }
        // Only for a recorded sandbox: one being deleted gets no token (and no FK error).
        sqlx::query(
            "INSERT OR IGNORE INTO preview_tokens (sandbox_id, token)
             SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM sandboxes WHERE id = ?1)",
        )
        .bind(sandbox_id)
        .bind(candidate)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        sqlx::query_scalar(select)
            .bind(sandbox_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn add_signed_token(&self, token: &SignedPreviewToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signed_preview_tokens (token, sandbox_id, port, expires_at_ms)
             VALUES (?, ?, ?, ?)",
        )
        .bind(&token.token)
        .bind(&token.sandbox_id)
        .bind(i64::from(token.port))
        .bind(token.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn signed_token(&self, token: &str) -> Result<Option<SignedPreviewToken>, StoreError> {
        let row = sqlx::query(
            "SELECT sandbox_id, port, expires_at_ms FROM signed_preview_tokens WHERE token = ?",
        )
        .bind(token)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            let port = u16::try_from(r.get::<i64, _>(1))
                .map_err(|_| StoreError::Corrupt(format!("bad port of preview token {token}")))?;
            Ok(SignedPreviewToken {
                token: token.to_owned(),
                sandbox_id: r.get(0),
                port,
                expires_at_ms: r.get(2),
            })
        })
        .transpose()
    }

    async fn expire_signed_token(
        &self,
        sandbox_id: &str,
        port: u16,
        token: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE signed_preview_tokens SET expires_at_ms = MIN(expires_at_ms, ?)
             WHERE token = ? AND sandbox_id = ? AND port = ?",
        )
        .bind(at_ms)
        .bind(token)
        .bind(sandbox_id)
        .bind(i64::from(port))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_signed_tokens(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM signed_preview_tokens WHERE expires_at_ms < ?")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}

fn rfc3339(t: time::OffsetDateTime) -> Result<String, StoreError> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime, StoreError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

const VOLUME_COLUMNS: &str =
    "id, name, organization_id, state, error_reason, created_at, updated_at, last_used_at";

fn volume_of(row: &sqlx::sqlite::SqliteRow) -> Result<Volume, StoreError> {
    let state: String = row.get(3);
    let last_used: Option<String> = row.get(7);
    Ok(Volume {
        id: row.get(0),
        name: row.get(1),
        organization_id: row.get(2),
        state: VolumeState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown volume state {state:?}")))?,
        error_reason: row.get(4),
        created_at: parse_time(row.get::<&str, _>(5))?,
        updated_at: parse_time(row.get::<&str, _>(6))?,
        last_used_at: last_used.as_deref().map(parse_time).transpose()?,
    })
}

#[async_trait]
impl VolumeStore for SqliteStore {
    async fn insert_volume(&self, v: &Volume) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO volumes (id, name, organization_id, state, error_reason, created_at,
                                  updated_at, last_used_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&v.id)
        .bind(&v.name)
        .bind(&v.organization_id)
        .bind(v.state.as_str())
        .bind(&v.error_reason)
        .bind(rfc3339(v.created_at)?)
        .bind(rfc3339(v.updated_at)?)
        .bind(v.last_used_at.map(rfc3339).transpose()?)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(v.name.clone())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn update_volume(&self, v: &Volume) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE volumes SET name = ?, state = ?, error_reason = ?, updated_at = ?,
                                last_used_at = ?
             WHERE id = ?",
        )
        .bind(&v.name)
        .bind(v.state.as_str())
        .bind(&v.error_reason)
        .bind(rfc3339(v.updated_at)?)
        .bind(v.last_used_at.map(rfc3339).transpose()?)
        .bind(&v.id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(volume_of).transpose()
    }

    async fn volume_by_name(&self, org: &str, name: &str) -> Result<Option<Volume>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes
             WHERE organization_id = ? AND name = ? AND state != 'deleted'"
        ))
        .bind(org)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(volume_of).transpose()
    }

    async fn list_volumes(
        &self,
        org: &str,
        include_deleted: bool,
    ) -> Result<Vec<Volume>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes
             WHERE organization_id = ? AND (? OR state != 'deleted') ORDER BY seq"
        ))
        .bind(org)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(volume_of).collect()
    }

    async fn touch_volume(&self, id: &str, at: time::OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE volumes SET last_used_at = ? WHERE id = ?")
            .bind(rfc3339(at)?)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn sandboxes_using_volume(&self, id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name FROM sandboxes s
             WHERE state != 'destroyed'
               AND EXISTS (SELECT 1 FROM json_each(s.record, '$.volumes') v
                           WHERE json_extract(v.value, '$.volume_id') = ?)
             ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

const SNAPSHOT_COLUMNS: &str = "id, name, image_name, state, size, entrypoint, cpu, memory_gib, \
     disk_gib, error_reason, created_at_ms, updated_at_ms, last_used_at_ms";

fn snapshot_row(r: &sqlx::sqlite::SqliteRow) -> Result<Snapshot, StoreError> {
    let state: String = r.get(3);
    let entrypoint: String = r.get(5);
    let int = |i: usize| -> Result<u32, StoreError> {
        u32::try_from(r.get::<i64, _>(i))
            .map_err(|_| StoreError::Corrupt("snapshot resource out of range".into()))
    };
    Ok(Snapshot {
        id: r.get(0),
        name: r.get(1),
        image_name: r.get(2),
        state: SnapshotState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot state {state:?}")))?,
        size: r
            .get::<Option<i64>, _>(4)
            .map(|s| u64::try_from(s).unwrap_or(0)),
        entrypoint: serde_json::from_str(&entrypoint)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        cpu: int(6)?,
        memory_gib: int(7)?,
        disk_gib: int(8)?,
        error_reason: r.get(9),
        general: false,
        created_at_ms: r.get(10),
        updated_at_ms: r.get(11),
        last_used_at_ms: r.get(12),
    })
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn insert_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        let result = sqlx::query(&format!(
            "INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.image_name)
        .bind(s.state.as_str())
        .bind(s.size.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
        .bind(serde_json::to_string(&s.entrypoint).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(i64::from(s.cpu))
        .bind(i64::from(s.memory_gib))
        .bind(i64::from(s.disk_gib))
        .bind(&s.error_reason)
        .bind(s.created_at_ms)
        .bind(s.updated_at_ms)
        .bind(s.last_used_at_ms)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(s.name.clone())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn update_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE snapshots SET state = ?, size = ?, error_reason = ?, updated_at_ms = ?,
             last_used_at_ms = ? WHERE id = ?",
        )
        .bind(s.state.as_str())
        .bind(s.size.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
        .bind(&s.error_reason)
        .bind(s.updated_at_ms)
        .bind(s.last_used_at_ms)
        .bind(&s.id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_snapshot(&self, id_or_name: &str) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1 OR name = ?1
             ORDER BY (id = ?1) DESC LIMIT 1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(snapshot_row).transpose()
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at_ms, rowid"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(snapshot_row).collect()
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM snapshots WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{DesiredState, Resources, SandboxState};
    use std::collections::BTreeMap;
    use time::OffsetDateTime;

    fn sandbox(id: &str, name: &str, labels: &[(&str, &str)]) -> Sandbox {
        let now = OffsetDateTime::now_utc();
        Sandbox {
            id: id.into(),
            name: name.into(),
            organization_id: "org".into(),
            snapshot: "host".into(),
            user: "daytona".into(),
            env: BTreeMap::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            public: false,
            network_block_all: false,
            network_allow_list: None,
            resources: Resources::default(),
            state: SandboxState::Started,
            desired_state: DesiredState::Started,
            error_reason: None,
            auto_stop_interval: 15,
            auto_archive_interval: 10080,
            auto_delete_interval: -1,
            auto_pause_interval: 0,
            auto_destroy_at: None,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            stopped_at: None,
            volumes: Vec::new(),
            signing_key: None,
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn insert_get_by_id_or_name_and_unique_names() {
        let (_d, s) = store().await;
        s.insert(&sandbox("a", "alpha", &[])).await.expect("insert");
        assert_eq!(
            s.get("a").await.expect("get").map(|x| x.name),
            Some("alpha".into())
        );
        assert_eq!(
            s.get("alpha").await.expect("get").map(|x| x.id),
            Some("a".into())
        );
        assert!(s.get("nope").await.expect("get").is_none());
        assert!(matches!(
            s.insert(&sandbox("b", "alpha", &[])).await,
            Err(StoreError::NameTaken(_))
        ));
    }

    #[tokio::test]
    async fn list_filters_labels_and_pages() {
        let (_d, s) = store().await;
        for i in 0..5 {
            let team = if i % 2 == 0 { "a" } else { "b" };
            s.insert(&sandbox(
                &format!("id{i}"),
                &format!("n{i}"),
                &[("team", team)],
            ))
            .await
            .expect("insert");
        }
        let mut q = ListQuery {
            limit: 2,
            ..Default::default()
        };
        q.labels.insert("team".into(), "a".into());
        let p1 = s.list(&q).await.expect("list");
        assert_eq!(
            p1.items.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            ["id0", "id2"]
        );
        q.cursor = p1.next_cursor;
        let p2 = s.list(&q).await.expect("list");
        assert_eq!(
            p2.items.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            ["id4"]
        );
        assert!(p2.next_cursor.is_none());
        q.labels.insert("missing".into(), "x".into());
        q.cursor = None;
        assert!(s.list(&q).await.expect("list").items.is_empty());
    }

    #[tokio::test]
    async fn list_hides_destroyed_unless_asked() {
        let (_d, s) = store().await;
        let mut x = sandbox("a", "a", &[]);
        x.state = SandboxState::Destroyed;
        s.insert(&x).await.expect("insert");
        s.insert(&sandbox("b", "b", &[])).await.expect("insert");
        let q = ListQuery {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(s.list(&q).await.expect("list").items.len(), 1);
        let q = ListQuery {
            limit: 10,
            states: vec![SandboxState::Destroyed],
            ..Default::default()
        };
        assert_eq!(s.list(&q).await.expect("list").items[0].id, "a");
    }

    #[tokio::test]
    async fn api_keys_are_kept_by_hash() {
        let (_d, s) = store().await;
        assert_eq!(s.count_keys().await.expect("count"), 0);
        s.add_key("admin", "h1").await.expect("add");
        assert!(s.has_key("h1").await.expect("has"));
        assert!(!s.has_key("h2").await.expect("has"));
        assert_eq!(s.count_keys().await.expect("count"), 1);
    }
    #[tokio::test]
    async fn preview_tokens_are_stable_expire_and_go_with_the_sandbox() {
        let (_d, s) = store().await;
        s.insert(&sandbox("a", "a", &[])).await.expect("insert");
        assert_eq!(
            s.preview_token("a", "t1").await.expect("token").as_deref(),
            Some("t1")
        );
        assert_eq!(
            s.preview_token("a", "t2").await.expect("token").as_deref(),
            Some("t1")
        );
        assert_eq!(s.preview_token("gone", "t").await.expect("token"), None);
        let signed = SignedPreviewToken {
            token: "sig".into(),
            sandbox_id: "a".into(),
            port: 3000,
            expires_at_ms: 5_000,
        };
        s.add_signed_token(&signed).await.expect("add");
        assert_eq!(
            s.signed_token("sig").await.expect("get"),
            Some(signed.clone())
        );
        assert!(s.signed_token("nope").await.expect("get").is_none());
        assert!(
            !s.expire_signed_token("a", 3001, "sig", 1_000)
                .await
                .expect("expire")
        );
        assert!(
            s.expire_signed_token("a", 3000, "sig", 1_000)
                .await
                .expect("expire")
        );
        assert_eq!(
            s.signed_token("sig")
                .await
                .expect("get")
                .map(|t| t.expires_at_ms),
            Some(1_000)
        );
        assert_eq!(s.purge_signed_tokens(500).await.expect("purge"), 0);
        s.remove("a").await.expect("remove");
        assert!(s.signed_token("sig").await.expect("get").is_none());
        s.insert(&sandbox("a", "a", &[])).await.expect("insert");
        assert_eq!(
            s.preview_token("a", "t3").await.expect("token").as_deref(),
            Some("t3")
        );
    }

    #[tokio::test]
    async fn volumes_names_free_on_delete_and_usage_is_found() {
        let (_d, s) = store().await;
        let now = OffsetDateTime::now_utc();
        let mut v = Volume {
            id: "v1".into(),
            name: "data".into(),
            organization_id: "org".into(),
            state: VolumeState::Ready,
            error_reason: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        s.insert_volume(&v).await.expect("insert");
        let mut dup = v.clone();
        dup.id = "v2".into();
        assert!(matches!(
            s.insert_volume(&dup).await,
            Err(StoreError::NameTaken(_))
        ));
        assert_eq!(
            s.volume_by_name("org", "data")
                .await
                .expect("get")
                .map(|x| x.id),
            Some("v1".into())
        );
        let mut sb = sandbox("a", "a", &[]);
        sb.volumes.push(corral_core::VolumeMount {
            volume_id: "v1".into(),
            mount_path: "/data".into(),
            subpath: None,
        });
        s.insert(&sb).await.expect("insert");
        assert_eq!(
            s.sandboxes_using_volume("v1").await.expect("usage"),
            vec![("a".to_string(), "a".to_string())]
        );
        sb.state = SandboxState::Destroyed;
        s.update(&sb).await.expect("update");
        assert!(
            s.sandboxes_using_volume("v1")
                .await
                .expect("usage")
                .is_empty()
        );
        v.state = VolumeState::Deleted;
        s.update_volume(&v).await.expect("update");
        assert!(
            s.volume_by_name("org", "data")
                .await
                .expect("get")
                .is_none()
        );
        s.insert_volume(&dup).await.expect("name is free again");
        assert_eq!(s.list_volumes("org", false).await.expect("list").len(), 1);
        assert_eq!(s.list_volumes("org", true).await.expect("list").len(), 2);
        assert_eq!(
            s.volume("v1").await.expect("get").map(|x| x.state),
            Some(VolumeState::Deleted)
        );
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    fn snap(id: &str, name: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            name: name.into(),
            image_name: Some("reg/x:1".into()),
            state: SnapshotState::Pending,
            size: None,
            entrypoint: vec!["sh".into(), "-c".into()],
            cpu: 1,
            memory_gib: 1,
            disk_gib: 3,
            error_reason: None,
            general: false,
            created_at_ms: 1,
            updated_at_ms: 1,
            last_used_at_ms: None,
        }
    }

    #[tokio::test]
    async fn snapshots_round_trip_with_unique_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("db"))
            .await
            .expect("open");
        let mut a = snap("a", "one");
        store.insert_snapshot(&a).await.expect("insert");
        assert!(matches!(
            store.insert_snapshot(&snap("b", "one")).await,
            Err(StoreError::NameTaken(_))
        ));
        a.state = SnapshotState::Active;
        a.size = Some(42);
        store.update_snapshot(&a).await.expect("update");
        assert_eq!(
            store.get_snapshot("one").await.expect("get"),
            Some(a.clone())
        );
        assert_eq!(store.get_snapshot("a").await.expect("get"), Some(a.clone()));
        assert_eq!(store.list_snapshots().await.expect("list"), vec![a]);
        store.remove_snapshot("a").await.expect("remove");
        assert!(store.get_snapshot("a").await.expect("get").is_none());
    }
}
