//! Binary upgrade, the process side: starting the new binary, the control socket that
//! `sockgate upgrade` talks to, and telling systemd which process is the service now.
//!
//! The running (old) process, on SIGUSR2 or an `upgrade` request on its control socket:
//! 1. starts the binary it was started as (see [`program_at_start`]) with the same
//!    arguments, and [`handoff::ENV_SOCKET`] naming a Unix socket in a fresh private folder;
//! 2. accepts the new process's connection there (checking its pid), and offers it every
//!    listening socket ([`handoff::Channel::offer`]);
//! 3. waits for `ready` (the new process checked its config, adopted the sockets and is
//!    accepting) or `abort`, or the process's exit, or the timeout. Anything but `ready`
//!    kills the new process if it still runs, and the old one carries on as if nothing
//!    happened; the reason is logged and told to whoever asked.
//!
//! After `ready` the old process stops accepting and drains (see `Handle::hand_over`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::Handle;
use crate::handoff::{self, Channel, HandoffError, Inherited, Message, Sockets};

/// How long the old process waits for the new one to report ready, unless the request says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the new process waits for the sockets once connected (the old one sends them at
/// once).
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A control request is one short line, sent at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already in progress")]
    Busy,
    #[error("only a gateway started with --config FILE can be upgraded")]
    NoConfigFile,
    #[error("the gateway is draining")]
    Draining,
    #[error("cannot copy the listening sockets")]
    Sockets(#[source] std::io::Error),
    #[error("cannot set up the handoff socket")]
    Setup(#[source] std::io::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the new process exited before it was ready ({0})")]
    Exited(String),
    #[error("the new process refused to start: {0}")]
    Refused(String),
    #[error("the new process was not ready within {0:?}")]
    Timeout(Duration),
    #[error("handoff to the new process failed")]
    Handoff(#[from] HandoffError),
}

/// The binary an upgrade starts: the path this process was started as, made absolute now
/// (against the current folder, or found on `PATH` for a bare name) but not resolved through
/// symlinks, so that the upgrade runs whatever file is at that path then: one copied over
/// it, or the new target of a symlink flipped to a new release. `/proc/self/exe` would not
/// do: after `cp new /usr/bin/sockgate` it names the replaced (deleted) file, and it goes
/// through symlinks.
pub fn program_at_start() -> Option<PathBuf> {
    let argv0 = std::env::args_os().next()?;
    let path = Path::new(&argv0);
    if argv0.as_bytes().contains(&b'/') {
        return std::path::absolute(path).ok();
    }
    if let Some(dirs) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&dirs) {
            let candidate = dir.join(path);
            if candidate.is_file() {
                return std::path::absolute(candidate).ok();
            }
        }
    }
    std::env::current_exe().ok()
}

