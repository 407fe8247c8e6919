//! The closing handshake (RFC 6455 §7), for a gateway between two peers: what each side has
//! sent and received, which Close frames the gateway must send itself and toward whom, and
//! when the relay may end. No sockets and no frames here: the relay reports what happened
//! and queues the Close frames an event asks for.
//!
//! Each peer's handshake ends when it has sent a Close and received one (§7.1.2); the relay
//! ends when both have, or when a peer is gone, since nothing more can reach it. A peer's
//! Close is forwarded as it came, and the other side's reply comes back the same way, so the
//! peers close with each other; the gateway sends a Close of its own only toward a side no
//! Close has reached.

use crate::error::Side;

use super::{EndReason, WsEnd, code};

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

/// Why the gateway closes a connection of its own accord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GatewayClose {
    /// The gateway is shutting down (drain).
    Drain,
    /// An operator closed the connection.
    Operator,
    /// A reload removed the connection's route or backend.
    Reload,
    /// An operator shed connections so that clients reconnect to other replicas.
    Shed,
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// The client left the gateway's ping unanswered past `pong_timeout`.
    PongTimeout,
}

impl GatewayClose {
    /// The code and the reason toward the client and toward the backend. 1012 tells a
    /// client it may reconnect at once; 1001 that this endpoint is going away (RFC 6455
    /// §7.4.1, IANA registry).
    fn frames(self) -> (u16, &'static str, &'static str) {
        const SHUTDOWN: &str = "gateway is shutting down";
        const OPERATOR: &str = "closed by the gateway operator";
        const RELOAD: &str = "route or backend removed by a reload";
        const SHED: &str = "rebalancing: reconnect";
        const IDLE: &str = "idle timeout";
        match self {
            GatewayClose::Drain => (code::GOING_AWAY, SHUTDOWN, SHUTDOWN),
            GatewayClose::Operator => (code::GOING_AWAY, OPERATOR, OPERATOR),
            GatewayClose::Reload => (code::SERVICE_RESTART, RELOAD, RELOAD),
            GatewayClose::Shed => (code::SERVICE_RESTART, SHED, SHED),
            GatewayClose::Idle => (code::GOING_AWAY, IDLE, IDLE),
            // To the backend the client is gone; the client is told why.
            GatewayClose::PongTimeout => (
                code::GOING_AWAY,
                "no pong received",
                "client stopped answering pings",
            ),
        }
    }
}

/// A Close frame of the gateway's, to queue toward one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CloseFrame<'r> {
    pub(super) toward: Side,
    pub(super) code: u16,
    pub(super) reason: &'r str,
}

/// What an event asks of the relay.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use]
pub(super) struct Outcome<'r> {
    /// The closing handshake began with this event: the code of its first Close and who
    /// sent it. Counted when the close begins, so the metric moves then rather than when
    /// the handshake ends.
    pub(super) started: Option<(u16, &'static str)>,
    /// At most one Close toward each side.
    pub(super) frames: [Option<CloseFrame<'r>>; 2],
}

impl<'r> Outcome<'r> {
    pub(super) fn frames(&self) -> impl Iterator<Item = CloseFrame<'r>> + '_ {
        self.frames.iter().flatten().copied()
    }
}

/// Both peers' sides of the closing handshake, and the Close that started it.
#[derive(Default, Debug)]
pub(super) struct Closing {
    client: Peer,
    backend: Peer,
    /// The Close that started the closing handshake: code and who sent it.
    started: Option<(u16, &'static str)>,
}

/// The peer across the gateway from `side`.
pub(super) fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    }
}

impl Closing {
    fn peer(&mut self, side: Side) -> &mut Peer {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }

    fn peer_ref(&self, side: Side) -> &Peer {
        match side {
            Side::Client => &self.client,
            Side::Backend => &self.backend,
        }
    }

    fn start(&mut self, code: u16, by: &'static str, out: &mut Outcome<'_>) {
        if self.started.is_none() {
            self.started = Some((code, by));
            out.started = self.started;
        }
    }

