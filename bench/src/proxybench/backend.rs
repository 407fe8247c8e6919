//! The servers every target forwards to, run in their own process (`proxybench backend`,
//! hidden), so their CPU is neither the proxies' nor the clients'.
//!
//! - `tcp`: the first byte a client sends picks what the connection does: [`SINK`] reads
//!   and drops until EOF, [`SOURCE`] sends until the client goes, anything else echoes
//!   (the mode byte itself is not echoed).
//! - `tls`: the same behind TLS, so `direct` has a TLS figure to compare with.
//! - `ws`: WebSocket echo of every data message.
//! - `wss`: the same behind TLS.
//! - `udp`: UDP echo of every datagram (scenario 8, [`crate::udp::echo`]).
//! - `http`: HTTP/1.1 for scenario 7's h2 frontends: a small answer to any request, and
//!   WebSocket upgrades that echo (see [`crate::h2`]).
//! - `h2`: the same service behind TLS and HTTP/2 (ALPN `h2`, RFC 8441 extended CONNECT),
//!   for `direct`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use sockgate_bench::proc::Proc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{h2, tls};

pub const SINK: u8 = b'S';
pub const SOURCE: u8 = b'D';
pub const ECHO: u8 = b'E';

/// Bulk transfers move this much per read or write call, on both ends.
pub const BULK_CHUNK: usize = 128 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct BackendAddrs {
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub h2: SocketAddr,
}

/// The backend process: prints its addresses as one JSON line, serves until stdin closes.
pub async fn serve(cert: &Path, key: &Path) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls::server_config(cert, key)?);
    let mut h2_config = (*tls::server_config(cert, key)?).clone();
    h2_config.alpn_protocols = vec![b"h2".to_vec()];
    let h2_acceptor = TlsAcceptor::from(std::sync::Arc::new(h2_config));
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (tcp, tls, ws, wss) = (bind().await?, bind().await?, bind().await?, bind().await?);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let (http, h2_tls) = (bind().await?, bind().await?);
    println!(
        "{}",
        serde_json::json!({
            "tcp": tcp.local_addr()?.to_string(),
            "tls": tls.local_addr()?.to_string(),
            "ws": ws.local_addr()?.to_string(),
            "wss": wss.local_addr()?.to_string(),
            "udp": udp.local_addr()?.to_string(),
            "http": http.local_addr()?.to_string(),
            "h2": h2_tls.local_addr()?.to_string(),
        })
    );
    let tls_acceptor = acceptor.clone();
    let servers = async {
        tokio::join!(
            accept(tcp, serve_bytes),
            accept(tls, move |tcp| {
                let acceptor = tls_acceptor.clone();
                async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve_bytes(stream).await;
                    }
                }
            }),
            accept(ws, serve_websocket),
            accept(wss, move |tcp| {
                let acceptor = acceptor.clone();
                async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve_websocket(stream).await;
                    }
                }
            }),
            crate::udp::echo(udp),
            accept(http, h2::serve_http1),
            accept(h2_tls, move |tcp| {
                let acceptor = h2_acceptor.clone();
                async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        h2::serve_h2(stream).await;
                    }
                }
            }),
        );
    };
    // The parent holds our stdin: when it goes away, however it ends, so do we.
    let parent_gone = async {
        let mut byte = [0u8; 1];
        let _ = tokio::io::stdin().read(&mut byte).await;
    };
    tokio::select! {
        () = servers => {}
        () = parent_gone => {}
    }
    Ok(())
}

async fn accept<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp));
            }
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                eprintln!("proxybench backend: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_bytes<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut mode = [0u8; 1];
    if stream.read_exact(&mut mode).await.is_err() {
        // Closed before asking for anything (the handshake loads): close in kind, with
        // close_notify on TLS.
        let _ = stream.shutdown().await;
        return;
    }
    match mode[0] {
        SINK => {
            let mut buf = vec![0u8; BULK_CHUNK];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        SOURCE => {
            let buf = pattern(BULK_CHUNK);
            while stream.write_all(&buf).await.is_ok() {}
            return;
        }
        _ => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err()
                            || stream.flush().await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn serve_websocket<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // tungstenite answers Ping and Close itself while we keep reading.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// Bytes that are not all zero, so a proxy that compressed would be caught out.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Starts `proxybench backend` as a child and reads its addresses.
pub fn start(cert: &Path, key: &Path) -> anyhow::Result<(Proc, BackendAddrs)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let (proc, line) = Proc::spawn_announcing(
        Command::new(exe)
            .arg("backend")
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key),
        "backend",
    )?;
    let json: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("backend printed {line:?}, not its addresses"))?;
    let addr = |name: &str| -> anyhow::Result<SocketAddr> {
        json[name]
            .as_str()
            .with_context(|| format!("backend printed no {name} address: {line}"))?
            .parse()
            .context("bad backend address")
    };
    let addrs = BackendAddrs {
        tcp: addr("tcp")?,
        tls: addr("tls")?,
        ws: addr("ws")?,
        wss: addr("wss")?,
        udp: addr("udp")?,
        http: addr("http")?,
        h2: addr("h2")?,
    };
    Ok((proc, addrs))
}
