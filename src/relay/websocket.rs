//! The WebSocket relay, entered after a 101 joined the client's and the backend's upgraded
//! streams. Bytes pass through untouched; this is the seam where the frame tracker follows
//! message boundaries and close codes.

pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::Shared;
use crate::live::ConnCtx;
use crate::relay::tcp::{self, Flow, RelayEnd};
use crate::route::Route;

/// What the handshake agreed and which route the connection runs on.
pub struct Session {
    pub route: Arc<Route>,
    /// `Sec-WebSocket-Extensions` of the 101 response, as sent.
    pub extensions: Option<String>,
    /// From the snapshot the connection started with.
    pub idle_timeout: Duration,
}

pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    session: &Session,
    ctx: &ConnCtx,
    shared: &Shared,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let counters = shared.metrics.route_counters(
        &ctx.listener,
        &session.route.name,
        &session.route.backend.name,
    );
    tcp::relay(
        client,
        backend,
        Flow {
            total: &ctx.bytes_client_to_backend,
            counter: &counters.client_to_backend,
        },
        Flow {
            total: &ctx.bytes_backend_to_client,
            counter: &counters.backend_to_client,
        },
        session.idle_timeout,
        &ctx.cancel,
    )
    .await
}
