//! The per-second limits on what a client sends (`max_messages_per_second`,
//! `max_frames_per_second`).

use std::time::Duration;

use tokio::time::Instant;

/// A per-second limit, counted in fixed one-second windows: a window's count is one integer,
/// where a sliding window would keep a timestamp per message. A client may then send up to
/// twice the limit across a window's edge; the limit is there to stop floods, not to meter.
pub(super) struct Rate {
    pub(super) max: u32,
    window: Instant,
    count: u32,
}

impl Rate {
    pub(super) fn new(max: u32) -> Rate {
        Rate::starting(max, Instant::now())
    }

    fn starting(max: u32, window: Instant) -> Rate {
        Rate {
            max,
            window,
            count: 0,
        }
    }

    /// Counts one more at `now`; whether that went over the limit.
    pub(super) fn over(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_limit_itself_is_allowed_one_more_is_over() {
        let t0 = Instant::now();
        let mut rate = Rate::starting(3, t0);
        assert!(!rate.over(t0));
        assert!(!rate.over(t0 + 10 * MS));
        assert!(!rate.over(t0 + 999 * MS));
        assert!(rate.over(t0 + 999 * MS));
        // Stays over for the rest of the window.
        assert!(rate.over(t0 + 999 * MS));
    }

    #[test]
    fn a_new_window_starts_a_second_after_the_last_one_began() {
        let t0 = Instant::now();
        let mut rate = Rate::starting(1, t0);
        assert!(!rate.over(t0));
        assert!(rate.over(t0 + 500 * MS));
        // The window began at t0: at t0 + 1 s the count starts again, from the moment it did.
        assert!(!rate.over(t0 + 1000 * MS));
        assert!(rate.over(t0 + 1999 * MS));
        assert!(!rate.over(t0 + 2000 * MS));
    }

    #[test]
    fn a_limit_of_zero_refuses_the_first() {
        let t0 = Instant::now();
        let mut rate = Rate::starting(0, t0);
        assert!(rate.over(t0));
    }

    #[test]
    fn the_count_saturates_instead_of_wrapping() {
        let t0 = Instant::now();
        let mut rate = Rate::starting(u32::MAX, t0);
        rate.count = u32::MAX - 1;
        assert!(!rate.over(t0));
        assert!(!rate.over(t0), "u32::MAX is the limit itself");
        assert_eq!(rate.count, u32::MAX);
    }
}
