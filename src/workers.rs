//! Where connections run: one event loop per worker thread.
//!
//! Each worker is an OS thread with its own single-threaded tokio runtime, and each listener
//! has one accepting socket per worker, bound to the same address with `SO_REUSEPORT`, so the
//! kernel spreads new connections over the workers and a connection then lives its whole life
//! on the thread that accepted it: no work stealing, no cross-thread wake-ups, and the
//! per-thread relay buffers and pipes stay on one core. This is the shape HAProxy and nginx
//! have (one accept queue per thread or process).
//!
//! [`Workers::current`] is the degenerate case: no threads of its own, everything on the
//! runtime that called [`crate::start`] (what the in-process tests use).

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The runtimes connections are accepted and served on.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    /// Empty: run on the caller's runtime.
    runtimes: Vec<Handle>,
    exit: CancellationToken,
}

impl Workers {
    /// No threads of its own: accept and serve on the runtime that starts the gateway.
    pub fn current() -> Self {
        Self {
            inner: Arc::new(Inner {
                runtimes: Vec::new(),
                exit: CancellationToken::new(),
            }),
        }
    }

    /// Starts `n` worker threads (at least one), each running its own event loop until
    /// [`Workers::exit`].
    pub fn spawn(n: usize) -> std::io::Result<Self> {
        let exit = CancellationToken::new();
        let mut runtimes = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let exit = exit.clone();
            // Detached: the thread ends when its runtime sees `exit`.
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || runtime.block_on(exit.cancelled()))?;
        }
        Ok(Self {
            inner: Arc::new(Inner { runtimes, exit }),
        })
    }

    /// Accepting sockets each listener needs: one per worker.
    pub fn sockets_per_listener(&self) -> usize {
        self.inner.runtimes.len().max(1)
    }

    /// The runtime of worker `i` (`None`: the caller's).
    pub fn runtime(&self, i: usize) -> Option<&Handle> {
        self.inner.runtimes.get(i)
    }

    /// Ends the worker threads; tasks still on them are dropped. Called once every tracked
    /// task has finished.
    pub fn exit(&self) {
        self.inner.exit.cancel();
    }
}
