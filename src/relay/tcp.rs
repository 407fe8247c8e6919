//! Bidirectional byte relay with half-close, an idle timer and cancellation.
//!
//! Each direction is a [`Direction`]: read into its buffer, write it all out, repeat; on EOF from
//! the reader, flush and shut down the writer's send side (a TCP FIN, preceded by a TLS
//! `close_notify` on a TLS stream) and leave the other direction running, so protocols that
//! half-close (`shutdown(SHUT_WR)` then read the answer) work through the gateway.
//!
//! Bytes are counted when written, so `/connections` and `sockgate_bytes_total` move as the
//! bytes flow rather than at close.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::Side;
use crate::io::buffer::Slot;
use crate::relay::Cancel;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF; `first` sent its FIN first.
    Closed { first: Side },
    /// No byte moved either way for `idle_timeout`.
    Idle,
    /// Cancelled: drain ran out, a second signal, or an operator closed the connection.
    Cancelled,
    /// A read or write failed (reset, broken pipe, bad TLS record).
    Error { side: Side, error: io::Error },
}

/// Where one direction's byte counts go.
#[derive(Clone, Copy)]
pub struct Flow<'a> {
    pub total: &'a AtomicU64,
    pub counter: &'a IntCounter,
}

impl Flow<'_> {
    #[inline]
    pub(crate) fn add(&self, n: usize) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        self.counter.inc_by(n as u64);
    }
}

/// Bytes read and not yet written, in a buffer lent for as long as any are held.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub buf: Slot,
    pub pos: usize,
    pub cap: usize,
}

impl Held {
    /// Reads into the (lent) buffer, which then holds what came: `Ok(0)` is EOF.
    pub(crate) fn poll_read_in<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(self.buf.get());
        ready!(reader.poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.pos = 0;
        self.cap = n;
        Poll::Ready(Ok(n))
    }

