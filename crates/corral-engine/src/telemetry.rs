//! Metrics history: a sampler reads every running sandbox's figures through the `Runtime`
//! port every interval (CPU over the interval, memory, disk, network) and keeps them per
//! sandbox in a fixed-size ring image ([`ring`]): full resolution for the last hour,
//! one-minute buckets for 24 h. The images are files under `<data>/metrics/<id>.bin`
//! written one slot at a time, so a server restart keeps the history and memory holds only
//! a few counters per sandbox; a sandbox's file goes with it. Queries answer Daytona's
//! metric names ([`Metric`]) over a time window.

pub mod ring;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use corral_core::{Runtime, SandboxState};
use time::OffsetDateTime;

use crate::Engine;
use crate::error::EngineError;
use ring::{History, Layout, Minute, SLOT, Sample};

/// The sampling interval when none is configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How long history is kept.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A metric a query can ask for: Daytona's sandbox metric names (and units), plus corral's
/// network counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    CpuUtilization,
    CpuLimit,
    MemoryUtilization,
    MemoryUsage,
    MemoryLimit,
    MemoryCache,
    FilesystemUtilization,
    FilesystemUsage,
    FilesystemAvailable,
    FilesystemTotal,
    NetworkReceive,
    NetworkTransmit,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Self::CpuUtilization,
        Self::CpuLimit,
        Self::MemoryUtilization,
        Self::MemoryUsage,
        Self::MemoryLimit,
        Self::MemoryCache,
        Self::FilesystemUtilization,
        Self::FilesystemUsage,
        Self::FilesystemAvailable,
        Self::FilesystemTotal,
        Self::NetworkReceive,
        Self::NetworkTransmit,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CpuUtilization => "daytona.sandbox.cpu.utilization",
            Self::CpuLimit => "daytona.sandbox.cpu.limit",
            Self::MemoryUtilization => "daytona.sandbox.memory.utilization",
            Self::MemoryUsage => "daytona.sandbox.memory.usage",
            Self::MemoryLimit => "daytona.sandbox.memory.limit",
            Self::MemoryCache => "daytona.sandbox.memory.cache",
            Self::FilesystemUtilization => "daytona.sandbox.filesystem.utilization",
            Self::FilesystemUsage => "daytona.sandbox.filesystem.usage",
            Self::FilesystemAvailable => "daytona.sandbox.filesystem.available",
            Self::FilesystemTotal => "daytona.sandbox.filesystem.total",
            Self::NetworkReceive => "corral.sandbox.network.receive",
            Self::NetworkTransmit => "corral.sandbox.network.transmit",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Its value in a sample: percentages 0-100, cores, bytes (network: since the sandbox
    /// started); `None` when the sample lacks it.
    pub fn value(self, s: &Sample) -> Option<Value> {
        let pct = |used: u64, total: u64| {
            (total > 0).then(|| Value::Float((used as f64 / total as f64 * 100.0).min(100.0)))
        };
        match self {
            Self::CpuUtilization => s.cpu_pct.map(|c| Value::Float(f64::from(c))),
            // A whole number of cores, as the SDKs' models want (a fractional quota rounds up).
            Self::CpuLimit => Some(Value::Int(f64::from(s.cpu_cores).ceil().max(1.0) as u64)),
            Self::MemoryUtilization => pct(s.mem_used, s.mem_limit),
            Self::MemoryUsage => Some(Value::Int(s.mem_used)),
            Self::MemoryLimit => Some(Value::Int(s.mem_limit)),
            Self::MemoryCache => Some(Value::Int(s.mem_cache)),
            Self::FilesystemUtilization => s.disk_used.and_then(|d| pct(d, s.disk_total)),
            Self::FilesystemUsage => s.disk_used.map(Value::Int),
            Self::FilesystemAvailable => s
                .disk_used
                .map(|d| Value::Int(s.disk_total.saturating_sub(d))),
            Self::FilesystemTotal => Some(Value::Int(s.disk_total)),
            Self::NetworkReceive => s.net.map(|n| Value::Int(n.rx_bytes)),
            Self::NetworkTransmit => s.net.map(|n| Value::Int(n.tx_bytes)),
        }
    }
}

/// A data point's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

