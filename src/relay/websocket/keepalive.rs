//! Keepalive toward the client: the gateway's own Ping every `ping_interval`, the answering
//! Pong swallowed and its round trip recorded, a client silent past `pong_timeout` closed.

use std::time::Duration;

use prometheus::Histogram;
use tokio::time::Instant;

pub(super) struct Keepalive {
    /// A pong just came: the timer, waiting for the pong deadline, should wait for the next
    /// ping instead.
    answered: bool,
    pub(super) interval: Duration,
    pong_timeout: Duration,
    next_ping: Instant,
    /// The payload of the ping awaiting its pong, and when it went out (None while it waits
    /// behind a frame in flight: its clock starts when it leaves).
    outstanding: Option<([u8; 8], Option<Instant>)>,
    rtt: Histogram,
}

/// What a timer tick asks of the connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tick {
    /// The client left the last ping unanswered past `pong_timeout`: close it. Keepalive is
    /// over.
    Silent,
    /// Queue this ping toward the client (if any), and tick again at `next`.
    Wait {
        ping: Option<[u8; 8]>,
        next: Instant,
    },
}

impl Keepalive {
    pub(super) fn new(
        interval: Duration,
        pong_timeout: Duration,
        rtt: Histogram,
        now: Instant,
    ) -> Keepalive {
        Keepalive {
            answered: false,
            interval,
            next_ping: now + interval,
            pong_timeout,
            outstanding: None,
            rtt,
        }
    }

    /// At `now`, with `payload` for a ping should one be due.
    pub(super) fn tick(&mut self, now: Instant, payload: [u8; 8]) -> Tick {
        if let Some((_, Some(sent))) = self.outstanding
            && now >= sent + self.pong_timeout
        {
            return Tick::Silent;
        }
        let mut ping = None;
        if self.outstanding.is_none() && now >= self.next_ping {
            self.outstanding = Some((payload, None));
            self.next_ping = now + self.interval;
            ping = Some(payload);
        }
        let next = match self.outstanding {
            Some((_, Some(sent))) => sent + self.pong_timeout,
            // Queued behind a frame still in flight: look again soon.
            Some((_, None)) => now + self.pong_timeout.min(Duration::from_secs(1)),
            None => self.next_ping,
        };
        // At least 1 ms ahead: a timer reset to now would be due at once and polled in a loop.
        Tick::Wait {
            ping,
            next: next.max(now + Duration::from_millis(1)),
        }
    }

    /// The queued ping was written at `now`: the pong deadline counts from here.
    pub(super) fn ping_sent(&mut self, now: Instant) {
        if let Some((payload, None)) = self.outstanding {
            self.outstanding = Some((payload, Some(now)));
        }
    }

    /// A Pong with `payload` ended at `now`. Whether it answers the gateway's ping, and is
    /// then the gateway's to swallow: a Pong the client sends on its own, or in answer to
    /// the backend's Ping (RFC 6455 §5.5.3 allows unsolicited Pongs), goes through.
    pub(super) fn pong(&mut self, payload: &[u8], now: Instant) -> bool {
        let Some((sent_payload, Some(sent))) = self.outstanding else {
            return false;
        };
        if payload != sent_payload {
            return false;
        }
        self.rtt.observe(now.duration_since(sent).as_secs_f64());
        self.outstanding = None;
        self.answered = true;
        true
    }

