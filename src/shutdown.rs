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

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
    /// The tokens' states as plain flags, set before each token fires. A token's own
    /// `is_cancelled` takes its lock, and every worker asking the same two tokens on every
    /// wake-up made that lock a shared hot spot; a flag is a load.
    flags: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    draining: AtomicBool,
    stopped: AtomicBool,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn drain(&self) {
        self.flags.draining.store(true, Ordering::Release);
        self.drain.cancel();
    }

    pub fn stop(&self) {
        self.flags.draining.store(true, Ordering::Release);
        self.flags.stopped.store(true, Ordering::Release);
        self.drain.cancel();
        self.stop.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.flags.draining.load(Ordering::Acquire)
    }

    pub fn is_stopped(&self) -> bool {
        self.flags.stopped.load(Ordering::Acquire)
    }

    /// Fires with [`Shutdown::drain`]; do not cancel it directly (the flag would not follow).
    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Fires with [`Shutdown::stop`]; do not cancel it directly (the flag would not follow).
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    pub async fn drained(&self) {
        self.drain.cancelled().await
    }

    pub async fn stopped(&self) {
        self.stop.cancelled().await
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
