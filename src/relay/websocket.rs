//! The WebSocket relay, entered after a 101 joined the client's and the backend's upgraded
//! streams.
//!
//! Pass-through with a frame tracker per direction: bytes go out exactly as they came
//! (masks, extensions, compressed payloads untouched) while the [`tracker`] follows frame
//! headers. That gives the gateway message boundaries (counted as they pass), Close codes,
//! and places where it may put frames of its own:
//!
//! - a Close from either side goes through and its reply comes back; then TCP ends;
//! - drain, operator close and idle timeout: Close 1001 to both sides at each direction's next
//!   frame boundary (drain spreads these over `drain_spread`), replies awaited up to
//!   `close_timeout`; a reload that removed the route or backend: Close 1012, also spread;
//! - backend lost without a Close: Close 1014 to the client; client lost: Close 1001 to the
//!   backend;
//! - a protocol violation, a message over `max_message_size`, or client messages over
//!   `max_messages_per_second` or frames over `max_frames_per_second`: Close 1002 / 1009 /
//!   1008 to the offender, 1001 to the other side;
//! - keepalive: the gateway pings the client every `ping_interval`, swallows the answering
//!   Pong, records the round trip, and closes a client that stays silent past `pong_timeout`.
//!
//! To always be able to stop a direction at a frame boundary, the relay holds back the bytes
//! of an incomplete frame header or control frame (at most 131 bytes) until they are whole;
//! data payload streams through as it arrives. The tracker is stepped to every frame end
//! (not only to events), so a run of frames without events — empty fragments — never piles
//! up behind a header cut by a read: the held-back bytes stay that one header or control
//! frame. A relay never wakes itself: it is polled again only for new input, room to write,
//! or a timer. Frames the gateway writes toward the backend
//! are masked with a fresh key (RFC 6455 §5.3); toward the client they are not.

pub mod tracker;

#[cfg(test)]
mod tests;

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::WebSocketLimits;
use crate::io::buffer::{self, Slot};
use crate::live::{CloseReason, ConnCtx};
use crate::metrics::Metrics;
use crate::relay::Side;
use crate::relay::tcp::idle_expired;
use crate::shutdown::Shutdown;
use tracker::{Event, Extensions, MAX_CONTROL_FRAME, Role, Tracker};

/// Whether a `Sec-WebSocket-Extensions` value agrees to permessage-deflate (RFC 7692).
pub fn permessage_deflate(extensions: &str) -> bool {
    extensions
        .split([',', ';'])
        .any(|t| t.trim().eq_ignore_ascii_case("permessage-deflate"))
}

/// Close codes the gateway sends (RFC 6455 §7.4.1, IANA registry).
pub mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const BAD_GATEWAY: u16 = 1014;
    /// Put in the metric when a peer's Close carried no code (RFC 6455 §7.1.5).
    pub const NO_STATUS: u16 = 1005;

    /// The `code` label of `sockgate_websocket_closes_total`: the codes RFC 6455 and the
    /// IANA registry define, 1000–1015 (1005 stands for a Close without a code), as their
    /// number; every other code (3000–4999 for libraries and applications) as `other`, so a
    /// peer cannot add thousands of series to the metric.
    pub fn label(code: u16) -> &'static str {
        const REGISTERED: [&str; 16] = [
            "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
            "1011", "1012", "1013", "1014", "1015",
        ];
        code.checked_sub(1000)
            .and_then(|i| REGISTERED.get(usize::from(i)))
            .copied()
            .unwrap_or("other")
    }
}

/// What the handshake agreed and the settings the connection runs with, from the snapshot
/// it started with.
pub struct Session {
    /// Route and backend names, for metric labels.
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub limits: WebSocketLimits,
    /// The 101 response's `Sec-WebSocket-Extensions` agreed to permessage-deflate.
    pub permessage_deflate: bool,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub drain_spread: Duration,
    pub drain_timeout: Duration,
}

