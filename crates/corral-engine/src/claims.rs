//! Claims on snapshots being made ready, so that one server builds, pulls or commits a
//! snapshot once while other requests for it wait.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// Snapshots this server is making ready (a second request for one waits for it); each
/// server has its own, in [`Engine::building`](crate::Engine::building).
#[derive(Debug, Default)]
pub struct Building(Mutex<BTreeSet<String>>);

impl Building {
    fn ids(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether snapshot `id` is being made ready by this server.
    pub(crate) fn is_claimed(&self, id: &str) -> bool {
        self.ids().contains(id)
    }
}

/// A snapshot being made ready (built, pulled or committed) by this server; others wait
/// for it. Released however the work ends (a dropped future included).
#[derive(Debug)]
pub struct Claim(Arc<Building>, String);

impl Claim {
    /// Claims snapshot `id`, unless this server is at work on it already.
    pub(crate) fn take(building: &Arc<Building>, id: &str) -> Option<Self> {
        let claimed = building.ids().insert(id.to_owned());
        claimed.then(|| Self(building.clone(), id.to_owned()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.ids().remove(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_holds_until_dropped() {
        let building = Arc::new(Building::default());
        let claim = Claim::take(&building, "s1").expect("first claim");
        assert!(building.is_claimed("s1"));
        assert!(Claim::take(&building, "s1").is_none(), "claimed already");
        assert!(Claim::take(&building, "s2").is_some(), "another snapshot");
        drop(claim);
        assert!(!building.is_claimed("s1"));
        assert!(Claim::take(&building, "s1").is_some(), "released on drop");
    }

    #[test]
    fn two_servers_claim_independently() {
        let (a, b) = (Arc::new(Building::default()), Arc::new(Building::default()));
        let _held = Claim::take(&a, "s1").expect("claim on a");
        // Positive control: the same server refuses a second claim...
        assert!(Claim::take(&a, "s1").is_none());
        // ...while another server (say, a second one in the same test process) is not
        // blocked by it.
        assert!(!b.is_claimed("s1"));
        assert!(Claim::take(&b, "s1").is_some(), "servers share no claims");
    }
}