    /// A Close from the gateway to `side`, unless a Close already reached it or it is gone.
    fn close_toward<'r>(&mut self, side: Side, code: u16, reason: &'r str, out: &mut Outcome<'r>) {
        let peer = self.peer(side);
        if peer.got_close || peer.gone {
            return;
        }
        peer.got_close = true;
        let frame = CloseFrame {
            toward: side,
            code,
            reason,
        };
        if let Some(slot) = out.frames.iter_mut().find(|f| f.is_none()) {
            *slot = Some(frame);
        }
    }

    /// The gateway closes: a Close toward each side no Close has reached.
    pub(super) fn initiate(&mut self, why: GatewayClose) -> Outcome<'static> {
        let mut out = Outcome::default();
        if self.client.got_close && self.backend.got_close {
            return out;
        }
        let (code, to_client, to_backend) = why.frames();
        self.start(code, "gateway", &mut out);
        self.close_toward(Side::Client, code, to_client, &mut out);
        self.close_toward(Side::Backend, code, to_backend, &mut out);
        out
    }

    /// `from` sent a Close (`code`: None when it carried none). It is forwarded as it came;
    /// `forwarded` is false when the other side's direction drops what it relays, because
    /// the gateway's own Close already went there.
    pub(super) fn close_seen(
        &mut self,
        from: Side,
        code: Option<u16>,
        forwarded: bool,
    ) -> Outcome<'static> {
        let mut out = Outcome::default();
        self.peer(from).sent_close = true;
        // RFC 6455 §7.1.5: a Close without a code counts as 1005.
        self.start(code.unwrap_or(code::NO_STATUS), from.as_str(), &mut out);
        if forwarded {
            self.peer(other(from)).got_close = true;
        }
        out
    }

    /// `offender` broke the protocol or a limit: Close `code` to it, 1001 to the other side
    /// (its peer did not close, the gateway ended the conversation). Nothing the offender
    /// sends afterwards counts, its Close reply included.
    pub(super) fn violation<'r>(
        &mut self,
        offender: Side,
        code: u16,
        reason: &'r str,
    ) -> Outcome<'r> {
        let mut out = Outcome::default();
        if self.peer(offender).sent_close {
            return out;
        }
        tracing::info!(offender = offender.as_str(), code, %reason, "WebSocket protocol violation");
        self.peer(offender).sent_close = true;
        self.start(code, "gateway", &mut out);
        self.close_toward(offender, code, reason, &mut out);
        self.close_toward(
            other(offender),
            code::GOING_AWAY,
            "peer broke the protocol",
            &mut out,
        );
        out
    }

    /// `side`'s stream ended (EOF or a read error). After its Close that is the clean end of
    /// its side (RFC 6455 §7.1.1); before it, the peer is lost.
    pub(super) fn reader_lost(&mut self, side: Side) -> Outcome<'static> {
        let peer = self.peer(side);
        if peer.sent_close {
            return Outcome::default();
        }
        peer.gone = true;
        peer.sent_close = true;
        self.lost(side)
    }

    /// Writing to `side` failed: it is gone.
    pub(super) fn writer_lost(&mut self, side: Side) -> Outcome<'static> {
        let peer = self.peer(side);
        if peer.gone {
            return Outcome::default();
        }
        peer.gone = true;
        let already_closing = peer.sent_close;
        peer.sent_close = true;
        if already_closing {
            return Outcome::default();
        }
        self.lost(side)
    }

    /// A peer went away without a Close: the other side is told with the code that says
    /// which (1014: the gateway got no good answer from upstream; 1001: the client left).
    fn lost(&mut self, side: Side) -> Outcome<'static> {
        let mut out = Outcome::default();
        match side {
            Side::Backend => {
                self.start(code::BAD_GATEWAY, "gateway", &mut out);
                self.close_toward(
                    Side::Client,
                    code::BAD_GATEWAY,
                    "backend connection lost",
                    &mut out,
                );
            }
            Side::Client => {
                self.start(code::GOING_AWAY, "gateway", &mut out);
                self.close_toward(
                    Side::Backend,
                    code::GOING_AWAY,
                    "client connection lost",
                    &mut out,
                );
            }
        }
        out
    }

    /// Whether `side` has sent a Close (or broke the protocol, or is gone).
    pub(super) fn sent_close(&self, side: Side) -> bool {
        self.peer_ref(side).sent_close
    }

    /// Whether `side` went away without a Close.
    pub(super) fn gone(&self, side: Side) -> bool {
        self.peer_ref(side).gone
    }

    /// Whether a closing handshake has begun: `close_timeout` runs from here.
    pub(super) fn closing(&self) -> bool {
        self.started.is_some()
    }

    /// Whether both closing handshakes are over.
    pub(super) fn finished(&self) -> bool {
        self.client.done() && self.backend.done()
    }

    /// How a finished handshake ended.
    pub(super) fn finished_reason(&self) -> EndReason {
        if self.client.gone || self.backend.gone {
            EndReason::PeerLost
        } else {
            EndReason::Closed
        }
    }

    /// For the access log: the Close that started the handshake, and how the relay ended.
    pub(super) fn end(&self, reason: EndReason) -> WsEnd {
        WsEnd {
            close: self.started,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(toward: Side, code: u16, reason: &str) -> Option<CloseFrame<'_>> {
        Some(CloseFrame {
            toward,
            code,
            reason,
        })
    }

    /// The gateway's Close went out to both sides; each side's reply comes back to a
    /// direction that drops it, because the other side already has the gateway's Close.
    fn both_reply(closing: &mut Closing, code: u16) {
        assert_eq!(
            closing.close_seen(Side::Client, Some(code), false),
            Outcome::default()
        );
        assert!(!closing.finished(), "the backend has not answered");
        assert_eq!(
            closing.close_seen(Side::Backend, Some(code), false),
            Outcome::default()
        );
        assert!(closing.finished());
        assert_eq!(closing.finished_reason(), EndReason::Closed);
    }

    #[test]
    fn drain_operator_and_idle_close_both_sides_with_1001() {
        for (why, reason) in [
            (GatewayClose::Drain, "gateway is shutting down"),
            (GatewayClose::Operator, "closed by the gateway operator"),
            (GatewayClose::Idle, "idle timeout"),
        ] {
            let mut closing = Closing::default();
            assert!(!closing.closing());
            assert_eq!(
                closing.initiate(why),
                Outcome {
                    started: Some((1001, "gateway")),
                    frames: [
                        frame(Side::Client, 1001, reason),
                        frame(Side::Backend, 1001, reason)
                    ],
                },
                "{why:?}"
            );
            assert!(closing.closing(), "close_timeout runs");
            assert!(!closing.finished());
            both_reply(&mut closing, 1001);
            assert_eq!(
                closing.end(EndReason::Closed).close,
                Some((1001, "gateway"))
            );
        }
    }

    #[test]
    fn a_reload_that_removed_the_route_closes_both_sides_with_1012() {
        let mut closing = Closing::default();
        let reason = "route or backend removed by a reload";
        assert_eq!(
            closing.initiate(GatewayClose::Reload),
            Outcome {
                started: Some((1012, "gateway")),
                frames: [
                    frame(Side::Client, 1012, reason),
                    frame(Side::Backend, 1012, reason)
                ],
            }
        );
        both_reply(&mut closing, 1012);
    }

    #[test]
    fn a_shed_closes_both_sides_with_1012() {
        let mut closing = Closing::default();
        let reason = "rebalancing: reconnect";
        assert_eq!(
            closing.initiate(GatewayClose::Shed),
            Outcome {
                started: Some((1012, "gateway")),
                frames: [
                    frame(Side::Client, 1012, reason),
                    frame(Side::Backend, 1012, reason)
                ],
            }
        );
        both_reply(&mut closing, 1012);
        assert_eq!(
            closing.end(EndReason::Closed).close,
            Some((1012, "gateway"))
        );
    }

    #[test]
    fn a_client_silent_past_pong_timeout_is_closed_with_1001_both_ways() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.initiate(GatewayClose::PongTimeout),
            Outcome {
                started: Some((1001, "gateway")),
                frames: [
                    frame(Side::Client, 1001, "no pong received"),
                    frame(Side::Backend, 1001, "client stopped answering pings")
                ],
            }
        );
    }

    #[test]
    fn a_second_gateway_close_sends_nothing_and_keeps_the_first_code() {
        let mut closing = Closing::default();
        let _ = closing.initiate(GatewayClose::Operator);
        assert_eq!(closing.initiate(GatewayClose::Reload), Outcome::default());
        assert_eq!(closing.initiate(GatewayClose::Idle), Outcome::default());
        assert_eq!(
            closing.end(EndReason::Closed).close,
            Some((1001, "gateway"))
        );
    }

    #[test]
    fn a_peers_close_is_echoed_by_the_other_peer_without_frames_of_the_gateways() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.close_seen(Side::Client, Some(1000), true),
            Outcome {
                started: Some((1000, "client")),
                frames: [None, None],
            }
        );
        assert!(closing.closing());
        assert!(!closing.finished());
        // The backend's reply goes back as it came.
        assert_eq!(
            closing.close_seen(Side::Backend, Some(1000), true),
            Outcome::default()
        );
        assert!(closing.finished());
        // Both close TCP after their Close: a clean end.
        assert_eq!(closing.reader_lost(Side::Client), Outcome::default());
        assert_eq!(closing.reader_lost(Side::Backend), Outcome::default());
        assert!(!closing.gone(Side::Client) && !closing.gone(Side::Backend));
        let end = closing.end(closing.finished_reason());
        assert_eq!(end.close, Some((1000, "client")));
        assert_eq!(end.reason, EndReason::Closed);
    }

    #[test]
    fn a_close_from_the_backend_is_recorded_as_the_backends() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.close_seen(Side::Backend, Some(4000), true).started,
            Some((4000, "backend"))
        );
        let _ = closing.close_seen(Side::Client, Some(4000), true);
        assert!(closing.finished());
    }

    #[test]
    fn a_close_without_a_code_is_recorded_as_1005() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.close_seen(Side::Client, None, true).started,
            Some((1005, "client"))
        );
    }

    #[test]
    fn a_gateway_close_during_a_peers_handshake_goes_only_where_no_close_went() {
        let mut closing = Closing::default();
        let _ = closing.close_seen(Side::Client, Some(1000), true);
        // The backend has the client's Close; the client has had nothing yet.
        assert_eq!(
            closing.initiate(GatewayClose::Drain),
            Outcome {
                started: None,
                frames: [frame(Side::Client, 1001, "gateway is shutting down"), None],
            }
        );
        assert_eq!(
            closing.end(EndReason::Closed).close,
            Some((1000, "client")),
            "the first Close is the one recorded"
        );
        // The backend's reply is dropped (the client has the gateway's Close).
        let _ = closing.close_seen(Side::Backend, Some(1000), false);
        assert!(closing.finished());
    }

    #[test]
    fn a_peer_close_not_forwarded_leaves_the_other_side_waiting() {
        let mut closing = Closing::default();
        let _ = closing.close_seen(Side::Client, Some(1000), false);
        let _ = closing.close_seen(Side::Backend, Some(1000), true);
        assert!(
            !closing.finished(),
            "the backend got no Close: the client's was dropped"
        );
    }

    #[test]
    fn backend_lost_tells_the_client_1014() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.reader_lost(Side::Backend),
            Outcome {
                started: Some((1014, "gateway")),
                frames: [frame(Side::Client, 1014, "backend connection lost"), None],
            }
        );
        assert!(closing.gone(Side::Backend));
        assert!(!closing.finished(), "the client has not answered");
        // The client's reply has nowhere to go.
        let _ = closing.close_seen(Side::Client, Some(1014), true);
        assert!(closing.finished());
        assert_eq!(closing.finished_reason(), EndReason::PeerLost);
        assert_eq!(
            closing.end(EndReason::PeerLost).close,
            Some((1014, "gateway"))
        );
    }

    #[test]
    fn a_failed_write_to_the_backend_is_the_backend_lost() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.writer_lost(Side::Backend),
            Outcome {
                started: Some((1014, "gateway")),
                frames: [frame(Side::Client, 1014, "backend connection lost"), None],
            }
        );
        // Its reader ending too changes nothing.
        assert_eq!(closing.reader_lost(Side::Backend), Outcome::default());
        assert_eq!(closing.writer_lost(Side::Backend), Outcome::default());
    }

    #[test]
    fn client_lost_tells_the_backend_1001() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.reader_lost(Side::Client),
            Outcome {
                started: Some((1001, "gateway")),
                frames: [frame(Side::Backend, 1001, "client connection lost"), None],
            }
        );
        assert_eq!(closing.writer_lost(Side::Client), Outcome::default());
        let _ = closing.close_seen(Side::Backend, Some(1001), true);
        assert!(closing.finished());
        assert_eq!(closing.finished_reason(), EndReason::PeerLost);
    }

    #[test]
    fn a_peer_lost_after_its_close_is_lost_without_a_frame() {
        let mut closing = Closing::default();
        let _ = closing.close_seen(Side::Backend, Some(1000), true);
        // Writing the client's reply to the backend failed: it already closed.
        assert_eq!(closing.writer_lost(Side::Backend), Outcome::default());
        assert!(closing.gone(Side::Backend));
        assert_eq!(
            closing.end(EndReason::Closed).close,
            Some((1000, "backend"))
        );
    }

    #[test]
    fn a_lost_peer_gets_no_close_from_a_later_gateway_close() {
        let mut closing = Closing::default();
        let _ = closing.reader_lost(Side::Backend);
        assert_eq!(closing.initiate(GatewayClose::Drain), Outcome::default());
    }

    #[test]
    fn a_client_over_a_limit_gets_1008_and_the_backend_1001() {
        let mut closing = Closing::default();
        let reason = String::from("more than 10 messages per second");
        assert_eq!(
            closing.violation(Side::Client, code::POLICY, &reason),
            Outcome {
                started: Some((1008, "gateway")),
                frames: [
                    frame(Side::Client, 1008, "more than 10 messages per second"),
                    frame(Side::Backend, 1001, "peer broke the protocol")
                ],
            }
        );
        assert!(closing.sent_close(Side::Client), "nothing it sends counts");
        // A second violation, or its Close reply, changes nothing.
        assert_eq!(
            closing.violation(Side::Client, 1009, "too big"),
            Outcome::default()
        );
        let _ = closing.close_seen(Side::Client, Some(1008), false);
        let _ = closing.close_seen(Side::Backend, Some(1001), false);
        assert!(closing.finished());
        assert_eq!(closing.finished_reason(), EndReason::Closed);
        assert_eq!(
            closing.end(EndReason::Closed).close,
            Some((1008, "gateway"))
        );
    }

    #[test]
    fn a_backend_breaking_the_protocol_gets_the_code_and_the_client_1001() {
        let mut closing = Closing::default();
        assert_eq!(
            closing.violation(Side::Backend, 1002, "masked frame from the server"),
            Outcome {
                started: Some((1002, "gateway")),
                frames: [
                    frame(Side::Backend, 1002, "masked frame from the server"),
                    frame(Side::Client, 1001, "peer broke the protocol")
                ],
            }
        );
    }

    #[test]
    fn a_violation_after_the_offenders_close_is_ignored() {
        let mut closing = Closing::default();
        let _ = closing.close_seen(Side::Client, Some(1000), true);
        assert_eq!(
            closing.violation(Side::Client, 1002, "bad frame"),
            Outcome::default()
        );
    }

    #[test]
    fn close_timeout_ends_a_handshake_a_peer_never_answers() {
        let mut closing = Closing::default();
        let _ = closing.initiate(GatewayClose::Drain);
        let _ = closing.close_seen(Side::Client, Some(1001), false);
        // The backend never answers: the relay is not finished, close_timeout ends it.
        assert!(closing.closing() && !closing.finished());
        let end = closing.end(EndReason::CloseTimeout);
        assert_eq!(end.close, Some((1001, "gateway")));
        assert_eq!(end.reason, EndReason::CloseTimeout);
    }

    #[test]
    fn a_hard_stop_before_any_close_records_none() {
        let closing = Closing::default();
        let end = closing.end(EndReason::Stopped);
        assert_eq!(end.close, None);
        assert_eq!(end.reason, EndReason::Stopped);
    }
}
