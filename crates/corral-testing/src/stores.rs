//! [`MemoryStore`]: every store port in memory, with the SQLite store's semantics (unique
//! names as `StoreError::NameTaken`, lookups by id before name, cursor pages by insertion
//! sequence, preview tokens that go with their sandbox). `tests/store_conformance.rs` runs
//! the same checks against both so this cannot drift from `corral-store`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use corral_core::ports::{
    PreviewTokenStore, SignedPreviewToken, Snapshot, SnapshotStore, SshAccess, SshAccessStore,
    Volume, VolumeState, VolumeStore, WarmPoolRecord, WarmPoolStore,
};
use corral_core::{ApiKeyStore, ListQuery, Page, Sandbox, SandboxState, SandboxStore, StoreError};

#[derive(Debug, Default)]
struct Inner {
    /// Sandboxes by insertion sequence (never reused, like SQLite's AUTOINCREMENT).
    sandboxes: BTreeMap<i64, Sandbox>,
    seq: i64,
    keys: BTreeMap<String, String>,
    preview_tokens: BTreeMap<String, String>,
    signed: BTreeMap<String, SignedPreviewToken>,
    /// SSH access grants by token hash.
    ssh_access: BTreeMap<String, SshAccess>,
    volumes: BTreeMap<i64, Volume>,
    volume_seq: i64,
    /// Snapshots in insertion order.
    snapshots: Vec<Snapshot>,
    /// Warm pools.
    warm_pools: Vec<WarmPoolRecord>,
    /// When set, every call fails with `StoreError::Backend`.
    broken: bool,
}

impl Inner {
    fn seq_of(&self, id: &str) -> Option<i64> {
        self.sandboxes
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(k, _)| *k)
    }
    fn sandbox_exists(&self, id: &str) -> bool {
        self.seq_of(id).is_some()
    }
}

/// Every store port in memory. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

fn backend(what: &str) -> StoreError {
    StoreError::Backend(Box::new(std::io::Error::other(what.to_owned())))
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.broken {
            return Err(backend("the in-memory store was told to fail"));
        }
        Ok(inner)
    }

    /// Makes every later call fail with `StoreError::Backend` (or work again).
    pub fn set_broken(&self, broken: bool) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).broken = broken;
    }
}

fn labels_match(s: &Sandbox, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| s.labels.get(k) == Some(v))
}

