//! The Debian package of the agent: `cargo deb -p qga-agent` builds it, and this test
//! reads it with `dpkg-deb` only. It is never installed here: it conflicts with
//! Debian's qemu-guest-agent, whose qemu-ga the differential tests need.
//!
//! Checks the control fields (the drop-in relations, `$auto` dependencies), every
//! file it installs (path, type, mode, owner, content), that the unit starts the
//! installed executable on the port the agent opens by default and that the udev
//! rule names that unit, that the example configuration is one the agent reads,
//! and what the maintainer scripts do (run against stubs, so nothing on this
//! machine changes).
//!
//! Needs `cargo-deb` (scripts/test.sh installs it); skipped without it unless
//! `QGA_REQUIRE_REFERENCE=1`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qga_agent::DEFAULT_VIRTIO_PATH;

const PACKAGE: &str = "qga-agent";
const UNIT: &str = "qga-agent.service";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

fn cargo_deb_available() -> bool {
    let found = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var_os("QGA_REQUIRE_REFERENCE").is_some_and(|v| v == "1") {
        panic!("cargo-deb is missing and QGA_REQUIRE_REFERENCE=1 (scripts/test.sh installs it)");
    }
    eprintln!("SKIPPED: cargo-deb not installed (cargo install cargo-deb --locked)");
    false
}

/// Builds the package into `out` and returns its path.
fn build_deb(out: &Path) -> PathBuf {
    run(Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["deb", "-p", PACKAGE, "--output"])
        .arg(out));
    let debs: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "one .deb expected in {}: {debs:?}",
        out.display()
    );
    debs.into_iter().next().unwrap()
}

