//! Picking a server: weighted round robin ([`Schedule`]), weighted least connections, and
//! weighted rendezvous hashing ([`rendezvous_score`]) on a key of the connection or request.
//! None of them holds memory that grows with the weights.

use std::net::IpAddr;

use http::{HeaderMap, Uri, header};

use crate::config::HashOn;

/// Weighted round robin in memory that grows with the number of servers, not with their
/// weights.
///
/// The turns are dealt in rounds: round `r` gives one turn to every server whose weight is
/// more than `r`, so weights 3 and 1 give `a b a a`, not `a a a b`. With the servers sorted
/// by weight (heaviest first, ties in config order), the servers in a round are always a
/// prefix of that order, and consecutive rounds with the same prefix form a band. A turn
/// number then finds its band by binary search and its server by division: no table with a
/// slot per unit of weight.
#[derive(Debug)]
pub(super) struct Schedule {
    /// Server indexes, heaviest first.
    order: Vec<usize>,
    /// One per distinct weight, lightest band last.
    bands: Vec<Band>,
    /// Turns in a whole cycle: the sum of the weights.
    cycle: u64,
}

#[derive(Debug, Clone, Copy)]
struct Band {
    /// The first turn of the band within the cycle.
    start: u64,
    /// Servers taking part: the first `width` of `order`.
    width: usize,
}

impl Schedule {
    pub(super) fn new(weights: &[u32]) -> Self {
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
        let mut bands = Vec::new();
        let mut start = 0u64;
        let mut rounds_done = 0u32;
        // Walk from the lightest weight up: the rounds below the lightest weight include
        // everyone, the next rounds everyone but the lightest, and so on.
        let mut width = order.len();
        while width > 0 {
            let weight = weights[order[width - 1]];
            let rounds = weight - rounds_done;
            if rounds > 0 {
                bands.push(Band { start, width });
                start += u64::from(rounds) * width as u64;
                rounds_done = weight;
            }
            width -= 1;
        }
        Schedule {
            order,
            bands,
            cycle: start,
        }
    }

    /// The server index for turn `turn`.
    pub(super) fn pick(&self, turn: usize) -> usize {
        if self.cycle == 0 {
            return 0;
        }
        let at = turn as u64 % self.cycle;
        let band = match self.bands.partition_point(|b| b.start <= at) {
            0 => return 0,
            n => self.bands[n - 1],
        };
        self.order[((at - band.start) % band.width as u64) as usize]
    }
}

/// Whether a server with `a_active` connections and weight `a_weight` is less loaded than
/// one with `b_active` and `b_weight`: `a_active / a_weight < b_active / b_weight`, compared
/// by cross-multiplying so no division rounds two loads into a tie.
pub(super) fn less_loaded(a_active: usize, a_weight: u32, b_active: usize, b_weight: u32) -> bool {
    (a_active as u128) * u128::from(b_weight) < (b_active as u128) * u128::from(a_weight)
}

