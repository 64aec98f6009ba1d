//! The history of one sandbox as a fixed-size image: a header, a ring of full-resolution
//! samples (one slot per sample, the last hour) and a ring of one-minute buckets (one slot
//! per minute of the day, the last 24 h). The same bytes live in a file per sandbox or in
//! memory; a sample costs two slot writes, whatever the history's length.
//!
//! Layout (little-endian): `CRLMETR1`, fine slot count (u32), minute slot count (u32); then
//! the fine slots; then the minute slots. A slot is [`SLOT`] bytes: time (Unix ms, u64; 0:
//! empty), received and sent bytes (u64 each; `u64::MAX`: unknown), CPU % (f32; NaN:
//! unknown), CPU cores (f32), memory used, cache and limit, disk used and total (KiB, u32
//! each; `u32::MAX`: unknown). Minute slot `i` holds minute `m` with `m % MINUTE_SLOTS == i`;
//! a slot whose time is not of such a minute is stale and ignored.

use corral_core::ports::NetCounters;

/// Bytes of one slot.
pub const SLOT: usize = 52;
/// Bytes of the header.
pub const HEADER: usize = 16;
/// Minute buckets kept: 24 hours.
pub const MINUTE_SLOTS: u32 = 24 * 60;
const MAGIC: &[u8; 8] = b"CRLMETR1";
const MINUTE_MS: u64 = 60_000;

/// One sample of a sandbox (or the aggregate of a minute's samples).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken, Unix milliseconds.
    pub t_ms: u64,
    /// CPU used over the interval before it, in % of the sandbox's cores (0-100); `None` for
    /// the first sample of a run.
    pub cpu_pct: Option<f32>,
    /// CPU cores the sandbox may use.
    pub cpu_cores: f32,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub mem_limit: u64,
    pub disk_used: Option<u64>,
    pub disk_total: u64,
    /// Traffic since the sandbox started.
    pub net: Option<NetCounters>,
}

impl Sample {
    /// The minute it falls in (Unix minutes).
    pub fn minute(&self) -> u64 {
        self.t_ms / MINUTE_MS
    }

    fn encode(&self) -> [u8; SLOT] {
        fn kib(b: u64) -> u32 {
            u32::try_from(b.div_ceil(1024))
                .unwrap_or(u32::MAX - 1)
                .min(u32::MAX - 1)
        }
        let mut out = [0u8; SLOT];
        let (rx, tx) = self
            .net
            .map_or((u64::MAX, u64::MAX), |n| (n.rx_bytes, n.tx_bytes));
        let mut w = Writer(&mut out, 0);
        w.put(&self.t_ms.to_le_bytes());
        w.put(&rx.to_le_bytes());
        w.put(&tx.to_le_bytes());
        w.put(&self.cpu_pct.unwrap_or(f32::NAN).to_le_bytes());
        w.put(&self.cpu_cores.to_le_bytes());
        for v in [
            kib(self.mem_used),
            kib(self.mem_cache),
            kib(self.mem_limit),
            self.disk_used.map_or(u32::MAX, kib),
            kib(self.disk_total),
        ] {
            w.put(&v.to_le_bytes());
        }
        out
    }

    /// The sample in a slot; `None` for an empty one.
    fn decode(b: &[u8]) -> Option<Self> {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let f32_at = |o: usize| f32::from_bits(u32_at(o));
        if b.len() < SLOT {
            return None;
        }
        let t_ms = u64_at(0);
        if t_ms == 0 {
            return None;
        }
        let bytes = |kib: u32| u64::from(kib) * 1024;
        let (rx, tx) = (u64_at(8), u64_at(16));
        let cpu = f32_at(24);
        let disk = u32_at(44);
        Some(Self {
            t_ms,
            cpu_pct: cpu.is_finite().then_some(cpu),
            cpu_cores: f32_at(28),
            mem_used: bytes(u32_at(32)),
            mem_cache: bytes(u32_at(36)),
            mem_limit: bytes(u32_at(40)),
            disk_used: (disk != u32::MAX).then(|| bytes(disk)),
            disk_total: bytes(u32_at(48)),
            net: (rx != u64::MAX && tx != u64::MAX).then_some(NetCounters {
                rx_bytes: rx,
                tx_bytes: tx,
            }),
        })
    }
}

