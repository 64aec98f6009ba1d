//! Sandbox networking: pooled network slots and egress policies.
//!
//! A *slot* is a network namespace with a veth pair already in place: `eth0` inside with
//! `10.x.y.(4i+2)/30` and a default route, `<prefix><i>` on the host with `.(4i+1)/30`, `lo`
//! up. Building one costs about a millisecond of netlink work (and creating the peer
//! directly in the namespace avoids the tens of milliseconds that moving or deleting a veth
//! costs), so slots are built ahead of demand by a background thread and reused: a sandbox
//! takes a free slot when it starts (its init `setns`es into it) and gives it back when its
//! processes are gone. Surplus slots are dropped by closing their namespace fd; the kernel
//! then removes the namespace and both veth ends on its own.
//!
//! A taken slot carries the sandbox id as the host interface's alias, so a restarted
//! server finds the slots of sandboxes that outlived it; free slots die with the server
//! (only its fds hold them). Egress rules live in corral's own nftables table
//! ([`nft`]), which also survives a server restart with the sandboxes it governs.

pub mod netlink;
pub mod nft;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use corral_core::Egress;
use corral_core::ports::NetCounters;
use ipnet::Ipv4Net;

use netlink::Rtnl;
use nft::{NftError, Table};

/// Settings of sandbox networking.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses of all slots (a /30 each).
    pub cidr: Ipv4Net,
    /// Host-side interface names are `<prefix><slot>`; corral's nftables table is
    /// `corral_<prefix>`. At most 8 characters of `[a-z0-9]`.
    pub prefix: String,
    /// Resolvers written to sandboxes' `/etc/resolv.conf`.
    pub dns: Vec<Ipv4Addr>,
    /// Free slots kept ready.
    pub spare: usize,
    /// Free slots kept for reuse at most; more are dropped.
    pub max_free: usize,
}

/// Errors of sandbox networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Config(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("no free network slot: all {0} addresses of the network are in use")]
    Exhausted(u32),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io { op, source }
}

/// A built slot.
#[derive(Debug)]
struct Slot {
    index: u32,
    netns: OwnedFd,
    /// The host-side interface's index.
    ifindex: u32,
}

/// A slot in use by a sandbox.
#[derive(Debug)]
struct Taken {
    index: u32,
    ifindex: u32,
    /// `None` for a sandbox adopted before its namespace could be opened.
    netns: Option<OwnedFd>,
    /// The host end's counters when the sandbox took the slot (slots are reused); zero for
    /// a slot adopted from an earlier server, which counts from the slot's creation.
    baseline: NetCounters,
}

#[derive(Debug, Default)]
struct Inner {
    free: Vec<Slot>,
    taken: HashMap<String, Taken>,
    /// Every index with a host interface (free, taken, or being built).
    indexes: BTreeSet<u32>,
    /// Indexes of dropped slots whose interface the kernel may not have removed yet.
    draining: Vec<u32>,
    last_sweep: Option<Instant>,
    /// Egress policies applied in nftables, by host interface name.
    applied: HashMap<String, Egress>,
    closed: bool,
}

