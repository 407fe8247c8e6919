//! Shedding (`POST /connections/shed`): after a scale-out, close a fraction of the live
//! connections, each at a random moment of a window, so that their clients reconnect
//! through the load balancer and some land on the new replicas.
//!
//! The gateway picks the connections and hands their ids and deadlines to one task per
//! shed, which walks the sorted deadlines and asks each connection to close
//! (`CloseReason::Shed`: WebSockets get Close 1012 at their next frame boundary, TCP ends,
//! HTTP closes after the request in flight). The task holds ids, never a connection, so a
//! connection that ends on its own meanwhile is simply not found; a drain or a stop ends
//! the task, since they close everything themselves.

use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::live::{CloseReason, ConnCtx};
use crate::services::Services;

/// How many of `n` connections a shed of `fraction` (in (0, 1]) picks: `ceil(fraction × n)`,
/// so that any shed of a non-empty set closes at least one (0.25 of 2 connections is 1),
/// and never more than `n`. A hair under the product is allowed for, so that 0.1 × 30 is
/// 3, not the 4 its binary rounding would give.
pub fn count(fraction: f64, n: usize) -> usize {
    if n == 0 || fraction.is_nan() || fraction <= 0.0 {
        return 0;
    }
    let picked = (fraction * n as f64 - 1e-9).ceil();
    (picked as usize).clamp(1, n)
}

/// A small generator for the pick and the deadlines: neither needs to be unpredictable,
/// only spread, so one seed from the system per shed is enough.
struct SplitMix(u64);

impl SplitMix {
    fn seeded() -> Self {
        let mut seed = [0u8; 8];
        // Falls back to the clock if the system generator fails, which it does not on Linux.
        if SystemRandom::new().fill(&mut seed).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            seed = (now.as_nanos() as u64).to_le_bytes();
        }
        SplitMix(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for `n` far below 2^64.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Picks `ceil(fraction × n)` of `candidates` at random, marking each as picked so that a
/// shed running at the same time passes it over, and gives each a moment within `spread`.
/// Returns `(offset, connection id)` sorted by offset.
pub fn plan(
    mut candidates: Vec<Arc<ConnCtx>>,
    fraction: f64,
    spread: Duration,
) -> Vec<(Duration, u64)> {
    // Connections already closing, or picked by a shed still running, are not candidates.
    candidates.retain(|c| !c.close_requested() && !c.shed_picked());
    let wanted = count(fraction, candidates.len());
    let mut rng = SplitMix::seeded();
    let spread_us = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX);
    let mut schedule = Vec::with_capacity(wanted);
    // A partial Fisher–Yates shuffle: the first `i` places hold the connections drawn so far.
    let mut i = 0;
    while schedule.len() < wanted && i < candidates.len() {
        let j = i + rng.below((candidates.len() - i) as u64) as usize;
        candidates.swap(i, j);
        let conn = &candidates[i];
        i += 1;
        // Another shed may have picked it since the filter above.
        if conn.pick_for_shed() {
            let at = Duration::from_micros(rng.below(spread_us.saturating_add(1)));
            schedule.push((at, conn.id));
        }
    }
    schedule.sort_unstable();
    schedule
}

/// Closes the planned connections at their moments, from now; ends early on a drain or a
/// stop. Each connection closed is counted in `sockgate_shed_total`.
pub fn spawn(services: Arc<Services>, schedule: Vec<(Duration, u64)>) {
    if schedule.is_empty() {
        return;
    }
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        for (at, id) in schedule {
            tokio::select! {
                biased;
                _ = services.shutdown.drained() => return,
                _ = tokio::time::sleep_until(start + at) => {}
            }
            // Gone already: it ended on its own.
            if let Some(conn) = services.live.get(id) {
                close(&conn, &services);
            }
        }
    });
}

fn close(conn: &ConnCtx, services: &Services) {
    // Closed meanwhile by an operator or a reload: that close stands, and is not a shed's.
    if conn.close_requested() {
        return;
    }
    let protocol = conn.info().protocol.map_or("unknown", |p| p.as_str());
    conn.request_close(CloseReason::Shed);
    services
        .metrics
        .shed_total
        .with_label_values(&[&conn.listener, protocol])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_rounds_up_and_stays_within_the_set() {
        assert_eq!(count(0.5, 12), 6);
        assert_eq!(count(0.25, 40), 10);
        assert_eq!(count(0.25, 1), 1);
        assert_eq!(count(0.25, 2), 1);
        assert_eq!(count(0.25, 5), 2);
        assert_eq!(count(0.1, 30), 3);
        assert_eq!(count(0.3, 10), 3);
        assert_eq!(count(0.7, 10), 7);
        assert_eq!(count(1.0, 7), 7);
        assert_eq!(count(0.000_001, 3), 1);
        assert_eq!(count(0.5, 0), 0);
        assert_eq!(count(f64::NAN, 5), 0);
        assert_eq!(count(0.0, 5), 0);
    }

    fn conns(n: u64) -> Vec<Arc<ConnCtx>> {
        (1..=n)
            .map(|id| {
                Arc::new(ConnCtx::new(
                    id,
                    Arc::new(crate::metrics::ListenerHandles::new("edge".into())),
                    crate::live::Peer::Ip("127.0.0.1:1".parse().expect("addr")),
                    tokio_util::sync::CancellationToken::new(),
                ))
            })
            .collect()
    }

    #[test]
    fn a_plan_picks_at_random_within_the_window_and_never_twice() {
        let all = conns(100);
        let spread = Duration::from_secs(10);
        let first = plan(all.clone(), 0.3, spread);
        assert_eq!(first.len(), 30);
        assert!(first.windows(2).all(|w| w[0].0 <= w[1].0), "sorted");
        assert!(first.iter().all(|(at, _)| *at <= spread));
        let mut ids: Vec<u64> = first.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 30, "no connection twice");
        assert_ne!(
            ids,
            (1..=30).collect::<Vec<_>>(),
            "not the first 30 in order"
        );
        // Spread: not all in one tenth of the window.
        let (lo, hi) = (first[0].0, first[29].0);
        assert!(hi - lo > spread / 10, "{lo:?}..{hi:?}");

        // A second shed at the same time draws from the 70 left: 0.5 of them.
        let second = plan(all.clone(), 0.5, spread);
        assert_eq!(second.len(), 35);
        assert!(second.iter().all(|(_, id)| !ids.contains(id)));

        // One already closing is not a candidate.
        let fresh = conns(4);
        fresh[0].request_close(CloseReason::Operator);
        let third = plan(fresh, 1.0, Duration::ZERO);
        assert_eq!(third.len(), 3);
        assert!(third.iter().all(|(at, id)| at.is_zero() && *id != 1));
    }
}