/// One metric over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub metric: Metric,
    /// (Unix milliseconds, value), oldest first.
    pub points: Vec<(u64, Value)>,
}

/// Where the images live.
#[derive(Debug)]
enum Backing {
    /// `<dir>/<id>.bin`.
    Dir(PathBuf),
    /// In memory (tests, or a server without a data dir).
    Memory(HashMap<String, Vec<u8>>),
}

/// What the sampler remembers of a sandbox between samples.
#[derive(Debug, Default)]
struct Track {
    /// The previous sample's time and CPU time, for the CPU rate.
    prev: Option<(u64, u64)>,
    /// The fine slot the next sample goes to and the image's layout (read once).
    cursor: Option<(Layout, u32)>,
    minute: Option<Minute>,
}

#[derive(Debug)]
struct Inner {
    backing: Backing,
    tracks: HashMap<String, Track>,
    swept: bool,
}

/// The metrics history of every sandbox.
#[derive(Debug)]
pub struct Telemetry {
    interval: Duration,
    layout: Layout,
    inner: Mutex<Inner>,
}

impl Telemetry {
    /// History kept in files under `dir` (created when missing), sampled every `interval`.
    pub fn in_dir(dir: PathBuf, interval: Duration) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(Self::with_backing(Backing::Dir(dir), interval))
    }

    /// History kept in memory only.
    pub fn in_memory(interval: Duration) -> Self {
        Self::with_backing(Backing::Memory(HashMap::new()), interval)
    }

    fn with_backing(backing: Backing, interval: Duration) -> Self {
        Self {
            interval,
            layout: Layout {
                fine: ring::fine_slots_for(interval.as_secs().max(1)),
            },
            inner: Mutex::new(Inner {
                backing,
                tracks: HashMap::new(),
                swept: false,
            }),
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets sandbox `id`'s history, file included.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.tracks.remove(id);
        match &mut inner.backing {
            Backing::Memory(m) => {
                m.remove(id);
            }
            Backing::Dir(dir) => {
                if let Err(e) = fs::remove_file(dir.join(format!("{id}.bin")))
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(sandbox = id, error = %e, "removing a metrics history file");
                }
            }
        }
    }

    /// Bytes of history kept per sandbox (the size of its image).
    pub fn bytes_per_sandbox(&self) -> usize {
        self.layout.bytes()
    }

    /// The history of `id` (empty when there is none).
    fn history(&self, id: &str) -> History {
        let image = {
            let inner = self.lock();
            match &inner.backing {
                Backing::Memory(m) => m.get(id).cloned(),
                Backing::Dir(dir) => {
                    let path = dir.join(format!("{id}.bin"));
                    drop(inner);
                    fs::read(path).ok()
                }
            }
        };
        image.and_then(|i| History::read(&i)).unwrap_or_default()
    }

    /// The series of `metrics` of sandbox `id` within `[from_ms, to_ms]` as of `now_ms`.
    pub fn series(
        &self,
        id: &str,
        metrics: &[Metric],
        from_ms: u64,
        to_ms: u64,
        now_ms: u64,
    ) -> Vec<Series> {
        let oldest = now_ms.saturating_sub(RETENTION.as_millis() as u64);
        let samples = self.history(id).window(from_ms, to_ms, oldest);
        metrics
            .iter()
            .map(|&metric| Series {
                metric,
                points: samples
                    .iter()
                    .filter_map(|s| metric.value(s).map(|v| (s.t_ms, v)))
                    .collect(),
            })
            .collect()
    }

    /// Records a sample of `id` taken at `t_ms`: its CPU time `cpu_ns` gives the CPU rate
    /// since the previous sample (`None` for the first of a run, or when the time went
    /// backwards, i.e. the sandbox restarted). Written only while `runtime` runs it, so a
    /// sample racing a delete leaves nothing behind.
    fn record(&self, runtime: &dyn Runtime, id: &str, cpu_ns: u64, mut s: Sample) {
        let mut inner = self.lock();
        if !runtime.is_running(id) {
            return;
        }
        let Inner {
            backing, tracks, ..
        } = &mut *inner;
        let track = tracks.entry(id.to_owned()).or_default();
        s.cpu_pct = cpu_rate(track.prev, (s.t_ms, cpu_ns), f64::from(s.cpu_cores));
        track.prev = Some((s.t_ms, cpu_ns));
        if let Err(e) = write(backing, self.layout, id, track, s) {
            tracing::warn!(sandbox = id, error = %e, "writing a metrics sample");
            track.cursor = None;
        }
    }

    /// Drops what the sampler remembers of sandboxes not in `live`; the first time, also
    /// the history files of sandboxes that no longer exist (deleted while the server was
    /// down).
    fn sweep(&self, live: &HashSet<&str>) {
        let mut inner = self.lock();
        inner.tracks.retain(|id, _| live.contains(id.as_str()));
        let first = !std::mem::replace(&mut inner.swept, true);
        let gone: Vec<String> = match &inner.backing {
            Backing::Memory(m) => m
                .keys()
                .filter(|id| !live.contains(id.as_str()))
                .cloned()
                .collect(),
            Backing::Dir(dir) if first => fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| {
                            let name = e.file_name().into_string().ok()?;
                            let id = name.strip_suffix(".bin")?;
                            (!live.contains(id)).then(|| id.to_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Backing::Dir(_) => Vec::new(),
        };
        drop(inner);
        for id in gone {
            self.forget(&id);
        }
    }
}

/// CPU used between two (time ms, CPU ns) readings, in % of `cores`.
pub fn cpu_rate(prev: Option<(u64, u64)>, now: (u64, u64), cores: f64) -> Option<f32> {
    let (t0, c0) = prev?;
    let (t1, c1) = now;
    if t1 <= t0 || c1 < c0 || cores <= 0.0 {
        return None;
    }
    let wall_ns = (t1 - t0) as f64 * 1e6;
    Some(((c1 - c0) as f64 / (wall_ns * cores) * 100.0).clamp(0.0, 100.0) as f32)
}

/// Writes sample `s` of `id`: its fine slot and its minute's bucket.
fn write(
    backing: &mut Backing,
    layout: Layout,
    id: &str,
    track: &mut Track,
    s: Sample,
) -> io::Result<()> {
    let (layout, slot) = match track.cursor {
        Some(c) => c,
        None => {
            let (l, h) = open(backing, layout, id)?;
            // A minute bucket written before a restart seeds the aggregate of its minute.
            track.minute = h
                .minutes
                .last()
                .filter(|m| m.minute() == s.minute())
                .map(|m| Minute::new(*m));
            (l, h.next_fine)
        }
    };
    match &mut track.minute {
        Some(m) if m.minute() == s.minute() => m.add(s),
        m => *m = Some(Minute::new(s)),
    }
    let bucket = track.minute.map_or(s, |m| m.bucket());
    let writes = [
        (layout.fine_offset(slot), ring::slot(&s)),
        (layout.minute_offset(s.minute()), ring::slot(&bucket)),
    ];
    match backing {
        Backing::Memory(m) => {
            let img = m.entry(id.to_owned()).or_insert_with(|| layout.empty());
            for (o, b) in writes {
                img[o..o + SLOT].copy_from_slice(&b);
            }
        }
        Backing::Dir(dir) => {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(dir.join(format!("{id}.bin")))?;
            for (o, b) in writes {
                f.write_all_at(&b, o as u64)?;
            }
        }
    }
    track.cursor = Some((layout, (slot + 1) % layout.fine));
    Ok(())
}

/// The layout and history of `id`'s image, creating it (or rewriting it into `layout` when
/// it has another, e.g. after the interval changed).
fn open(backing: &mut Backing, layout: Layout, id: &str) -> io::Result<(Layout, History)> {
    match backing {
        Backing::Memory(m) => {
            let img = m.entry(id.to_owned()).or_insert_with(|| layout.empty());
            if Layout::of(img) != Some(layout) {
                *img = History::read(img).unwrap_or_default().image(layout);
            }
            Ok((layout, History::read(img).unwrap_or_default()))
        }
        Backing::Dir(dir) => {
            let path = dir.join(format!("{id}.bin"));
            let existing = match fs::read(&path) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if let Some(img) = &existing
                && Layout::of(img) == Some(layout)
            {
                return Ok((layout, History::read(img).unwrap_or_default()));
            }
            let history = existing.and_then(|i| History::read(&i)).unwrap_or_default();
            // Whole-image writes go through a rename: a crash leaves the old or the new.
            let tmp = dir.join(format!(".{id}.bin.tmp"));
            fs::write(&tmp, history.image(layout))?;
            fs::rename(&tmp, &path)?;
            Ok((
                layout,
                History::read(&history.image(layout)).unwrap_or_default(),
            ))
        }
    }
}

fn now_ms() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// One pass of the sampler at `t_ms`: every started sandbox the runtime runs is sampled.
/// Returns how many were.
pub async fn sample_at(state: &Engine, t_ms: u64) -> Result<usize, EngineError> {
    let sandboxes = crate::reconciler::all(state).await?;
    let mut taken = Vec::new();
    for s in sandboxes
        .iter()
        .filter(|s| s.state == SandboxState::Started)
    {
        if let Some(u) = state.runtime.usage(&s.id).await {
            taken.push((s.id.clone(), u, u64::from(s.resources.disk_gib) << 30));
        }
    }
    let n = taken.len();
    let telemetry = state.telemetry.clone();
    let runtime = state.runtime.clone();
    let live: Vec<String> = sandboxes.into_iter().map(|s| s.id).collect();
    tokio::task::spawn_blocking(move || {
        for (id, u, disk_total) in taken {
            let sample = Sample {
                t_ms,
                cpu_pct: None,
                cpu_cores: u.cpu_limit_cores as f32,
                mem_used: u.memory_used_bytes,
                mem_cache: u.memory_cache_bytes,
                mem_limit: u.memory_limit_bytes,
                disk_used: u.disk_used_bytes,
                disk_total,
                net: u.network,
            };
            telemetry.record(runtime.as_ref(), &id, u.cpu_time_ns, sample);
        }
        telemetry.sweep(&live.iter().map(String::as_str).collect());
    })
    .await
    .map_err(|e| EngineError::internal("metrics sampler task", &e))?;
    Ok(n)
}

/// The sampler: a pass every interval until the server stops.
pub async fn run(state: Engine) {
    let mut tick = tokio::time::interval(state.telemetry.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let began = std::time::Instant::now();
        match sample_at(&state, now_ms()).await {
            Ok(n) => {
                metrics::histogram!("corral_metrics_sample_seconds")
                    .record(began.elapsed().as_secs_f64());
                tracing::trace!(sandboxes = n, "metrics sampled");
            }
            Err(e) => tracing::warn!(error = %e.message, "metrics sampling failed"),
        }
    }
}

/// The series of `metrics` (all when empty) of a sandbox between `from` and `to`. History
/// exists only for what was sampled: a window beyond it answers what there is.
pub async fn metrics(
    state: &Engine,
    id_or_name: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    metrics: &[Metric],
) -> Result<Vec<Series>, EngineError> {
    if from > to {
        return Err(EngineError::bad_request(format!(
            "from ({from}) is after to ({to})"
        )));
    }
    let s = crate::lifecycle::find(state, id_or_name).await?;
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let (from, to) = (ms(from), ms(to));
    let wanted: Vec<Metric> = if metrics.is_empty() {
        Metric::ALL.to_vec()
    } else {
        metrics.to_vec()
    };
    let telemetry = state.telemetry.clone();
    tokio::task::spawn_blocking(move || telemetry.series(&s.id, &wanted, from, to, now_ms()))
        .await
        .map_err(|e| EngineError::internal("metrics query task", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_is_the_share_of_the_cores_used_between_two_readings() {
        // 1 s of CPU over 2 s of wall time on 2 cores: 25%.
        assert_eq!(
            cpu_rate(Some((1000, 0)), (3000, 1_000_000_000), 2.0),
            Some(25.0)
        );
        // Never above 100%, nothing without a previous reading or across a restart.
        assert_eq!(
            cpu_rate(Some((0, 0)), (1000, 10_000_000_000), 1.0),
            Some(100.0)
        );
        assert_eq!(cpu_rate(None, (1000, 5), 1.0), None);
        assert_eq!(cpu_rate(Some((1000, 50)), (2000, 10), 1.0), None);
        assert_eq!(cpu_rate(Some((1000, 0)), (1000, 10), 1.0), None);
    }

    #[test]
    fn every_metric_name_parses_back() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
        assert_eq!(Metric::parse("daytona.sandbox.gpu.usage"), None);
    }
}
