//! What the bench binaries share: child processes that cannot outlive a run, the CPU time and
//! memory of a process tree as /proc reports them, and the statistics of repeated runs.

pub mod proc;
pub mod stats;
