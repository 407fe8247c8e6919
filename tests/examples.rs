//! The example configs in `config/` and the README, as a user meets them: every
//! `config/*.toml` passes `sockgate check` once `sockgate cert dev` has created the
//! certificates it names, laid out as in the repository (`<dir>/config/NAME.toml` reading
//! `../certs/dev/`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SOCKGATE: &str = env!("CARGO_BIN_EXE_sockgate");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    configs
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(SOCKGATE).args(args).output().unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_documented_examples_are_there() {
    let names: Vec<String> = example_configs()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["edge.toml", "plaintext.toml", "tcp-only.toml", "udp.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "config/{expected} is missing; found {names:?}"
        );
    }
}

#[test]
fn every_example_config_passes_check_with_dev_certificates() {
    let mut failures = Vec::new();
    for source in example_configs() {
        let name = source.file_name().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let config = config_dir.join(name);
        std::fs::copy(&source, &config).unwrap();

        let certs = dir.path().join("certs").join("dev");
        let generated = run(&[
            "cert".as_ref(),
            "dev".as_ref(),
            "--out".as_ref(),
            certs.as_os_str(),
        ]);
        assert!(
            generated.status.success(),
            "sockgate cert dev --out {} failed\n{}",
            certs.display(),
            describe(&generated)
        );

        let checked = run(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
        if checked.status.code() != Some(0) {
            failures.push(format!(
                "sockgate check --config config/{}\n{}",
                name.to_string_lossy(),
                describe(&checked)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn readme_names_the_demo_and_the_test_command() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("scripts/test.sh"),
        "README.md must say how to run the tests (scripts/test.sh)"
    );
    assert!(
        readme.contains("cargo run --release -- demo"),
        "README.md must say how to run the demo"
    );
}
