//! Relays: what runs between a routed client and its backend until either side ends.

pub mod buffer;
pub mod http;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod tcp;
pub mod websocket;

pub use tcp::{RelayEnd, Side};

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// What ends a relay from outside (the operator, a reload, a hard stop): the connection's
/// token, and a cheap way to tell that it has fired.
#[derive(Clone, Copy)]
pub struct Cancel<'a> {
    token: &'a CancellationToken,
    fired: &'a (dyn Fn() -> bool + Sync),
}

impl<'a> Cancel<'a> {
    /// `fired` must be true once `token` has fired: flags set before it fires.
    pub fn new(token: &'a CancellationToken, fired: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Cancel { token, fired }
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'a> {
        self.token.cancelled()
    }

    /// Whether the token has fired, asked on each of a relay's wake-ups. Polling the token's
    /// future takes its lock (twice: the state, then the waiter list), so it is polled on
    /// every 64th wake-up, which keeps the task's waker registered while that waker stays
    /// the same (it does within one task), and `fired` is read in between.
    pub fn poll(
        &self,
        future: Pin<&mut WaitForCancellationFuture<'_>>,
        wakeups: &mut u32,
        cx: &mut Context<'_>,
    ) -> bool {
        let register = wakeups.is_multiple_of(64);
        *wakeups = wakeups.wrapping_add(1);
        if register {
            future.poll(cx).is_ready()
        } else {
            (self.fired)()
        }
    }
}
