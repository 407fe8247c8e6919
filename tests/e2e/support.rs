//! Shared test fixtures: certificates, a gateway started in-process from TOML text, real
//! backends on loopback, TLS and WebSocket clients, a metrics scraper, and the built binary
//! run as a child process.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::certgen::{self, DevPki};

/// A temp folder with a dev CA and a server certificate for localhost, as files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
}

impl Pki {
    pub fn new() -> Self {
        Self::for_names(certgen::DEV_NAMES)
    }

    pub fn for_names(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = certgen::dev_pki(names).unwrap();
        certgen::write_file(&dir.path().join("server.crt"), &pki.server.cert).unwrap();
        certgen::write_file(&dir.path().join("server.key"), &pki.server.key).unwrap();
        certgen::write_file(&dir.path().join("ca.crt"), &pki.ca.cert).unwrap();
        Pki { dir, pki }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A client config that trusts this CA (and `extra` CAs).
    pub fn client_config(&self, extra: &[&str]) -> Arc<rustls::ClientConfig> {
        client_config(&[&[self.pki.ca.cert.as_str()], extra].concat(), &[])
    }
}

pub fn client_config(cas: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(sockgate::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

/// A gateway running in this process.
pub struct Gateway {
    pub handle: sockgate::Handle,
}

impl Gateway {
    /// Writes `toml` as `sockgate.toml` into `dir` (where relative cert paths resolve) and
    /// starts a gateway with it.
    pub async fn start(dir: &Path, toml: &str) -> Self {
        // Gateway logs in the test's output when RUST_LOG is set.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let config_path = dir.join("sockgate.toml");
        std::fs::write(&config_path, toml).unwrap();
        let config = match sockgate::config::load(&config_path) {
            Ok(config) => config,
            Err(e) => panic!("test config is invalid:\n{e}"),
        };
        let handle = sockgate::start(config).await.unwrap();
        Gateway { handle }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.handle.local_addr(listener).unwrap()
    }

    pub fn admin(&self) -> SocketAddr {
        self.handle.admin_addr().unwrap()
    }

    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&http_get(self.admin(), "/metrics").await.1)
    }
}

/// A binary-safe minimal HTTP/1.1 GET over plain TCP; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw)
}

/// (status, body) of a complete `Connection: close` HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(head, body)| {
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(body)
            } else {
                body.to_owned()
            }
        })
        .unwrap_or_default();
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Parsed Prometheus text: `family{labels}` → value, labels in the order printed.
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut map = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((key, value)) = line.rsplit_once(' ') {
                map.insert(key.to_owned(), value.parse().unwrap_or(f64::NAN));
            }
        }
        Metrics(map)
    }

    /// The value of `name` whose labels include every `labels` pair (summed over the rest).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(key, _)| {
                let (family, rest) = key.split_once('{').unwrap_or((key.as_str(), ""));
                family == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Polls `cond` every 20 ms for up to 5 s; panics with `what` if it never holds.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The demo's TCP echo server on a fresh port.
pub async fn tcp_echo() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(crate::demo::tcp_echo(listener));
    addr
}

/// The demo's WebSocket echo / header-echo HTTP server on a fresh port.
pub async fn ws_echo() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(crate::demo::ws_echo(listener));
    addr
}

/// A port that refuses connections (bound, then closed).
pub async fn dead_port() -> SocketAddr {
    let (listener, addr) = listen().await;
    drop(listener);
    addr
}

/// The built binary as a child process; killed on drop, stderr printed if the test failed.
pub struct Binary {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl Binary {
    pub fn command() -> Command {
        Command::new(env!("CARGO_BIN_EXE_sockgate"))
    }

    /// Starts `sockgate [args] --ready-file F` with stderr to a file in `dir`.
    pub fn spawn(args: &[&str], dir: tempfile::TempDir) -> Self {
        Self::spawn_from(Self::command(), args, dir)
    }

    /// As [`Binary::spawn`], started as `program` (a path to the built binary, e.g. a symlink
    /// to it), which is what a binary upgrade starts again.
    pub fn spawn_program(program: &Path, args: &[&str], dir: tempfile::TempDir) -> Self {
        Self::spawn_from(Command::new(program), args, dir)
    }

    /// As [`Binary::spawn`], with the open-files limit (`RLIMIT_NOFILE`) set to `limit`.
    pub fn spawn_with_open_files(limit: u64, args: &[&str], dir: tempfile::TempDir) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_sockgate"));
        Self::spawn_from(command, args, dir)
    }