    /// Writes out everything held; `side` is the writer's, for errors.
    pub(crate) fn poll_write_out<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        side: Side,
        flow: Flow<'_>,
        progressed: &mut bool,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        while self.pos < self.cap {
            let n = ready!(
                writer
                    .as_mut()
                    .poll_write(cx, &self.buf.get()[self.pos..self.cap])
            )
            .map_err(|e| (side, e))?;
            if n == 0 {
                return Poll::Ready(Err((
                    side,
                    io::Error::new(io::ErrorKind::WriteZero, "peer accepts no more bytes"),
                )));
            }
            self.pos += n;
            flow.add(n);
            *progressed = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// One direction: reads from `R`, writes to `W`. Holds a buffer only while bytes move.
struct Direction {
    held: Held,
    eof: bool,
    need_flush: bool,
    done: bool,
    reader: Side,
}

impl Direction {
    fn new(reader: Side) -> Self {
        Direction {
            held: Held::default(),
            eof: false,
            need_flush: false,
            done: false,
            reader,
        }
    }

    fn writer(&self) -> Side {
        match self.reader {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// Moves bytes until both ends would block (Pending) or this direction is finished.
    /// Sets `progressed` when any byte moved.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        flow: Flow<'_>,
        progressed: &mut bool,
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.held.pos == self.held.cap && !self.eof {
                match self.held.poll_read_in(cx, reader.as_mut()) {
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(_)) => {
                        // Written next; a buffering writer (TLS) is flushed once reads run
                        // dry.
                        self.need_flush = true;
                        *progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((self.reader, e))),
                    Poll::Pending => {
                        // Idle: the buffer goes back to the free list until bytes come.
                        self.held.buf.release();
                        // Nothing more to read now: push out what a buffering writer (TLS)
                        // holds before sleeping.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))
                                .map_err(|e| (self.writer(), e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }

            let writer_side = self.writer();
            ready!(
                self.held
                    .poll_write_out(cx, writer.as_mut(), writer_side, flow, progressed)
            )?;

            if self.eof {
                self.held.buf.release();
                ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (self.writer(), e))?;
                match ready!(writer.as_mut().poll_shutdown(cx)) {
                    // The peer already went away: its direction ends on its own.
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                        return Poll::Ready(Err((self.writer(), e)));
                    }
                    _ => {}
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Polls an idle timer that is re-armed lazily: only when it fires is it moved to
/// `deadline` (last progress + timeout), so a busy relay never touches the timer wheel.
/// True once `deadline` has passed.
pub(crate) fn idle_expired(
    mut idle: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
    deadline: Instant,
) -> bool {
    while idle.as_mut().poll(cx).is_ready() {
        if deadline <= Instant::now() {
            return true;
        }
        idle.as_mut().reset(deadline);
    }
    false
}

/// Relays until both directions end, one side fails, nothing moves for `idle_timeout`,
/// or `cancel` fires.
pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    up: Flow<'_>,
    down: Flow<'_>,
    idle_timeout: Duration,
    cancel: Cancel<'_>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut c2b = Direction::new(Side::Client);
    let mut b2c = Direction::new(Side::Backend);
    let mut first_eof: Option<Side> = None;
    let mut cancelled = pin!(cancel.cancelled());
    let mut wakeups = 0;
    // One clock read for both.
    let mut last_progress = Instant::now();
    let mut idle = pin!(tokio::time::sleep_until(last_progress + idle_timeout));

    poll_fn(|cx| {
        if cancel.poll(cancelled.as_mut(), &mut wakeups, cx) {
            return Poll::Ready(RelayEnd::Cancelled);
        }
        let mut progressed = false;
        for direction in [&mut c2b, &mut b2c] {
            if direction.done {
                continue;
            }
            let result = match direction.reader {
                Side::Client => direction.poll_move(
                    cx,
                    Pin::new(&mut *client),
                    Pin::new(&mut *backend),
                    up,
                    &mut progressed,
                ),
                Side::Backend => direction.poll_move(
                    cx,
                    Pin::new(&mut *backend),
                    Pin::new(&mut *client),
                    down,
                    &mut progressed,
                ),
            };
            if direction.eof && first_eof.is_none() {
                first_eof = Some(direction.reader);
            }
            if let Poll::Ready(Err((side, error))) = result {
                return Poll::Ready(RelayEnd::Error { side, error });
            }
        }
        if c2b.done && b2c.done {
            return Poll::Ready(RelayEnd::Closed {
                first: first_eof.unwrap_or(Side::Client),
            });
        }
        if progressed {
            last_progress = Instant::now();
        }
        if idle_expired(idle.as_mut(), cx, last_progress + idle_timeout) {
            return Poll::Ready(RelayEnd::Idle);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    fn counters() -> (AtomicU64, AtomicU64, IntCounter, IntCounter) {
        (
            AtomicU64::new(0),
            AtomicU64::new(0),
            IntCounter::new("up", "up").unwrap(),
            IntCounter::new("down", "down").unwrap(),
        )
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut client_app, mut client) = tokio::io::duplex(1024);
        let (mut backend, mut backend_app) = tokio::io::duplex(1024);
        let (t_up, t_down, c_up, c_down) = counters();
        let cancel = CancellationToken::new();
        let relay = async {
            relay(
                &mut client,
                &mut backend,
                Flow {
                    total: &t_up,
                    counter: &c_up,
                },
                Flow {
                    total: &t_down,
                    counter: &c_down,
                },
                Duration::from_secs(10),
                Cancel::new(&cancel, &|| cancel.is_cancelled()),
            )
            .await
        };
        let apps = async {
            client_app.write_all(b"question").await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut q = Vec::new();
            backend_app.read_to_end(&mut q).await.unwrap();
            assert_eq!(q, b"question");
            backend_app.write_all(b"answer").await.unwrap();
            backend_app.shutdown().await.unwrap();
            let mut a = Vec::new();
            client_app.read_to_end(&mut a).await.unwrap();
            assert_eq!(a, b"answer");
        };
        let (end, ()) = tokio::join!(relay, apps);
        assert!(
            matches!(
                end,
                RelayEnd::Closed {
                    first: Side::Client
                }
            ),
            "{end:?}"
        );
        assert_eq!(t_up.load(Ordering::Relaxed), 8);
        assert_eq!(t_down.load(Ordering::Relaxed), 6);
        assert_eq!(c_down.get(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_a_silent_relay() {
        let (_client_app, mut client) = tokio::io::duplex(1024);
        let (mut backend, _backend_app) = tokio::io::duplex(1024);
        let (t_up, t_down, c_up, c_down) = counters();
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let end = relay(
            &mut client,
            &mut backend,
            Flow {
                total: &t_up,
                counter: &c_up,
            },
            Flow {
                total: &t_down,
                counter: &c_down,
            },
            Duration::from_secs(30),
            Cancel::new(&cancel, &|| cancel.is_cancelled()),
        )
        .await;
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