/// What systemd names the device unit of a path (`systemd-escape --path`).
fn device_unit(path: &str) -> String {
    let mut s = String::new();
    for (i, b) in path.trim_matches('/').bytes().enumerate() {
        match b {
            b'/' => s.push('-'),
            b'.' if i == 0 => s.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                s.push(b as char)
            }
            b => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s + ".device"
}

/// `key=value` settings of one section of a unit file, in order.
fn unit_settings(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s.to_owned();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn one(settings: &[(String, String)], key: &str) -> String {
    let values: Vec<&String> = settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.len(), 1, "one {key}= expected, got {values:?}");
    values[0].clone()
}

#[test]
fn deb_package_is_a_drop_in_for_qemu_guest_agent() {
    if !cargo_deb_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let out_dir = scratch.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let deb = build_deb(&out_dir);

    // Control data.
    let field = |name: &str| -> String {
        stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim_end()
            .to_owned()
    };
    assert_eq!(field("Package"), PACKAGE);
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    for relation in ["Conflicts", "Replaces", "Provides"] {
        assert_eq!(field(relation), "qemu-guest-agent", "{relation}");
    }
    // `$auto`: dpkg-shlibdeps found the C library the binary links, and nothing
    // else (the agent needs no other shared library).
    let depends = field("Depends");
    let names: Vec<&str> = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap())
        .collect();
    assert!(names.contains(&"libc6"), "Depends: {depends}");
    assert!(
        names.iter().all(|n| ["libc6", "libgcc-s1"].contains(n)),
        "unexpected Depends: {depends}"
    );
    assert!(
        depends.contains("libc6 (>= 2."),
        "versioned libc6: {depends}"
    );
    assert_eq!(field("Pre-Depends"), "init-system-helpers (>= 1.54~)");
    let description = field("Description");
    let synopsis = description.lines().next().unwrap();
    assert!(
        !synopsis.is_empty() && synopsis.len() <= 80,
        "synopsis must be one line of at most 80 characters: {synopsis:?}"
    );
    assert!(description.contains("qemu-guest-agent"), "{description}");

    // Control archive: no conffiles (an existing /etc/qemu/qemu-ga.conf is kept as
    // it is, with no dpkg prompt), the three maintainer scripts.
    let control = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let mut control_files: Vec<String> = fs::read_dir(&control)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    control_files.sort();
    assert_eq!(control_files, ["control", "postinst", "postrm", "prerm"]);

    // Every installed path, its type, mode and owner, from the archive listing.
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut entries = BTreeMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "listing line: {line}");
        assert_eq!(cols[1], "0/0", "owned by root: {line}");
        let path = cols[5].trim_start_matches('.').trim_end_matches('/');
        let target = (cols.len() == 8 && cols[6] == "->").then(|| cols[7].to_owned());
        entries.insert(path.to_owned(), (cols[0].to_owned(), target));
    }
    let expected_files: &[(&str, &str, Option<&str>)] = &[
        ("/usr/sbin/qga-agent", "-rwxr-xr-x", None),
        ("/usr/sbin/qemu-ga", "lrwxrwxrwx", Some("qga-agent")),
        (
            "/usr/lib/systemd/system/qga-agent.service",
            "-rw-r--r--",
            None,
        ),
        (
            "/usr/lib/udev/rules.d/99-qga-agent.rules",
            "-rw-r--r--",
            None,
        ),
        ("/usr/share/doc/qga-agent/README.md", "-rw-r--r--", None),
        ("/usr/share/doc/qga-agent/copyright", "-rw-r--r--", None),
        (
            "/usr/share/doc/qga-agent/examples/qemu-ga.conf",
            "-rw-r--r--",
            None,
        ),
    ];
    let mut expected = BTreeMap::new();
    for (path, mode, target) in expected_files {
        expected.insert(
            path.to_string(),
            (mode.to_string(), target.map(str::to_owned)),
        );
        // Every directory above it, mode 755.
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| *d != Path::new("/")) {
            expected.insert(d.display().to_string(), ("drwxr-xr-x".into(), None));
            dir = d.parent();
        }
    }
    assert_eq!(entries, expected, "installed files");

    // Unpacked: the same modes on disk, and the contents we ship.
    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    for (path, (mode, target)) in &expected {
        let meta = fs::symlink_metadata(at(path)).unwrap();
        match target {
            Some(t) => assert_eq!(fs::read_link(at(path)).unwrap(), Path::new(t)),
            None => {
                let want = if mode.starts_with('d') || mode.starts_with("-rwx") {
                    0o755
                } else {
                    0o644
                };
                assert_eq!(meta.permissions().mode() & 0o7777, want, "{path}");
            }
        }
    }
    let crate_dir = workspace().join("qga-agent");
    for (installed, source) in [
        (
            "/usr/lib/systemd/system/qga-agent.service",
            "packaging/qga-agent.service",
        ),
        (
            "/usr/lib/udev/rules.d/99-qga-agent.rules",
            "packaging/99-qga-agent.rules",
        ),
        (
            "/usr/share/doc/qga-agent/examples/qemu-ga.conf",
            "packaging/qemu-ga.conf.example",
        ),
        ("/usr/share/doc/qga-agent/README.md", "README.md"),
        (
            "/usr/share/doc/qga-agent/copyright",
            "packaging/debian/copyright",
        ),
    ] {
        assert_eq!(
            fs::read(at(installed)).unwrap(),
            fs::read(crate_dir.join(source)).unwrap(),
            "{installed} is {source}"
        );
    }

    // The unit starts an installed executable, and it is our agent; so is qemu-ga.
    let unit = fs::read_to_string(at("/usr/lib/systemd/system/qga-agent.service")).unwrap();
    let service = unit_settings(&unit, "Service");
    let exec_start = one(&service, "ExecStart");
    let program = exec_start
        .trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        program.starts_with('/'),
        "ExecStart needs an absolute path: {exec_start}"
    );
    assert!(
        expected.contains_key(&program),
        "ExecStart={program} is not a file the package installs"
    );
    let meta = fs::metadata(at(&program)).unwrap();
    assert!(meta.is_file() && meta.permissions().mode() & 0o111 == 0o111);
    let version_line = format!("QEMU Guest Agent {} (qga-rs)\n", env!("CARGO_PKG_VERSION"));
    for exe in [program.as_str(), "/usr/sbin/qemu-ga"] {
        let out = stdout(Command::new(at(exe)).arg("-V"));
        assert_eq!(out, version_line, "{exe} -V");
    }

    // Bound to the port the agent opens by default, started by it (WantedBy for
    // the enabled unit, the udev rule's SYSTEMD_WANTS on every add event).
    let device = device_unit(DEFAULT_VIRTIO_PATH);
    if let Ok(out) = Command::new("systemd-escape")
        .args(["--path", DEFAULT_VIRTIO_PATH])
        .output()
    {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            device.trim_end_matches(".device")
        );
    }
    let unit_section = unit_settings(&unit, "Unit");
    assert_eq!(one(&unit_section, "BindsTo"), device);
    assert_eq!(one(&unit_section, "After"), device);
    assert_eq!(one(&unit_settings(&unit, "Install"), "WantedBy"), device);
    let rule = fs::read_to_string(at("/usr/lib/udev/rules.d/99-qga-agent.rules")).unwrap();
    let rule = rule.replace("\\\n", " ");
    let port = Path::new(DEFAULT_VIRTIO_PATH)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let rule_line = rule
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .expect("a rule");
    for part in [
        "SUBSYSTEM==\"virtio-ports\"".to_owned(),
        format!("ATTR{{name}}==\"{port}\""),
        "TAG+=\"systemd\"".to_owned(),
        format!("ENV{{SYSTEMD_WANTS}}+=\"{UNIT}\""),
    ] {
        assert!(rule_line.contains(&part), "rule lacks {part}: {rule_line}");
    }
    systemd_verify(&root, scratch.path());

    // The example configuration: as shipped (all commented) it is the defaults;
    // uncommented, every setting in it is one the agent reads and shows back.
    let example = at("/usr/share/doc/qga-agent/examples/qemu-ga.conf");
    let agent = at("/usr/sbin/qga-agent");
    let dump = |conf: &Path| stdout(Command::new(&agent).arg("-c").arg(conf).arg("-D"));
    let empty = scratch.path().join("empty.conf");
    fs::write(&empty, "").unwrap();
    assert_eq!(dump(&example), dump(&empty));
    let text = fs::read_to_string(&example).unwrap();
    let settings: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| {
            l.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
        })
        .collect();
    assert!(settings.len() >= 10, "example settings: {settings:?}");
    let uncommented = scratch.path().join("uncommented.conf");
    fs::write(
        &uncommented,
        format!("[general]\n{}\n", settings.join("\n")),
    )
    .unwrap();
    let shown = dump(&uncommented);
    for s in &settings {
        assert!(
            shown.lines().any(|l| l == *s),
            "-D does not show {s}:\n{shown}"
        );
    }

    maintainer_scripts(&control, scratch.path());
}

