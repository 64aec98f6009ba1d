//! [`WarmPoolStore`] on SQLite: the `warm_pools` table (migration 0008), one row per pool,
//! unique per snapshot, target and shape.

use async_trait::async_trait;
use corral_core::StoreError;
use corral_core::ports::{WarmPoolRecord, WarmPoolStore};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{SqliteStore, backend};

fn count(r: &SqliteRow, i: usize) -> Result<u32, StoreError> {
    let v: i64 = r.get(i);
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("warm pool column {i}: {v}")))
}

fn record(r: &SqliteRow) -> Result<WarmPoolRecord, StoreError> {
    Ok(WarmPoolRecord {
        id: r.get(0),
        snapshot: r.get(1),
        target: r.get(2),
        size: count(r, 3)?,
        cpu: count(r, 4)?,
        memory_gib: count(r, 5)?,
        disk_gib: count(r, 6)?,
        os_user: r.get(7),
        error_reason: r.get(8),
        created_at_ms: r.get(9),
        updated_at_ms: r.get(10),
    })
}

#[async_trait]
impl WarmPoolStore for SqliteStore {
    async fn add_warm_pool(&self, p: &WarmPoolRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO warm_pools (id, snapshot, target, size, cpu, memory_gib, disk_gib,
                 os_user, error_reason, created_at_ms, updated_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(&p.id)
        .bind(&p.snapshot)
        .bind(&p.target)
        .bind(i64::from(p.size))
        .bind(i64::from(p.cpu))
        .bind(i64::from(p.memory_gib))
        .bind(i64::from(p.disk_gib))
        .bind(&p.os_user)
        .bind(&p.error_reason)
        .bind(p.created_at_ms)
        .bind(p.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn warm_pools(&self) -> Result<Vec<WarmPoolRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, snapshot, target, size, cpu, memory_gib, disk_gib, os_user,
                 error_reason, created_at_ms, updated_at_ms
             FROM warm_pools ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(record).collect()
    }

    async fn update_warm_pool(&self, p: &WarmPoolRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE warm_pools SET size = ?, error_reason = ?, updated_at_ms = ? WHERE id = ?",
        )
        .bind(i64::from(p.size))
        .bind(&p.error_reason)
        .bind(p.updated_at_ms)
        .bind(&p.id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_warm_pool(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM warm_pools WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}
