//! Per-client-address limits of one listener: open connections per address and new
//! connections per address per window. Checked in the accept loop, or after the PROXY
//! header when the listener reads one (the address that counts is the client's).
//!
//! Memory is bounded: the table holds at most [`MAX_TRACKED`] addresses, in [`SHARDS`]
//! shards of a fixed capacity allocated once. An address leaves when its last connection
//! closes and its rate window has passed (at that close, or swept when a shard is full).
//! When a shard is full of addresses still in use, a new address is refused (reason
//! `per_ip`): a flood from many addresses cannot push the table past its bound, and cannot
//! evict the addresses being limited to get them a fresh count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards: accept loops on several workers rarely wait for one another.
pub const SHARDS: usize = 16;

/// Addresses tracked at most, per listener with per-address limits.
pub const MAX_TRACKED: usize = 262_144;

/// A swept shard is not swept again sooner: a shard full of addresses in use would
/// otherwise be walked on every new address.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a plaintext HTTP client over a limit reads before the close.
pub const REFUSED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";

/// Why an address was refused; the `sockgate_rejected_total` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections_per_ip`, or the table is full.
    PerIp,
    /// `max_new_connections_per_ip`.
    Rate,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::PerIp => "per_ip",
            Refused::Rate => "rate",
        }
    }
}

/// The limits in force (they come from the snapshot, so a reload changes them for the next
/// connection while the counts carry on).
#[derive(Debug, Clone, Copy, Default)]
pub struct IpRules {
    pub max_open: Option<u32>,
    /// Connections per window.
    pub rate: Option<(u32, Duration)>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    open: u32,
    window_start: Instant,
    window_len: Duration,
    in_window: u32,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.open == 0 && now.saturating_duration_since(self.window_start) >= self.window_len
    }
}

#[derive(Debug)]
struct Shard {
    entries: HashMap<IpAddr, Entry>,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
pub struct IpTable {
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
}

/// One open connection counted against its address, given back on drop.
#[derive(Debug)]
pub struct IpPermit {
    table: Arc<IpTable>,
    ip: IpAddr,
}

impl IpTable {
    pub fn new() -> Arc<Self> {
        Self::with_capacity(MAX_TRACKED)
    }

    pub fn with_capacity(max: usize) -> Arc<Self> {
        let per_shard = max.div_ceil(SHARDS).max(1);
        Arc::new(IpTable {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    entries: HashMap::new(),
                    last_sweep: None,
                })
            }),
            per_shard,
        })
    }

    fn shard(&self, ip: &IpAddr) -> MutexGuard<'_, Shard> {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the shard of an address only has to be stable within the process.
        let mut h = std::hash::DefaultHasher::new();
        ip.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one new connection from `ip` under `rules`, or says which limit it is over.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        rules: IpRules,
        now: Instant,
    ) -> Result<IpPermit, Refused> {
        let mut shard = self.shard(&ip);
        let window_len = rules.rate.map_or(Duration::ZERO, |(_, per)| per);
        if !shard.entries.contains_key(&ip) && shard.entries.len() >= self.per_shard {
            let due = shard
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
            if due {
                shard.entries.retain(|_, e| !e.idle(now));
                shard.last_sweep = Some(now);
            }
            if shard.entries.len() >= self.per_shard {
                return Err(Refused::PerIp);
            }
        }
        let entry = shard.entries.entry(ip).or_insert(Entry {
            open: 0,
            window_start: now,
            window_len,
            in_window: 0,
        });
        if now.saturating_duration_since(entry.window_start) >= entry.window_len {
            entry.window_start = now;
            entry.in_window = 0;
        }
        entry.window_len = window_len;
        if let Some(max) = rules.max_open
            && entry.open >= max
        {
            return Err(Refused::PerIp);
        }
        if let Some((count, _)) = rules.rate {
            if entry.in_window >= count {
                return Err(Refused::Rate);
            }
            entry.in_window += 1;
        }
        entry.open += 1;
        drop(shard);
        Ok(IpPermit {
            table: self.clone(),
            ip,
        })
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut shard = self.table.shard(&self.ip);
        let now = Instant::now();
        if let Some(entry) = shard.entries.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.idle(now) {
                shard.entries.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn open_connections_per_address_are_counted_and_given_back() {
        let table = IpTable::new();
        let rules = IpRules {
            max_open: Some(2),
            rate: None,
        };
        let now = Instant::now();
        let a = table.admit(ip(1), rules, now).unwrap();
        let b = table.admit(ip(1), rules, now).unwrap();
        assert_eq!(table.admit(ip(1), rules, now).unwrap_err(), Refused::PerIp);
        let other = table.admit(ip(2), rules, now).unwrap();
        drop(a);
        let c = table.admit(ip(1), rules, now).unwrap();
        drop((b, c, other));
        assert_eq!(
            table.len(),
            0,
            "closed addresses without a rate leave at once"
        );
    }

    #[test]
    fn new_connections_per_window() {
        let table = IpTable::new();
        let rules = IpRules {
            max_open: None,
            rate: Some((3, Duration::from_secs(1))),
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(table.admit(ip(1), rules, t0).unwrap());
        }
        assert_eq!(table.admit(ip(1), rules, t0).unwrap_err(), Refused::Rate);
        assert!(table.admit(ip(2), rules, t0).is_ok(), "another address");
        let later = t0 + Duration::from_millis(1000);
        assert!(table.admit(ip(1), rules, later).is_ok(), "a new window");
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_within_the_bound() {
        let cap = 1024;
        let table = IpTable::with_capacity(cap);
        let rules = IpRules {
            max_open: Some(10),
            rate: Some((10, Duration::from_secs(60))),
        };
        let t0 = Instant::now();
        let mut held = Vec::new();
        let mut refused = 0;
        for n in 0..100_000u32 {
            match table.admit(ip(n), rules, t0) {
                // Keep some open, as a real flood would.
                Ok(permit) if n % 2 == 0 => held.push(permit),
                Ok(_) => {}
                Err(_) => refused += 1,
            }
            assert!(table.len() <= cap, "{} addresses tracked", table.len());
        }
        assert!(
            refused > 90_000,
            "the full table refuses new addresses: {refused}"
        );
        // Once the windows pass and the connections close, the table empties and admits.
        drop(held);
        let later = t0 + Duration::from_secs(61);
        let before = table.len();
        assert!(table.admit(ip(u32::MAX), rules, later).is_ok());
        assert!(table.len() < before, "the full shard was swept");
    }
}