/// How the WebSocket ended, for the access log.
#[derive(Debug, Clone)]
pub struct WsEnd {
    /// Code of the Close that started the closing handshake and who sent it, if any did.
    pub close: Option<(u16, &'static str)>,
    pub reason: EndReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Both closing handshakes completed (or the peers went away after them).
    Closed,
    /// The closing handshake did not finish within `close_timeout`.
    CloseTimeout,
    /// Hard stop (drain timeout, second signal).
    Stopped,
    /// A peer went away without a Close and the other side had been told.
    PeerLost,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::CloseTimeout => "close_timeout",
            EndReason::Stopped => "stopped",
            EndReason::PeerLost => "peer_lost",
        }
    }
}

/// Relays until both closing handshakes are done, `close_timeout` runs out after a close
/// began, or a hard stop.
pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    session: &Session,
    ctx: &ConnCtx,
    m: &Metrics,
    shutdown: &Shutdown,
) -> WsEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let route = &session.route;
    let limits = &session.limits;
    let bytes = m.route_counters(&ctx.listener, route, &session.backend);
    let extensions = Extensions {
        permessage_deflate: session.permessage_deflate,
    };
    let limit = limits.max_message_size;
    let mut conn = Conn {
        up: Dir::new(Tracker::new(Role::Client, extensions).message_size_limit(limit)),
        down: Dir::new(Tracker::new(Role::Server, extensions).message_size_limit(limit)),
        up_flow: Flow {
            total: &ctx.bytes_client_to_backend,
            counter: &bytes.client_to_backend,
            messages: &ctx.messages_client_to_backend,
            meters: Meters::new(m, route, "client_to_backend"),
        },
        down_flow: Flow {
            total: &ctx.bytes_backend_to_client,
            counter: &bytes.backend_to_client,
            messages: &ctx.messages_backend_to_client,
            meters: Meters::new(m, route, "backend_to_client"),
        },
        client: Peer::default(),
        backend: Peer::default(),
        started: None,
        rate: limits.max_messages_per_second.map(Rate::new),
        frames: limits.max_frames_per_second.map(Rate::new),
        keepalive: limits.ping_interval.map(|interval| {
            Box::new(Keepalive {
                answered: false,
                interval,
                next_ping: Instant::now() + interval,
                pong_timeout: limits.pong_timeout.unwrap_or(Duration::from_secs(10)),
                outstanding: None,
                rtt: m.websocket_ping_rtt_seconds.with_label_values(&[route]),
            })
        }),
        rng: SystemRandom::new(),
        finishing: false,
        route,
        closes: &m.websocket_closes_total,
    };

    let mut stopped = pin!(shutdown.stop_token().cancelled());
    let mut drained = pin!(shutdown.drain_token().cancelled());
    let mut operator = pin!(ctx.cancel.cancelled());
    let mut idle = pin!(tokio::time::sleep(session.idle_timeout));
    let mut w = Watch {
        drain_timer: None,
        close_deadline: None,
        ping_timer: conn
            .keepalive
            .as_ref()
            .map(|k| Box::pin(tokio::time::sleep(k.interval))),
        last_progress: Instant::now(),
        drain_seen: false,
        operator_seen: false,
        wakeups: 0,
        reload_close: false,
    };

    let reason = poll_fn(|cx| {
        // Whole-variable uses: the closure then captures one reference to each, not one per
        // field it touches (it lives in the connection's task as long as the relay runs).
        let (w, session) = (&mut w, session);
        // The tokens are polled now and then and read through flags in between (see
        // `relay::registering`): the shared drain and stop tokens through the shutdown's
        // flags, the connection's own through `close_requested` (a hard stop, which also
        // fires it, is the `stopped` check before).
        let register = super::registering(&mut w.wakeups);
        let fired = |flag: &dyn Fn() -> bool, future, cx: &mut Context<'_>| {
            super::fired(register, flag, future, cx)
        };
        if fired(&|| shutdown.is_stopped(), stopped.as_mut(), cx) {
            return Poll::Ready(EndReason::Stopped);
        }
        if !w.drain_seen && fired(&|| shutdown.is_draining(), drained.as_mut(), cx) {
            w.drain_seen = true;
            w.reload_close = false;
            // Spread the Close frames of all connections over the window, so clients do not
            // all reconnect in the same second.
            // Leave close_timeout for the last of them before the hard stop.
            let window = session
                .drain_spread
                .min(session.drain_timeout.saturating_sub(session.close_timeout));
            let delay = conn.jitter(window);
            w.drain_timer = Some(Box::pin(tokio::time::sleep(delay)));
        }
        if !w.operator_seen && fired(&|| ctx.close_requested(), operator.as_mut(), cx) {
            w.operator_seen = true;
            match ctx.close_reason() {
                CloseReason::Reload => {
                    let delay = conn.jitter(session.drain_spread);
                    w.drain_timer = Some(Box::pin(tokio::time::sleep(delay)));
                    w.reload_close = true;
                }
                CloseReason::Operator => {
                    conn.initiate(code::GOING_AWAY, "closed by the gateway operator")
                }
            }
        }
        if let Some(timer) = w.drain_timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            w.drain_timer = None;
            if w.reload_close {
                conn.initiate(
                    code::SERVICE_RESTART,
                    "route or backend removed by a reload",
                );
            } else {
                conn.initiate(code::GOING_AWAY, "gateway is shutting down");
            }
        }
        // Runs again, instead of waking itself, when a timer it reset is already due or
        // queued frames that only the directions can write.
        loop {
            while let Some(timer) = w.ping_timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                match conn.keepalive_tick() {
                    // At least 1 ms ahead: polling it again registers it.
                    Some(next) => timer.as_mut().reset(next),
                    None => w.ping_timer = None,
                }
            }

            loop {
                let mut progressed = false;
                match conn.poll_directions(cx, client, backend, &mut progressed) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => {}
                }
                if progressed {
                    w.last_progress = Instant::now();
                }
                break;
            }
            let mut again = false;
            if let Some(keepalive) = conn.keepalive.as_mut()
                && keepalive.answered
                && let Some(timer) = w.ping_timer.as_mut()
            {
                keepalive.answered = false;
                timer.as_mut().reset(keepalive.next_ping);
                again = timer.as_mut().poll(cx).is_ready();
            }

            if conn.started.is_some() && w.close_deadline.is_none() {
                w.close_deadline = Some(Box::pin(tokio::time::sleep(session.close_timeout)));
            }
            if conn.finished() {
                if !conn.finishing {
                    conn.finishing = true;
                }
                match conn.poll_shutdown(cx, client, backend) {
                    Poll::Ready(()) => {
                        return Poll::Ready(if conn.client.gone || conn.backend.gone {
                            EndReason::PeerLost
                        } else {
                            EndReason::Closed
                        });
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(deadline) = w.close_deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(EndReason::CloseTimeout);
            }
            if idle_expired(idle.as_mut(), cx, w.last_progress + session.idle_timeout) {
                // Idle: close properly rather than cut; close_timeout bounds it.
                conn.initiate(code::GOING_AWAY, "idle timeout");
                idle.as_mut()
                    .reset(Instant::now() + session.idle_timeout + session.close_timeout);
                again = true;
            }
            if !again {
                break;
            }
        }
        Poll::Pending
    })
    .await;

    WsEnd {
        close: conn.started,
        reason,
    }
}