struct Writer<'a>(&'a mut [u8; SLOT], usize);

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.0[self.1..self.1 + b.len()].copy_from_slice(b);
        self.1 += b.len();
    }
}

/// Full-resolution slots for an hour of samples every `interval_s` seconds.
pub fn fine_slots_for(interval_s: u64) -> u32 {
    u32::try_from(3600u64.div_ceil(interval_s.max(1)))
        .unwrap_or(1)
        .max(1)
}

/// Where things are in an image with `fine` full-resolution slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub fine: u32,
}

impl Layout {
    /// The image's size in bytes.
    pub fn bytes(&self) -> usize {
        HEADER + (self.fine as usize + MINUTE_SLOTS as usize) * SLOT
    }
    pub fn fine_offset(&self, slot: u32) -> usize {
        HEADER + slot as usize * SLOT
    }
    pub fn minute_offset(&self, minute: u64) -> usize {
        HEADER + (self.fine as usize + (minute % u64::from(MINUTE_SLOTS)) as usize) * SLOT
    }
    /// A new empty image.
    pub fn empty(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.bytes()];
        v[..8].copy_from_slice(MAGIC);
        v[8..12].copy_from_slice(&self.fine.to_le_bytes());
        v[12..16].copy_from_slice(&MINUTE_SLOTS.to_le_bytes());
        v
    }
    /// The layout an image declares; `None` when it is not one (or is truncated).
    pub fn of(image: &[u8]) -> Option<Self> {
        if image.len() < HEADER || &image[..8] != MAGIC {
            return None;
        }
        let fine = u32::from_le_bytes(image[8..12].try_into().ok()?);
        let minutes = u32::from_le_bytes(image[12..16].try_into().ok()?);
        let l = Self { fine };
        (minutes == MINUTE_SLOTS && fine > 0 && image.len() >= l.bytes()).then_some(l)
    }
}

/// What an image holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Full-resolution samples, oldest first.
    pub fine: Vec<Sample>,
    /// Minute buckets, oldest first.
    pub minutes: Vec<Sample>,
    /// The fine slot the next sample goes to.
    pub next_fine: u32,
}

impl History {
    /// Reads an image (`None`: not an image).
    pub fn read(image: &[u8]) -> Option<Self> {
        let layout = Layout::of(image)?;
        let mut fine: Vec<(u32, Sample)> = (0..layout.fine)
            .filter_map(|i| {
                let o = layout.fine_offset(i);
                Sample::decode(&image[o..o + SLOT]).map(|s| (i, s))
            })
            .collect();
        fine.sort_by_key(|(_, s)| s.t_ms);
        let next_fine = fine.last().map_or(0, |(i, _)| (i + 1) % layout.fine);
        let mut minutes: Vec<Sample> = (0..MINUTE_SLOTS)
            .filter_map(|i| {
                let o = HEADER + (layout.fine + i) as usize * SLOT;
                Sample::decode(&image[o..o + SLOT])
                    .filter(|s| s.minute() % u64::from(MINUTE_SLOTS) == u64::from(i))
            })
            .collect();
        minutes.sort_by_key(|s| s.t_ms);
        Some(Self {
            fine: fine.into_iter().map(|(_, s)| s).collect(),
            minutes,
            next_fine,
        })
    }

    /// The samples to answer for `[from_ms, to_ms]`, oldest first: full resolution where the
    /// fine ring reaches, minute buckets before it; nothing older than `oldest_ms`.
    pub fn window(&self, from_ms: u64, to_ms: u64, oldest_ms: u64) -> Vec<Sample> {
        let fine_from = self.fine.first().map_or(u64::MAX, Sample::minute);
        self.minutes
            .iter()
            .filter(|m| m.minute() < fine_from)
            .chain(self.fine.iter())
            .filter(|s| s.t_ms >= from_ms.max(oldest_ms) && s.t_ms <= to_ms)
            .copied()
            .collect()
    }