/// Sends `state` to systemd's notification socket, when run by systemd with `Type=notify`.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), Path::new(&path)),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// A folder only we can enter (0700, fresh), removed with its contents when dropped: the
/// handoff socket lives there so that no other user can connect to it first.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> std::io::Result<Self> {
        use ring::rand::SecureRandom;
        use std::os::unix::fs::DirBuilderExt;
        let random = ring::rand::SystemRandom::new();
        for _ in 0..16 {
            let mut suffix = [0u8; 8];
            random
                .fill(&mut suffix)
                .map_err(|_| std::io::Error::other("no random numbers from the OS"))?;
            let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            let dir = std::env::temp_dir()
                .join(format!("sockgate-upgrade-{}-{suffix}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(PrivateDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("every name tried exists"))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The new process until it is ready: killed if the attempt fails or is dropped.
struct Running(Option<Child>);

impl Running {
    fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// It is the gateway now: let it run on after we exit.
    fn detach(mut self) {
        self.0.take();
    }

    async fn kill(mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// Starts `program args` and hands it `sockets`; returns the new process's pid once it is
/// ready. On any error the new process is gone when this returns.
pub async fn attempt(
    program: &Path,
    args: &[OsString],
    sockets: &Sockets,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let dir = PrivateDir::new().map_err(UpgradeError::Setup)?;
    let path = dir.0.join("handoff.sock");
    let listener = UnixListener::bind(&path).map_err(UpgradeError::Setup)?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .env(handoff::ENV_SOCKET, &path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let pid = child.id();
    tracing::info!(
        pid,
        program = %program.display(),
        "upgrade: new process started; handing over the listening sockets"
    );
    let mut running = Running(Some(child));
    let outcome =
        match tokio::time::timeout(timeout, handshake(&listener, &mut running, pid, sockets)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(UpgradeError::Timeout(timeout)),
        };
    drop(listener);
    drop(dir);
    match outcome {
        Ok(ready_pid) => {
            running.detach();
            Ok(ready_pid)
        }
        Err(e) => {
            running.kill().await;
            Err(e)
        }
    }
}

async fn handshake(
    listener: &UnixListener,
    running: &mut Running,
    pid: Option<u32>,
    sockets: &Sockets,
) -> Result<u32, UpgradeError> {
    let Some(child) = running.child() else {
        return Err(UpgradeError::Exited("gone".into()));
    };
    let stream = loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(UpgradeError::Setup)?;
                let peer = stream.peer_cred().ok().and_then(|c| c.pid());
                if peer.is_some() && peer == pid.and_then(|p| i32::try_from(p).ok()) {
                    break stream;
                }
                tracing::warn!(peer, "upgrade: a process other than the new one connected to the handoff socket; ignored");
            }
            status = child.wait() => return Err(UpgradeError::Exited(exit_text(status))),
        }
    };
    let mut channel = Channel::new(stream);
    // The new process reads the offer only once its config is checked; one that refuses its
    // config says why and exits, maybe before the offer is sent. What it said is still in
    // our receive buffer then, so the answer is read even when sending failed.
    let mut exited = None;
    let (offered, answer) = tokio::select! {
        biased;
        outcome = async {
            let offered = channel.offer(sockets).await;
            (offered, channel.recv().await)
        } => outcome,
        status = child.wait() => {
            exited = Some(exit_text(status));
            let answer = tokio::time::timeout(Duration::from_millis(200), channel.recv()).await;
            (Ok(()), answer.unwrap_or(Err(HandoffError::Closed)))
        }
    };
    match answer {
        Ok(Message::Ready { pid: ready }) if offered.is_ok() && exited.is_none() => {
            if Some(ready) != pid {
                tracing::warn!(
                    ready,
                    started = pid,
                    "upgrade: the ready process is not the one started"
                );
            }
            return Ok(ready);
        }
        Ok(Message::Abort { reason }) => return Err(UpgradeError::Refused(reason)),
        _ => {}
    }
    // No answer: the exit status (if it comes quickly) says more than a broken pipe.
    let exited = match exited {
        Some(status) => Some(status),
        None => tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .ok()
            .map(exit_text),
    };
    match (exited, offered, answer) {
        (Some(status), _, _) => Err(UpgradeError::Exited(status)),
        (None, Err(e), _) | (None, Ok(()), Err(e)) => Err(e.into()),
        (None, Ok(()), Ok(other)) => {
            Err(HandoffError::Protocol(format!("expected ready, got {other:?}")).into())
        }
    }
}

/// The new process's end of an upgrade: set when [`handoff::ENV_SOCKET`] is.
pub struct Successor {
    stream: Option<std::os::unix::net::UnixStream>,
    channel: Option<Channel>,
}

impl Successor {
    /// Connects to the process that started this one, if one did.
    pub fn from_env() -> Option<Result<Self, HandoffError>> {
        let path = std::env::var_os(handoff::ENV_SOCKET)?;
        Some(
            std::os::unix::net::UnixStream::connect(&path)
                .map(|stream| Successor {
                    stream: Some(stream),
                    channel: None,
                })
                .map_err(HandoffError::from),
        )
    }

    fn channel(&mut self) -> Result<&mut Channel, HandoffError> {
        if let Some(stream) = self.stream.take() {
            stream.set_nonblocking(true)?;
            self.channel = Some(Channel::new(UnixStream::from_std(stream)?));
        }
        self.channel.as_mut().ok_or(HandoffError::Closed)
    }

    /// The listening sockets of the process being replaced.
    pub async fn receive(&mut self) -> Result<Inherited, HandoffError> {
        let channel = self.channel()?;
        match tokio::time::timeout(RECEIVE_TIMEOUT, channel.receive()).await {
            Ok(received) => received,
            Err(_) => Err(HandoffError::Protocol(format!(
                "no sockets within {RECEIVE_TIMEOUT:?}"
            ))),
        }
    }

    /// Tells the old process that this one will not take over, and why; it keeps serving.
    pub async fn abort(&mut self, reason: &str) {
        let message = Message::Abort {
            reason: reason.to_owned(),
        };
        let sent = match self.channel() {
            Ok(channel) => {
                tokio::time::timeout(Duration::from_secs(2), channel.send(&message, &[])).await
            }
            Err(e) => Ok(Err(e)),
        };
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!("cannot tell the process being replaced that this one gives up");
        }
    }

    /// Tells the old process that this one accepts on its sockets: it stops and drains.
    pub async fn ready(&mut self) -> Result<(), HandoffError> {
        let message = Message::Ready {
            pid: std::process::id(),
        };
        let channel = self.channel()?;
        match tokio::time::timeout(Duration::from_secs(2), channel.send(&message, &[])).await {
            Ok(sent) => sent,
            Err(_) => Err(HandoffError::Protocol(
                "the old process does not read".into(),
            )),
        }
    }
}

/// Binds the control socket at `path` (owner-only), replacing a socket file that a process
/// no longer running left there, but never one that answers, nor a file that is no socket.
pub fn bind_control(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            match std::os::unix::net::UnixStream::connect(path) {
                Err(c) if is_socket && c.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                    std::os::unix::net::UnixListener::bind(path)?
                }
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "a running gateway answers on it",
                    ));
                }
                Err(_) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What `sockgate upgrade` sends: `upgrade <timeout in ms>`.
