//! The state directory against planted links, shared directories and a full
//! descriptor table. Every link points at a decoy file inside the test's own
//! temporary directory; no system file is ever a target.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qga_agent::{StateDir, StateError, FIRST_HANDLE};

const SECRET: &str = "root:$6$SECRETHASH$abcdefgh:19000:0:99999:7:::\n";

/// A temporary root holding `state/` (the state directory) and `decoys/`.
struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("decoys")).unwrap();
        Setup { root }
    }

    fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }

    fn in_state(&self, name: &str) -> PathBuf {
        self.state().join(name)
    }

    /// A decoy file with secret content and mode 0640.
    fn decoy(&self, name: &str) -> PathBuf {
        let p = self.root.path().join("decoys").join(name);
        fs::write(&p, SECRET).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        p
    }

    /// A path in `decoys/` where nothing exists.
    fn absent(&self, name: &str) -> PathBuf {
        self.root.path().join("decoys").join(name)
    }

    fn plant(&self, name: &str, target: &Path) {
        symlink(target, self.in_state(name)).unwrap();
    }
}

/// Content and mode, to prove a decoy was not touched.
fn snapshot(p: &Path) -> (String, u32) {
    (
        fs::read_to_string(p).unwrap(),
        fs::symlink_metadata(p).unwrap().mode() & 0o7777,
    )
}

fn is_link(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Entries of `dir` other than `expected` (e.g. a temporary file left behind).
fn leftovers(dir: &Path, expected: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !expected.contains(&n.as_str()))
        .collect()
}

#[test]
fn links_at_every_name_leave_their_targets_untouched() {
    let s = Setup::new();
    let state = StateDir::new(s.state()).unwrap();
    let names = [
        "qga.state",
        "qga.state.isfrozen",
        "qga.tmp",
        "qga.state.tmp",
    ];
    let decoys: Vec<PathBuf> = names.iter().map(|n| s.decoy(n)).collect();
    for (n, d) in names.iter().zip(&decoys) {
        s.plant(n, d);
    }
    let before: Vec<_> = decoys.iter().map(|d| snapshot(d)).collect();

    // Reading through the link is refused; writing replaces the link itself.
    assert!(state.load_counter().is_err());
    state.store_counter(1234).unwrap();
    assert!(!is_link(&s.in_state("qga.state")));
    assert_eq!(
        fs::read_to_string(s.in_state("qga.state")).unwrap(),
        "[global]\nfd_counter=1234\n"
    );
    assert_eq!(state.load_counter().unwrap(), 1234);

    // A linked marker is not a marker: not frozen, and freezing refuses to use it.
    assert!(!state.is_frozen());
    let e = state.frozen().unwrap_err();
    assert!(matches!(e, StateError::WrongType { .. }), "{e:?}");
    let e = state.set_frozen(true).unwrap_err().to_string();
    let marker = s.in_state("qga.state.isfrozen");
    assert!(
        e.starts_with(&format!("{} is a symbolic link", marker.display())),
        "{e}"
    );
    assert!(!state.is_frozen());
    // Thawing removes the link, not what it points at.
    state.set_frozen(false).unwrap();
    assert!(fs::symlink_metadata(&marker).is_err());
    state.set_frozen(true).unwrap();
    assert!(state.is_frozen());
    assert!(!is_link(&marker));
    state.set_frozen(false).unwrap();

    let after: Vec<_> = decoys.iter().map(|d| snapshot(d)).collect();
    assert_eq!(before, after);
    assert_eq!(
        leftovers(&s.state(), &["qga.state", "qga.tmp", "qga.state.tmp"]),
        Vec::<String>::new()
    );
}

#[test]
fn dangling_links_make_no_file_at_their_targets() {
    let s = Setup::new();
    let state = StateDir::new(s.state()).unwrap();
    let names = [
        "qga.state",
        "qga.state.isfrozen",
        "qga.tmp",
        "qga.state.tmp",
    ];
    let targets: Vec<PathBuf> = names.iter().map(|n| s.absent(n)).collect();
    for (n, t) in names.iter().zip(&targets) {
        s.plant(n, t);
    }
    state.store_counter(1001).unwrap();
    assert!(state.set_frozen(true).is_err());
    assert!(!state.is_frozen());
    state.set_frozen(false).unwrap();
    assert!(state.store_counter(1002).is_ok());
    for t in &targets {
        assert!(
            fs::symlink_metadata(t).is_err(),
            "{} was created",
            t.display()
        );
    }
}

