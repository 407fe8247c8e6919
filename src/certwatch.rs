//! Certificate watching: every `cert`/`key` file of the config in force (listeners' pairs
//! and the client certificates of backends' `tls`) and every CA bundle (listeners'
//! `client_auth`, backends' `ca`) is looked at once a [`POLL`], and a pair or bundle whose
//! files changed and then held still is re-read, checked and handed to the gateway to put
//! in force, without SIGHUP. A control-plane task owned by the gateway; no connection sees
//! it.
//!
//! Polling rather than inotify (`notify`): Kubernetes updates a Secret volume by creating a
//! new timestamped directory and renaming the `..data` symlink over the old one, so the
//! watched names (`tls.crt -> ..data/tls.crt`) never receive an event of their own; an
//! inotify watcher has to watch parent directories and re-resolve symlinks, which is where
//! such watchers miss swaps. A `stat` through the symlinks sees every way a file is replaced
//! (written in place, renamed over, symlink swapped) at the cost of two `stat`s and one
//! path resolution per file per tick, and needs no watch descriptors.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::certs::{self, CaBundle};
use crate::config::{BackendVerify, CertPair, ClientCert, Config};
use crate::error::error_chain;
use crate::metrics::Metrics;

/// How often the files are looked at. A change is applied one to two ticks after the last
/// write: the second look confirms the files held still.
pub const POLL: Duration = Duration::from_secs(1);

/// What the watcher needs from the gateway.
pub trait Target: Send + Sync + 'static {
    /// Why re-read pairs could not be put in force (a TLS configuration not built).
    type Error: std::error::Error;

    /// The config in force now: its pairs are the ones watched.
    fn config(&self) -> Arc<Config>;
    fn metrics(&self) -> &Metrics;
    /// Puts re-read pairs and bundles in force for new TLS handshakes, serialized with
    /// reloads; those the config in force no longer names are skipped. Open connections
    /// keep theirs.
    fn apply(&self, changed: Changed) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A pair re-read from disk and checked: the key matches the certificate.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

/// A CA bundle (a listener's `client_auth`, a backend's `ca`) re-read from disk, with other
/// certificates than the one in force.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    pub path: PathBuf,
    pub bundle: CaBundle,
}

/// What one look found changed and loadable.
#[derive(Debug, Default)]
pub struct Changed {
    pub pairs: Vec<Loaded>,
    pub bundles: Vec<LoadedBundle>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.bundles.is_empty()
    }

    fn len(&self) -> usize {
        self.pairs.len() + self.bundles.len()
    }

    fn files(&self) -> Vec<String> {
        self.pairs
            .iter()
            .map(|l| l.cert.display().to_string())
            .chain(self.bundles.iter().map(|b| b.path.display().to_string()))
            .collect()
    }
}

/// Watches the pairs and bundles of `target`'s config in force until `stop` fires.
pub async fn run<T: Target>(target: Arc<T>, stop: CancellationToken) {
    let metrics = target.metrics();
    for result in ["ok", "error"] {
        metrics
            .certificate_reloads_total
            .with_label_values(&[result]);
    }
    let mut watch = Some(Watch::default());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(mut w) = watch.take() else { return };
        let config = target.config();
        // stat and file reads block; a slow or hung file system must not stall a worker,
        // nor hold up a drain.
        let polled = tokio::task::spawn_blocking(move || {
            let outcome = w.poll(&config);
            (w, outcome)
        });
        let polled = tokio::select! {
            _ = stop.cancelled() => return,
            polled = polled => polled,
        };
        let (w, outcome) = match polled {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "certificate watching stopped; certificates change with SIGHUP only until a restart");
                return;
            }
        };
        watch = Some(w);
        if outcome.failed > 0 {
            metrics
                .certificate_reloads_total
                .with_label_values(&["error"])
                .inc_by(outcome.failed);
        }
        if outcome.changed.is_empty() {
            continue;
        }
        let pairs = outcome.changed.len() as u64;
        let names = outcome.changed.files();
        let result = match target.apply(outcome.changed).await {
            Ok(()) => {
                tracing::info!(certificates = ?names, "certificates changed on disk are in force for new TLS handshakes");
                "ok"
            }
            Err(e) => {
                tracing::warn!(certificates = ?names, error = %error_chain(&e), "certificates changed on disk cannot be put in force; the ones in force stay");
                "error"
            }
        };
        metrics
            .certificate_reloads_total
            .with_label_values(&[result])
            .inc_by(pairs);
    }
}