/// The relay loop's timers and flags, kept together so that its poll closure holds one
/// reference to them rather than one each: the closure lives in the connection's task.
struct Watch {
    drain_timer: Option<Pin<Box<Sleep>>>,
    close_deadline: Option<Pin<Box<Sleep>>>,
    ping_timer: Option<Pin<Box<Sleep>>>,
    last_progress: Instant,
    drain_seen: bool,
    operator_seen: bool,
    wakeups: u32,
    reload_close: bool,
}

/// Per-direction message metrics, resolved once per connection.
struct Meters {
    messages: IntCounter,
    sizes: Histogram,
}

impl Meters {
    fn new(m: &Metrics, route: &str, direction: &str) -> Meters {
        Meters {
            messages: m
                .websocket_messages_total
                .with_label_values(&[route, direction]),
            sizes: m
                .websocket_message_size_bytes
                .with_label_values(&[route, direction]),
        }
    }
}

/// Where one direction's counts go.
struct Flow<'a> {
    total: &'a AtomicU64,
    counter: &'a IntCounter,
    messages: &'a AtomicU64,
    meters: Meters,
}

/// What the gateway knows of one peer's side of the closing handshake.
#[derive(Default, Debug)]
struct Peer {
    /// Sent a Close (or broke the protocol, after which nothing it sends counts).
    sent_close: bool,
    /// A Close reached it (its peer's, or the gateway's).
    got_close: bool,
    /// Its connection ended without a Close (EOF, reset); nothing more goes to it.
    gone: bool,
}