#[async_trait]
impl SandboxStore for MemoryStore {
    async fn insert(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        // Both `id` and `name` are UNIQUE columns; either violation reads as NameTaken.
        if inner
            .sandboxes
            .values()
            .any(|s| s.id == sandbox.id || s.name == sandbox.name)
        {
            return Err(StoreError::NameTaken(sandbox.name.clone()));
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.sandboxes.insert(seq, sandbox.clone());
        Ok(())
    }

    async fn update(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let Some(seq) = inner.seq_of(&sandbox.id) else {
            return Ok(()); // UPDATE of no row.
        };
        if inner
            .sandboxes
            .values()
            .any(|s| s.id != sandbox.id && s.name == sandbox.name)
        {
            return Err(StoreError::NameTaken(sandbox.name.clone()));
        }
        inner.sandboxes.insert(seq, sandbox.clone());
        Ok(())
    }

    async fn get(&self, id_or_name: &str) -> Result<Option<Sandbox>, StoreError> {
        let inner = self.lock()?;
        let by_id = inner.sandboxes.values().find(|s| s.id == id_or_name);
        Ok(by_id
            .or_else(|| inner.sandboxes.values().find(|s| s.name == id_or_name))
            .cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<Sandbox>, StoreError> {
        let bad = || StoreError::Corrupt(format!("bad cursor {:?}", query.cursor));
        let (after, after_key) = match &query.cursor {
            None => (0, None),
            Some(c) => corral_core::split_cursor(c).ok_or_else(bad)?,
        };
        if query.cursor.is_some() && after_key.is_some() != query.sort.is_some() {
            return Err(bad());
        }
        let limit = query.limit.max(1) as usize;
        let inner = self.lock()?;
        let mut hits: Vec<(SortKey, i64, &Sandbox)> = inner
            .sandboxes
            .iter()
            .filter(|(_, s)| labels_match(s, &query.labels))
            .filter(|(_, s)| query.prefixes_match(s))
            .filter(|(_, s)| {
                if query.states.is_empty() {
                    s.state != SandboxState::Destroyed
                } else {
                    query.states.contains(&s.state)
                }
            })
            .map(|(seq, s)| (SortKey::of(s, *seq, query.sort.map(|o| o.field)), *seq, s))
            .collect();
        let descending = query.sort.is_some_and(|o| o.descending);
        hits.sort_by(|a, b| {
            let o = a.0.cmp(&b.0).then(a.1.cmp(&b.1));
            if descending { o.reverse() } else { o }
        });
        let cursor = match (&query.cursor, after_key) {
            (None, _) => None,
            (Some(_), None) => Some((SortKey::Int(after), after)),
            (Some(_), Some(k)) => Some((SortKey::from_json(&k).ok_or_else(bad)?, after)),
        };
        let mut rest = hits.into_iter().filter(|(k, seq, _)| match &cursor {
            None => true,
            Some((ck, cs)) => {
                let o = k.cmp(ck).then(seq.cmp(cs));
                if descending { o.is_lt() } else { o.is_gt() }
            }
        });
        let mut items = Vec::new();
        let mut last = after.to_string();
        for (k, seq, s) in rest.by_ref().take(limit) {
            last = match query.sort {
                None => seq.to_string(),
                Some(_) => format!("{seq}:{}", k.to_json()),
            };
            items.push(s.clone());
        }
        let more = rest.next().is_some();
        Ok(Page {
            items,
            next_cursor: more.then_some(last),
        })
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if let Some(seq) = inner.seq_of(id) {
            inner.sandboxes.remove(&seq);
        }
        // ON DELETE CASCADE.
        inner.preview_tokens.remove(id);
        inner.signed.retain(|_, t| t.sandbox_id != id);
        inner.ssh_access.retain(|_, a| a.sandbox_id != id);
        Ok(())
    }
}

#[async_trait]
impl ApiKeyStore for MemoryStore {
    async fn add_key(&self, name: &str, hash: &str) -> Result<(), StoreError> {
        // INSERT OR IGNORE.
        self.lock()?
            .keys
            .entry(hash.to_owned())
            .or_insert_with(|| name.to_owned());
        Ok(())
    }

    async fn has_key(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self.lock()?.keys.contains_key(hash))
    }

    async fn count_keys(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.keys.len() as u64)
    }
}

#[async_trait]
impl PreviewTokenStore for MemoryStore {
    async fn preview_token(
        &self,
        sandbox_id: &str,
        candidate: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut inner = self.lock()?;
        if let Some(t) = inner.preview_tokens.get(sandbox_id) {
            return Ok(Some(t.clone()));
        }
        if !inner.sandbox_exists(sandbox_id) {
            return Ok(None);
        }
        inner
            .preview_tokens
            .insert(sandbox_id.to_owned(), candidate.to_owned());
        Ok(Some(candidate.to_owned()))
    }

    async fn add_signed_token(&self, token: &SignedPreviewToken) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        // PRIMARY KEY and FOREIGN KEY violations are backend errors in SQLite too.
        if inner.signed.contains_key(&token.token) {
            return Err(backend(
                "UNIQUE constraint failed: signed_preview_tokens.token",
            ));
        }
        if !inner.sandbox_exists(&token.sandbox_id) {
            return Err(backend("FOREIGN KEY constraint failed"));
        }
        inner.signed.insert(token.token.clone(), token.clone());
        Ok(())
    }

    async fn signed_token(&self, token: &str) -> Result<Option<SignedPreviewToken>, StoreError> {
        Ok(self.lock()?.signed.get(token).cloned())
    }