/// Weighted rendezvous (highest random weight) score of one server for one key: the server
/// with the highest score takes the key. `-weight / ln(u)`, with `u` uniform in (0, 1) from
/// the key and the server, gives each server a share of keys proportional to its weight, and
/// adding a server moves only the keys it now wins (about `weight / total` of them).
pub(super) fn rendezvous_score(key: u64, server_seed: u64, weight: u32) -> f64 {
    let h = mix(key ^ server_seed);
    // 53 random bits, offset by half a step: strictly inside (0, 1), so ln is finite and < 0.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// A stable 64-bit hash of bytes (FNV-1a, then [`mix`] for avalanche): the same key maps to
/// the same server across restarts and binary upgrades, which `std`'s hasher does not
/// promise.
pub(super) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The splitmix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of what `hash_on` names, or `None` when the connection or request does not have
/// it (the pick then falls back to round robin). `request` is `None` for TCP connections.
pub(super) fn key_hash(
    hash_on: &HashOn,
    client: Option<IpAddr>,
    request: Option<(&HeaderMap, &Uri)>,
) -> Option<u64> {
    match hash_on {
        // A Unix socket's client has no address: no key, so balanced as without one.
        HashOn::ClientIp => Some(match client?.to_canonical() {
            IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
        HashOn::Header(name) => {
            let (headers, _) = request?;
            headers.get(name.as_str()).map(|v| hash_bytes(v.as_bytes()))
        }
        HashOn::Cookie(name) => {
            let (headers, _) = request?;
            headers
                .get_all(header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|b| *b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| hash_bytes(&pair[eq + 1..]))
                })
        }
        HashOn::Query(name) => {
            let (_, uri) = request?;
            uri.query()?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| hash_bytes(v.as_bytes()))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(weights: &[u32], n: usize) -> Vec<usize> {
        let schedule = Schedule::new(weights);
        (0..n).map(|turn| schedule.pick(turn)).collect()
    }

    #[test]
    fn equal_weights_take_turns_in_config_order() {
        assert_eq!(turns(&[1, 1, 1], 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn heavier_servers_get_their_share_interleaved() {
        // Rounds: {1, 0}, {1}, {1}.
        assert_eq!(turns(&[1, 3], 8), [1, 0, 1, 1, 1, 0, 1, 1]);
        // Rounds: {0, 2, 1}, {0, 2}, {0}.
        assert_eq!(turns(&[3, 1, 2], 6), [0, 2, 1, 0, 2, 0]);
    }

    #[test]
    fn shares_match_weights_over_a_cycle_without_a_slot_per_unit() {
        let weights = [1000, 1, 500, 1000, 7];
        let schedule = Schedule::new(&weights);
        assert_eq!(schedule.cycle, 2508);
        assert_eq!(schedule.bands.len(), 4);
        let mut counts = [0u32; 5];
        for turn in 0..2508 {
            counts[schedule.pick(turn)] += 1;
        }
        assert_eq!(counts, weights);
        // The counter wraps around usize::MAX without skipping a server.
        let _ = schedule.pick(usize::MAX);
    }

    #[test]
    fn no_servers_pick_the_first_index() {
        assert_eq!(Schedule::new(&[]).pick(5), 0);
    }

    #[test]
    fn least_loaded_compares_per_unit_of_weight() {
        assert!(less_loaded(0, 1, 1, 1));
        assert!(!less_loaded(1, 1, 1, 1));
        // 2 connections on weight 3 is less than 1 on weight 1.
        assert!(less_loaded(2, 3, 1, 1));
        assert!(!less_loaded(3, 3, 1, 1));
    }

    fn winner(key: u64, seeds: &[(u64, u32)]) -> usize {
        let mut best = (0, f64::MIN);
        for (i, &(seed, weight)) in seeds.iter().enumerate() {
            let score = rendezvous_score(key, seed, weight);
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    fn seeds(n: usize) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| (hash_bytes(format!("10.0.0.{i}:80").as_bytes()), 1))
            .collect()
    }

    #[test]
    fn adding_a_fifth_server_moves_about_a_fifth_of_the_keys_and_only_to_it() {
        let four = seeds(4);
        let five = seeds(5);
        let keys: Vec<u64> = (0..1000u32).map(|k| hash_bytes(&k.to_be_bytes())).collect();
        let mut moved = 0;
        let mut share = [0; 4];
        for &key in &keys {
            let before = winner(key, &four);
            let after = winner(key, &five);
            share[before] += 1;
            if before != after {
                assert_eq!(after, 4, "a key moved between old servers");
                moved += 1;
            }
        }
        eprintln!("adding a 5th server moved {moved} of 1000 keys; shares before: {share:?}");
        // 1000 / 5 = 200 expected; a binomial spread of ±3 sigma is about ±38.
        assert!((160..=240).contains(&moved), "moved {moved} of 1000 keys");
        for s in share {
            assert!((200..=300).contains(&s), "shares {share:?}");
        }
    }

    #[test]
    fn weights_set_the_share_of_keys() {
        let mut servers = seeds(2);
        servers[1].1 = 3;
        let mut counts = [0; 2];
        for k in 0..4000u32 {
            counts[winner(hash_bytes(&k.to_be_bytes()), &servers)] += 1;
        }
        // Expected 1000 and 3000.
        assert!((900..=1100).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn keys_come_from_the_client_address_header_cookie_or_query() {
        let ip: Option<IpAddr> = "192.0.2.7".parse().ok();
        let mapped: Option<IpAddr> = "::ffff:192.0.2.7".parse().ok();
        // A Unix socket's client: no address, no key.
        assert_eq!(key_hash(&HashOn::ClientIp, None, None), None);
        assert_eq!(
            key_hash(&HashOn::ClientIp, ip, None),
            key_hash(&HashOn::ClientIp, mapped, None)
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.append(header::COOKIE, "a=1; session=abc".parse().unwrap());
        let uri: Uri = "/chat?room=7&user=bob".parse().unwrap();
        let req = Some((&headers, &uri));
        let of = |s: &str| Some(hash_bytes(s.as_bytes()));
        assert_eq!(
            key_hash(&HashOn::Header("x-user".into()), ip, req),
            of("alice")
        );
        assert_eq!(
            key_hash(&HashOn::Cookie("session".into()), ip, req),
            of("abc")
        );
        assert_eq!(key_hash(&HashOn::Query("user".into()), ip, req), of("bob"));
        assert_eq!(key_hash(&HashOn::Query("us".into()), ip, req), None);
        assert_eq!(key_hash(&HashOn::Cookie("sess".into()), ip, req), None);
        assert_eq!(key_hash(&HashOn::Header("x-other".into()), ip, req), None);
        assert_eq!(key_hash(&HashOn::Header("x-user".into()), ip, None), None);
    }
}