impl Peer {
    fn done(&self) -> bool {
        self.gone || (self.sent_close && self.got_close)
    }
}

/// A per-second limit, counted in fixed one-second windows.
struct Rate {
    max: u32,
    window: Instant,
    count: u32,
}

impl Rate {
    fn new(max: u32) -> Rate {
        Rate {
            max,
            window: Instant::now(),
            count: 0,
        }
    }

    /// Counts one more at `now`; whether that went over the limit.
    fn over(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > self.max
    }
}

struct Keepalive {
    /// A pong just came: the timer, waiting for the pong deadline, should wait for the next
    /// ping instead.
    answered: bool,
    interval: Duration,
    pong_timeout: Duration,
    next_ping: Instant,
    /// The payload of the ping awaiting its pong, and when it went out.
    outstanding: Option<([u8; 8], Option<Instant>)>,
    rtt: Histogram,
}

/// A frame of the gateway's own, waiting for the next boundary of a direction.
struct Injected {
    frame: [u8; MAX_CONTROL_FRAME],
    len: usize,
    written: usize,
    close: bool,
}

/// One direction: frames sent by `reader`, relayed to the other peer.
struct Dir {
    tracker: Tracker,
    /// Held only while bytes are in flight (see [`buffer`](crate::io::buffer)).
    buf: Slot,
    /// While the reader is silent: the held-back start of a frame (`buf[..end]`, at most
    /// one header or control frame), kept in an allocation of its own size so that a peer
    /// that sends a byte and stops pins that byte, not a relay buffer. Empty otherwise.
    tail: Box<[u8]>,
    /// Next byte to write.
    start: usize,
    /// Bytes before this may go out: whole frames, or data payload as it streams.
    safe: usize,
    /// Whether `safe` is a frame boundary, where a frame of the gateway's may go.
    safe_is_boundary: bool,
    /// Bytes before this were fed to the tracker.
    scan: usize,
    /// Bytes before this were read.
    end: usize,
    /// The reader went over a rate limit: what it sent up to the end of the frame or message
    /// that did is forwarded, everything after is read and dropped.
    refused: bool,
    eof: bool,
    /// Frames from the reader are dropped instead of forwarded: the writer already got the
    /// gateway's Close, or the reader broke the protocol.
    dropping: bool,
    /// Boxed: rare, and an idle connection should not carry 160 bytes for it.
    inject: Option<Box<Injected>>,
    need_flush: bool,
    /// The writer is gone; nothing more is written.
    writer_gone: bool,
    shut: bool,
}

/// Something a direction reports for the connection to act on.
enum Note {
    /// The reader sent a Close with this code (None: no code).
    Close(Option<u16>),
    /// The reader broke the protocol or a limit: close it with this code.
    Violation(u16, String),
    /// The reader's stream ended (EOF or error) without a Close.
    ReaderLost,
    /// Writing to the writer failed: that peer is gone.
    WriterLost,
    /// A data message went by (for the rate limit).
    Message,
    /// A Pong ended; its frame is `[start, scan)` and still held back.
    Pong { start: usize },
}

impl Dir {
    fn new(tracker: Tracker) -> Self {
        Dir {
            tracker,
            buf: Slot::default(),
            tail: Box::default(),
            start: 0,
            safe: 0,
            safe_is_boundary: true,
            scan: 0,
            end: 0,
            refused: false,
            eof: false,
            dropping: false,
            inject: None,
            need_flush: false,
            writer_gone: false,
            shut: false,
        }
    }

    /// Queues a frame for the writer at the next boundary. A Close replaces a queued Ping;
    /// nothing is queued after a Close.
    fn queue(&mut self, frame: [u8; MAX_CONTROL_FRAME], len: usize, close: bool) {
        if self.writer_gone || self.inject.as_ref().is_some_and(|q| q.close || !close) {
            return;
        }
        self.inject = Some(Box::new(Injected {
            frame,
            len,
            written: 0,
            close,
        }));
    }