    /// This history in a new image of `layout` (the newest fine samples that fit).
    pub fn image(&self, layout: Layout) -> Vec<u8> {
        let mut img = layout.empty();
        let skip = self.fine.len().saturating_sub(layout.fine as usize);
        for (i, s) in self.fine.iter().skip(skip).enumerate() {
            let o = layout.fine_offset(i as u32);
            img[o..o + SLOT].copy_from_slice(&s.encode());
        }
        for m in &self.minutes {
            let o = layout.minute_offset(m.minute());
            img[o..o + SLOT].copy_from_slice(&m.encode());
        }
        img
    }
}

/// The running aggregate of the current minute: gauges (CPU %, memory, disk) averaged,
/// limits and counters the latest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minute {
    n: u32,
    cpu_n: u32,
    cpu_sum: f64,
    mem_used_sum: f64,
    mem_cache_sum: f64,
    disk_n: u32,
    disk_sum: f64,
    last: Sample,
}

impl Minute {
    /// A minute starting with `s` (or with a bucket written before a restart).
    pub fn new(s: Sample) -> Self {
        Self {
            n: 1,
            cpu_n: u32::from(s.cpu_pct.is_some()),
            cpu_sum: f64::from(s.cpu_pct.unwrap_or(0.0)),
            mem_used_sum: s.mem_used as f64,
            mem_cache_sum: s.mem_cache as f64,
            disk_n: u32::from(s.disk_used.is_some()),
            disk_sum: s.disk_used.unwrap_or(0) as f64,
            last: s,
        }
    }

    pub fn minute(&self) -> u64 {
        self.last.minute()
    }

    /// Adds `s`, of the same minute.
    pub fn add(&mut self, s: Sample) {
        self.n += 1;
        if let Some(c) = s.cpu_pct {
            self.cpu_n += 1;
            self.cpu_sum += f64::from(c);
        }
        self.mem_used_sum += s.mem_used as f64;
        self.mem_cache_sum += s.mem_cache as f64;
        if let Some(d) = s.disk_used {
            self.disk_n += 1;
            self.disk_sum += d as f64;
        }
        self.last = s;
    }

    /// The bucket: stamped with its latest sample's time.
    pub fn bucket(&self) -> Sample {
        let n = f64::from(self.n);
        Sample {
            cpu_pct: (self.cpu_n > 0).then(|| (self.cpu_sum / f64::from(self.cpu_n)) as f32),
            mem_used: (self.mem_used_sum / n).round() as u64,
            mem_cache: (self.mem_cache_sum / n).round() as u64,
            disk_used: (self.disk_n > 0).then(|| (self.disk_sum / f64::from(self.disk_n)) as u64),
            ..self.last
        }
    }
}

/// Encodes a sample into a slot.
pub fn slot(s: &Sample) -> [u8; SLOT] {
    s.encode()
}

