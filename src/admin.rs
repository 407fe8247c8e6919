//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`, `/connections`, `/reload`.
//! Plain HTTP on its own listener, meant for loopback or a private network.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{ReloadError, Shared};

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req, &shared).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if shared.shutdown.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/connections") => {
            let rows: Vec<_> = shared.live.all().iter().map(|c| c.snapshot()).collect();
            json(StatusCode::OK, &rows)
        }
        (&Method::DELETE, "/connections") => {
            let (key, value) = query.split_once('=').unwrap_or((query, ""));
            let value = percent_decode(value);
            let matches: Box<dyn Fn(&crate::live::ConnCtx) -> bool> = match key {
                "backend" => Box::new(|c| c.info().backend.as_deref() == Some(value.as_str())),
                "route" => Box::new(|c| c.info().route.as_deref() == Some(value.as_str())),
                _ => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "use DELETE /connections/{id}, ?backend=NAME or ?route=NAME"}),
                    );
                }
            };
            let mut closed = 0;
            for conn in shared.live.all() {
                if matches(&conn) {
                    conn.request_close(1001);
                    closed += 1;
                }
            }
            json(StatusCode::OK, &serde_json::json!({ "closed": closed }))
        }
        (&Method::DELETE, p) if p.starts_with("/connections/") => {
            let id = p["/connections/".len()..].parse::<u64>().ok();
            match id.and_then(|id| shared.live.get(id)) {
                Some(conn) => {
                    conn.request_close(1001);
                    json(StatusCode::OK, &serde_json::json!({ "closed": 1 }))
                }
                None => json(StatusCode::NOT_FOUND, &serde_json::json!({ "closed": 0 })),
            }
        }
        (&Method::POST, "/reload") => match shared.reload_from_source().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "result": "ok" })),
            Err(ReloadError::Invalid(errors)) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({
                    "result": "error",
                    "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                }),
            ),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "result": "error", "errors": [crate::error_chain(&e)] }),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/connections" | "/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz /readyz /metrics /connections\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1])
                .zip(hex(bytes[i + 2]))
                .map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