/// `systemd-analyze verify` of the unit inside the unpacked tree: its syntax, its
/// dependencies, and that ExecStart is executable there. The tree is copied first,
/// with the targets every service needs added as stubs.
fn systemd_verify(root: &Path, scratch: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("QGA_REQUIRE_REFERENCE").is_some_and(|v| v == "1") {
            panic!("systemd-analyze is missing and QGA_REQUIRE_REFERENCE=1");
        }
        eprintln!("SKIPPED: systemd-analyze verify (Debian package systemd)");
        return;
    }
    let copy = scratch.join("verify-root");
    run(Command::new("cp").arg("-a").arg(root).arg(&copy));
    let units = copy.join("usr/lib/systemd/system");
    for stub in ["sysinit.target", "basic.target", "shutdown.target"] {
        fs::write(units.join(stub), "[Unit]\nDescription=stub\n").unwrap();
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", copy.display()))
        .arg(format!("/usr/lib/systemd/system/{UNIT}")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// Runs the maintainer scripts with `PATH` holding only stubs of the systemd
/// helpers (each logs its arguments), so they touch nothing here.
fn maintainer_scripts(control: &Path, scratch: &Path) {
    let stubs = scratch.join("stubs");
    fs::create_dir(&stubs).unwrap();
    let log = scratch.join("calls.log");
    for tool in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        let path = stubs.join(tool);
        fs::write(
            &path,
            format!("#!/bin/sh\nprintf '%s\\n' \"{tool} $*\" >> \"$STUB_LOG\"\n"),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = |name: &str, args: &[&str]| -> Vec<String> {
        let _ = fs::remove_file(&log);
        run(Command::new("/bin/sh")
            .arg(control.join(name))
            .args(args)
            .env_clear()
            .env("PATH", &stubs)
            .env("STUB_LOG", &log));
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    let port = Path::new(DEFAULT_VIRTIO_PATH).exists();

    // First install: the unit is enabled; started only with systemd and the port.
    let calls = script("postinst", &["configure"]);
    assert!(
        calls.contains(&format!("deb-systemd-helper enable {UNIT}")),
        "postinst configure: {calls:?}"
    );
    let starts: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("deb-systemd-invoke"))
        .collect();
    if systemd_runs && port {
        assert_eq!(starts, [&format!("deb-systemd-invoke start {UNIT}")]);
    } else {
        assert!(
            starts.is_empty(),
            "started without systemd or port: {starts:?}"
        );
    }
    // Never an unconditional start: that waits 90 s for an absent port's device.
    let postinst = fs::read_to_string(control.join("postinst")).unwrap();
    let start_lines: Vec<&str> = postinst
        .lines()
        .filter(|l| l.contains("deb-systemd-invoke") && !l.contains("try-restart"))
        .collect();
    assert_eq!(start_lines.len(), 1, "{start_lines:?}");
    assert!(postinst.contains(&format!("[ -e {DEFAULT_VIRTIO_PATH} ]")));

    // Removal stops the unit (with systemd) and masks it until purge.
    let calls = script("prerm", &["remove"]);
    assert_eq!(
        calls,
        if systemd_runs {
            vec![format!("deb-systemd-invoke stop {UNIT}")]
        } else {
            vec![]
        }
    );
    // (postrm calls the helper only where init-system-helpers installed it.)
    let calls = script("postrm", &["purge"]);
    if Path::new("/usr/bin/deb-systemd-helper").exists() {
        assert!(
            calls.contains(&format!("deb-systemd-helper purge {UNIT}")),
            "postrm purge: {calls:?}"
        );
    }
}
