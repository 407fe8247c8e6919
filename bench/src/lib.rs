//! What the bench binaries share: child processes that cannot outlive a run, the CPU time and
//! memory of a process tree as /proc reports them, the statistics of repeated runs, and the
//! WebSocket round trip both load generators time.

pub mod proc;
pub mod stats;
pub mod ws;