fn parse_request(line: &str) -> Option<Duration> {
    let mut words = line.split_whitespace();
    if words.next()? != "upgrade" {
        return None;
    }
    let timeout = match words.next() {
        None => DEFAULT_TIMEOUT,
        Some(ms) => Duration::from_millis(ms.parse().ok()?),
    };
    words.next().is_none().then_some(timeout)
}

/// Asks the gateway whose control socket is `path` to upgrade itself and waits for the
/// outcome: the line to print on success, the reason on failure.
pub async fn request(path: &Path, timeout: Duration) -> Result<String, String> {
    let mut stream = tokio::time::timeout(REQUEST_TIMEOUT, UnixStream::connect(path))
        .await
        .map_err(|_| format!("no answer from the control socket {}", path.display()))?
        .map_err(|e| format!("cannot reach a running gateway at {}: {e}", path.display()))?;
    let line = format!("upgrade {}\n", timeout.as_millis());
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = String::new();
    // The gateway answers within its own timeout plus the time to kill a failed process.
    let wait = timeout + Duration::from_secs(10);
    match tokio::time::timeout(wait, (&mut stream).take(4096).read_to_string(&mut answer)).await {
        Err(_) => return Err(format!("no outcome within {wait:?}")),
        Ok(Err(e)) => return Err(format!("the control connection failed: {e}")),
        Ok(Ok(_)) => {}
    }
    let answer = answer.trim_end();
    if let Some(ok) = answer.strip_prefix("ok ") {
        Ok(ok.to_owned())
    } else if let Some(error) = answer.strip_prefix("error ") {
        Err(error.to_owned())
    } else {
        Err(format!(
            "the gateway closed the control connection without an answer ({answer:?})"
        ))
    }
}

async fn reply(mut stream: UnixStream, outcome: Result<String, String>) {
    let line = match outcome {
        Ok(text) => format!("ok {text}\n"),
        Err(text) => format!("error {}\n", text.replace('\n', " ")),
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(line.as_bytes())).await;
}

/// As [`reply`], written before returning where the socket takes it (a short line into an
/// empty socket buffer always fits): after a successful upgrade this process may drain and
/// exit at once, before a spawned task would have run.
fn reply_at_once(mut stream: UnixStream, outcome: Result<String, String>) {
    let mut line = match outcome {
        Ok(text) => format!("ok {text}\n"),
        Err(text) => format!("error {}\n", text.replace('\n', " ")),
    };
    let written = stream.try_write(line.as_bytes()).unwrap_or(0);
    if written < line.len() {
        let rest = line.split_off(written);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(rest.as_bytes())).await;
        });
    }
}

/// An upgrade asked for on the control socket: its timeout, and where the answer goes.
struct Request {
    timeout: Duration,
    reply: UnixStream,
}

async fn read_request(stream: UnixStream, requests: mpsc::Sender<Request>) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut reader).take(256).read_line(&mut line),
    )
    .await;
    let stream = reader.into_inner();
    match (read, parse_request(&line)) {
        (Ok(Ok(_)), Some(timeout)) => {
            let _ = requests
                .send(Request {
                    timeout,
                    reply: stream,
                })
                .await;
        }
        _ => {
            reply(
                stream,
                Err(format!(
                    "unknown request {:?}; try `upgrade`",
                    line.trim_end()
                )),
            )
            .await;
        }
    }
}

