//! Relays: what runs between a routed client and its backend until either side ends.

#[cfg(target_os = "linux")]
pub mod splice;
pub mod tcp;
pub mod udp;
pub mod websocket;

pub use tcp::RelayEnd;

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pub use crate::shutdown::registering;

/// Whether a token has fired: its future polled on a [`registering`] wake-up, `flag` (true
/// once the token has fired) read on the others.
pub fn fired(
    register: bool,
    flag: impl FnOnce() -> bool,
    future: Pin<&mut WaitForCancellationFuture<'_>>,
    cx: &mut Context<'_>,
) -> bool {
    if register {
        future.poll(cx).is_ready()
    } else {
        flag()
    }
}

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

    /// Whether the token has fired, asked on each of a relay's wake-ups (see [`registering`]).
    pub fn poll(
        &self,
        future: Pin<&mut WaitForCancellationFuture<'_>>,
        wakeups: &mut u32,
        cx: &mut Context<'_>,
    ) -> bool {
        fired(registering(wakeups), self.fired, future, cx)
    }
}
