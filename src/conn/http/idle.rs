//! Bodies in transit under `idle_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::Side;

/// A body in transit that fails when its sender is silent for `limit` while the gateway
/// waits for it (`idle_timeout`): a stalled upload or download ends the transfer, and with
/// it the connection, instead of holding both sockets. The timer is created the first time
/// the body has to be waited for, so a body that is there at once costs nothing.
pub(super) struct Idle<B> {
    inner: B,
    limit: Duration,
    from: Side,
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait (reset at the first `Pending` after a frame, so
    /// the time hyper spends writing to a slow peer is not counted against the sender).
    waiting: bool,
}

impl<B> Idle<B> {
    pub(super) fn new(inner: B, limit: Duration, from: Side) -> Self {
        Idle {
            inner,
            limit,
            from,
            timer: None,
            waiting: false,
        }
    }
}

/// Why a body in transit failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("no body bytes from the {} for {limit:?} (idle_timeout)", from.as_str())]
    Stalled { from: Side, limit: Duration },
    #[error("body transfer failed")]
    Transfer(#[source] hyper::Error),
}

impl<B> HttpBody for Idle<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Transfer)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.limit;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let expired = this
                    .timer
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if expired {
                    if this.from == Side::Backend {
                        // An upload that stalls is answered (408) and logged with the
                        // request; a download that stalls ends the connection mid-response.
                        tracing::info!(limit = ?this.limit, "backend body stalled (idle_timeout); ending the connection");
                    }
                    return Poll::Ready(Some(Err(BodyError::Stalled {
                        from: this.from,
                        limit: this.limit,
                    })));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The side whose body stalled, if `error` (from hyper) was caused by an [`Idle`] timer.
pub(super) fn stalled(error: &hyper::Error) -> Option<Side> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(BodyError::Stalled { from, .. }) = cause.downcast_ref::<BodyError>() {
            return Some(*from);
        }
        source = cause.source();
    }
    None
}
