//! Active health checks: one task per backend checks every server each `interval`, all at
//! once, each check bounded by `timeout`. `fall` failures in a row take an up server out,
//! `rise` passes in a row bring a down one back. These are the upstream's own connections,
//! not client traffic: they take no lease and count in no connect metric. A backend with
//! `tls` is checked over TLS: a `tcp` check is the connect and the handshake, an `http` or
//! `websocket` check sends its request inside the session.
//!
//! A server starts up (so a fresh gateway does not refuse traffic before the first round),
//! one failure away from down, so a server that is dead at start is out after the first
//! check rather than after `fall` of them.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use prometheus::IntGaugeVec;

use super::{Server, Servers, connect_addr};
use crate::config::{HealthCheck, HealthKind};
use crate::io::BackendStream;

/// Runs until the caller drops it (on stop or drain).
pub(super) async fn run(
    servers: &Servers,
    backend: &str,
    check: &HealthCheck,
    gauge: &IntGaugeVec,
) {
    let mut streaks: Vec<Streak> = servers
        .list
        .iter()
        .map(|_| Streak {
            passes: 0,
            failures: check.fall.saturating_sub(1),
        })
        .collect();
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let results = futures_util::future::join_all(
            servers
                .list
                .iter()
                .enumerate()
                .map(|(i, s)| tokio::time::timeout(check.timeout, probe(servers, i, s, check))),
        )
        .await;
        for ((server, streak), result) in servers.list.iter().zip(&mut streaks).zip(results) {
            let outcome = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(why),
                Err(_) => Err(format!("no answer within {:?}", check.timeout)),
            };
            let up = server.up.load(Ordering::Relaxed);
            if let Some(now_up) = streak.record(up, outcome.is_ok(), check) {
                server.up.store(now_up, Ordering::Relaxed);
                gauge
                    .with_label_values(&[backend, &server.address])
                    .set(i64::from(now_up && servers.available(server)));
                if now_up {
                    tracing::info!(backend, server = %server.address, rise = check.rise, "server up: health checks pass");
                } else {
                    tracing::warn!(backend, server = %server.address, fall = check.fall, error = outcome.err().unwrap_or_default(), "server down: health checks fail");
                }
            }
        }
    }
}

/// Passing and failing checks in a row of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Records one check of a server that is `up` now; returns its new state if it changes.
    pub(super) fn record(&mut self, up: bool, passed: bool, check: &HealthCheck) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (!up && self.passes >= check.rise).then_some(true)
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            (up && self.failures >= check.fall).then_some(false)
        }
    }
}

/// One check of server `index`; `Err` says why it failed.
async fn probe(
    servers: &Servers,
    index: usize,
    server: &Server,
    check: &HealthCheck,
) -> Result<(), String> {
    let socket = connect_addr(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = match &servers.tls {
        None => BackendStream::Plain(socket),
        Some(connector) => {
            let http = check.kind != HealthKind::Tcp;
            let tls = connector
                .handshake(socket, index, http)
                .await
                .map_err(|e| format!("TLS: {}", crate::error::error_chain(&e)))?;
            BackendStream::Tls(Box::new(tls))
        }
    };
    let websocket = match check.kind {
        HealthKind::Tcp => return Ok(()),
        HealthKind::Http => false,
        HealthKind::WebSocket => true,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = conn.with_upgrades();
    tokio::pin!(conn);
    let mut request = Request::get(check.path.as_str())
        .header(header::HOST, server.host())
        .header(header::USER_AGENT, "sockgate-health-check");
    let key = websocket.then(tungstenite::handshake::client::generate_key);
    request = match &key {
        Some(key) => request
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, key.as_str()),
        None => request.header(header::CONNECTION, "close"),
    };
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let send = sender.send_request(request);
    tokio::pin!(send);
    // The connection may end (Connection: close, or the 101 handing it over) in the same
    // poll that delivers the response; the response is then waiting for `send`.
    let response = tokio::select! {
        biased;
        response = &mut send => response,
        _ = &mut conn => send.await,
    }
    .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    match key {
        None if status.as_u16() == check.expect_status => Ok(()),
        None => Err(format!(
            "status {}, expected {}",
            status.as_u16(),
            check.expect_status
        )),
        Some(key) if status == StatusCode::SWITCHING_PROTOCOLS => {
            // RFC 6455 §4.1: the answer must prove it read this handshake's key.
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            match response.headers().get(header::SEC_WEBSOCKET_ACCEPT) {
                Some(v) if v.as_bytes() == accept.as_bytes() => Ok(()),
                _ => Err("101 without the matching Sec-WebSocket-Accept".to_owned()),
            }
        }
        Some(_) => Err(format!(
            "status {} to a WebSocket handshake, expected 101",
            status.as_u16()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Tcp,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise,
            fall,
            expect_status: 200,
        }
    }

    #[test]
    fn fall_failures_take_a_server_out_and_rise_passes_bring_it_back() {
        let check = check(2, 3);
        let mut s = Streak {
            passes: 0,
            failures: 0,
        };
        assert_eq!(s.record(true, false, &check), None);
        assert_eq!(s.record(true, false, &check), None);
        // A pass in between starts the count over.
        assert_eq!(s.record(true, true, &check), None);
        assert_eq!(s.record(true, false, &check), None);
        assert_eq!(s.record(true, false, &check), None);
        assert_eq!(s.record(true, false, &check), Some(false));
        assert_eq!(s.record(false, true, &check), None);
        assert_eq!(s.record(false, false, &check), None);
        assert_eq!(s.record(false, true, &check), None);
        assert_eq!(s.record(false, true, &check), Some(true));
    }

    #[test]
    fn a_server_dead_at_start_is_out_after_one_check() {
        let check = check(2, 3);
        let mut s = Streak {
            passes: 0,
            failures: check.fall - 1,
        };
        assert_eq!(s.record(true, false, &check), Some(false));
    }
}
