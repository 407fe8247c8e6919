//! The drain signal and task tracking every connection shares.
//!
//! Two tokens: `drain` says "stop accepting and wind down" (plain TCP finishes its bytes,
//! HTTP finishes the request in flight, WebSockets get a Close frame); `stop` says "end
//! everything now" and fires when `drain_timeout` runs out or on a second signal. `stop`
//! is a child of nothing: cancelling it does not start a drain, but `Handle::stop` does both.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn drain(&self) {
        self.drain.cancel();
    }

    pub fn stop(&self) {
        self.drain.cancel();
        self.stop.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

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