/// The config with every pair and bundle of `changed` (matched by its paths) replaced, and
/// whether a backend's changed (its connections need new TLS client settings); `None` when
/// it names none of them (a reload took them away meanwhile).
pub fn replace(config: &Config, changed: &Changed) -> Option<(Config, bool)> {
    let mut config = config.clone();
    let mut replaced = false;
    let pair_of = |pair: &CertPair| {
        changed
            .pairs
            .iter()
            .find(|n| n.cert == pair.cert && n.key == pair.key)
            .map(|n| n.certified.clone())
    };
    let bundle_of = |path: &PathBuf| {
        changed
            .bundles
            .iter()
            .find(|n| n.path == *path)
            .map(|n| n.bundle.clone())
    };
    for l in &mut config.listeners {
        let Some(tls) = &mut l.tls else { continue };
        let pairs =
            std::iter::once(&mut tls.default).chain(tls.sni.iter_mut().map(|s| &mut s.pair));
        for pair in pairs {
            if let Some(certified) = pair_of(pair) {
                pair.certified = certified;
                replaced = true;
            }
        }
        if let Some(auth) = &mut tls.client_auth
            && let Some(bundle) = bundle_of(&auth.ca)
        {
            auth.bundle = bundle;
            replaced = true;
        }
    }
    let mut backends = false;
    for b in &mut config.backends {
        let Some(tls) = &mut b.tls else { continue };
        if let Some(ClientCert(pair)) = &mut tls.client_cert
            && let Some(certified) = pair_of(pair)
        {
            pair.certified = certified;
            backends = true;
        }
        if let BackendVerify::Ca { path, bundle } = &mut tls.verify
            && let Some(new) = bundle_of(path)
        {
            *bundle = new;
            backends = true;
        }
    }
    (replaced || backends).then_some((config, backends))
}

/// Sets `sockgate_certificate_expiry_seconds` to the notAfter of every leaf certificate
/// `config` serves, forgetting listeners and names it no longer has.
pub fn export_expiry(metrics: &Metrics, config: &Config) {
    let gauge = &metrics.certificate_expiry_seconds;
    gauge.reset();
    for l in &config.listeners {
        let Some(tls) = &l.tls else { continue };
        let pairs = std::iter::once(("default", &tls.default)).chain(
            tls.sni
                .iter()
                .filter_map(|s| Some((s.names.first()?.as_str(), &s.pair))),
        );
        for (name, pair) in pairs {
            if let Some(not_after) = not_after(&pair.certified) {
                gauge.with_label_values(&[&l.name, name]).set(not_after);
            }
        }
    }
}

/// The leaf certificate's notAfter as Unix time; `None` if it does not parse (rustls
/// accepted it, so that would be an X.509 extension the parser does not know).
fn not_after(certified: &CertifiedKey) -> Option<i64> {
    let leaf = certified.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// What one look at a path saw, through every symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: Option<SystemTime>,
        /// Where the symlink chain ends: a Kubernetes `..data` swap changes it even if the
        /// new file happened to get the old one's inode.
        target: Option<PathBuf>,
    },
    Unreadable(io::ErrorKind),
    /// Not looked at yet: the first look is a change to confirm.
    NotYet,
}

fn look(path: &Path) -> Seen {
    match std::fs::metadata(path) {
        Ok(m) => Seen::File {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.modified().ok(),
            target: std::fs::canonicalize(path).ok(),
        },
        Err(e) => Seen::Unreadable(e.kind()),
    }
}

#[derive(Debug)]
struct FileState {
    /// What the pair in force (or the last attempt to replace it) was read from.
    applied: Seen,
    /// The previous look, when it differed from `applied`: a change waiting to hold still.
    pending: Option<Seen>,
}

/// The watcher's memory: per path, what is in force and what changed since.
#[derive(Debug, Default)]
pub struct Watch {
    files: HashMap<PathBuf, FileState>,
}

/// One poll's result.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Pairs and bundles re-read and checked, to put in force.
    pub changed: Changed,
    /// Pairs and bundles that changed but cannot be used (logged); re-read only when they
    /// change again.
    pub failed: u64,
}

