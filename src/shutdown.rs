//! The drain signal and task tracking every connection shares.
//!
//! Two tokens: `drain` says "stop accepting and wind down" (plain TCP finishes its bytes,
//! HTTP finishes the request in flight, WebSockets get a Close frame); `stop` says "end
//! everything now" and fires when `drain_timeout` runs out or on a second signal. `stop`
//! is a child of nothing: cancelling it does not start a drain, but `Handle::stop` does both.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Each token comes with a flag set before it fires (see [`Stop`]): every worker asks both on
/// every wake-up, and a token's own `is_cancelled` takes its lock, which made it a shared hot
/// spot; a flag is a load.
#[derive(Clone, Debug)]
pub struct Shutdown {
    drain: Stop,
    stop: Stop,
    /// Children of `stop` that connections' tokens hang from, one per thread (see
    /// [`Shutdown::conn_token`]).
    conn_parents: Arc<[CancellationToken]>,
    tracker: TaskTracker,
}

/// Parents for connections' tokens: more than the workers of any machine this runs on
/// share one rarely.
const CONN_PARENTS: usize = 16;

impl Default for Shutdown {
    fn default() -> Self {
        let stop = Stop::new();
        Shutdown {
            drain: Stop::new(),
            conn_parents: (0..CONN_PARENTS)
                .map(|_| stop.token.child_token())
                .collect(),
            stop,
            tracker: TaskTracker::new(),
        }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token for one connection, fired by [`Shutdown::stop`] (or by the connection's own
    /// cancel). Making and dropping a child takes its parent's lock: a parent per thread
    /// keeps the workers, each making thousands per second, off each other's lock.
    pub fn conn_token(&self) -> CancellationToken {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static PARENT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CONN_PARENTS;
        }
        self.conn_parents[PARENT.with(|p| *p)].child_token()
    }

    pub fn drain(&self) {
        self.drain.cancel();
    }

    pub fn stop(&self) {
        // Both flags before either token: a task the drain wakes already sees the stop.
        self.drain.fired.store(true, Ordering::Release);
        self.stop.fired.store(true, Ordering::Release);
        self.drain.token.cancel();
        self.stop.token.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Fires with [`Shutdown::drain`]; do not cancel it directly (the flag would not follow).
    pub fn drain_token(&self) -> &CancellationToken {
        self.drain.token()
    }

    /// Fires with [`Shutdown::stop`]; do not cancel it directly (the flag would not follow).
    pub fn stop_token(&self) -> &CancellationToken {
        self.stop.token()
    }

    pub async fn drained(&self) {
        self.drain.token.cancelled().await
    }

    pub async fn stopped(&self) {
        self.stop.token.cancelled().await
    }

    /// Spawns a task that `wait` waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a tracked task on `runtime`, or on the current one.
    pub fn spawn_on<F>(&self, task: F, runtime: Option<&tokio::runtime::Handle>)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match runtime {
            Some(runtime) => drop(self.tracker.spawn_on(task, runtime)),
            None => drop(self.tracker.spawn(task)),
        }
    }

    /// Tracked tasks still running.
    pub fn tasks(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every tracked task has ended. New tasks may still be spawned meanwhile
    /// (the tracker is closed here only so that `wait` can return).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await
    }
}

/// A token with a flag set before it fires, for a loop that looks at it on every wake-up:
/// the flag is a load where the token's own `is_cancelled` takes its lock. Shutdown's drain
/// and stop are two; a listener's accept loops have one.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    fired: Arc<AtomicBool>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Fires with [`Stop::cancel`]; do not cancel it directly (the flag would not follow).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Whether this wake-up of a loop registers its waker with the tokens that can end it.
/// Polling a token's future takes its lock (twice: the state, then the waiter list), and a
/// loop that runs on every wake-up does so on every 64th, reading plain flags, set before
/// the tokens fire, in between. That is enough while the task's waker stays the same,
/// which it does within one task.
pub fn registering(wakeups: &mut u32) -> bool {
    let register = wakeups.is_multiple_of(64);
    *wakeups = wakeups.wrapping_add(1);
    register
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_fire_on_stop_from_any_thread_and_alone_on_their_own() {
        let shutdown = Shutdown::new();
        let here = shutdown.conn_token();
        let others: Vec<CancellationToken> = (0..CONN_PARENTS + 3)
            .map(|_| {
                let shutdown = shutdown.clone();
                std::thread::spawn(move || shutdown.conn_token())
                    .join()
                    .unwrap()
            })
            .collect();
        // A connection's own cancel reaches no other connection and no parent.
        others[0].cancel();
        assert!(!here.is_cancelled());
        assert!(others[1..].iter().all(|t| !t.is_cancelled()));
        assert!(!shutdown.is_stopped());

        shutdown.drain();
        assert!(!here.is_cancelled(), "a drain is not a stop");
        shutdown.stop();
        assert!(shutdown.is_stopped());
        assert!(here.is_cancelled());
        assert!(others.iter().all(CancellationToken::is_cancelled));
        // Made after the stop: fired already.
        assert!(shutdown.conn_token().is_cancelled());
    }

    #[tokio::test]
    async fn a_stop_sets_its_flag_before_its_token_fires() {
        let stop = Stop::new();
        assert!(!stop.is_cancelled());
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move {
                stop.token().cancelled().await;
                stop.is_cancelled()
            })
        };
        tokio::task::yield_now().await;
        stop.cancel();
        assert!(
            waiter.await.unwrap(),
            "the flag was set when the token fired"
        );
        assert!(stop.token().is_cancelled());
    }

    #[test]
    fn registering_wake_ups_are_the_first_and_every_64th() {
        let mut wakeups = 0;
        let registered: Vec<u32> = (0..200).filter(|_| registering(&mut wakeups)).collect();
        assert_eq!(registered, [0, 64, 128, 192]);
        assert_eq!(wakeups, 200);
    }
}
