//! The library stays lean: a VMM that depends on qga-client must not compile the
//! CLI's dependencies (clap, indicatif, ...) nor tokio features it does not use
//! (the multi-threaded runtime above all). Checked on `cargo tree`'s answer, as a
//! VMM's build would resolve it: normal dependencies, no default features.

use std::collections::BTreeMap;
use std::process::Command;

/// Crates only a command-line tool needs.
const CLI_ONLY: &[&str] = &[
    "clap",
    "clap_builder",
    "clap_derive",
    "clap_complete",
    "clap_mangen",
    "indicatif",
    "console",
];

/// tokio features the library does not use: it runs on its caller's runtime.
const TOKIO_UNUSED: &[&str] = &[
    "rt",
    "rt-multi-thread",
    "macros",
    "fs",
    "process",
    "signal",
    "full",
];

/// `cargo tree`'s packages for qga-client with their enabled features.
fn tree() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "-p",
            "qga-client",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            "{p} [{f}]",
            "--offline",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} tree: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut deps = BTreeMap::new();
    for line in stdout.lines() {
        let name = line.split(' ').next().unwrap_or_default().to_owned();
        let features = line
            .rsplit_once('[')
            .and_then(|(_, f)| f.split_once(']'))
            .map(|(f, _)| f.split(',').filter(|f| !f.is_empty()).map(str::to_owned))
            .map(Iterator::collect)
            .unwrap_or_default();
        deps.insert(name, features);
    }
    deps
}

#[test]
fn the_library_pulls_in_no_cli_crates_and_no_tokio_runtime() {
    let deps = tree();
    // The answer is the one we think it is: the library and its own crates are there.
    for needed in [
        "qga-client",
        "qga-proto",
        "qga-framing",
        "tokio",
        "tokio-vsock",
    ] {
        assert!(deps.contains_key(needed), "{needed} missing from {deps:?}");
    }
    let cli: Vec<&&str> = CLI_ONLY.iter().filter(|c| deps.contains_key(**c)).collect();
    assert!(cli.is_empty(), "the library depends on CLI crates {cli:?}");
    let tokio = &deps["tokio"];
    assert!(tokio.iter().any(|f| f == "net"), "tokio features {tokio:?}");
    let unused: Vec<&String> = tokio
        .iter()
        .filter(|f| TOKIO_UNUSED.contains(&f.as_str()))
        .collect();
    assert!(
        unused.is_empty(),
        "the library turns on tokio features it does not use: {unused:?}"
    );
}
