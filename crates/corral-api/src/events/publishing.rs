//! [`PublishingStore`]: the sandbox store wrapper that turns writes into [`SandboxEvent`]s on
//! the broadcast channel ([`Events`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use corral_core::{ListQuery, Page, Sandbox, SandboxState, SandboxStore, StoreError};

use super::{Events, SandboxEvent};

/// A [`SandboxStore`] that publishes what changes: `insert` as created, `update` when the
/// state differs from the last one it saw for that id (the first sight counts as a change),
/// `remove` as a change to `destroyed`. Reads pass through; it never reads the store itself.
pub struct PublishingStore {
    inner: Arc<dyn SandboxStore>,
    events: Events,
    /// The last state written per sandbox id.
    states: Mutex<HashMap<String, SandboxState>>,
}

impl std::fmt::Debug for PublishingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishingStore").finish_non_exhaustive()
    }
}

impl PublishingStore {
    pub fn new(inner: Arc<dyn SandboxStore>, events: Events) -> Self {
        Self {
            inner,
            events,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Records `new_state` for `id`; returns the change, if it is one.
    fn record(
        &self,
        id: &str,
        new_state: Option<SandboxState>,
    ) -> Option<(Option<SandboxState>, SandboxState)> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match new_state {
            Some(new) => {
                let old = states.insert(id.to_owned(), new);
                (old != Some(new)).then_some((old, new))
            }
            None => {
                let old = states.remove(id);
                (old != Some(SandboxState::Destroyed)).then_some((old, SandboxState::Destroyed))
            }
        }
    }

    fn publish_change(&self, id: &str, new_state: Option<SandboxState>) {
        if let Some((old_state, new_state)) = self.record(id, new_state) {
            // Both SDKs take only the state from an event and raise on an error state with
            // the error reason they hold, which an event does not refresh ("error reason:
            // None"). Left unannounced, an error state reaches them by their next poll (at
            // most a second later), with the reason.
            if matches!(new_state, SandboxState::Error | SandboxState::BuildFailed) {
                return;
            }
            self.events.publish(SandboxEvent::StateUpdated {
                id: id.to_owned(),
                old_state,
                new_state,
            });
        }
    }
}

#[async_trait]
impl SandboxStore for PublishingStore {
    async fn insert(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.insert(sandbox).await?;
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sandbox.id.clone(), sandbox.state);
        if self.events.has_listeners() {
            self.events
                .publish(SandboxEvent::Created(Arc::new(sandbox.clone())));
        }
        Ok(())
    }

    async fn update(&self, sandbox: &Sandbox) -> Result<(), StoreError> {
        self.inner.update(sandbox).await?;
        self.publish_change(&sandbox.id, Some(sandbox.state));
        Ok(())
    }

