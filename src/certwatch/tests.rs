//! The poll state machine against real files: what counts as a change, when a pair is
//! settled, and that a bad pair is read once per change.

use std::path::Path;

use super::*;

fn pair(name: &str) -> (String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("test certificate");
    (generated.cert.pem(), generated.signing_key.serialize_pem())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("test file");
}

fn config(dir: &Path) -> Config {
    let text = r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = { cert = "tls.crt", key = "tls.key" }
  [[listener.route]]
  name = "all"
  backend = "echo"

[[backend]]
name = "echo"
servers = ["127.0.0.1:9"]
"#;
    crate::config::from_str(text, &dir.join("sockgate.toml"), dir).expect("test config")
}

/// The first two polls: the files are looked at, confirmed, read and found in force.
fn start(watch: &mut Watch, config: &Config) {
    for _ in 0..2 {
        let outcome = watch.poll(config);
        assert!(outcome.changed.pairs.is_empty());
        assert_eq!(outcome.failed, 0);
    }
}

fn leaf(certified: &CertifiedKey) -> Vec<u8> {
    certified.cert[0].as_ref().to_vec()
}

#[test]
fn an_unchanged_pair_is_never_reread() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let mut watch = Watch::default();
    for _ in 0..3 {
        let outcome = watch.poll(&config);
        assert!(outcome.changed.pairs.is_empty());
        assert_eq!(outcome.failed, 0);
    }
}

#[test]
fn a_rewritten_pair_is_read_once_it_held_still_for_one_poll() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let mut watch = Watch::default();
    start(&mut watch, &config);

    let (c2, k2) = pair("b.test");
    write(&dir.path().join("tls.crt"), &c2);
    // The key is not written yet: the certificate moved this poll, so the pair waits.
    assert!(watch.poll(&config).changed.pairs.is_empty());
    write(&dir.path().join("tls.key"), &k2);
    // The key moved now: still waiting.
    assert!(watch.poll(&config).changed.pairs.is_empty());
    let outcome = watch.poll(&config);
    assert_eq!(outcome.failed, 0);
    assert_eq!(outcome.changed.pairs.len(), 1);
    let expected = crate::certs::cert_pair_from_pem(&c2, &k2).expect("pair");
    assert_eq!(leaf(&outcome.changed.pairs[0].certified), leaf(&expected));
    // Put in force: nothing more until the next change.
    assert!(watch.poll(&config).changed.pairs.is_empty());
}

#[test]
fn files_changed_between_the_config_read_and_the_first_look_are_a_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let (c2, k2) = pair("b.test");
    write(&dir.path().join("tls.crt"), &c2);
    write(&dir.path().join("tls.key"), &k2);
    let mut watch = Watch::default();
    assert!(watch.poll(&config).changed.pairs.is_empty());
    let outcome = watch.poll(&config);
    assert_eq!(outcome.changed.pairs.len(), 1);
    let expected = crate::certs::cert_pair_from_pem(&c2, &k2).expect("pair");
    assert_eq!(leaf(&outcome.changed.pairs[0].certified), leaf(&expected));
}

#[test]
fn a_bad_pair_is_counted_once_and_read_again_when_it_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let mut watch = Watch::default();
    start(&mut watch, &config);

    let (other_cert, other_key) = pair("b.test");
    write(&dir.path().join("tls.key"), &other_key);
    assert!(watch.poll(&config).changed.pairs.is_empty());
    let outcome = watch.poll(&config);
    assert!(outcome.changed.pairs.is_empty());
    assert_eq!(outcome.failed, 1, "the key does not match the certificate");
    for _ in 0..3 {
        let outcome = watch.poll(&config);
        assert_eq!(outcome.failed, 0, "not retried while unchanged");
        assert!(outcome.changed.pairs.is_empty());
    }
    // The certificate that goes with the new key arrives: a good pair.
    write(&dir.path().join("tls.crt"), &other_cert);
    watch.poll(&config);
    let outcome = watch.poll(&config);
    assert_eq!((outcome.changed.pairs.len(), outcome.failed), (1, 0));
}

#[test]
fn a_missing_file_is_a_failed_change_and_its_return_no_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let mut watch = Watch::default();
    start(&mut watch, &config);
    std::fs::remove_file(dir.path().join("tls.crt")).expect("remove");
    watch.poll(&config);
    assert_eq!(watch.poll(&config).failed, 1);
    // The same certificate back: what is in force already, nothing to do or count.
    write(&dir.path().join("tls.crt"), &c);
    watch.poll(&config);
    let outcome = watch.poll(&config);
    assert_eq!((outcome.changed.pairs.len(), outcome.failed), (0, 0));
}

