//! Child processes of a benchmark run, and what /proc says about them.
//!
//! A proxy may be more than one process (nginx: a master and its workers), so CPU time and
//! memory are read for the whole tree under the child: the process and its descendants.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process stopped and reaped on drop, so no run leaves a server behind.
pub struct Proc {
    child: Child,
    name: &'static str,
    log: Option<PathBuf>,
    /// Sent first on drop, then SIGKILL after a grace period; `None` kills at once. A
    /// master that forks workers needs its own stop signal: SIGKILL would orphan them.
    stop_signal: Option<i32>,
}

impl Proc {
    /// Starts a helper (a backend) that announces itself with one line on its stdout, and
    /// returns it with that line.
    pub fn spawn_announcing(
        command: &mut Command,
        name: &'static str,
    ) -> anyhow::Result<(Proc, String)> {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut proc = Proc::spawn(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            name,
            None,
            None,
        )?;
        let stdout = proc
            .child_mut()
            .stdout
            .take()
            .with_context(|| format!("{name} has no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        proc.check_alive()?;
        Ok((proc, line))
    }

    /// Starts `command`; `log` is the file its stderr goes to, quoted when it dies.
    pub fn spawn(
        command: &mut Command,
        name: &'static str,
        log: Option<PathBuf>,
        stop_signal: Option<i32>,
    ) -> anyhow::Result<Proc> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        Ok(Proc {
            child,
            name,
            log,
            stop_signal,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("; last lines of {}:\n{}", path.display(), tail.join("\n"))
    }

    /// User plus system CPU seconds of the process and its descendants.
    pub fn tree_cpu_seconds(&self, ticks_per_second: f64) -> f64 {
        tree(self.pid())
            .iter()
            .map(|&pid| cpu_seconds(&pid.to_string(), ticks_per_second))
            .sum()
    }

    /// Resident memory of the process and its descendants, in KiB (VmRSS summed: pages a
    /// master shares with its forked workers count once per process, which cancels out of a
    /// before/after difference).
    pub fn tree_rss_kib(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in tree(self.pid()) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("cannot read /proc/{pid}/status"))?;
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
            total += rss;
        }
        Ok(total)
    }

    /// How many processes the tree has (nginx: master and workers).
    pub fn tree_len(&self) -> usize {
        tree(self.pid()).len()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let family = tree(self.pid());
        if let Some(signal) = self.stop_signal {
            send(self.pid(), signal);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Descendants the stop signal did not end (now re-parented, so the pids are still
        // theirs while they live).
        for pid in family.into_iter().skip(1) {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                send(pid, libc::SIGKILL);
            }
        }
    }
}

fn send(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// `root` and every process below it, root first.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU seconds of a process, from /proc/PID/stat (all its threads).
pub fn cpu_seconds(pid: &str, ticks_per_second: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / ticks_per_second,
        _ => f64::NAN,
    }
}

pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raises this process's open-file limit to its hard limit; children inherit it. Returns
/// the limit in force afterwards.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The `sockgate` binary started with `config` written to `dir`, once it has bound its
/// listeners: the process and each listener's address, from its `--ready-file`.
pub struct Sockgate {
    pub proc: Proc,
    listeners: HashMap<String, std::net::SocketAddr>,
}

impl Sockgate {
    pub fn start(
        binary: &std::path::Path,
        dir: &std::path::Path,
        config: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Sockgate> {
        let config_path = dir.join("sockgate.toml");
        let ready = dir.join("ready.json");
        let log = dir.join("sockgate.log");
        std::fs::write(&config_path, config)?;
        let _ = std::fs::remove_file(&ready);
        let mut proc = Proc::spawn(
            Command::new(binary)
                .arg("--config")
                .arg(&config_path)
                .arg("--ready-file")
                .arg(&ready)
                .args(extra_args)
                .env("RUST_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log)?),
            "sockgate",
            Some(log),
            None,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text;
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("sockgate wrote no ready file in 10 s{}", proc.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ready: serde_json::Value = serde_json::from_str(&text).context("bad ready file")?;
        let mut listeners = HashMap::new();
        if let Some(map) = ready["listeners"].as_object() {
            for (name, addr) in map {
                let addr = addr
                    .as_str()
                    .context("bad listener entry in the ready file")?
                    .parse()
                    .context("bad listener address in the ready file")?;
                listeners.insert(name.clone(), addr);
            }
        }
        Ok(Sockgate { proc, listeners })
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> anyhow::Result<std::net::SocketAddr> {
        self.listeners
            .get(name)
            .copied()
            .with_context(|| format!("the ready file has no listener {name}"))
    }
}
