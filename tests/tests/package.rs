//! The library crates stay publishable: `cargo package` of every publishable
//! package of the workspace (cargo orders them and resolves the unpublished ones
//! through a temporary local registry) succeeds, verify build included; each
//! .crate holds what it must (readme, both license texts, the agent's packaging
//! files and example) and not what it must not (qga-ops' sysfs fixture trees); and
//! the metadata crates.io shows is complete and valid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The crates meant for crates.io, in dependency order; everything else in the
/// workspace must say `publish = false`.
const PUBLISHED: &[&str] = &[
    "qga-proto",
    "qga-framing",
    "qga-ops",
    "qga-agent",
    "qga-client",
    "qga-cli",
];

/// crates.io's category slugs (its src/boot/categories.toml); anything else is
/// dropped with a warning at publish time.
const CATEGORIES: &[&str] = &[
    "algorithms",
    "api-bindings",
    "asynchronous",
    "authentication",
    "caching",
    "command-line-interface",
    "command-line-utilities",
    "compression",
    "computer-vision",
    "config",
    "concurrency",
    "cryptography",
    "cryptography::cryptocurrencies",
    "database",
    "database-implementations",
    "data-structures",
    "date-and-time",
    "development-tools",
    "development-tools::build-utils",
    "development-tools::cargo-plugins",
    "development-tools::debugging",
    "development-tools::ffi",
    "development-tools::procedural-macro-helpers",
    "development-tools::profiling",
    "development-tools::testing",
    "email",
    "embedded",
    "emulators",
    "encoding",
    "external-ffi-bindings",
    "filesystem",
    "game-engines",
    "game-development",
    "games",
    "graphics",
    "gui",
    "hardware-support",
    "internationalization",
    "localization",
    "mathematics",
    "memory-management",
    "multimedia",
    "multimedia::audio",
    "multimedia::video",
    "multimedia::images",
    "multimedia::encoding",
    "network-programming",
    "no-std",
    "os",
    "os::linux-apis",
    "os::macos-apis",
    "os::unix-apis",
    "os::windows-apis",
    "parser-implementations",
    "parsing",
    "rendering",
    "rendering::engine",
    "rendering::graphics-api",
    "rendering::data-formats",
    "rust-patterns",
    "science",
    "science::robotics",
    "simulation",
    "template-engine",
    "text-editors",
    "text-processing",
    "value-formatting",
    "visualization",
    "wasm",
    "web-programming",
    "web-programming::http-client",
    "web-programming::http-server",
    "web-programming::websocket",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Packages that may be published (`publish` unset; `publish = false` is `[]`).
fn publishable(meta: &Value) -> Vec<&Value> {
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["publish"].is_null())
        .collect()
}

#[test]
fn published_crates_have_complete_valid_metadata() {
    let meta = metadata();
    let packages = publishable(&meta);
    let names: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        PUBLISHED.iter().copied().collect(),
        "publishable set"
    );
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let dir = Path::new(p["manifest_path"].as_str().unwrap())
            .parent()
            .unwrap();
        let description = p["description"].as_str().unwrap_or_default();
        assert!(!description.trim().is_empty(), "{name}: description");
        assert_eq!(p["license"], "MIT OR Apache-2.0", "{name}: license");
        assert!(p["repository"].is_string(), "{name}: repository");
        let readme = p["readme"].as_str().expect("readme");
        assert!(dir.join(readme).is_file(), "{name}: readme {readme}");
        let keywords: Vec<&str> = p["keywords"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert!(
            !keywords.is_empty() && keywords.len() <= 5,
            "{name}: 1 to 5 keywords: {keywords:?}"
        );
        for k in &keywords {
            assert!(
                k.len() <= 20
                    && k.starts_with(|c: char| c.is_ascii_alphabetic())
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}: keyword {k:?} is not one crates.io accepts"
            );
        }
        let categories = p["categories"].as_array().unwrap();
        assert!(
            !categories.is_empty() && categories.len() <= 5,
            "{name}: 1 to 5 categories"
        );
        for c in categories {
            let c = c.as_str().unwrap();
            assert!(
                CATEGORIES.contains(&c),
                "{name}: {c:?} is not a crates.io category"
            );
        }
        for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
            assert!(dir.join(license).is_file(), "{name}: {license}");
        }
    }
}

