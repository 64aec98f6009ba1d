//! [`SshAccessStore`] on SQLite: the `ssh_access` table (migration 0006), one row per grant
//! keyed by the token's hash, removed with its sandbox (`ON DELETE CASCADE`).

use async_trait::async_trait;
use corral_core::StoreError;
use corral_core::ports::{SshAccess, SshAccessStore};
use sqlx::Row;

use crate::{SqliteStore, backend};

#[async_trait]
impl SshAccessStore for SqliteStore {
    async fn add_ssh_access(&self, access: &SshAccess) -> Result<bool, StoreError> {
        // Only for a recorded sandbox: one being deleted gets no grant (and no FK error).
        let done = sqlx::query(
            "INSERT INTO ssh_access (token_hash, id, sandbox_id, created_at_ms, expires_at_ms)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM sandboxes WHERE id = ?3)",
        )
        .bind(&access.token_hash)
        .bind(&access.id)
        .bind(&access.sandbox_id)
        .bind(access.created_at_ms)
        .bind(access.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ssh_access(&self, token_hash: &str) -> Result<Option<SshAccess>, StoreError> {
        let row = sqlx::query(
            "SELECT id, sandbox_id, created_at_ms, expires_at_ms FROM ssh_access
             WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|r| SshAccess {
            id: r.get(0),
            sandbox_id: r.get(1),
            token_hash: token_hash.to_owned(),
            created_at_ms: r.get(2),
            expires_at_ms: r.get(3),
        }))
    }

    async fn revoke_ssh_access(
        &self,
        sandbox_id: &str,
        token_hash: Option<&str>,
    ) -> Result<u64, StoreError> {
        let done = match token_hash {
            Some(hash) => {
                sqlx::query("DELETE FROM ssh_access WHERE sandbox_id = ? AND token_hash = ?")
                    .bind(sandbox_id)
                    .bind(hash)
                    .execute(&self.pool)
                    .await
            }
            None => {
                sqlx::query("DELETE FROM ssh_access WHERE sandbox_id = ?")
                    .bind(sandbox_id)
                    .execute(&self.pool)
                    .await
            }
        }
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn purge_ssh_access(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM ssh_access WHERE expires_at_ms < ?")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}