#[test]
fn a_symlink_swap_of_the_data_directory_is_a_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (c, k) = pair("a.test");
    std::fs::create_dir(root.join("..2026_a")).expect("dir");
    write(&root.join("..2026_a/tls.crt"), &c);
    write(&root.join("..2026_a/tls.key"), &k);
    std::os::unix::fs::symlink("..2026_a", root.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).expect("symlink");
    std::os::unix::fs::symlink("..data/tls.key", root.join("tls.key")).expect("symlink");
    let config = config(root);
    let mut watch = Watch::default();
    start(&mut watch, &config);

    let (c2, k2) = pair("b.test");
    std::fs::create_dir(root.join("..2026_b")).expect("dir");
    write(&root.join("..2026_b/tls.crt"), &c2);
    write(&root.join("..2026_b/tls.key"), &k2);
    std::os::unix::fs::symlink("..2026_b", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("rename");
    assert!(watch.poll(&config).changed.pairs.is_empty());
    let outcome = watch.poll(&config);
    assert_eq!(outcome.changed.pairs.len(), 1);
    let expected = crate::certs::cert_pair_from_pem(&c2, &k2).expect("pair");
    assert_eq!(leaf(&outcome.changed.pairs[0].certified), leaf(&expected));
}

#[test]
fn replace_swaps_only_the_pairs_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let (c2, k2) = pair("b.test");
    let certified = crate::certs::cert_pair_from_pem(&c2, &k2).expect("pair");
    let elsewhere = Loaded {
        cert: dir.path().join("other.crt"),
        key: dir.path().join("other.key"),
        certified: certified.clone(),
    };
    let only = |pairs: Vec<Loaded>| Changed {
        pairs,
        bundles: Vec::new(),
    };
    assert!(replace(&config, &only(vec![elsewhere.clone()])).is_none());
    let here = Loaded {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        certified: certified.clone(),
    };
    let (replaced, backends) = replace(&config, &only(vec![elsewhere, here])).expect("replaced");
    assert!(!backends, "a listener's pair is no backend change");
    let tls = replaced.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(leaf(&tls.default.certified), leaf(&certified));
}

#[test]
fn expiry_is_the_leaf_not_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = pair("a.test");
    write(&dir.path().join("tls.crt"), &c);
    write(&dir.path().join("tls.key"), &k);
    let config = config(dir.path());
    let metrics = Metrics::new();
    export_expiry(&metrics, &config);
    // rcgen's default validity ends on 4096-01-01.
    let value = metrics
        .certificate_expiry_seconds
        .with_label_values(&["edge", "default"])
        .get();
    assert_eq!(value, 67_090_118_400);
}

/// A plain listener, and a backend re-encrypting toward its server with `ca` and a client
/// certificate.
fn backend_config(dir: &Path) -> Config {
    let text = r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "all"
  backend = "secure"

[[backend]]
name = "secure"
servers = ["127.0.0.1:9"]
tls = { ca = "ca.crt", cert = "client.crt", key = "client.key", sni = "b.test" }
"#;
    crate::config::from_str(text, &dir.join("sockgate.toml"), dir).expect("test config")
}

#[test]
fn a_backends_client_pair_and_ca_bundle_are_watched_and_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, _) = pair("ca.test");
    let (c, k) = pair("gateway.test");
    write(&dir.path().join("ca.crt"), &ca);
    write(&dir.path().join("client.crt"), &c);
    write(&dir.path().join("client.key"), &k);
    let config = backend_config(dir.path());
    let mut watch = Watch::default();
    for _ in 0..2 {
        let outcome = watch.poll(&config);
        assert!(outcome.changed.is_empty(), "{outcome:?}");
        assert_eq!(outcome.failed, 0);
    }

    let (ca2, _) = pair("ca2.test");
    let (c2, k2) = pair("gateway2.test");
    write(&dir.path().join("ca.crt"), &ca2);
    write(&dir.path().join("client.crt"), &c2);
    write(&dir.path().join("client.key"), &k2);
    assert!(watch.poll(&config).changed.is_empty(), "still moving");
    let outcome = watch.poll(&config);
    assert_eq!(outcome.failed, 0);
    assert_eq!(outcome.changed.pairs.len(), 1);
    assert_eq!(outcome.changed.bundles.len(), 1);
    assert_eq!(outcome.changed.bundles[0].path, dir.path().join("ca.crt"));

    let (replaced, backends) = replace(&config, &outcome.changed).expect("replaced");
    assert!(backends);
    let tls = replaced.backends[0].tls.as_ref().expect("tls");
    let expected = crate::certs::cert_pair_from_pem(&c2, &k2).expect("pair");
    let ClientCert(pair) = tls.client_cert.as_ref().expect("client cert");
    assert_eq!(leaf(&pair.certified), leaf(&expected));
    let BackendVerify::Ca { bundle, .. } = &tls.verify else {
        panic!("verify is on")
    };
    assert_eq!(bundle, &outcome.changed.bundles[0].bundle);
    assert_ne!(
        Some(bundle),
        match &config.backends[0].tls.as_ref().expect("tls").verify {
            BackendVerify::Ca { bundle, .. } => Some(bundle),
            BackendVerify::Off => None,
        },
        "the bundle in force before was another"
    );
    // In force from here: nothing more until the next change.
    assert!(watch.poll(&replaced).changed.is_empty());

    // A bundle that cannot be read is counted once and leaves the one in force.
    write(&dir.path().join("ca.crt"), "not a certificate");
    assert!(watch.poll(&replaced).changed.is_empty());
    let outcome = watch.poll(&replaced);
    assert!(outcome.changed.is_empty());
    assert_eq!(outcome.failed, 1);
    assert_eq!(
        watch.poll(&replaced).failed,
        0,
        "not retried while unchanged"
    );
}