    /// After a pong: when the next ping is due, for the timer that was waiting for the pong
    /// deadline. Once per pong.
    pub(super) fn take_answered(&mut self) -> Option<Instant> {
        if !self.answered {
            return None;
        }
        self.answered = false;
        Some(self.next_ping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    const SECOND: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn keepalive(interval: Duration, pong_timeout: Duration, now: Instant) -> Keepalive {
        let rtt = Histogram::with_opts(HistogramOpts::new("rtt", "rtt")).unwrap();
        Keepalive::new(interval, pong_timeout, rtt, now)
    }

    #[test]
    fn no_ping_before_the_interval_then_one_ping() {
        let t0 = Instant::now();
        let mut k = keepalive(30 * SECOND, 10 * SECOND, t0);
        assert_eq!(
            k.tick(t0 + 29 * SECOND, [1; 8]),
            Tick::Wait {
                ping: None,
                next: t0 + 30 * SECOND
            }
        );
        // Due: a ping with the payload given, looked at again within a second while it
        // waits behind a frame in flight.
        let t1 = t0 + 30 * SECOND;
        assert_eq!(
            k.tick(t1, [2; 8]),
            Tick::Wait {
                ping: Some([2; 8]),
                next: t1 + SECOND
            }
        );
        // Still unanswered: no second ping.
        assert_eq!(
            k.tick(t1 + SECOND, [3; 8]),
            Tick::Wait {
                ping: None,
                next: t1 + 2 * SECOND
            }
        );
    }

    #[test]
    fn the_pong_deadline_counts_from_when_the_ping_went_out() {
        let t0 = Instant::now();
        let mut k = keepalive(30 * SECOND, 10 * SECOND, t0);
        let t1 = t0 + 30 * SECOND;
        assert!(matches!(
            k.tick(t1, [2; 8]),
            Tick::Wait { ping: Some(_), .. }
        ));
        // Written 5 s later, behind a long frame.
        let sent = t1 + 5 * SECOND;
        k.ping_sent(sent);
        // A second report of the same ping does not move its clock.
        k.ping_sent(sent + SECOND);
        assert_eq!(
            k.tick(sent + SECOND, [3; 8]),
            Tick::Wait {
                ping: None,
                next: sent + 10 * SECOND
            }
        );
        assert_eq!(
            k.tick(sent + 10 * SECOND - MS, [3; 8]),
            Tick::Wait {
                ping: None,
                next: sent + 10 * SECOND
            }
        );
        assert_eq!(k.tick(sent + 10 * SECOND, [3; 8]), Tick::Silent);
    }

    #[test]
    fn only_the_pong_to_the_gateways_ping_is_taken_and_timed() {
        let t0 = Instant::now();
        let mut k = keepalive(30 * SECOND, 10 * SECOND, t0);
        let t1 = t0 + 30 * SECOND;
        k.tick(t1, [7; 8]);
        // Not sent yet: a pong cannot answer it.
        assert!(!k.pong(&[7; 8], t1));
        k.ping_sent(t1);
        // An unsolicited Pong, or the answer to the backend's Ping: goes through.
        assert!(!k.pong(b"backend!", t1 + MS));
        assert!(!k.pong(&[], t1 + MS));
        assert_eq!(k.take_answered(), None);

        assert!(k.pong(&[7; 8], t1 + 250 * MS));
        assert_eq!(k.rtt.get_sample_count(), 1);
        assert!((k.rtt.get_sample_sum() - 0.25).abs() < 1e-9);
        // The timer waiting for the pong deadline now waits for the next ping, once.
        assert_eq!(k.take_answered(), Some(t1 + 30 * SECOND));
        assert_eq!(k.take_answered(), None);
        // A repeated Pong is the client's own.
        assert!(!k.pong(&[7; 8], t1 + 300 * MS));
        assert_eq!(k.rtt.get_sample_count(), 1);
        // No deadline left: the next tick is the next ping.
        assert_eq!(
            k.tick(t1 + SECOND, [8; 8]),
            Tick::Wait {
                ping: None,
                next: t1 + 30 * SECOND
            }
        );
    }

    #[test]
    fn the_next_tick_is_never_now() {
        let t0 = Instant::now();
        let mut k = keepalive(SECOND, Duration::ZERO, t0);
        assert_eq!(
            k.tick(t0 + SECOND, [1; 8]),
            Tick::Wait {
                ping: Some([1; 8]),
                next: t0 + SECOND + MS
            }
        );
    }
}