/// What a starting sandbox gets: the namespace to enter and its addresses.
#[derive(Debug)]
pub struct Lease {
    /// A duplicate of the slot's namespace fd (close-on-exec), for the spawner.
    pub netns: OwnedFd,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// Sandbox networking for one server.
#[derive(Debug)]
pub struct Network {
    cfg: NetConfig,
    table: Table,
    inner: Mutex<Inner>,
    /// Serialises nftables transactions with the `applied` mirror.
    nft_lock: Mutex<()>,
    wake: Condvar,
}

impl Network {
    /// Checks the host, writes corral's nftables table, finds the slots of sandboxes that
    /// outlived an earlier server, and starts the thread that builds spare slots.
    pub fn open(cfg: NetConfig) -> Result<Arc<Self>, NetError> {
        if cfg.prefix.is_empty()
            || cfg.prefix.len() > 8
            || !cfg
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(NetError::Config(format!(
                "network interface prefix {:?} must be 1-8 characters of a-z and 0-9",
                cfg.prefix
            )));
        }
        if cfg.cidr.prefix_len() > 28 {
            return Err(NetError::Config(format!(
                "sandbox network {} is too small (at most /28)",
                cfg.cidr
            )));
        }
        let cidr = cfg.cidr.trunc();
        let cfg = NetConfig { cidr, ..cfg };
        fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(io_err(
            "enabling IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)",
        ))?;
        let table = Table {
            name: format!("corral_{}", cfg.prefix),
            prefix: cfg.prefix.clone(),
            cidr,
            dns: cfg.dns.clone(),
        };
        let mut rtnl = Rtnl::open().map_err(io_err("opening a netlink socket"))?;
        let mut inner = Inner::default();
        let mut survivors = false;
        for link in rtnl.links().map_err(io_err("listing links"))? {
            let Some(index) = link
                .name
                .strip_prefix(&cfg.prefix)
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match link.alias {
                Some(id) => {
                    survivors = true;
                    inner.indexes.insert(index);
                    inner.taken.insert(
                        id,
                        Taken {
                            index,
                            ifindex: link.index,
                            netns: None,
                            baseline: NetCounters::default(),
                        },
                    );
                }
                None => {
                    // A free slot whose namespace something else keeps alive: not ours
                    // to keep.
                    if let Err(e) = rtnl.delete_link(link.index) {
                        tracing::warn!(link = %link.name, error = %e, "removing a stray slot link");
                    }
                }
            }
        }
        nft::run(&table.script(!survivors))?;
        if survivors {
            let applied = table.applied()?;
            // Policies of interfaces that no longer exist would wrongly apply to a future
            // slot with the same name: removed now.
            let live: BTreeSet<String> = inner
                .taken
                .values()
                .map(|t| format!("{}{}", cfg.prefix, t.index))
                .collect();
            let mut script = String::new();
            for (ifname, egress) in &applied {
                if !live.contains(ifname) {
                    script.push_str(&table.policy_script(ifname, egress, &Egress::Open));
                }
            }
            if !script.is_empty() {
                nft::run(&script)?;
            }
            inner.applied = applied
                .into_iter()
                .filter(|(i, _)| live.contains(i))
                .collect();
        }
        let net = Arc::new(Self {
            cfg,
            table,
            inner: Mutex::new(inner),
            nft_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let filler = Arc::clone(&net);
        std::thread::Builder::new()
            .name("corral-net".into())
            .spawn(move || filler.fill_forever())
            .map_err(io_err("starting the network slot thread"))?;
        Ok(net)
    }

    /// The resolvers sandboxes use.
    pub fn dns(&self) -> &[Ipv4Addr] {
        &self.cfg.dns
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ifname(&self, index: u32) -> String {
        format!("{}{}", self.cfg.prefix, index)
    }

    /// The slot count the network holds.
    fn capacity(&self) -> u32 {
        let bits = 32 - u32::from(self.cfg.cidr.prefix_len());
        (1u32 << bits.min(31)) / 4
    }

    /// Host-side (gateway) and sandbox addresses of a slot.
    fn addresses(&self, index: u32) -> (Ipv4Addr, Ipv4Addr) {
        let base = u32::from(self.cfg.cidr.network()) + index * 4;
        (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
    }

    /// Reserves the lowest unused slot index.
    fn reserve_index(&self) -> Result<u32, NetError> {
        let mut inner = self.inner();
        // Dropped slots vanish asynchronously (the kernel cleans up a namespace in the
        // background, in batches): their names become usable once their interface is gone.
        if !inner.draining.is_empty()
            && inner
                .last_sweep
                .is_none_or(|t| t.elapsed() > std::time::Duration::from_millis(500))
        {
            inner.last_sweep = Some(Instant::now());
            let gone: Vec<u32> = inner
                .draining
                .iter()
                .copied()
                .filter(|i| {
                    !std::path::Path::new("/sys/class/net")
                        .join(self.ifname(*i))
                        .exists()
                })
                .collect();
            for i in gone {
                inner.indexes.remove(&i);
                inner.draining.retain(|d| *d != i);
            }
        }
        let cap = self.capacity();
        let mut want = 0;
        for &i in &inner.indexes {
            if i != want {
                break;
            }
            want += 1;
        }
        if want >= cap {
            return Err(NetError::Exhausted(cap));
        }
        inner.indexes.insert(want);
        Ok(want)
    }

    /// Builds one slot (see the module docs).
    fn build(&self) -> Result<Slot, NetError> {
        let index = self.reserve_index()?;
        let r = self.build_at(index);
        if r.is_err() {
            // Whatever was built goes with the namespace fd dropped on the way out.
            self.inner().draining.push(index);
        }
        r
    }

    fn build_at(&self, index: u32) -> Result<Slot, NetError> {
        let (gateway, address) = self.addresses(index);
        let host_name = self.ifname(index);
        // A thread enters a new namespace and prepares it; the socket it opens there keeps
        // talking to that namespace after the thread is gone.
        let (netns, mut inside) = std::thread::scope(|s| {
            s.spawn(|| -> Result<(OwnedFd, Rtnl), NetError> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetError::Io {
                        op: "creating a network namespace",
                        source: e.into(),
                    }
                })?;
                let netns: OwnedFd = fs::File::open("/proc/thread-self/ns/net")
                    .map_err(io_err("opening the new network namespace"))?
                    .into();
                // eth0 gets no IPv6 (no link-local chatter, nothing to filter); lo keeps ::1.
                fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                    .map_err(io_err("disabling IPv6 for new links"))?;
                // Unprivileged ICMP echo sockets, so `ping` works without CAP_NET_RAW.
                fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
                    .map_err(io_err("allowing unprivileged ping"))?;
                let mut rtnl = Rtnl::open().map_err(io_err("opening a netlink socket"))?;
                let lo = rtnl.index("lo").map_err(io_err("finding lo"))?;
                rtnl.set_up(lo).map_err(io_err("bringing lo up"))?;
                Ok((netns, rtnl))
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Config("the namespace thread panicked".into())))
        })?;
        let mut host = Rtnl::open().map_err(io_err("opening a netlink socket"))?;
        host.create_veth(&host_name, "eth0", netns.as_raw_fd())
            .map_err(io_err("creating a veth pair"))?;
        let ifindex = host.index(&host_name).map_err(io_err("finding the veth"))?;
        let mut configure = || -> Result<(), NetError> {
            let _ = fs::write(
                format!("/proc/sys/net/ipv6/conf/{host_name}/disable_ipv6"),
                "1",
            );
            host.add_address(ifindex, gateway, 30)
                .map_err(io_err("addressing the host end"))?;
            host.set_up(ifindex)
                .map_err(io_err("bringing the host end up"))?;
            let eth0 = inside.index("eth0").map_err(io_err("finding eth0"))?;
            inside
                .add_address(eth0, address, 30)
                .map_err(io_err("addressing eth0"))?;
            inside.set_up(eth0).map_err(io_err("bringing eth0 up"))?;
            inside
                .add_default_route(gateway)
                .map_err(io_err("adding the default route"))?;
            Ok(())
        };
        configure()?;
        Ok(Slot {
            index,
            netns,
            ifindex,
        })
    }