/// Watches for upgrade requests (SIGUSR2, the control socket) on the running gateway and
/// runs them one at a time.
pub struct Supervisor {
    handle: Handle,
    /// The binary and arguments to start; `None` when this gateway cannot be upgraded.
    program: Option<(PathBuf, Vec<OsString>)>,
    usr2: tokio::signal::unix::Signal,
    control: Option<(PathBuf, UnixListener)>,
    requests: mpsc::Receiver<Request>,
    requests_tx: mpsc::Sender<Request>,
    attempt: Option<Attempt>,
}

struct Attempt {
    task: tokio::task::JoinHandle<Result<u32, UpgradeError>>,
    reply: Option<UnixStream>,
}

impl Supervisor {
    /// `program`: what to start, `None` for a gateway without a config file (demo, proxy).
    /// `usr2` is registered by the caller as early as it can: SIGUSR2's default action ends
    /// the process.
    pub fn new(
        handle: Handle,
        program: Option<(PathBuf, Vec<OsString>)>,
        usr2: tokio::signal::unix::Signal,
        control: Option<(PathBuf, std::os::unix::net::UnixListener)>,
    ) -> std::io::Result<Self> {
        let control = match control {
            Some((path, listener)) => Some((path, UnixListener::from_std(listener)?)),
            None => None,
        };
        let (requests_tx, requests) = mpsc::channel(8);
        Ok(Supervisor {
            handle,
            program,
            usr2,
            control,
            requests,
            requests_tx,
            attempt: None,
        })
    }

    /// Completes once an upgrade succeeded, with the new process's pid: it accepts on our
    /// sockets, and systemd (if it runs us) follows it as the main process. Failed upgrades
    /// are logged and answered, and this goes on waiting.
    ///
    /// Cancel-safe (it awaits nothing but the select), so it can sit in a `select!` loop
    /// beside the other signals.
    pub async fn upgraded(&mut self) -> u32 {
        loop {
            let control = self.control.as_ref().map(|(_, l)| l);
            tokio::select! {
                _ = self.usr2.recv() => self.begin(DEFAULT_TIMEOUT, None, "SIGUSR2"),
                accepted = async { control?.accept().await.ok() }, if control.is_some() => {
                    if let Some((stream, _)) = accepted {
                        tokio::spawn(read_request(stream, self.requests_tx.clone()));
                    }
                }
                Some(request) = self.requests.recv() => {
                    self.begin(request.timeout, Some(request.reply), "sockgate upgrade");
                }
                joined = async { (&mut self.attempt.as_mut()?.task).await.ok() }, if self.attempt.is_some() => {
                    let reply_to = self.attempt.take().and_then(|a| a.reply);
                    let outcome = joined.unwrap_or_else(|| {
                        Err(UpgradeError::Exited("the upgrade task failed".into()))
                    });
                    match outcome {
                        Ok(pid) => {
                            tracing::info!(new_pid = pid, "upgrade: the new process is ready; this one stops accepting and drains");
                            notify_systemd(&format!("MAINPID={pid}"));
                            if let Some(stream) = reply_to {
                                reply_at_once(stream, Ok(format!(
                                    "upgraded: process {pid} is serving; process {} drains its connections",
                                    std::process::id()
                                )));
                            }
                            return pid;
                        }
                        Err(e) => {
                            let text = crate::error::error_chain(&e);
                            tracing::error!(error = %text, "upgrade failed; this process keeps serving");
                            if let Some(stream) = reply_to {
                                tokio::spawn(reply(stream, Err(text)));
                            }
                        }
                    }
                }
            }
        }
    }

