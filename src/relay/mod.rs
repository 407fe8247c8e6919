//! Relays: what runs between a routed client and its backend until either side ends.

pub mod buffer;
pub mod http;
pub mod tcp;
pub mod websocket;

pub use tcp::{RelayEnd, Side};