/// Forgets what an earlier `cargo package` left of our crates, so each run verifies
/// the crates as they are now.
///
/// Verifying a crate that depends on another one of the workspace builds that one
/// as a registry crate: from the temporary registry `<target>/package/tmp-registry`,
/// unpacked into `$CARGO_HOME/registry/src/-<hash of that path>/NAME-VERSION`.
/// Cargo takes a registry crate of a given version to be immutable: it neither
/// unpacks it again nor rebuilds it, so after a change to qga-ops the agent would
/// be verified against the qga-ops of the previous run. Hence a target directory
/// of its own, where every artifact named after our crates is from such a run and
/// is removed (third-party ones are kept), and our crates' unpacked copies under
/// registries with no host (local ones) are removed.
fn forget_earlier_packaging(target: &Path) {
    let version = env!("CARGO_PKG_VERSION");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
    if let Ok(registries) = std::fs::read_dir(home.join("registry/src")) {
        for registry in registries {
            let registry = registry.unwrap().path();
            if !registry
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with('-')
            {
                continue;
            }
            for name in PUBLISHED {
                let unpacked = registry.join(format!("{name}-{version}"));
                if unpacked.exists() {
                    std::fs::remove_dir_all(&unpacked).unwrap();
                }
            }
        }
    }
    for dir in [".fingerprint", "deps", "build"] {
        let Ok(entries) = std::fs::read_dir(target.join("debug").join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if ["qga-", "qga_", "libqga_"]
                .iter()
                .any(|p| file.starts_with(p))
            {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
    }
}

#[test]
fn cargo_package_succeeds_for_every_published_crate() {
    let meta = metadata();
    let target_dir = Path::new(meta["target_directory"].as_str().unwrap()).join("package-verify");
    forget_earlier_packaging(&target_dir);
    let mut cmd = Command::new(env!("CARGO"));
    // Offline: everything the verify builds need was fetched by the workspace build.
    cmd.current_dir(workspace())
        .args(["package", "--allow-dirty", "--offline", "--target-dir"])
        .arg(&target_dir);
    for name in PUBLISHED {
        cmd.args(["-p", name]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package failed:\n{stderr}");
    // Every crate packaged, then verified by building it from its .crate.
    for name in PUBLISHED {
        assert!(stderr.contains(&format!("Verifying {name} v")), "{stderr}");
    }

    let target = target_dir.join("package");
    let version = env!("CARGO_PKG_VERSION");
    for name in PUBLISHED {
        let krate = target.join(format!("{name}-{version}.crate"));
        let size = std::fs::metadata(&krate).unwrap().len();
        assert!(size < 256 * 1024, "{name}: {size} bytes compressed");
        let list = Command::new("tar").arg("tzf").arg(&krate).output().unwrap();
        assert!(list.status.success());
        let prefix = format!("{name}-{version}/");
        let files: BTreeSet<String> = String::from_utf8(list.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                l.strip_prefix(&prefix)
                    .expect("one top directory")
                    .to_owned()
            })
            .collect();
        for must in ["Cargo.toml", "README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
            assert!(files.contains(must), "{name}: {must} missing");
        }
        assert!(
            files.contains("src/lib.rs") || files.contains("src/main.rs"),
            "{name}: no source"
        );
        assert!(
            !files.iter().any(|f| f.contains("/fixtures/storage/")),
            "{name}: qga-ops storage fixtures packaged"
        );
        match *name {
            "qga-ops" => assert!(
                !files.iter().any(|f| f.starts_with("tests/")),
                "qga-ops: tests packaged without the fake feature they need"
            ),
            "qga-framing" => assert!(!files.contains("tests/codec.rs")),
            // cargo deb and the example work from the published crate too.
            "qga-agent" => {
                for must in [
                    "packaging/qga-agent.service",
                    "packaging/99-qga-agent.rules",
                    "packaging/qemu-ga.conf.example",
                    "packaging/debian/postinst",
                    "packaging/debian/copyright",
                    "examples/custom_agent.rs",
                ] {
                    assert!(files.contains(must), "qga-agent: {must} missing");
                }
            }
            _ => {}
        }
        // The packaged manifest depends on published versions only.
        let manifest = Command::new("tar")
            .arg("xzfO")
            .arg(&krate)
            .arg(format!("{prefix}Cargo.toml"))
            .output()
            .unwrap();
        let manifest = String::from_utf8(manifest.stdout).unwrap();
        assert!(
            !manifest.contains("path = \"..") && !manifest.contains("path = \"."),
            "{name}: path dependency in the packaged manifest:\n{manifest}"
        );
    }
}
