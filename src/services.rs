//! What the data plane shares. Created and published into by the gateway; read by the
//! listeners, the pipeline and the HTTP stage.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::live::LiveTable;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;

/// What every connection shares: the config in force, the metrics, the live table and the
/// drain signal. The gateway publishes new snapshots into it; nothing here can reload,
/// bind or stop a listener.
pub struct Services {
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub live: LiveTable,
    pub shutdown: Shutdown,
}

impl Services {
    pub fn new(snapshot: Arc<Snapshot>, metrics: Metrics) -> Self {
        Services {
            snapshot: ArcSwap::new(snapshot),
            metrics,
            live: LiveTable::default(),
            shutdown: Shutdown::new(),
        }
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Puts a validated snapshot in force for new connections and requests, in one store.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
    }
}