#[test]
fn a_hard_linked_marker_is_kept_not_truncated() {
    let s = Setup::new();
    let state = StateDir::new(s.state()).unwrap();
    let decoy = s.decoy("hard");
    fs::hard_link(&decoy, s.in_state("qga.state.isfrozen")).unwrap();
    let before = snapshot(&decoy);
    // A regular file is a marker: freezing again keeps it as it is.
    assert!(state.is_frozen());
    state.set_frozen(true).unwrap();
    assert_eq!(snapshot(&decoy), before);
    state.set_frozen(false).unwrap();
    assert!(!state.is_frozen());
    assert_eq!(snapshot(&decoy), before);
}

#[test]
fn a_linked_or_odd_state_file_is_an_error_without_its_content() {
    let s = Setup::new();
    let state = StateDir::new(s.state()).unwrap();
    let path = s.in_state("qga.state");
    s.plant("qga.state", &s.decoy("shadow"));
    let e = state.load_counter().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{} is a symbolic link, not a regular file: refusing to use it (remove it; \
             the agent creates what it needs)",
            path.display()
        )
    );
    // Through the dispatcher, as the agent starts.
    let fakes = qga_ops::fake::FakeOps::new();
    let e = qga_agent::Dispatcher::new(fakes.ops(), state.clone(), Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(!e.contains("SECRETHASH") && !e.contains("root:"), "{e}");

    // A named pipe must not hang the agent; a directory is no state file either.
    fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = state.load_counter().unwrap_err().to_string();
    assert!(e.contains("is a named pipe, not a regular file"), "{e}");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let e = state.load_counter().unwrap_err().to_string();
    assert!(e.contains("is a directory, not a regular file"), "{e}");
    fs::remove_dir(&path).unwrap();

    // A big file that is not ours is refused without being shown.
    fs::write(&path, SECRET.repeat(2000)).unwrap();
    let e = state.load_counter().unwrap_err().to_string();
    assert!(
        e.contains("larger than 64 KiB") && !e.contains("SECRETHASH"),
        "{e}"
    );
    fs::remove_file(&path).unwrap();
    assert_eq!(state.load_counter().unwrap(), FIRST_HANDLE);
}

fn writable_message(p: &Path, mode: &str) -> String {
    format!(
        "state directory {} is writable by group or others (mode {mode}): refusing to \
         use it; pass -t a directory that only its owner can write, e.g. `install -d -m \
         0700 /var/lib/qga-agent` (a missing directory is created with mode 0700)",
        p.display()
    )
}

#[test]
fn a_directory_others_can_write_is_refused() {
    let s = Setup::new();
    let dir = s.state();
    fs::create_dir(&dir).unwrap();
    for (mode, text) in [(0o777, "0777"), (0o770, "0770"), (0o702, "0702")] {
        set_mode(&dir, mode);
        let e = StateDir::new(&dir).unwrap_err();
        assert_eq!(e.to_string(), writable_message(&dir, text));
    }
    // Sticky does not help: anyone can still plant a name there.
    set_mode(&dir, 0o1777);
    let e = StateDir::new(&dir).unwrap_err();
    assert_eq!(e.to_string(), writable_message(&dir, "1777"));
    // Group- and world-readable is fine.
    set_mode(&dir, 0o755);
    let state = StateDir::new(&dir).unwrap();
    state.store_counter(1001).unwrap();
    // Every operation checks again: opened up later, nothing is written any more.
    set_mode(&dir, 0o777);
    let e = state.store_counter(1002).unwrap_err();
    assert!(
        matches!(e, StateError::Writable { mode: 0o777, .. }),
        "{e:?}"
    );
    assert!(state.set_frozen(true).is_err());
    set_mode(&dir, 0o700);
    assert_eq!(state.load_counter().unwrap(), 1001);
    assert!(!state.is_frozen());
}

#[test]
fn tmp_itself_is_refused() {
    // Only looks at /tmp's mode; writes nothing there.
    let mode = fs::metadata("/tmp").unwrap().mode() & 0o7777;
    if mode & 0o022 == 0 {
        eprintln!("skipped: /tmp is mode {mode:04o} here");
        return;
    }
    let e = StateDir::new("/tmp").unwrap_err();
    assert_eq!(
        e.to_string(),
        writable_message(Path::new("/tmp"), &format!("{mode:04o}"))
    );
}

