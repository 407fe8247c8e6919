//! The `sockgate` command: argument parsing, logging, signals and exit codes around the
//! library's [`sockgate::start`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use sockgate::config::{self, Config};
use sockgate::workers::Workers;
use sockgate::{Handle, upgrade};

mod certgen;
mod demo;

/// `--version`: the package version and the TLS crypto backend built in (cargo features).
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (rustls with {})",
        env!("CARGO_PKG_VERSION"),
        sockgate::certs::BACKEND
    )
});

/// WebSocket/TCP reverse proxy and TLS-terminating gateway.
#[derive(Parser, Debug)]
#[command(
    name = "sockgate",
    version = VERSION.as_str(),
    about,
    args_conflicts_with_subcommands = false
)]
struct Cli {
    /// Config file (TOML). Without a subcommand: run the gateway with it.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Worker threads, each with its own event loop and its own accepting socket on every
    /// listener (default: one per CPU).
    #[arg(long, global = true, value_name = "N")]
    workers: Option<usize>,

    /// Once every listener is bound, write their addresses here as JSON
    /// (`{"listeners": {"NAME": "ADDR"}, "admin": "ADDR"}`), for scripts and tests;
    /// rewritten after each SIGHUP reload.
    #[arg(long, global = true, value_name = "FILE")]
    ready_file: Option<PathBuf>,