    async fn expire_signed_token(
        &self,
        sandbox_id: &str,
        port: u16,
        token: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        match inner.signed.get_mut(token) {
            Some(t) if t.sandbox_id == sandbox_id && t.port == port => {
                t.expires_at_ms = t.expires_at_ms.min(at_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn purge_signed_tokens(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        let n = inner.signed.len();
        inner.signed.retain(|_, t| t.expires_at_ms >= before_ms);
        Ok((n - inner.signed.len()) as u64)
    }
}

#[async_trait]
impl WarmPoolStore for MemoryStore {
    async fn add_warm_pool(&self, p: &WarmPoolRecord) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let clash = inner.warm_pools.iter().any(|q| {
            q.id == p.id
                || (q.snapshot == p.snapshot
                    && q.target == p.target
                    && q.cpu == p.cpu
                    && q.memory_gib == p.memory_gib
                    && q.disk_gib == p.disk_gib)
        });
        if clash {
            return Ok(false);
        }
        inner.warm_pools.push(p.clone());
        Ok(true)
    }

    async fn warm_pools(&self) -> Result<Vec<WarmPoolRecord>, StoreError> {
        let mut all = self.lock()?.warm_pools.clone();
        all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(all)
    }

    async fn update_warm_pool(&self, p: &WarmPoolRecord) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        match inner.warm_pools.iter_mut().find(|q| q.id == p.id) {
            Some(q) => {
                q.size = p.size;
                q.error_reason = p.error_reason.clone();
                q.updated_at_ms = p.updated_at_ms;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete_warm_pool(&self, id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let n = inner.warm_pools.len();
        inner.warm_pools.retain(|q| q.id != id);
        Ok(inner.warm_pools.len() < n)
    }
}

#[async_trait]
impl SshAccessStore for MemoryStore {
    async fn add_ssh_access(&self, access: &SshAccess) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        if !inner.sandbox_exists(&access.sandbox_id) {
            return Ok(false);
        }
        if inner.ssh_access.contains_key(&access.token_hash)
            || inner.ssh_access.values().any(|a| a.id == access.id)
        {
            return Err(backend("UNIQUE constraint failed: ssh_access"));
        }
        inner
            .ssh_access
            .insert(access.token_hash.clone(), access.clone());
        Ok(true)
    }

    async fn ssh_access(&self, token_hash: &str) -> Result<Option<SshAccess>, StoreError> {
        Ok(self.lock()?.ssh_access.get(token_hash).cloned())
    }

    async fn revoke_ssh_access(
        &self,
        sandbox_id: &str,
        token_hash: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        let n = inner.ssh_access.len();
        inner.ssh_access.retain(|hash, a| {
            !(a.sandbox_id == sandbox_id && token_hash.is_none_or(|h| h == hash))
        });
        Ok((n - inner.ssh_access.len()) as u64)
    }

    async fn purge_ssh_access(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        let n = inner.ssh_access.len();
        inner.ssh_access.retain(|_, a| a.expires_at_ms >= before_ms);
        Ok((n - inner.ssh_access.len()) as u64)
    }
}

#[async_trait]
impl VolumeStore for MemoryStore {
    async fn insert_volume(&self, v: &Volume) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let taken = inner.volumes.values().any(|o| {
            o.id == v.id
                || (v.state != VolumeState::Deleted
                    && o.state != VolumeState::Deleted
                    && o.organization_id == v.organization_id
                    && o.name == v.name)
        });
        if taken {
            return Err(StoreError::NameTaken(v.name.clone()));
        }
        inner.volume_seq += 1;
        let seq = inner.volume_seq;
        inner.volumes.insert(seq, v.clone());
        Ok(())
    }

    async fn update_volume(&self, v: &Volume) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if v.state != VolumeState::Deleted
            && inner.volumes.values().any(|o| {
                o.id != v.id
                    && o.state != VolumeState::Deleted
                    && o.organization_id == v.organization_id
                    && o.name == v.name
            })
        {
            return Err(backend(
                "UNIQUE constraint failed: volumes.organization_id, volumes.name",
            ));
        }
        if let Some(o) = inner.volumes.values_mut().find(|o| o.id == v.id) {
            // The columns the SQLite UPDATE sets.
            o.name = v.name.clone();
            o.state = v.state;
            o.error_reason = v.error_reason.clone();
            o.updated_at = v.updated_at;
            o.last_used_at = v.last_used_at;
        }
        Ok(())
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>, StoreError> {
        Ok(self.lock()?.volumes.values().find(|v| v.id == id).cloned())
    }

    async fn volume_by_name(&self, org: &str, name: &str) -> Result<Option<Volume>, StoreError> {
        Ok(self
            .lock()?
            .volumes
            .values()
            .find(|v| v.organization_id == org && v.name == name && v.state != VolumeState::Deleted)
            .cloned())
    }

    async fn list_volumes(
        &self,
        org: &str,
        include_deleted: bool,
    ) -> Result<Vec<Volume>, StoreError> {
        Ok(self
            .lock()?
            .volumes
            .values()
            .filter(|v| v.organization_id == org)
            .filter(|v| include_deleted || v.state != VolumeState::Deleted)
            .cloned()
            .collect())
    }

    async fn touch_volume(&self, id: &str, at: time::OffsetDateTime) -> Result<(), StoreError> {
        if let Some(v) = self.lock()?.volumes.values_mut().find(|v| v.id == id) {
            v.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn sandboxes_using_volume(&self, id: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()?
            .sandboxes
            .values()
            .filter(|s| s.state != SandboxState::Destroyed)
            .filter(|s| s.volumes.iter().any(|m| m.volume_id == id))
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect())
    }
}

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn insert_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner
            .snapshots
            .iter()
            .any(|o| o.id == s.id || o.name == s.name)
        {
            return Err(StoreError::NameTaken(s.name.clone()));
        }
        // `general` is not a column: only the built-in snapshot, never stored, has it.
        inner.snapshots.push(Snapshot {
            general: false,
            ..s.clone()
        });
        Ok(())
    }

    async fn update_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        if let Some(o) = self.lock()?.snapshots.iter_mut().find(|o| o.id == s.id) {
            // The columns the SQLite UPDATE sets.
            o.state = s.state;
            o.size = s.size;
            o.error_reason = s.error_reason.clone();
            o.updated_at_ms = s.updated_at_ms;
            o.last_used_at_ms = s.last_used_at_ms;
        }
        Ok(())
    }

    async fn get_snapshot(&self, id_or_name: &str) -> Result<Option<Snapshot>, StoreError> {
        let inner = self.lock()?;
        let by_id = inner.snapshots.iter().find(|s| s.id == id_or_name);
        Ok(by_id
            .or_else(|| inner.snapshots.iter().find(|s| s.name == id_or_name))
            .cloned())
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>, StoreError> {
        let mut all = self.lock()?.snapshots.clone();
        // ORDER BY created_at_ms, rowid (a stable sort keeps insertion order on ties).
        all.sort_by_key(|s| s.created_at_ms);
        Ok(all)
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), StoreError> {
        self.lock()?.snapshots.retain(|s| s.id != id);
        Ok(())
    }
}

/// A sandbox's sort key, ordered as SQLite orders the store's (text bytewise, numbers by
/// value; the last activity at millisecond precision, as SQLite's `julianday` keeps it).
#[derive(Debug, Clone, PartialEq)]
enum SortKey {
    Int(i64),
    Real(f64),
    Text(String),
}

impl SortKey {
    fn of(s: &Sandbox, seq: i64, field: Option<corral_core::SortField>) -> Self {
        use corral_core::SortField as F;
        match field {
            None | Some(F::CreatedAt) => Self::Int(seq),
            Some(F::Name) => Self::Text(s.name.clone()),
            Some(F::Cpu) => Self::Int(i64::from(s.resources.cpu)),
            Some(F::MemoryGib) => Self::Int(i64::from(s.resources.memory_gib)),
            Some(F::DiskGib) => Self::Int(i64::from(s.resources.disk_gib)),
            Some(F::LastActivityAt) => {
                Self::Real((s.last_activity_at.unix_timestamp_nanos() / 1_000_000) as f64)
            }
        }
    }

    fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::String(s) => Some(Self::Text(s.clone())),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Some(Self::Int(i)),
                None => n.as_f64().map(Self::Real),
            },
            _ => None,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Int(i) => (*i).into(),
            Self::Real(f) => (*f).into(),
            Self::Text(s) => s.clone().into(),
        }
    }
}

impl Eq for SortKey {}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let num = |k: &Self| match k {
            Self::Int(i) => Some(*i as f64),
            Self::Real(f) => Some(*f),
            Self::Text(_) => None,
        };
        match (self, other) {
            (Self::Text(a), Self::Text(b)) => a.cmp(b),
            (Self::Int(a), Self::Int(b)) => a.cmp(b),
            _ => match (num(self), num(other)) {
                (Some(a), Some(b)) => a.total_cmp(&b),
                // Numbers before text, as in SQLite.
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        }
    }
}
