//! Relays: what runs between a routed client and its backend until either side ends.

pub mod buffer;
pub mod http;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod tcp;
pub mod websocket;

pub use tcp::{RelayEnd, Side};
