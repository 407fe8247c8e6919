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
//!   a shed (`POST /connections/shed`): Close 1012 at once, the gateway having spread them;
//! - backend lost without a Close: Close 1014 to the client; client lost: Close 1001 to the
//!   backend;
//! - a protocol violation, a message over `max_message_size`, or client messages over
//!   `max_messages_per_second` or frames over `max_frames_per_second`: Close 1002 / 1009 /
//!   1008 to the offender, 1001 to the other side;
//! - keepalive: the gateway pings the client every `ping_interval`, swallows the answering
//!   Pong, records the round trip, and closes a client that stays silent past `pong_timeout`.
//!
//! The parts, each in a file of its own: `direction` moves one direction's bytes, holding
//! back an incomplete frame header or control frame so that it can always stop at a frame
//! boundary; `close` is the closing handshake as a state machine, without sockets;
//! `keepalive` and `rate` are the ping timer and the per-second limits. This file is the
//! loop: it polls the timers and signals, then the directions, and hands what they report to
//! the closing handshake.
//!
//! A relay never wakes itself: it is polled again only for new input, room to write, or a
//! timer. Frames the gateway writes toward the backend are masked with a fresh key
//! (RFC 6455 §5.3); toward the client they are not.

mod close;
mod direction;
mod keepalive;
mod rate;
pub mod tracker;

