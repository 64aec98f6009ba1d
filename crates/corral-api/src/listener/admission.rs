//! The connection caps: admission of accepted connections within the overall and per-address
//! caps (IPv6 counted per /64), the rate-limited log of refusals, and giving memory back after
//! a burst of closed connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Limits;

/// How often, at most, refused connections are logged (they are counted in a metric).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the listener looks for a burst of closed connections.
const BURST_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Connections closed within one check that make a burst (worth giving memory back after).
const BURST: u64 = 256;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    Total,
    PerAddress,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// The address a per-address cap counts against: IPv4 (mapped ones included) as is, IPv6
/// by its /64 (one host usually holds a whole /64).
pub(super) fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections, overall and per source address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Admits connections within the caps.
#[derive(Debug)]
pub(super) struct Admission {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    /// Connections closed since the last burst check.
    closed: AtomicU64,
}

impl Admission {
    pub(super) fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_address,
            counts: Mutex::new(Counts::default()),
            closed: AtomicU64::new(0),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let source = source_of(ip);
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let of_source = counts.per_source.entry(source).or_insert(0);
        if *of_source >= self.max_per_source {
            return Err(Refusal::PerAddress);
        }
        *of_source += 1;
        counts.total += 1;
        metrics::gauge!("corral_connections_open").set(counts.total as f64);
        Ok(Slot {
            admission: self.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.counts().total
    }
}

/// A connection's place in the counts, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.closed.fetch_add(1, Ordering::Relaxed);
        let mut counts = self.admission.counts();
        counts.total -= 1;
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
        metrics::gauge!("corral_connections_open").set(counts.total as f64);
    }
}

/// Logs refusals at most every [`REFUSAL_LOG_EVERY`]; the metric counts each one.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl RefusalLog {
    pub(super) fn note(&mut self, why: Refusal, peer: SocketAddr, limits: &Limits) {
        metrics::counter!("corral_connections_refused_total", "reason" => why.label()).increment(1);
        self.since_logged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            %peer,
            reason = why.label(),
            refused = self.since_logged,
            max_connections = limits.max_connections,
            max_connections_per_address = limits.max_connections_per_address,
            "refusing connections over the cap (--max-connections, \
             --max-connections-per-address)"
        );
        self.since_logged = 0;
        self.logged_at = Some(now);
    }
}

/// Every [`BURST_CHECK_EVERY`], calls `release` if at least [`BURST`] connections closed
/// since the last check.
pub(super) async fn release_after_bursts(
    admission: Arc<Admission>,
    release: fn() -> bool,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(BURST_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let closed = admission.closed.swap(0, Ordering::Relaxed);
        if closed < BURST {
            continue;
        }
        match tokio::task::spawn_blocking(release).await {
            Ok(released) => {
                metrics::counter!("corral_memory_releases_total").increment(1);
                tracing::debug!(
                    closed,
                    released,
                    "gave memory back after a burst of closed connections"
                );
            }
            Err(e) => tracing::warn!(error = %e, "giving memory back failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_caps_count_ipv6_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            source_of(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );

        let admission = Admission::new(&Limits {
            max_connections: 10,
            max_connections_per_address: 2,
            ..Limits::for_open_files(1024)
        });
        let s1 = admission.admit(a).expect("first");
        let _s2 = admission.admit(b).expect("second");
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerAddress));
        let _s3 = admission.admit(c).expect("another /64");
        drop(s1);
        assert_eq!(admission.open(), 2);
        let _s4 = admission.admit(a).expect("a place was given back");
    }
}