    fn spawn_from(mut command: Command, args: &[&str], dir: tempfile::TempDir) -> Self {
        let stderr_path = dir.path().join("stderr.log");
        let ready = dir.path().join("ready.json");
        let child = command
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        Binary {
            child: Some(child),
            dir,
            stderr_path,
        }
    }

    /// Like [`Binary::spawn`], with extra environment variables, and stdout kept in
    /// `dir/stdout.log` (see [`Binary::stdout`]).
    pub fn spawn_with_env(
        args: &[&str],
        dir: tempfile::TempDir,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let stderr_path = dir.path().join("stderr.log");
        let ready = dir.path().join("ready.json");
        let child = Self::command()
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        Binary {
            child: Some(child),
            dir,
            stderr_path,
        }
    }

    /// What a child started by [`Binary::spawn_with_env`] printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Waits for the ready file and returns it parsed.
    pub async fn ready(&mut self) -> serde_json::Value {
        let path = self.dir.path().join("ready.json");
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&path) {
                return serde_json::from_str(&text).unwrap();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sockgate exited early ({status}):\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sockgate never became ready:\n{}", self.stderr());
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exit_status(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!("sockgate did not exit in {limit:?}:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- sockgate stderr ---\n{}", self.stderr());
        }
    }
}

/// Random bytes from a simple xorshift generator (deterministic per seed).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a scripted WebSocket backend saw.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendSaw {
    Message(tokio_tungstenite::tungstenite::Message),
    /// A Close frame arrived with this code.
    Close(Option<u16>),
    /// The connection ended without a Close.
    Lost,
}

/// A WebSocket backend that echoes data messages and reports everything it receives.
/// Scripted by the text of a client message: `drop` drops the TCP connection without a
/// Close; `close:CODE` sends a Close with CODE.
pub async fn scripted_ws_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<BackendSaw>)
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => {
                            let _ = tx.send(BackendSaw::Close(frame.map(|f| f.code.into())));
                            // tungstenite queued the reply; flushing sends it.
                            let _ = ws.flush().await;
                            break;
                        }
                        Some(Ok(Message::Text(text))) if text.as_str() == "drop" => {
                            let _ = tx.send(BackendSaw::Message(Message::text("drop")));
                            return; // dropped without a Close
                        }
                        Some(Ok(Message::Text(text))) if text.starts_with("close:") => {
                            let code: u16 = text["close:".len()..].parse().unwrap();
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: code.into(),
                                    reason: "backend says bye".into(),
                                }))
                                .await;
                        }
                        Some(Ok(msg)) => {
                            let _ = tx.send(BackendSaw::Message(msg.clone()));
                            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                        Some(Err(_)) | None => {
                            let _ = tx.send(BackendSaw::Lost);
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The next report of the backend that is not a data message, within 10 s.
pub async fn backend_close(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<BackendSaw>,
) -> BackendSaw {
    loop {
        let saw = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the backend saw the connection end within 10s")
            .expect("backend still running");
        if !matches!(saw, BackendSaw::Message(_)) {
            return saw;
        }
    }
}

/// A WebSocket client that reads frames off the wire as they are, for close codes that
/// client libraries reinterpret.
pub struct RawWs<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawWs<S> {
    pub async fn handshake(mut stream: S, path: &str) -> Self {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455 §1.3's example key and its accept value.
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        buf.drain(..head_end);
        RawWs { stream, buf }
    }

    /// A stream whose handshake was done elsewhere (an HTTP/2 extended CONNECT).
    pub fn after_handshake(stream: S) -> Self {
        RawWs {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one masked, final frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126);
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Writes `bytes` as they are, in one write: frames the test built itself.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn fill(&mut self, n: usize) {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("a frame within 10s")
                .unwrap();
            assert!(read > 0, "stream ended inside a frame");
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    /// Reads one unmasked frame from the server: (opcode, payload).
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        self.fill(2).await;
        let opcode = self.buf[0] & 0x0F;
        let (len, header) = match self.buf[1] & 0x7F {
            126 => {
                self.fill(4).await;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10).await;
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
        self.fill(header + len).await;
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        (opcode, payload)
    }

    /// Whether the server ends the stream (EOF or reset) within 5 s.
    pub async fn at_eof(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