    fn begin(&mut self, timeout: Duration, reply_to: Option<UnixStream>, from: &str) {
        let refuse = |e: UpgradeError, reply_to: Option<UnixStream>| {
            if let Some(stream) = reply_to {
                tokio::spawn(reply(stream, Err(crate::error::error_chain(&e))));
            }
        };
        if self.attempt.is_some() {
            tracing::warn!(from, "upgrade requested while one is in progress; ignored");
            return refuse(UpgradeError::Busy, reply_to);
        }
        if self.handle.is_draining() {
            tracing::warn!(from, "upgrade requested while draining; ignored");
            return refuse(UpgradeError::Draining, reply_to);
        }
        let Some((program, args)) = self.program.clone() else {
            tracing::error!(
                from,
                "upgrade requested, but {}",
                UpgradeError::NoConfigFile
            );
            return refuse(UpgradeError::NoConfigFile, reply_to);
        };
        let sockets = self.handle.handoff_sockets().and_then(|mut sockets| {
            if let Some((path, listener)) = &self.control {
                use std::os::fd::AsFd;
                sockets.control = Some((path.clone(), listener.as_fd().try_clone_to_owned()?));
            }
            Ok(sockets)
        });
        let sockets = match sockets {
            Ok(sockets) => sockets,
            Err(e) => {
                let e = UpgradeError::Sockets(e);
                tracing::error!(from, error = %crate::error::error_chain(&e), "upgrade failed; this process keeps serving");
                return refuse(e, reply_to);
            }
        };
        tracing::info!(from, program = %program.display(), timeout = ?timeout, "upgrade requested");
        let task = tokio::spawn(async move { attempt(&program, &args, &sockets, timeout).await });
        self.attempt = Some(Attempt {
            task,
            reply: reply_to,
        });
    }

    /// After a clean drain (no upgrade), the control socket's file goes too; after an upgrade
    /// it is the new process's.
    pub fn close(mut self, handed_over: bool) {
        if let Some((path, listener)) = self.control.take() {
            drop(listener);
            if !handed_over {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // A drain that starts during an upgrade ends it: the new process is killed.
        if let Some(attempt) = &self.attempt {
            attempt.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A stand-in for the new binary: connects to the handoff socket, reads `frames` frames
    /// of the offer, says `message`, and exits at once.
    fn says_and_exits(frames: usize, message: &str) -> Vec<OsString> {
        let script = format!(
            "import os, socket, struct\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect(os.environ['{}'])\n\
             def exact(n):\n    b = b''\n    while len(b) < n:\n        b += s.recv(n - len(b))\n    return b\n\
             for _ in range({frames}):\n    exact(struct.unpack('>I', exact(4))[0])\n\
             b = {message:?}.encode()\n\
             s.sendall(struct.pack('>I', len(b)) + b)\n",
            handoff::ENV_SOCKET
        );
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn what_the_new_process_says_before_exiting_is_its_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsFd;
        let sockets = Sockets {
            listeners: vec![handoff::ListenerSockets {
                name: "edge".into(),
                configured: "127.0.0.1:0".parse().unwrap(),
                fds: vec![l.as_fd().try_clone_to_owned().unwrap()],
            }],
            ..Sockets::default()
        };
        let python = Path::new("python3");
        // Whether it exits before or after the offer is sent, its reason is what is reported.
        for _ in 0..5 {
            let args = says_and_exits(
                0,
                r#"{"type":"abort","reason":"invalid config: x.toml:1:1"}"#,
            );
            let e = attempt(python, &args, &sockets, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "the new process refused to start: invalid config: x.toml:1:1"
            );
        }
        // Ready once it has the whole offer (the offer, one batch of descriptors).
        let args = says_and_exits(2, r#"{"type":"ready","pid":1}"#);
        let pid = attempt(python, &args, &sockets, Duration::from_secs(10)).await;
        assert_eq!(pid.unwrap(), 1, "ready as it said");
        let args = says_and_exits(0, r#"{"type":"fds","count":3}"#);
        let e = attempt(python, &args, &sockets, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, UpgradeError::Exited(_)), "{e}");
    }

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request("upgrade\n"), Some(DEFAULT_TIMEOUT));
        assert_eq!(
            parse_request("upgrade 1500\n"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_request("upgrade soon\n"), None);
        assert_eq!(parse_request("upgrade 1 2\n"), None);
        assert_eq!(parse_request("reload\n"), None);
        assert_eq!(parse_request(""), None);
    }

    #[test]
    fn a_stale_control_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let live = bind_control(&path).unwrap();
        let e = bind_control(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(live);
        // The file stays behind, refusing connections: replaced.
        assert!(path.exists());
        let _again = bind_control(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        assert!(bind_control(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn a_new_process_that_exits_at_once_or_never_connects_fails_the_attempt() {
        let sockets = Sockets::default();
        let e = attempt(
            Path::new("/bin/false"),
            &[],
            &sockets,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, UpgradeError::Exited(_)), "{e}");

        let started = std::time::Instant::now();
        let e = attempt(
            Path::new("/bin/sleep"),
            &["30".into()],
            &sockets,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, UpgradeError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let e = attempt(
            Path::new("/nonexistent/sockgate"),
            &[],
            &sockets,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, UpgradeError::Spawn { .. }), "{e}");
    }
}