#[cfg(test)]
mod tests;

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::config::WebSocketLimits;
use crate::error::Side;
use crate::live::{CloseReason, ConnCtx};
use crate::metrics::Metrics;
use crate::relay::tcp::{Flow, idle_expired};
use crate::shutdown::Shutdown;
use close::{Closing, GatewayClose, Outcome, other};
use direction::{Counters, Direction, Meters, Note};
use keepalive::{Keepalive, Tick};
use rate::Rate;
use tracker::{Extensions, MAX_CONTROL_FRAME, Role, Tracker};

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
        up: Direction::new(Tracker::new(Role::Client, extensions).message_size_limit(limit)),
        down: Direction::new(Tracker::new(Role::Server, extensions).message_size_limit(limit)),
        up_counters: Counters {
            bytes: Flow {
                total: &ctx.bytes_client_to_backend,
                counter: &bytes.client_to_backend,
            },
            messages: &ctx.messages_client_to_backend,
            meters: Meters::new(m, route, "client_to_backend"),
        },
        down_counters: Counters {
            bytes: Flow {
                total: &ctx.bytes_backend_to_client,
                counter: &bytes.backend_to_client,
            },
            messages: &ctx.messages_backend_to_client,
            meters: Meters::new(m, route, "backend_to_client"),
        },
        closing: Closing::default(),
        rate: limits.max_messages_per_second.map(Rate::new),
        frames: limits.max_frames_per_second.map(Rate::new),
        keepalive: limits.ping_interval.map(|interval| {
            Box::new(Keepalive::new(
                interval,
                limits.pong_timeout.unwrap_or(Duration::from_secs(10)),
                m.websocket_ping_rtt_seconds.with_label_values(&[route]),
                Instant::now(),
            ))
        }),
        rng: SystemRandom::new(),
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
                CloseReason::Operator => conn.initiate(GatewayClose::Operator),
                // Already spread by whoever scheduled the shed.
                CloseReason::Shed => conn.initiate(GatewayClose::Shed),
            }
        }
        if let Some(timer) = w.drain_timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            w.drain_timer = None;
            conn.initiate(if w.reload_close {
                GatewayClose::Reload
            } else {
                GatewayClose::Drain
            });
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
            if let Some(timer) = w.ping_timer.as_mut()
                && let Some(keepalive) = conn.keepalive.as_mut()
                && let Some(next_ping) = keepalive.take_answered()
            {
                timer.as_mut().reset(next_ping);
                again = timer.as_mut().poll(cx).is_ready();
            }

            if conn.closing.closing() && w.close_deadline.is_none() {
                w.close_deadline = Some(Box::pin(tokio::time::sleep(session.close_timeout)));
            }
            if conn.closing.finished() && conn.poll_shutdown(cx, client, backend).is_ready() {
                return Poll::Ready(conn.closing.finished_reason());
            }
            if let Some(deadline) = w.close_deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(EndReason::CloseTimeout);
            }
            if idle_expired(idle.as_mut(), cx, w.last_progress + session.idle_timeout) {
                // Idle: close properly rather than cut; close_timeout bounds it.
                conn.initiate(GatewayClose::Idle);
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

    conn.closing.end(reason)
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

/// The connection: both directions, the closing handshake, keepalive and limits.
struct Conn<'a> {
    /// Client to backend.
    up: Direction,
    /// Backend to client.
    down: Direction,
    up_counters: Counters<'a>,
    down_counters: Counters<'a>,
    closing: Closing,
    /// `max_messages_per_second`, on the client's messages.
    rate: Option<Rate>,
    /// `max_frames_per_second`, on the client's frames.
    frames: Option<Rate>,
    /// Boxed: only routes with `ping_interval` have one.
    keepalive: Option<Box<Keepalive>>,
    rng: SystemRandom,
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

    /// The direction whose writer is `side`.
    fn toward(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.down,
            Side::Backend => &mut self.up,
        }
    }

    /// Does what the closing handshake asks: counts the close when it begins and queues the
    /// gateway's Close frames.
    fn apply(&mut self, outcome: Outcome<'_>) {
        if let Some((code, initiator)) = outcome.started {
            self.closes
                .with_label_values(&[self.route, code::label(code), initiator])
                .inc();
        }
        for close in outcome.frames() {
            // Toward the backend the gateway is a client, whose frames are masked with a
            // fresh key (RFC 6455 §5.3); toward the client it is the server, which must not
            // mask.
            let mask = match close.toward {
                Side::Client => None,
                Side::Backend => Some(self.random::<4>()),
            };
            let mut frame = [0u8; MAX_CONTROL_FRAME];
            let len = tracker::encode_close(close.code, close.reason, mask, &mut frame);
            self.toward(close.toward).queue(frame, len, true);
        }
    }

    /// The gateway starts the close (drain, operator, reload, idle, a silent client).
    fn initiate(&mut self, why: GatewayClose) {
        let outcome = self.closing.initiate(why);
        self.apply(outcome);
    }

    fn handle(&mut self, reader: Side, note: Note) {
        match note {
            Note::Close(code) => {
                let toward_other = self.toward(other(reader));
                toward_other.withdraw_close();
                let forwarded = !toward_other.dropping();
                let outcome = self.closing.close_seen(reader, code, forwarded);
                self.apply(outcome);
            }
            Note::Violation(code, reason) => {
                let outcome = self.closing.violation(reader, code, &reason);
                self.apply(outcome);
            }
            Note::ReaderLost => {
                let outcome = self.closing.reader_lost(reader);
                if self.closing.gone(reader) {
                    self.toward(reader).stop_writing();
                }
                self.apply(outcome);
            }
            Note::WriterLost => {
                let outcome = self.closing.writer_lost(other(reader));
                self.apply(outcome);
            }
            Note::Message => {
                if reader == Side::Client
                    && !self.closing.sent_close(Side::Client)
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
                if keepalive.pong(self.up.control_payload(), Instant::now()) {
                    self.up.swallow(start);
                }
            }
        }
    }

    /// Sends the next keepalive ping when it is due, or closes a client that left the last
    /// one unanswered past `pong_timeout`. Returns when to be called again; `None` once
    /// keepalive is over.
    fn keepalive_tick(&mut self) -> Option<Instant> {
        if self.closing.closing() {
            return None;
        }
        let payload = self.random::<8>();
        let keepalive = self.keepalive.as_mut()?;
        match keepalive.tick(Instant::now(), payload) {
            Tick::Silent => {
                self.initiate(GatewayClose::PongTimeout);
                None
            }
            Tick::Wait { ping, next } => {
                if let Some(payload) = ping {
                    let mut frame = [0u8; MAX_CONTROL_FRAME];
                    let len = tracker::encode_ping(&payload, None, &mut frame).unwrap_or(0);
                    self.down.queue(frame, len, false);
                }
                Some(next)
            }
        }
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
        let ping_queued = self.down.ping_queued();
        let up = self.up.poll_move(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *backend),
            &self.up_counters,
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
            &self.down_counters,
            None,
            progressed,
        );
        // The ping went out: start its clock.
        if ping_queued
            && !self.down.ping_queued()
            && let Some(keepalive) = self.keepalive.as_mut()
        {
            keepalive.ping_sent(Instant::now());
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