    /// Puts a set-aside frame start back at the front of the relay buffer, where `scan`,
    /// `safe` and `end` expect it.
    fn restore_tail(&mut self) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.buf.get()[..tail.len()].copy_from_slice(&tail);
        }
    }

    /// Removes a held-back frame `[start, scan)` from the stream (a Pong the gateway answers
    /// for itself).
    fn swallow(&mut self, start: usize) {
        let n = self.scan - start;
        self.buf.get().copy_within(self.scan..self.end, start);
        self.end -= n;
        self.scan = start;
        self.safe = start;
        self.safe_is_boundary = true;
    }

    /// The reader went over a rate limit at the frame end `scan` is at: what came before
    /// goes out (whole frames, so the gateway's Close can follow), what was read after it
    /// and everything the reader sends from here on is dropped.
    fn refuse(&mut self) {
        debug_assert!(self.safe == self.scan && self.safe_is_boundary);
        self.refused = true;
        self.end = self.scan;
    }

    /// Scans what was read, one frame at a time, stopping at an event the connection must
    /// see, or at a boundary when a frame of the gateway's is waiting. Each whole frame
    /// becomes forwardable as soon as it has passed, so what stays held back is at most the
    /// one incomplete header or control frame at the end of what was read.
    fn scan(&mut self, flow: &Flow<'_>, mut frames: Option<&mut Rate>) -> Option<Note> {
        if self.refused || self.tracker.error().is_some() {
            // Nothing after a violation can be trusted or forwarded; what came before it
            // still goes out, then the gateway's Close.
            self.end = self.safe;
            self.scan = self.safe;
            return None;
        }
        // Read at most once per call, and only by the frame limit: frames scanned together
        // arrived together.
        let mut now = None;
        while self.scan < self.end {
            if self.inject.is_some() && self.safe_is_boundary && self.safe == self.scan {
                return None;
            }
            let before = self.safe;
            let step = self
                .tracker
                .step_frame(&self.buf.get()[self.scan..self.end]);
            self.scan += step.consumed;
            if self.tracker.forwardable() {
                self.safe = self.scan;
                self.safe_is_boundary = self.tracker.at_boundary();
            }
            if self.tracker.at_boundary()
                && !self.dropping
                && let Some(frames) = frames.as_deref_mut()
                && frames.over(*now.get_or_insert_with(Instant::now))
            {
                let reason = format!("more than {} frames per second", frames.max);
                self.refuse();
                return Some(Note::Violation(code::POLICY, reason));
            }
            match step.event {
                None | Some(Event::Ping { .. }) => {}
                Some(Event::Message { len, .. }) => {
                    flow.messages.fetch_add(1, Ordering::Relaxed);
                    flow.meters.messages.inc();
                    flow.meters.sizes.observe(len as f64);
                    return Some(Note::Message);
                }
                // The Pong's frame, exactly: stepped frame by frame and held back whole until
                // it ended here, it began where forwarding stopped before this step.
                Some(Event::Pong { .. }) => return Some(Note::Pong { start: before }),
                Some(Event::Close(close)) => return Some(Note::Close(close.code())),
                Some(Event::Error(error)) => {
                    // Drop the rest, including the held-back bytes of the offending frame.
                    self.end = self.safe;
                    self.scan = self.safe;
                    return Some(Note::Violation(error.close_code(), error.to_string()));
                }
            }
        }
        None
    }

    /// Moves bytes from `reader` to `writer` until both would block or there is a note.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        flow: &Flow<'_>,
        mut frames: Option<&mut Rate>,
        progressed: &mut bool,
    ) -> Poll<Note>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        self.restore_tail();
        loop {
            if let Some(note) = self.scan(flow, frames.as_deref_mut()) {
                return Poll::Ready(note);
            }

            // Write what may go out: forwarded bytes, then a frame of the gateway's at a
            // boundary.
            if self.writer_gone {
                self.start = self.safe;
                self.inject = None;
            }
            while self.start < self.safe {
                if self.dropping {
                    self.start = self.safe;
                    break;
                }
                match writer
                    .as_mut()
                    .poll_write(cx, &self.buf.get()[self.start..self.safe])
                {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.writer_gone = true;
                        return Poll::Ready(Note::WriterLost);
                    }
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.need_flush = true;
                        flow.total.fetch_add(n as u64, Ordering::Relaxed);
                        flow.counter.inc_by(n as u64);
                        *progressed = true;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.start == self.safe
                && self.safe_is_boundary
                && let Some(injected) = self.inject.as_mut()
                && !self.writer_gone
            {
                while injected.written < injected.len {
                    match writer
                        .as_mut()
                        .poll_write(cx, &injected.frame[injected.written..injected.len])
                    {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            self.writer_gone = true;
                            return Poll::Ready(Note::WriterLost);
                        }
                        Poll::Ready(Ok(n)) => {
                            injected.written += n;
                            self.need_flush = true;
                            *progressed = true;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if injected.close {
                    // The writer has the gateway's Close: whatever the reader sends from
                    // here on (its own Close reply included) is not for it.
                    self.dropping = true;
                }
                self.inject = None;
                continue;
            }

            // Everything that may go out has gone; read more.
            if self.eof {
                return Poll::Pending;
            }
            if self.start > 0 {
                // Keep the held-back bytes of an incomplete header or control frame.
                self.buf.get().copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.scan -= self.start;
                self.safe -= self.start;
                self.start = 0;
            }
            if self.end == buffer::SIZE {
                // Unreachable: `scan` releases every whole frame, so at most one incomplete
                // header or control frame (131 bytes) is held back here. Should it happen
                // anyway, this direction ends as a violation: waiting for room that no
                // input can make would spin.
                self.start = 0;
                self.safe = 0;
                self.scan = 0;
                self.end = 0;
                self.eof = true;
                self.dropping = true;
                return Poll::Ready(Note::Violation(
                    code::INTERNAL_ERROR,
                    "held-back bytes filled the relay buffer".to_owned(),
                ));
            }
            let mut rb = ReadBuf::new(&mut self.buf.get()[self.end..]);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                        return Poll::Ready(Note::ReaderLost);
                    }
                    self.end += n;
                    *progressed = true;
                }
                Poll::Ready(Err(_)) => {
                    self.eof = true;
                    return Poll::Ready(Note::ReaderLost);
                }
                Poll::Pending => {
                    if self.end == 0 {
                        // Idle with nothing held back: give the buffer back.
                        self.buf.release();
                    } else if self.start == 0 && self.end <= MAX_CONTROL_FRAME {
                        // Only an incomplete frame start is held back: keep it apart.
                        self.tail = self.buf.get()[..self.end].into();
                        self.buf.release();
                    }
                    if self.need_flush && !self.writer_gone {
                        match writer.as_mut().poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(_)) => {
                                self.writer_gone = true;
                                return Poll::Ready(Note::WriterLost);
                            }
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Flushes and ends the writer's send side (TLS close_notify, then FIN).
    fn poll_shutdown<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<()> {
        if self.shut || self.writer_gone {
            return Poll::Ready(());
        }
        if (self.start < self.safe && !self.dropping) || self.inject.is_some() {
            // A forwarded Close reply or the gateway's Close still to go; poll_move writes
            // them first.
            return Poll::Pending;
        }
        match writer.as_mut().poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.shut = true;
                Poll::Ready(())
            }
        }
    }
}