    async fn get(&self, id_or_name: &str) -> Result<Option<Sandbox>, StoreError> {
        self.inner.get(id_or_name).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<Sandbox>, StoreError> {
        self.inner.list(query).await
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.inner.remove(id).await?;
        self.publish_change(id, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::sync::broadcast;

    use super::super::tests::{changed, sandbox};

    /// An in-memory store that counts reads.
    #[derive(Default)]
    struct MemStore {
        rows: Mutex<HashMap<String, Sandbox>>,
        reads: std::sync::atomic::AtomicUsize,
        fail_writes: bool,
    }

    fn boom() -> StoreError {
        StoreError::Backend("disk on fire".into())
    }

    #[async_trait]
    impl SandboxStore for MemStore {
        async fn insert(&self, s: &Sandbox) -> Result<(), StoreError> {
            if self.fail_writes {
                return Err(boom());
            }
            self.rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(s.id.clone(), s.clone());
            Ok(())
        }
        async fn update(&self, s: &Sandbox) -> Result<(), StoreError> {
            self.insert(s).await
        }
        async fn get(&self, id: &str) -> Result<Option<Sandbox>, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self
                .rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned())
        }
        async fn list(&self, _: &ListQuery) -> Result<Page<Sandbox>, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Page {
                items: self
                    .rows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect(),
                next_cursor: None,
            })
        }
        async fn remove(&self, id: &str) -> Result<(), StoreError> {
            if self.fail_writes {
                return Err(boom());
            }
            self.rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            Ok(())
        }
    }

    fn drain(rx: &mut broadcast::Receiver<SandboxEvent>) -> Vec<SandboxEvent> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn insert_publishes_created_and_writes_through() {
        let inner = Arc::new(MemStore::default());
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(inner.clone(), events);
        let s = sandbox("a", SandboxState::Creating);
        store.insert(&s).await.expect("insert");
        assert_eq!(drain(&mut rx), vec![SandboxEvent::Created(Arc::new(s))]);
        assert!(inner.rows.lock().expect("lock").contains_key("a"));
        assert_eq!(inner.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn update_publishes_only_state_changes() {
        let inner = Arc::new(MemStore::default());
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(inner.clone(), events);
        let mut s = sandbox("a", SandboxState::Creating);
        store.insert(&s).await.expect("insert");
        drain(&mut rx);

        // Same state, other fields changed: nothing.
        s.labels.insert("k".into(), "v".into());
        s.auto_stop_interval = 5;
        store.update(&s).await.expect("update");
        assert_eq!(drain(&mut rx), vec![]);

        s.state = SandboxState::Started;
        store.update(&s).await.expect("update");
        s.state = SandboxState::Stopping;
        store.update(&s).await.expect("update");
        store.update(&s).await.expect("update");
        assert_eq!(
            drain(&mut rx),
            vec![
                changed("a", Some(SandboxState::Creating), SandboxState::Started),
                changed("a", Some(SandboxState::Started), SandboxState::Stopping),
            ]
        );
        assert_eq!(inner.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
        let stored = inner.rows.lock().expect("lock").get("a").cloned();
        assert_eq!(stored.map(|s| s.auto_stop_interval), Some(5));
    }

    #[tokio::test]
    async fn error_states_are_left_to_polling() {
        let inner = Arc::new(MemStore::default());
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(inner.clone(), events);
        let mut s = sandbox("a", SandboxState::BuildingSnapshot);
        store.insert(&s).await.expect("insert");
        drain(&mut rx);
        s.state = SandboxState::BuildFailed;
        s.error_reason = Some("step 2 failed".into());
        store.update(&s).await.expect("update");
        assert_eq!(drain(&mut rx), vec![]);
        // What comes after is announced, from the error state.
        s.state = SandboxState::Destroying;
        store.update(&s).await.expect("update");
        assert_eq!(
            drain(&mut rx),
            vec![SandboxEvent::StateUpdated {
                id: "a".into(),
                old_state: Some(SandboxState::BuildFailed),
                new_state: SandboxState::Destroying,
            }]
        );
    }

    #[tokio::test]
    async fn first_sight_counts_as_a_change() {
        // E.g. a sandbox created before the server restarted.
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(Arc::new(MemStore::default()), events);
        store
            .update(&sandbox("old", SandboxState::Stopped))
            .await
            .expect("update");
        assert_eq!(
            drain(&mut rx),
            vec![changed("old", None, SandboxState::Stopped)]
        );
    }

    #[tokio::test]
    async fn remove_publishes_destroyed_once() {
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let store = PublishingStore::new(Arc::new(MemStore::default()), events);
        let mut s = sandbox("a", SandboxState::Started);
        store.insert(&s).await.expect("insert");
        s.state = SandboxState::Destroying;
        store.update(&s).await.expect("update");
        drain(&mut rx);
        store.remove("a").await.expect("remove");
        assert_eq!(
            drain(&mut rx),
            vec![changed(
                "a",
                Some(SandboxState::Destroying),
                SandboxState::Destroyed
            )]
        );

        // Already reported destroyed: removing adds nothing.
        let mut b = sandbox("b", SandboxState::Started);
        store.insert(&b).await.expect("insert");
        b.state = SandboxState::Destroyed;
        store.update(&b).await.expect("update");
        drain(&mut rx);
        store.remove("b").await.expect("remove");
        assert_eq!(drain(&mut rx), vec![]);
        // Forgotten after removal.
        assert!(store.states.lock().expect("lock").get("a").is_none());
    }

    #[tokio::test]
    async fn failed_writes_publish_nothing() {
        let events = Events::new(16);
        let mut rx = events.subscribe();
        let inner = Arc::new(MemStore {
            fail_writes: true,
            ..Default::default()
        });
        let store = PublishingStore::new(inner, events);
        assert!(
            store
                .insert(&sandbox("a", SandboxState::Creating))
                .await
                .is_err()
        );
        assert!(
            store
                .update(&sandbox("a", SandboxState::Started))
                .await
                .is_err()
        );
        assert!(store.remove("a").await.is_err());
        assert_eq!(drain(&mut rx), vec![]);
    }
}