    /// Keeps `spare` free slots built, until shutdown.
    fn fill_forever(&self) {
        loop {
            {
                let mut inner = self.inner();
                while !inner.closed && inner.free.len() >= self.cfg.spare {
                    inner = self.wake.wait(inner).unwrap_or_else(|p| p.into_inner());
                }
                if inner.closed {
                    return;
                }
            }
            let t = Instant::now();
            match self.build() {
                Ok(slot) => {
                    metrics::histogram!("corral_net_slot_build_seconds")
                        .record(t.elapsed().as_secs_f64());
                    let mut inner = self.inner();
                    if inner.closed {
                        return;
                    }
                    inner.free.push(slot);
                }
                Err(e) => {
                    tracing::error!(error = %e, "building a network slot failed; retrying in 1 s");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// Gives sandbox `id` a slot with `egress` applied, before any of its processes run.
    pub fn lease(&self, id: &str, egress: &Egress) -> Result<Lease, NetError> {
        let pooled = {
            let mut inner = self.inner();
            let s = inner.free.pop();
            if inner.free.len() < self.cfg.spare {
                self.wake.notify_one();
            }
            s
        };
        let slot = match pooled {
            Some(s) => s,
            None => {
                metrics::counter!("corral_net_slot_misses_total").increment(1);
                self.build()?
            }
        };
        let ifname = self.ifname(slot.index);
        let (gateway, address) = self.addresses(slot.index);
        let setup = (|| -> Result<OwnedFd, NetError> {
            self.apply(&ifname, egress)?;
            let mut rtnl = Rtnl::open().map_err(io_err("opening a netlink socket"))?;
            rtnl.set_alias(slot.ifindex, id)
                .map_err(io_err("labelling the slot"))?;
            slot.netns
                .try_clone()
                .map_err(io_err("duplicating the namespace fd"))
        })();
        match setup {
            Ok(netns) => {
                self.inner().taken.insert(
                    id.to_owned(),
                    Taken {
                        index: slot.index,
                        ifindex: slot.ifindex,
                        netns: Some(slot.netns),
                        baseline: host_end_counters(&ifname).unwrap_or_default(),
                    },
                );
                Ok(Lease {
                    netns,
                    address,
                    gateway,
                })
            }
            Err(e) => {
                // Unknown state: drop the slot rather than reuse it.
                let _ = self.apply(&ifname, &Egress::Open);
                self.inner().draining.push(slot.index);
                drop(slot);
                Err(e)
            }
        }
    }

    /// Applies `egress` to the slot interface `ifname` (nothing when unchanged).
    fn apply(&self, ifname: &str, egress: &Egress) -> Result<(), NetError> {
        let _serial = self.nft_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self
            .inner()
            .applied
            .get(ifname)
            .cloned()
            .unwrap_or_default();
        if &old == egress {
            return Ok(());
        }
        nft::run(&self.table.policy_script(ifname, &old, egress))?;
        let mut inner = self.inner();
        if *egress == Egress::Open {
            inner.applied.remove(ifname);
        } else {
            inner.applied.insert(ifname.to_owned(), egress.clone());
        }
        Ok(())
    }

    /// What sandbox `id` received and sent through its slot since it took it (the host
    /// end's counters read from sysfs, swapped: what the host end sends, the sandbox
    /// receives); `None` when it holds no slot.
    pub fn counters(&self, id: &str) -> Option<NetCounters> {
        let (index, baseline) = {
            let inner = self.inner();
            let t = inner.taken.get(id)?;
            (t.index, t.baseline)
        };
        let now = host_end_counters(&self.ifname(index))?;
        Some(NetCounters {
            rx_bytes: now.rx_bytes.saturating_sub(baseline.rx_bytes),
            tx_bytes: now.tx_bytes.saturating_sub(baseline.tx_bytes),
        })
    }

    /// Changes the policy of a running sandbox; `Ok(false)` when it holds no slot.
    pub fn set_egress(&self, id: &str, egress: &Egress) -> Result<bool, NetError> {
        let index = self.inner().taken.get(id).map(|t| t.index);
        match index {
            Some(i) => self.apply(&self.ifname(i), egress).map(|()| true),
            None => Ok(false),
        }
    }

    /// Takes charge of the slot of a sandbox that outlived an earlier server, given its
    /// init's pid (its namespace is opened so the slot can be reused after it).
    pub fn adopt(&self, id: &str, pid: i32) {
        let mut inner = self.inner();
        if let Some(t) = inner.taken.get_mut(id)
            && t.netns.is_none()
        {
            match fs::File::open(format!("/proc/{pid}/ns/net")) {
                Ok(f) => t.netns = Some(f.into()),
                Err(e) => {
                    tracing::debug!(sandbox = id, error = %e, "cannot open an adopted sandbox's namespace")
                }
            }
        }
    }

    /// Gives back the slot of a sandbox whose processes are all gone: it is cleaned (policy
    /// open, alias removed) and reused, or dropped when enough are free.
    pub fn release(&self, id: &str) {
        let Some(taken) = self.inner().taken.remove(id) else {
            return;
        };
        let ifname = self.ifname(taken.index);
        let clean = (|| -> Result<(), NetError> {
            self.apply(&ifname, &Egress::Open)?;
            let mut rtnl = Rtnl::open().map_err(io_err("opening a netlink socket"))?;
            rtnl.set_alias(taken.ifindex, "")
                .map_err(io_err("unlabelling the slot"))
        })();
        let mut inner = self.inner();
        match (clean, taken.netns) {
            (Ok(()), Some(netns)) if !inner.closed && inner.free.len() < self.cfg.max_free => {
                inner.free.push(Slot {
                    index: taken.index,
                    netns,
                    ifindex: taken.ifindex,
                });
            }
            (clean, netns) => {
                if let Err(e) = clean {
                    tracing::warn!(sandbox = id, error = %e, "cleaning a network slot failed; dropping it");
                }
                // The namespace goes with its last fd and the veth pair with it, removed
                // by the kernel in the background (deleting the link here would wait for
                // an RCU grace period, tens of milliseconds).
                drop(netns);
                inner.draining.push(taken.index);
            }
        }
    }

    /// Stops building slots and drops the free ones; removes corral's nftables table when
    /// no sandbox holds a slot any more (running sandboxes keep theirs, and their rules).
    pub fn shutdown(&self) {
        let (free, idle) = {
            let mut inner = self.inner();
            inner.closed = true;
            self.wake.notify_all();
            (std::mem::take(&mut inner.free), inner.taken.is_empty())
        };
        drop(free);
        if idle && let Err(e) = nft::run(&self.table.delete_script()) {
            tracing::warn!(error = %e, "removing corral's nftables table");
        }
    }
}

/// The traffic of the sandbox end of host interface `ifname`: its `tx_bytes` are what the
/// sandbox received, its `rx_bytes` what the sandbox sent.
fn host_end_counters(ifname: &str) -> Option<NetCounters> {
    let read = |f: &str| -> Option<u64> {
        fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(NetCounters {
        rx_bytes: read("tx_bytes")?,
        tx_bytes: read("rx_bytes")?,
    })
}

/// The resolvers of the host that sandboxes can reach through NAT: IPv4 nameservers of
/// `/etc/resolv.conf` that are not loopback, else those of systemd-resolved's upstream list.
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        let found: Vec<Ipv4Addr> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|v| v.trim().parse::<Ipv4Addr>().ok())
            .filter(|a| !a.is_loopback() && !a.is_unspecified())
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}