/// The connection: both directions and the closing handshake state.
struct Conn<'a> {
    /// Client to backend.
    up: Dir,
    /// Backend to client.
    down: Dir,
    up_flow: Flow<'a>,
    down_flow: Flow<'a>,
    client: Peer,
    backend: Peer,
    /// The Close that started the closing handshake: code and who sent it.
    started: Option<(u16, &'static str)>,
    rate: Option<Rate>,
    /// `max_frames_per_second`, on the client's frames.
    frames: Option<Rate>,
    /// Boxed: only routes with `ping_interval` have one.
    keepalive: Option<Box<Keepalive>>,
    rng: SystemRandom,
    finishing: bool,
    route: &'a str,
    closes: &'a prometheus::IntCounterVec,
}

impl Conn<'_> {
    fn random<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        // SystemRandom fails only if the OS has no entropy source at all; a fixed key then
        // still yields valid frames.
        let _ = self.rng.fill(&mut out);
        out
    }

    fn jitter(&self, window: Duration) -> Duration {
        let millis = window.as_millis() as u64;
        if millis == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(u64::from_le_bytes(self.random::<8>()) % millis)
    }

    fn peer(&mut self, side: Side) -> &mut Peer {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }

    /// The direction whose writer is `side`.
    fn toward(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.down,
            Side::Backend => &mut self.up,
        }
    }

    /// Notes the Close that starts the closing handshake and counts it at once, so the
    /// metric moves when the close begins rather than when it ends.
    fn record_start(&mut self, code: u16, initiator: &'static str) {
        if self.started.is_none() {
            self.started = Some((code, initiator));
            self.closes
                .with_label_values(&[self.route, code::label(code), initiator])
                .inc();
        }
    }

    /// Queues a Close from the gateway to `side`, unless it already has one.
    fn close_toward(&mut self, side: Side, code: u16, reason: &str) {
        let peer = self.peer(side);
        if peer.got_close || peer.gone {
            return;
        }
        peer.got_close = true;
        let mask = match side {
            Side::Client => None,
            Side::Backend => Some(self.random::<4>()),
        };
        let mut frame = [0u8; MAX_CONTROL_FRAME];
        let len = tracker::encode_close(code, reason, mask, &mut frame);
        self.toward(side).queue(frame, len, true);
    }

    /// The gateway starts the close: Close `code` to both sides (drain, operator, idle).
    fn initiate(&mut self, code: u16, reason: &str) {
        if self.client.got_close && self.backend.got_close {
            return;
        }
        self.record_start(code, "gateway");
        self.close_toward(Side::Client, code, reason);
        self.close_toward(Side::Backend, code, reason);
    }

    /// Whether both closing handshakes are over.
    fn finished(&self) -> bool {
        self.client.done() && self.backend.done()
    }

    fn other(side: Side) -> Side {
        match side {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    fn handle(&mut self, reader: Side, note: Note) {
        match note {
            Note::Close(code) => {
                self.peer(reader).sent_close = true;
                self.record_start(code.unwrap_or(code::NO_STATUS), reader.as_str());
                // The Close is forwarded as it came; the other side has it. A Close of the
                // gateway's still waiting for that side gives way to it, so the side gets one.
                let other = Self::other(reader);
                let dir = self.toward(other);
                if dir
                    .inject
                    .as_ref()
                    .is_some_and(|i| i.close && i.written == 0)
                {
                    dir.inject = None;
                }
                if !dir.dropping {
                    self.peer(other).got_close = true;
                }
            }
            Note::Violation(code, reason) => {
                if self.peer(reader).sent_close {
                    return;
                }
                tracing::info!(offender = reader.as_str(), code, %reason, "WebSocket protocol violation");
                self.peer(reader).sent_close = true;
                self.record_start(code, "gateway");
                self.close_toward(reader, code, &reason);
                self.close_toward(
                    Self::other(reader),
                    code::GOING_AWAY,
                    "peer broke the protocol",
                );
            }
            Note::ReaderLost => {
                let peer = self.peer(reader);
                if peer.sent_close {
                    // EOF after its Close: a clean end of its side.
                    return;
                }
                peer.gone = true;
                peer.sent_close = true;
                self.toward(reader).writer_gone = true;
                self.handle_lost(reader);
            }
            Note::WriterLost => {
                let lost = Self::other(reader);
                let peer = self.peer(lost);
                if peer.gone {
                    return;
                }
                peer.gone = true;
                let already_closing = peer.sent_close;
                peer.sent_close = true;
                if !already_closing {
                    self.handle_lost(lost);
                }
            }
            Note::Message => {
                if reader == Side::Client
                    && !self.client.sent_close
                    && let Some(rate) = self.rate.as_mut()
                    && rate.over(Instant::now())
                {
                    let reason = format!("more than {} messages per second", rate.max);
                    self.up.refuse();
                    self.handle(Side::Client, Note::Violation(code::POLICY, reason));
                }
            }
            Note::Pong { start } => {
                if reader != Side::Client {
                    return;
                }
                let Some(keepalive) = self.keepalive.as_mut() else {
                    return;
                };
                let Some((payload, Some(sent))) = keepalive.outstanding else {
                    return;
                };
                if self.up.tracker.control_payload() == payload {
                    keepalive.rtt.observe(sent.elapsed().as_secs_f64());
                    keepalive.outstanding = None;
                    keepalive.answered = true;
                    self.up.swallow(start);
                }
            }
        }
    }

    fn handle_lost(&mut self, lost: Side) {
        match lost {
            Side::Backend => {
                self.record_start(code::BAD_GATEWAY, "gateway");
                self.close_toward(Side::Client, code::BAD_GATEWAY, "backend connection lost");
            }
            Side::Client => {
                self.record_start(code::GOING_AWAY, "gateway");
                self.close_toward(Side::Backend, code::GOING_AWAY, "client connection lost");
            }
        }
    }

    /// Sends the next keepalive ping when it is due, or closes a client that left the last
    /// one unanswered past `pong_timeout`. Returns when to be called again; `None` once
    /// keepalive is over.
    fn keepalive_tick(&mut self) -> Option<Instant> {
        if self.started.is_some() {
            return None;
        }
        let payload = self.random::<8>();
        let now = Instant::now();
        let keepalive = self.keepalive.as_mut()?;
        if let Some((_, Some(sent))) = keepalive.outstanding
            && now >= sent + keepalive.pong_timeout
        {
            // A client that does not answer is gone as far as the backend knows.
            self.record_start(code::GOING_AWAY, "gateway");
            self.close_toward(
                Side::Backend,
                code::GOING_AWAY,
                "client stopped answering pings",
            );
            self.close_toward(Side::Client, code::GOING_AWAY, "no pong received");
            return None;
        }
        if keepalive.outstanding.is_none() && now >= keepalive.next_ping {
            let mut frame = [0u8; MAX_CONTROL_FRAME];
            let len = tracker::encode_ping(&payload, None, &mut frame).unwrap_or(0);
            keepalive.outstanding = Some((payload, None));
            keepalive.next_ping = now + keepalive.interval;
            self.down.queue(frame, len, false);
        }
        let keepalive = self.keepalive.as_ref()?;
        let next = match keepalive.outstanding {
            Some((_, Some(sent))) => sent + keepalive.pong_timeout,
            // Queued behind a frame still in flight: look again soon.
            Some((_, None)) => now + keepalive.pong_timeout.min(Duration::from_secs(1)),
            None => keepalive.next_ping,
        };
        Some(next.max(now + Duration::from_millis(1)))
    }

    fn poll_directions<C, B>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        backend: &mut B,
        progressed: &mut bool,
    ) -> Poll<()>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let ping_pending = self.down.inject.as_ref().is_some_and(|i| !i.close);
        let up = self.up.poll_move(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *backend),
            &self.up_flow,
            self.frames.as_mut(),
            progressed,
        );
        if let Poll::Ready(note) = up {
            self.handle(Side::Client, note);
            return Poll::Ready(());
        }
        let down = self.down.poll_move(
            cx,
            Pin::new(&mut *backend),
            Pin::new(&mut *client),
            &self.down_flow,
            None,
            progressed,
        );
        // The ping went out: start its clock.
        if ping_pending
            && self.down.inject.is_none()
            && let Some(keepalive) = self.keepalive.as_mut()
            && let Some((payload, None)) = keepalive.outstanding
        {
            keepalive.outstanding = Some((payload, Some(Instant::now())));
        }
        if let Poll::Ready(note) = down {
            self.handle(Side::Backend, note);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn poll_shutdown<C, B>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        backend: &mut B,
    ) -> Poll<()>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let to_backend = self.up.poll_shutdown(cx, Pin::new(&mut *backend));
        let to_client = self.down.poll_shutdown(cx, Pin::new(&mut *client));
        if to_backend.is_ready() && to_client.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