/// The sample in a slot of an image (`None`: empty or out of range).
pub fn sample_at(image: &[u8], offset: usize) -> Option<Sample> {
    image.get(offset..offset + SLOT).and_then(Sample::decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_ms: u64, cpu: Option<f32>, mem: u64) -> Sample {
        Sample {
            t_ms,
            cpu_pct: cpu,
            cpu_cores: 2.0,
            mem_used: mem,
            mem_cache: 0,
            mem_limit: 1 << 30,
            disk_used: Some(10 << 20),
            disk_total: 10 << 30,
            net: Some(NetCounters {
                rx_bytes: t_ms,
                tx_bytes: 7,
            }),
        }
    }

    #[test]
    fn a_slot_round_trips_with_unknowns() {
        let a = s(1_700_000_000_123, Some(12.5), 300 << 20);
        assert_eq!(Sample::decode(&a.encode()), Some(a));
        let b = Sample {
            cpu_pct: None,
            disk_used: None,
            net: None,
            ..a
        };
        assert_eq!(Sample::decode(&b.encode()), Some(b));
        assert_eq!(Sample::decode(&[0u8; SLOT]), None);
    }

    #[test]
    fn the_fine_ring_wraps_and_keeps_the_newest_hour() {
        let layout = Layout {
            fine: fine_slots_for(10),
        };
        assert_eq!(layout.fine, 360);
        let mut img = layout.empty();
        let mut next = 0u32;
        let t0 = 1_700_000_000_000u64;
        // 400 samples 10 s apart: the first 40 are overwritten.
        for i in 0..400u64 {
            let o = layout.fine_offset(next);
            img[o..o + SLOT].copy_from_slice(&slot(&s(t0 + i * 10_000, Some(1.0), i)));
            next = (next + 1) % layout.fine;
        }
        let h = History::read(&img).expect("image");
        assert_eq!(h.fine.len(), 360);
        assert_eq!(h.fine[0].t_ms, t0 + 40 * 10_000);
        assert_eq!(h.fine[359].t_ms, t0 + 399 * 10_000);
        assert_eq!(h.next_fine, next);
    }

    #[test]
    fn minutes_average_gauges_and_keep_the_latest_counters() {
        let t0 = 1_700_000_040_000u64; // a whole minute
        let mut m = Minute::new(s(t0, None, 100));
        m.add(s(t0 + 20_000, Some(10.0), 200));
        m.add(s(t0 + 40_000, Some(30.0), 300));
        let b = m.bucket();
        assert_eq!(b.t_ms, t0 + 40_000);
        assert_eq!(b.cpu_pct, Some(20.0));
        assert_eq!(b.mem_used, 200);
        assert_eq!(b.net.expect("net").rx_bytes, t0 + 40_000);
        assert_eq!(m.minute(), t0 / 60_000);
    }

    #[test]
    fn a_window_uses_minutes_before_the_fine_ring_and_drops_what_is_past_retention() {
        let layout = Layout { fine: 6 };
        let day = 24 * 3600 * 1000u64;
        let now = 1_700_000_000_000u64 - 1_700_000_000_000u64 % 60_000;
        let mut img = layout.empty();
        // Minute buckets for the last 30 hours; the ring keeps the last 24.
        for k in (0..30 * 60u64).rev() {
            let b = s(now - k * 60_000 + 5_000, Some(1.0), k);
            let o = layout.minute_offset(b.minute());
            img[o..o + SLOT].copy_from_slice(&slot(&b));
        }
        // Six fine samples in the last minute.
        for i in 0..6u32 {
            let o = layout.fine_offset(i);
            img[o..o + SLOT].copy_from_slice(&slot(&s(now + u64::from(i) * 10_000, Some(50.0), 0)));
        }
        let h = History::read(&img).expect("image");
        assert_eq!(h.minutes.len(), MINUTE_SLOTS as usize);
        let all = h.window(0, u64::MAX, now - day);
        // Minute buckets stop where the fine ring starts; nothing older than a day.
        assert!(all.iter().all(|x| x.t_ms >= now - day));
        assert_eq!(all.iter().filter(|x| x.cpu_pct == Some(50.0)).count(), 6);
        assert!(all.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
        let last_minute = all
            .iter()
            .rfind(|x| x.cpu_pct == Some(1.0))
            .expect("a bucket");
        assert!(last_minute.minute() < now / 60_000);
        // A window beyond what exists answers what exists.
        assert_eq!(h.window(now + 15_000, now + day, 0).len(), 4);
        assert!(h.window(now + day, now + 2 * day, 0).is_empty());
    }

    #[test]
    fn a_new_layout_keeps_the_newest_fine_samples_and_every_minute() {
        let big = Layout { fine: 10 };
        let mut img = big.empty();
        let t0 = 1_700_000_000_000u64;
        for i in 0..10u32 {
            let o = big.fine_offset(i);
            img[o..o + SLOT].copy_from_slice(&slot(&s(t0 + u64::from(i) * 1000, None, 1)));
        }
        let b = s(t0, Some(3.0), 1);
        let o = big.minute_offset(b.minute());
        img[o..o + SLOT].copy_from_slice(&slot(&b));
        let h = History::read(&img).expect("image");
        let small = Layout { fine: 4 };
        let h2 = History::read(&h.image(small)).expect("image");
        assert_eq!(h2.fine.len(), 4);
        assert_eq!(h2.fine[0].t_ms, t0 + 6000);
        assert_eq!(h2.minutes, h.minutes);
        assert_eq!(h2.next_fine, 0);
        assert_eq!(Layout::of(b"not an image"), None);
    }
}