#[test]
fn a_directory_another_user_owns_or_could_swap_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to hand a directory to another user");
        return;
    }
    let s = Setup::new();
    let dir = s.state();
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
    let e = StateDir::new(&dir).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "state directory {} is owned by uid 4242, not by uid 0",
            dir.display()
        )),
        "{e}"
    );
    std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
    StateDir::new(&dir).unwrap();

    // A parent another user owns (or anyone can write) lets them swap the directory.
    let parent = s.root.path().join("parent");
    let inner = parent.join("state");
    fs::create_dir_all(&inner).unwrap();
    set_mode(&inner, 0o700);
    std::os::unix::fs::chown(&parent, Some(4242), None).unwrap();
    let e = StateDir::new(&inner).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "is inside {}, which belongs to another user",
            parent.display()
        )),
        "{e}"
    );
    std::os::unix::fs::chown(&parent, Some(0), None).unwrap();
    set_mode(&parent, 0o777);
    let e = StateDir::new(&inner).unwrap_err().to_string();
    assert!(
        e.contains("writable by group or others without the sticky bit"),
        "{e}"
    );
    // Sticky, like /tmp: only the entry's owner can rename it.
    set_mode(&parent, 0o1777);
    StateDir::new(&inner).unwrap();

    // The state directory path as a link: followed when root owns the link (as
    // /var/run -> /run), refused when another user does.
    let link = s.root.path().join("link");
    symlink(&inner, &link).unwrap();
    let state = StateDir::new(&link).unwrap();
    state.store_counter(1007).unwrap();
    assert_eq!(
        fs::read_to_string(inner.join("qga.state")).unwrap(),
        "[global]\nfd_counter=1007\n"
    );
    std::os::unix::fs::lchown(&link, Some(4242), None).unwrap();
    let e = StateDir::new(&link).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "state directory {} is a symbolic link owned by uid 4242: refusing to follow it",
            link.display()
        )),
        "{e}"
    );
    // ... also for an agent that was already using it.
    assert!(state.store_counter(1008).is_err());
}

const CHILD_DIR: &str = "QGA_STATE_TEST_DIR";

/// Run by [`store_counter_out_of_descriptors_reports_the_os_error`] in a copy of
/// this test binary, where lowering RLIMIT_NOFILE harms no other test.
#[test]
#[ignore = "run by store_counter_out_of_descriptors_reports_the_os_error"]
fn out_of_descriptors_child() {
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR).expect("run by the parent test"));
    let state = StateDir::new(&dir).unwrap();
    state.store_counter(1001).unwrap();
    let lim = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: setrlimit only reads `lim`; this process runs this test alone.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut held = Vec::new();
    loop {
        match fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let e = state.store_counter(1002).unwrap_err();
    assert_eq!(
        e.os_error().and_then(std::io::Error::raw_os_error),
        Some(libc::EMFILE),
        "{e:?}"
    );
    assert_eq!(e.reason(), "Too many open files");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot create a temporary file in {}: Too many open files",
            dir.display()
        )
    );
    let e = state.set_frozen(true).unwrap_err();
    assert_eq!(e.reason(), "Too many open files");
    let e = state.load_counter().unwrap_err();
    assert_eq!(e.reason(), "Too many open files");
    // The old counter is intact; with one descriptor free everything works again.
    held.pop();
    assert_eq!(state.load_counter().unwrap(), 1001);
    state.store_counter(1003).unwrap();
    state.set_frozen(true).unwrap();
    assert!(state.is_frozen());
    state.set_frozen(false).unwrap();
    println!("child done");
}

#[test]
fn store_counter_out_of_descriptors_reports_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "out_of_descriptors_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child done"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("qga.state")).unwrap(),
        "[global]\nfd_counter=1003\n"
    );
    assert_eq!(leftovers(dir.path(), &["qga.state"]), Vec::<String>::new());
}

/// Runs the agent binary on a unix socket in `dir`; it must exit on its own.
fn agent_exit(dir: &Path) -> (Option<i32>, String) {
    let sock = dir.join("sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qga-agent"))
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir)
        .env_remove("QGA_CONF")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the agent kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!sock.exists(), "the agent opened its channel");
    (status.code(), stderr)
}

#[test]
fn the_agent_refuses_a_world_writable_state_directory() {
    let s = Setup::new();
    let dir = s.state();
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    let (code, stderr) = agent_exit(&dir);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!("qga-agent: {}\n", writable_message(&dir, "0777"))
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "wrote into it");
}

#[test]
fn the_agent_refuses_a_linked_state_file_without_showing_it() {
    let s = Setup::new();
    fs::create_dir(s.state()).unwrap();
    set_mode(&s.state(), 0o700);
    let decoy = s.decoy("shadow");
    s.plant("qga.state", &decoy);
    let (code, stderr) = agent_exit(&s.state());
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "qga-agent: failed to load persistent state: {} is a symbolic link, not a \
             regular file: refusing to use it (remove it; the agent creates what it \
             needs)\n",
            s.in_state("qga.state").display()
        )
    );
    assert_eq!(snapshot(&decoy), (SECRET.to_owned(), 0o640));
}