    /// Unix socket on which the running gateway takes `sockgate upgrade` requests (created
    /// owner-only; e.g. /run/sockgate/control.sock). Give the same path to `upgrade`.
    #[arg(long, global = true, value_name = "FILE")]
    control_socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the same as giving only --config).
    Run,
    /// Validate the config, certificates and keys without binding anything.
    Check,
    /// TLS listener with built-in TCP-echo and WebSocket-echo backends; prints what to try.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Quick mode: one listener to one backend, no config file.
    Proxy {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Backend address, host:port.
        #[arg(long, value_name = "ADDR")]
        to: String,
        #[arg(
            long,
            value_name = "FILE",
            requires = "tls_key",
            conflicts_with = "tls_self_signed"
        )]
        tls_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Terminate TLS with a fresh self-signed certificate for localhost.
        #[arg(long)]
        tls_self_signed: bool,
        /// Admin endpoint (off unless given).
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Replace the running gateway with the binary now on disk, refusing no connection.
    ///
    /// The gateway answering on --control-socket starts the binary now at the path it was
    /// started as, with the same arguments; the new process takes over the listening
    /// sockets, then the old one drains. Exits 0 once the new process serves; 1, with the
    /// reason, if it did not start (the old one keeps serving). SIGUSR2 to the running
    /// process does the same, without the answer.
    Upgrade {
        /// How long the new process has to check its config and start accepting.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Certificates for development.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Write a dev CA and a localhost/127.0.0.1/::1 server certificate (PEM).
    Dev {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockgate: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// `1 listener`, `2 listeners`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Check) => {
            let Some(path) = cli.config else {
                eprintln!("sockgate: check needs --config FILE");
                return Ok(ExitCode::from(2));
            };
            match config::load(&path) {
                Ok(config) => {
                    // Warnings never fail a check: the config is accepted as it is.
                    for warning in &config.warnings {
                        eprintln!("{warning}");
                    }
                    let routes: usize = config.listeners.iter().map(|l| l.routes.len()).sum();
                    println!(
                        "{}: ok ({}, {}, {})",
                        path.display(),
                        count(config.listeners.len(), "listener"),
                        count(routes, "route"),
                        count(config.backends.len(), "backend")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{errors}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Some(Command::Cert {
            command: CertCommand::Dev { out },
        }) => {
            let written = certgen::write_dev_pki(&out)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            println!(
                "Trust {} in your client; use server.crt and server.key in [[listener]] tls.",
                out.join("ca.crt").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Upgrade { timeout }) => {
            let Some(path) = cli.control_socket else {
                eprintln!(
                    "sockgate: upgrade needs --control-socket FILE, the one the running gateway was started with (or send it SIGUSR2)"
                );
                return Ok(ExitCode::from(2));
            };
            match control_runtime()?.block_on(upgrade::request(&path, timeout)) {
                Ok(done) => {
                    println!("{done}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("sockgate: upgrade failed: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Some(Command::Demo { listen, admin }) => {
            control_runtime()?.block_on(run_demo(listen, admin, cli.workers, cli.ready_file))
        }
        Some(Command::Proxy {
            listen,
            to,
            tls_cert,
            tls_key,
            tls_self_signed,
            admin,
        }) => {
            let dir = scratch_dir("proxy")?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some((absolute(&cert)?, absolute(&key)?)),
                _ if tls_self_signed => {
                    let pair = certgen::self_signed(certgen::DEV_NAMES)?;
                    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
                    certgen::write_new_file(&cert, &pair.cert)?;
                    certgen::write_new_file(&key, &pair.key)?;
                    println!(
                        "self-signed certificate for {}: {} (key {}; both removed at exit)\ntrust it in a client, e.g. curl --cacert {}",
                        certgen::DEV_NAMES.join(", "),
                        cert.display(),
                        key.display(),
                        cert.display()
                    );
                    Some((cert, key))
                }
                _ => None,
            };
            let text = proxy_config(listen, &to, tls.as_ref(), admin);
            let config = config::from_str(&text, Path::new("<proxy>"), &dir)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end().replace('\n', "; ")))?;
            let config = Config {
                source: None,
                ..config
            };
            control_runtime()?.block_on(run_gateway(
                config,
                cli.workers,
                cli.ready_file,
                Upgrades::default(),
            ))
        }
        Some(Command::Run) | None => {
            let Some(path) = cli.config else {
                eprintln!("sockgate: no config given; use --config FILE, or try `sockgate demo`");
                return Ok(ExitCode::from(2));
            };
            let mut successor = match upgrade::Successor::from_env().transpose() {
                Ok(successor) => successor,
                Err(e) => anyhow::bail!(
                    "cannot reach the process this upgrade replaces: {}",
                    sockgate::error::error_chain(&e)
                ),
            };
            let config = match config::load(&path) {
                Ok(config) => config,
                Err(errors) => {
                    eprint!("{errors}");
                    if let Some(successor) = &mut successor {
                        let reason = config_refused(&errors);
                        control_runtime()?.block_on(successor.abort(&reason));
                    }
                    return Ok(ExitCode::from(2));
                }
            };
            let upgrades = Upgrades {
                program: upgrade::program_at_start()
                    .map(|p| (p, std::env::args_os().skip(1).collect())),
                successor,
                control_socket: cli.control_socket,
            };
            control_runtime()?.block_on(run_gateway(config, cli.workers, cli.ready_file, upgrades))
        }
    }
}

/// Signals, reloads and the admin endpoint run here; connections run on the workers.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// How a gateway takes part in binary upgrades (see `sockgate::upgrade`).
#[derive(Default)]
struct Upgrades {
    /// The binary and arguments an upgrade starts; `None`: this gateway cannot be upgraded.
    program: Option<(PathBuf, Vec<std::ffi::OsString>)>,
    /// Set when this process was started by an upgrade.
    successor: Option<upgrade::Successor>,
    control_socket: Option<PathBuf>,
}

/// The reason an upgraded process gives for refusing its config: the first problem, and how
/// many there are.
fn config_refused(errors: &config::ConfigErrors) -> String {
    let first = errors
        .0
        .first()
        .map(|e| e.to_string().lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    match errors.0.len() {
        0 | 1 => format!("invalid config: {first}"),
        n => format!("invalid config ({n} problems): {first}"),
    }
}

async fn run_gateway(
    config: Config,
    workers: Option<usize>,
    ready_file: Option<PathBuf>,
    mut upgrades: Upgrades,
) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a SIGTERM that arrives while binding must drain, not kill.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;

    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let workers = Workers::spawn(workers).context("cannot start the worker threads")?;
    let (handle, supervisor) = match start_gateway(config, workers, &mut upgrades, usr2).await {
        Ok(started) => started,
        Err(e) => {
            if let Some(successor) = &mut upgrades.successor {
                successor.abort(&one_line(&e)).await;
            }
            return Err(e);
        }
    };
    let mut supervisor = supervisor;
    if let Some(path) = &ready_file {
        write_ready_file(path, &handle)?;
    }
    match &mut upgrades.successor {
        Some(successor) => {
            if let Err(e) = successor.ready().await {
                tracing::warn!(error = %sockgate::error::error_chain(&e), "cannot tell the process this one replaces that it is ready");
            }
        }
        None => upgrade::notify_systemd("READY=1"),
    }
    let mut handed_over = false;
    loop {
        tokio::select! {
            _ = supervisor.upgraded() => {
                handed_over = true;
                break;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match handle.reload_from_source().await {
                Ok(()) => {
                    // Listeners may have come or gone: the ready file follows.
                    if let Some(path) = &ready_file
                        && let Err(e) = write_ready_file(path, &handle)
                    {
                        tracing::warn!(error = %format!("{e:#}"), "cannot rewrite the ready file");
                    }
                }
                Err(sockgate::ReloadError::Invalid(errors)) => {
                    for e in &errors.0 {
                        tracing::error!("reload refused: {}", e.to_string().replace('\n', " "));
                    }
                }
                Err(e) => tracing::error!(error = %sockgate::error::error_chain(&e), "reload refused"),
            },
        }
    }
    supervisor.close(handed_over);
    tracing::info!("draining: no new connections; a second signal stops at once");
    if handed_over {
        handle.hand_over();
    } else {
        handle.drain();
    }
    tokio::select! {
        _ = handle.wait() => {
            tracing::info!("drained");
        }
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            tracing::warn!(remaining = handle.connections(), "second signal: stopping now");
            handle.stop();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), handle.wait()).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts the gateway, on the sockets of the process this one replaces if an upgrade started
/// it, and binds (or takes over) the control socket.
async fn start_gateway(
    config: Config,
    workers: Workers,
    upgrades: &mut Upgrades,
    usr2: tokio::signal::unix::Signal,
) -> anyhow::Result<(Handle, upgrade::Supervisor)> {
    let mut inherited = match &mut upgrades.successor {
        Some(successor) => {
            let inherited = successor
                .receive()
                .await
                .context("cannot receive the listening sockets")?;
            tracing::info!(
                from = std::os::unix::process::parent_id(),
                "received the listening sockets of the process this one replaces"
            );
            inherited
        }
        None => sockgate::handoff::Inherited::default(),
    };
    let control = match &upgrades.control_socket {
        Some(path) => {
            let listener = match inherited.take_control(path) {
                Some(listener) => listener,
                None => upgrade::bind_control(path)
                    .with_context(|| format!("control socket {} cannot listen", path.display()))?,
            };
            Some((path.clone(), listener))
        }
        None => None,
    };
    let handle = sockgate::start_adopting(config, workers, &mut inherited)
        .await
        .context("cannot start")?;
    for closed in inherited.close_rest() {
        tracing::info!(
            "closed the {closed} received from the old process: the config no longer has it"
        );
    }
    let program = if handle.has_config_file() {
        upgrades.program.take()
    } else {
        None
    };
    let supervisor = upgrade::Supervisor::new(handle.clone(), program, usr2, control)
        .context("cannot watch the control socket")?;
    Ok((handle, supervisor))
}

async fn run_demo(
    listen: SocketAddr,
    admin: SocketAddr,
    workers: Option<usize>,
    ready_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ws_addr = ws.local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    tokio::spawn(demo::ws_echo(ws));
    tokio::spawn(demo::tcp_echo(tcp));
    let dir = scratch_dir("demo")?;
    let files = demo::write_files(&dir, listen, admin, ws_addr, tcp_addr)?;
    let config = config::load(&files.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", demo::instructions(listen, admin, &files));
    run_gateway(config, workers, ready_file, Upgrades::default()).await
}

/// A folder made by [`scratch_dir`], removed with what it holds when dropped.
struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh owner-only (0700) folder in the temp dir, `sockgate-{what}-{pid}-{random}`.
/// Never one that exists already: another user could have made it, or put a symlink there,
/// to read or swap the keys written into it.
fn scratch_dir(what: &str) -> anyhow::Result<ScratchDir> {
    use ring::rand::SecureRandom;
    let random = ring::rand::SystemRandom::new();
    let pid = std::process::id();
    create_fresh_dir(&std::env::temp_dir(), || {
        let mut suffix = [0u8; 8];
        random
            .fill(&mut suffix)
            .map_err(|_| anyhow::anyhow!("no random numbers from the OS"))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sockgate-{what}-{pid}-{suffix}"))
    })
}

/// Creates `base/NAME` with mode 0700 for the first `names()` that does not exist yet
/// (`mkdir` fails on anything there, a symlink included); gives up after 16 tries.
fn create_fresh_dir(
    base: &Path,
    mut names: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<ScratchDir> {
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..16 {
        let dir = base.join(names()?);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(ScratchDir(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", dir.display()));
            }
        }
    }
    anyhow::bail!(
        "cannot create a fresh folder in {}: every name tried exists",
        base.display()
    )
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))
}

fn proxy_config(
    listen: SocketAddr,
    to: &str,
    tls: Option<&(PathBuf, PathBuf)>,
    admin: Option<SocketAddr>,
) -> String {
    let mut text = String::new();
    if let Some(admin) = admin {
        text.push_str(&format!("[admin]\nlisten = \"{admin}\"\n\n"));
    }
    text.push_str(&format!(
        "[[listener]]\nname = \"proxy\"\nlisten = \"{listen}\"\n"
    ));
    if let Some((cert, key)) = tls {
        text.push_str(&format!(
            "tls = {{ cert = {:?}, key = {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
    }
    text.push_str(&format!(
        "\n  [[listener.route]]\n  name = \"proxy\"\n  protocol = \"tcp\"\n  backend = \"proxy\"\n\n[[backend]]\nname = \"proxy\"\nservers = [{to:?}]\n"
    ));
    text
}

fn write_ready_file(path: &Path, handle: &Handle) -> anyhow::Result<()> {
    let listeners: serde_json::Map<String, serde_json::Value> = handle
        .listener_addrs()
        .into_iter()
        .map(|(name, addr)| (name, addr.to_string().into()))
        .collect();
    let ready = serde_json::json!({
        "listeners": listeners,
        "admin": handle.admin_addr().map(|a| a.to_string()),
        "pid": std::process::id(),
    });
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, ready.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write ready file {}", path.display()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn scratch_dirs_skip_names_that_exist_and_are_owner_only() {
        let base = tempfile::tempdir().expect("temp dir");
        let planted = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(planted.path(), base.path().join("taken-link"))
            .expect("symlink");
        std::fs::create_dir(base.path().join("taken-dir")).expect("mkdir");
        let mut names = ["taken-link", "taken-dir", "fresh"].into_iter();
        let dir = create_fresh_dir(base.path(), || Ok(names.next().unwrap_or("x").to_owned()))
            .expect("a fresh dir");
        assert_eq!(dir.0, base.path().join("fresh"));
        let mode = std::fs::metadata(&dir.0)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = dir.0.clone();
        std::fs::write(path.join("f"), "x").expect("write");
        drop(dir);
        assert!(!path.exists(), "removed when dropped");

        let refused = create_fresh_dir(base.path(), || Ok("taken-dir".to_owned()));
        assert!(refused.is_err());
        assert_eq!(std::fs::read_dir(planted.path()).expect("ls").count(), 0);

        let dir = scratch_dir("unit").expect("scratch dir");
        let name = dir.0.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let prefix = format!("sockgate-unit-{}-", std::process::id());
        assert!(name.starts_with(&prefix), "{name}");
        assert_eq!(name.len(), prefix.len() + 16, "{name}");
    }
}