impl Watch {
    /// Looks at every file of `config`'s pairs once. A pair is re-read when one of its files
    /// changed and both looked the same as one poll ago: a writer replacing the certificate
    /// and then the key, or writing a file in several steps, is waited for. A path seen for
    /// the first time (at start, or added by a reload) counts as changed, since the files
    /// may have moved since the config was read; a pair re-read with the certificate chain
    /// already in force is no change.
    pub fn poll(&mut self, config: &Config) -> Outcome {
        let pairs = pairs(config);
        let bundles = bundles(config);
        let wanted: HashSet<&PathBuf> = pairs
            .iter()
            .flat_map(|(c, k, _)| [c, k])
            .chain(bundles.iter().map(|(path, _)| path))
            .collect();
        self.files.retain(|path, _| wanted.contains(path));
        let mut changed = HashSet::new();
        let mut unsettled = HashSet::new();
        for path in wanted {
            let seen = look(path);
            let state = self.files.entry(path.clone()).or_insert(FileState {
                applied: Seen::NotYet,
                pending: None,
            });
            if seen == state.applied {
                state.pending = None;
            } else if state.pending.as_ref() == Some(&seen) {
                changed.insert(path.clone());
            } else {
                state.pending = Some(seen);
                unsettled.insert(path.clone());
            }
        }
        // A pair with a file still moving waits whole, and so do its settled files.
        let waiting: HashSet<PathBuf> = pairs
            .iter()
            .filter(|(c, k, _)| unsettled.contains(c) || unsettled.contains(k))
            .flat_map(|(c, k, _)| [c.clone(), k.clone()])
            .collect();
        let mut outcome = Outcome::default();
        for (cert, key, in_force) in pairs {
            if !(changed.contains(&cert) || changed.contains(&key)) || waiting.contains(&cert) {
                continue;
            }
            match certs::load_cert_pair(&cert, &key) {
                Ok(certified) if certified.cert == in_force.cert => {}
                Ok(certified) => outcome.changed.pairs.push(Loaded {
                    cert: cert.clone(),
                    key: key.clone(),
                    certified,
                }),
                Err(e) => {
                    tracing::warn!(
                        cert = %cert.display(),
                        key = %key.display(),
                        error = %error_chain(&e),
                        "certificate pair changed on disk but cannot be used; the one in force stays until the files change again"
                    );
                    outcome.failed += 1;
                }
            }
        }
        for (path, in_force) in bundles {
            if !changed.contains(&path) {
                continue;
            }
            match certs::load_ca_bundle(&path) {
                Ok(bundle) if bundle == in_force => {}
                Ok(bundle) => outcome.changed.bundles.push(LoadedBundle { path, bundle }),
                Err(e) => {
                    tracing::warn!(
                        ca = %path.display(),
                        error = %error_chain(&e),
                        "CA bundle changed on disk but cannot be used; the one in force stays until the file changes again"
                    );
                    outcome.failed += 1;
                }
            }
        }
        // Whatever happened, these files are settled: a bad pair or bundle is not retried
        // until it changes again.
        for path in changed.difference(&waiting) {
            if let Some(state) = self.files.get_mut(path)
                && let Some(seen) = state.pending.take()
            {
                state.applied = seen;
            }
        }
        outcome
    }
}

/// Every (cert, key) pair of the config's listeners and backends, once each, with what is
/// in force.
fn pairs(config: &Config) -> Vec<(PathBuf, PathBuf, Arc<CertifiedKey>)> {
    let mut pairs: Vec<(PathBuf, PathBuf, Arc<CertifiedKey>)> = Vec::new();
    let listeners = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|tls| std::iter::once(&tls.default).chain(tls.sni.iter().map(|s| &s.pair)));
    let backends = config
        .backends
        .iter()
        .filter_map(|b| b.tls.as_ref()?.client_cert.as_ref())
        .map(|ClientCert(pair)| pair);
    for pair in listeners.chain(backends) {
        if !pairs
            .iter()
            .any(|(c, k, _)| *c == pair.cert && *k == pair.key)
        {
            pairs.push((pair.cert.clone(), pair.key.clone(), pair.certified.clone()));
        }
    }
    pairs
}

/// Every CA bundle of the config (listeners' `client_auth` and backends' `ca`), once each,
/// with what is in force.
fn bundles(config: &Config) -> Vec<(PathBuf, CaBundle)> {
    let listeners = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref()?.client_auth.as_ref())
        .map(|auth| (&auth.ca, &auth.bundle));
    let backends = config
        .backends
        .iter()
        .filter_map(|b| match &b.tls.as_ref()?.verify {
            BackendVerify::Ca { path, bundle } => Some((path, bundle)),
            BackendVerify::Off => None,
        });
    let mut bundles: Vec<(PathBuf, CaBundle)> = Vec::new();
    for (path, bundle) in listeners.chain(backends) {
        if !bundles.iter().any(|(p, _)| p == path) {
            bundles.push((path.clone(), bundle.clone()));
        }
    }
    bundles
}

#[cfg(test)]
mod tests;
