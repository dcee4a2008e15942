//! LinuxUsers over a temp dir: a passwd file whose users live in fake homes inside
//! it (uid 4242, so ownership shows), and a fake `chpasswd` that records what it
//! got. The ssh key suites run twice: with the user's filesystem credentials (the
//! default) and with root's, to show the descriptor-relative, no-symlink rules hold
//! on their own. Every symlink and hard link attack uses decoys inside the temp dir
//! and checks that they are untouched.
//!
//! Ownership needs root: without it every test prints a SKIPPED line.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use qga_ops::{LinuxUsers, Users};

const UID: u32 = 4242;
const OTHER: u32 = 4343;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: ssh key and ownership tests need root");
    false
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

struct Fx {
    dir: tempfile::TempDir,
    users: LinuxUsers,
}

impl Fx {
    fn new(as_user: bool) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let alice = root.join("home/alice");
        fs::create_dir_all(&alice).unwrap();
        chown(&alice, UID);
        chmod(&alice, 0o755);
        let mallory = root.join("home/mallory");
        fs::create_dir_all(&mallory).unwrap();
        chown(&mallory, OTHER);
        let passwd = root.join("passwd");
        fs::write(
            &passwd,
            format!(
                "root:x:0:0:root:/root:/bin/sh\n\
                 alice:x:{UID}:{UID}:Alice,,,:{}:/bin/sh\n\
                 bob:x:{UID}:{UID}::{}:/bin/sh\n\
                 gone:x:4444:4444::{}:/bin/sh\n\
                 rel:x:4445:4445::home/rel:/bin/sh\n",
                alice.display(),
                mallory.display(),
                root.join("nonexistent").display()
            ),
        )
        .unwrap();
        Fx {
            users: LinuxUsers {
                passwd: Some(passwd),
                chpasswd: None,
                as_user,
            },
            dir,
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home/alice")
    }
    fn ssh(&self) -> PathBuf {
        self.home().join(".ssh")
    }
    fn keys(&self) -> PathBuf {
        self.ssh().join("authorized_keys")
    }

    fn get(&self) -> Result<Vec<String>, String> {
        self.users
            .authorized_keys("alice")
            .map_err(|e| e.to_string())
    }
    fn add(&self, k: &[&str], reset: bool) -> Result<(), String> {
        self.users
            .add_authorized_keys("alice", &v(k), reset)
            .map_err(|e| e.to_string())
    }
    fn remove(&self, k: &[&str]) -> Result<(), String> {
        self.users
            .remove_authorized_keys("alice", &v(k))
            .map_err(|e| e.to_string())
    }

    /// What is in `.ssh` besides `authorized_keys` (a left-over temp file).
    fn stray(&self) -> Vec<String> {
        fs::read_dir(self.ssh())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "authorized_keys")
            .collect()
    }

    /// The file's text, mode, owner and group.
    fn file(&self) -> (String, u32, u32, u32) {
        let m = fs::symlink_metadata(self.keys()).unwrap();
        assert!(m.file_type().is_file());
        (
            fs::read_to_string(self.keys()).unwrap(),
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
        )
    }

    /// A decoy file outside the home: root's, mode 0640.
    fn decoy_file(&self, name: &str, text: &str) -> Decoy {
        let p = self.dir.path().join(name);
        fs::write(&p, text).unwrap();
        chmod(&p, 0o640);
        Decoy::of(p)
    }

    /// A decoy directory holding root's `authorized_keys`, like /root/.ssh.
    fn decoy_dir(&self) -> (Decoy, Decoy) {
        let d = self.dir.path().join("root-ssh");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o700);
        let f = d.join("authorized_keys");
        fs::write(&f, "ssh-ed25519 ROOTKEY root@host\n").unwrap();
        chmod(&f, 0o600);
        (Decoy::of(d), Decoy::of(f))
    }
}

fn v(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// A file or directory the agent must leave exactly as it was.
struct Decoy {
    path: PathBuf,
    text: Option<Vec<u8>>,
    entries: Option<Vec<PathBuf>>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

impl Decoy {
    fn of(path: PathBuf) -> Decoy {
        let m = fs::symlink_metadata(&path).unwrap();
        Decoy {
            text: m.is_file().then(|| fs::read(&path).unwrap()),
            entries: m.is_dir().then(|| list(&path)),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            path,
        }
    }

    fn assert_untouched(&self) {
        let now = Decoy::of(self.path.clone());
        assert_eq!(now.text, self.text, "{} content", self.path.display());
        assert_eq!(now.entries, self.entries, "{} entries", self.path.display());
        assert_eq!(now.mode, self.mode, "{} mode", self.path.display());
        assert_eq!(
            (now.uid, now.gid),
            (self.uid, self.gid),
            "{} owner",
            self.path.display()
        );
        assert_eq!(now.mtime, self.mtime, "{} mtime", self.path.display());
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn both(test: impl Fn(Fx)) {
    if !is_root() {
        return;
    }
    test(Fx::new(true));
    test(Fx::new(false));
}

#[test]
fn round_trips_modes_owners_and_no_temp_files() {
    both(|fx| {
        let missing = fx.keys().display().to_string();
        assert_eq!(
            fx.get().unwrap_err(),
            format!("failed to read '{missing}': Failed to open file \u{201c}{missing}\u{201d}: No such file or directory")
        );
        // Removing from a file that does not exist changes nothing and creates nothing.
        fx.remove(&["k1 a"]).unwrap();
        assert!(!fx.ssh().exists());

        fx.add(&["k1 a", "k2 b", "k1 a"], false).unwrap();
        let m = fs::symlink_metadata(fx.ssh()).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o700, UID, UID));
        assert_eq!(fx.file(), ("k1 a\nk2 b\n".into(), 0o600, UID, UID));
        assert_eq!(fx.get().unwrap(), ["k1 a", "k2 b"]);
        assert!(fx.stray().is_empty(), "{:?}", fx.stray());

        fx.add(&["k3 c", "k2 b"], false).unwrap();
        assert_eq!(fx.file().0, "k1 a\nk2 b\nk3 c\n");
        fx.remove(&["k2 b", "absent"]).unwrap();
        assert_eq!(fx.file(), ("k1 a\nk3 c\n".into(), 0o600, UID, UID));
        fx.add(&["k9"], true).unwrap();
        assert_eq!(fx.file().0, "k9\n");
        fx.add(&[], true).unwrap();
        assert_eq!(fx.file(), (String::new(), 0o600, UID, UID));
        assert_eq!(fx.get().unwrap(), Vec::<String>::new());
        assert!(fx.stray().is_empty(), "{:?}", fx.stray());
    });
}

#[test]
fn other_lines_are_kept_and_keys_match_trimmed() {
    both(|fx| {
        fs::create_dir(fx.ssh()).unwrap();
        chown(&fx.ssh(), UID);
        chmod(&fx.ssh(), 0o700);
        fs::write(fx.keys(), "# comment\nk1 a\n\n  k2 b  \r\nrestrict k3 c").unwrap();
        chown(&fx.keys(), UID);
        chmod(&fx.keys(), 0o644);
        assert_eq!(fx.get().unwrap(), ["k1 a", "k2 b", "restrict k3 c"]);
        // A key get returned (trimmed) removes its line.
        fx.remove(&["k2 b"]).unwrap();
        assert_eq!(
            fx.file(),
            ("# comment\nk1 a\n\nrestrict k3 c\n".into(), 0o600, UID, UID)
        );
        fx.add(&["k1 a", "k4"], false).unwrap();
        assert_eq!(fx.file().0, "# comment\nk1 a\n\nrestrict k3 c\nk4\n");
        // Nothing removed: the file is not rewritten.
        let before = fs::metadata(fx.keys()).unwrap().ino();
        fx.remove(&["nope"]).unwrap();
        assert_eq!(fs::metadata(fx.keys()).unwrap().ino(), before);
    });
}

#[test]
fn argument_and_lookup_errors() {
    both(|fx| {
        let u = &fx.users;
        let e = |r: Result<(), qga_ops::OpsError>| r.unwrap_err().to_string();
        assert_eq!(
            u.authorized_keys("nobody-here").unwrap_err().to_string(),
            "failed to lookup user 'nobody-here': no such user"
        );
        assert_eq!(
            e(u.add_authorized_keys("nobody-here", &v(&["k"]), false)),
            "failed to lookup user 'nobody-here': no such user"
        );
        assert_eq!(
            u.authorized_keys("").unwrap_err().to_string(),
            "failed to lookup user '': no such user"
        );
        // Keys are checked before the user is looked up, as qemu-ga does.
        assert_eq!(
            e(u.add_authorized_keys("nobody-here", &v(&["ok", "#c"]), false)),
            "invalid OpenSSH public key: '#c'"
        );
        assert_eq!(
            e(u.remove_authorized_keys("alice", &v(&["a\nb"]))),
            "invalid OpenSSH public key: 'a\nb'"
        );
        assert_eq!(
            e(u.add_authorized_keys("alice", &v(&["", "#c"]), false)),
            "invalid OpenSSH public key: '#c'"
        );
        assert!(!fx.ssh().exists(), "a refused call created .ssh");
        // A relative home is refused, never resolved against the agent's cwd.
        assert!(u
            .authorized_keys("rel")
            .unwrap_err()
            .to_string()
            .contains("no absolute home directory"));
        // No home: get says what qemu-ga says, remove has nothing to do, add fails.
        let gone = fx.dir.path().join("nonexistent/.ssh");
        assert_eq!(
            u.authorized_keys("gone").unwrap_err().to_string(),
            format!(
                "failed to read '{0}/authorized_keys': Failed to open file \u{201c}{0}/authorized_keys\u{201d}: No such file or directory",
                gone.display()
            )
        );
        u.remove_authorized_keys("gone", &v(&["k"])).unwrap();
        assert_eq!(
            e(u.add_authorized_keys("gone", &v(&["k"]), false)),
            format!(
                "failed to create directory '{}': No such file or directory",
                gone.display()
            )
        );
        assert!(!fx.dir.path().join("nonexistent").exists());
    });
}

/// Every call the host can make, each expected to fail with `what` in its error.
fn all_calls_refused(fx: &Fx, what: &str) {
    let get = fx.get().map(|_| ());
    for (name, r) in [
        ("get", get),
        ("add", fx.add(&["ssh-ed25519 ATTACKER"], false)),
        ("reset", fx.add(&["ssh-ed25519 ATTACKER"], true)),
        ("remove", fx.remove(&["ssh-ed25519 ROOTKEY root@host"])),
    ] {
        let e = r.expect_err(name);
        assert!(e.contains(what), "{name}: {e:?} does not say {what:?}");
    }
}

#[test]
fn ssh_dir_symlink_to_roots_ssh_is_refused() {
    both(|fx| {
        let (dir, file) = fx.decoy_dir();
        std::os::unix::fs::symlink(&dir.path, fx.ssh()).unwrap();
        chown(&fx.ssh(), UID);
        all_calls_refused(
            &fx,
            &format!("refusing to follow symbolic link '{}'", fx.ssh().display()),
        );
        dir.assert_untouched();
        file.assert_untouched();
        assert!(fs::symlink_metadata(fx.ssh()).unwrap().is_symlink());
    });
}

#[test]
fn ssh_dir_symlink_to_etc_like_dir_is_refused() {
    both(|fx| {
        // ~/.ssh -> an /etc-like directory without authorized_keys: 7.2 would
        // create one there.
        let etc = fx.dir.path().join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("shadow"), "root:$6$secret:19000::::::\n").unwrap();
        let etc = Decoy::of(etc);
        std::os::unix::fs::symlink(&etc.path, fx.ssh()).unwrap();
        all_calls_refused(&fx, &format!("'{}'", fx.ssh().display()));
        etc.assert_untouched();
    });
}

#[test]
fn authorized_keys_symlink_to_shadow_is_refused() {
    both(|fx| {
        let shadow = fx.decoy_file("shadow", "root:$6$secret:19000:0:99999:7:::\n");
        fs::create_dir(fx.ssh()).unwrap();
        chown(&fx.ssh(), UID);
        chmod(&fx.ssh(), 0o700);
        std::os::unix::fs::symlink(&shadow.path, fx.keys()).unwrap();
        chown(&fx.keys(), UID);
        all_calls_refused(
            &fx,
            &format!("refusing to follow symbolic link '{}'", fx.keys().display()),
        );
        shadow.assert_untouched();
        assert!(fs::symlink_metadata(fx.keys()).unwrap().is_symlink());
        assert!(fx.stray().is_empty(), "{:?}", fx.stray());
    });
}

#[test]
fn hard_link_to_shadow_is_refused_and_never_written() {
    both(|fx| {
        // World-readable, so that the user too gets past open() to the link count
        // (a 0640 /etc/shadow already fails open() with the user's credentials).
        let shadow = fx.decoy_file("shadow", "root:$6$secret:19000:0:99999:7:::\n");
        chmod(&shadow.path, 0o644);
        let shadow = Decoy::of(shadow.path);
        fs::create_dir(fx.ssh()).unwrap();
        chown(&fx.ssh(), UID);
        chmod(&fx.ssh(), 0o700);
        fs::hard_link(&shadow.path, fx.keys()).unwrap();
        let e = fx.get().unwrap_err();
        assert!(
            e.contains(&format!("'{}'", fx.keys().display())) && e.contains("2 hard links"),
            "{e}"
        );
        fx.add(&["k"], false).unwrap_err();
        fx.remove(&["root:$6$secret:19000:0:99999:7:::"])
            .unwrap_err();
        shadow.assert_untouched();
        // A reset reads nothing: the link is replaced by a new file of the user's,
        // the decoy keeps its content and its owner.
        fx.add(&["k"], true).unwrap();
        assert_eq!(fx.file(), ("k\n".into(), 0o600, UID, UID));
        assert_eq!(fs::metadata(fx.keys()).unwrap().nlink(), 1);
        assert_eq!(fs::metadata(&shadow.path).unwrap().nlink(), 1);
        let now = Decoy::of(shadow.path.clone());
        assert_eq!(
            (now.text, now.uid, now.mode),
            (shadow.text, shadow.uid, shadow.mode)
        );
    });
}

#[test]
fn foreign_owner_group_writable_and_special_files_are_refused() {
    both(|fx| {
        // 0755: with the user's credentials a 0700 directory of someone else
        // cannot even be opened (also refused, with "Permission denied").
        fs::create_dir(fx.ssh()).unwrap();
        chmod(&fx.ssh(), 0o755);
        chown(&fx.ssh(), OTHER);
        all_calls_refused(
            &fx,
            &format!(
                "refusing to use '{}': it belongs to uid {OTHER}",
                fx.ssh().display()
            ),
        );
        chown(&fx.ssh(), UID);
        chmod(&fx.ssh(), 0o777);
        all_calls_refused(&fx, "writable by group or others (mode 777)");
        chmod(&fx.ssh(), 0o700);

        // A FIFO would hang a reader that waits for a writer.
        nix::unistd::mkfifo(&fx.keys(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        chown(&fx.keys(), UID);
        let e = fx.get().unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        fx.add(&["k"], true).unwrap_err();
        assert!(fs::symlink_metadata(fx.keys())
            .unwrap()
            .file_type()
            .is_fifo_like());
        fs::remove_file(fx.keys()).unwrap();

        // authorized_keys of another user.
        fs::write(fx.keys(), "k\n").unwrap();
        chown(&fx.keys(), OTHER);
        let e = fx.get().unwrap_err();
        assert!(e.contains("belongs to uid 4343"), "{e}");

        // authorized_keys that is a directory.
        fs::remove_file(fx.keys()).unwrap();
        fs::create_dir(fx.keys()).unwrap();
        fx.add(&["k"], true).unwrap_err();
        assert!(fx.keys().is_dir());
    });
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[test]
fn home_of_another_user_is_refused() {
    if !is_root() {
        return;
    }
    let fx = Fx::new(true);
    // bob's home is mallory's (uid 4343), not his (4242) nor root's.
    let e = fx.users.authorized_keys("bob").unwrap_err().to_string();
    let mallory = fx.dir.path().join("home/mallory");
    assert_eq!(
        e,
        format!(
            "refusing to use '{}': it belongs to uid {OTHER}, neither to 'bob' nor to root",
            mallory.display()
        )
    );
    fx.users
        .add_authorized_keys("bob", &v(&["k"]), false)
        .unwrap_err();
    assert!(list(&mallory).is_empty());
}

#[test]
fn user_credentials_are_what_the_files_see() {
    if !is_root() {
        return;
    }
    // A root-owned, 0755 .ssh is allowed by the owner rule; as the user (the
    // default) the agent cannot write in it, as root it can.
    for as_user in [true, false] {
        let fx = Fx::new(as_user);
        fs::create_dir(fx.ssh()).unwrap();
        chmod(&fx.ssh(), 0o755);
        let r = fx.add(&["k"], false);
        if as_user {
            let e = r.unwrap_err();
            assert_eq!(
                e,
                format!(
                    "failed to write to '{}': Permission denied",
                    fx.keys().display()
                )
            );
            assert!(list(&fx.ssh()).is_empty());
        } else {
            r.unwrap();
            // Created by root, handed to the user: the one chown, of our own file.
            assert_eq!(fx.file(), ("k\n".into(), 0o600, UID, UID));
            let m = fs::metadata(fx.ssh()).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755));
        }
    }
}

// ---------------------------------------------------------------------------
// set_password with a fake chpasswd.

struct Chpasswd {
    dir: tempfile::TempDir,
}

impl Chpasswd {
    /// A script that records its arguments and standard input, then exits `code`.
    fn new(code: i32) -> Chpasswd {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("chpasswd");
        common::write_script(
            &script,
            &format!(
                "#!/bin/sh\nd=$(dirname \"$0\")\nprintf '%s\\n' \"$@\" > \"$d/argv\"\ncat > \"$d/stdin\"\nexit {code}\n"
            ),
        );
        Chpasswd { dir }
    }

    fn users(&self) -> LinuxUsers {
        LinuxUsers {
            chpasswd: Some(self.dir.path().join("chpasswd")),
            ..Default::default()
        }
    }

    fn argv(&self) -> Option<String> {
        fs::read_to_string(self.dir.path().join("argv")).ok()
    }

    fn stdin(&self) -> Option<Vec<u8>> {
        fs::read(self.dir.path().join("stdin")).ok()
    }
}

#[test]
fn password_goes_to_stdin_never_argv() {
    let c = Chpasswd::new(0);
    let password = "s3cret pa:ss w\u{f6}rd".as_bytes();
    c.users().set_password("alice", password, false).unwrap();
    assert_eq!(c.argv().unwrap(), "\n", "no arguments for a raw password");
    let mut line = b"alice:".to_vec();
    line.extend_from_slice(password);
    line.push(b'\n');
    assert_eq!(c.stdin().unwrap(), line);

    let c = Chpasswd::new(0);
    let hash = b"$6$salt$abcdefghijklmnop";
    c.users().set_password("bob", hash, true).unwrap();
    let argv = c.argv().unwrap();
    assert_eq!(argv, "-e\n");
    assert!(!argv.contains("salt"));
    assert_eq!(c.stdin().unwrap(), b"bob:$6$salt$abcdefghijklmnop\n");

    // Bytes that are no UTF-8 go through as they are.
    let c = Chpasswd::new(0);
    c.users().set_password("u", b"\xff\xfe", false).unwrap();
    assert_eq!(c.stdin().unwrap(), b"u:\xff\xfe\n");
}

#[test]
fn password_errors() {
    let c = Chpasswd::new(1);
    assert_eq!(
        c.users()
            .set_password("alice", b"pw", false)
            .unwrap_err()
            .to_string(),
        "child process has failed to set user password"
    );
    assert_eq!(c.stdin().unwrap(), b"alice:pw\n");

    // Forbidden characters: chpasswd never runs.
    let c = Chpasswd::new(0);
    let e = |u: &str, p: &[u8]| c.users().set_password(u, p, false).unwrap_err().to_string();
    assert_eq!(
        e("alice", b"a\nroot:x"),
        "forbidden characters in raw password"
    );
    assert_eq!(e("alice", b"a\0b"), "forbidden characters in raw password");
    assert_eq!(e("root:x", b"pw"), "forbidden characters in username");
    assert_eq!(e("a\nroot", b"pw"), "forbidden characters in username");
    assert_eq!(c.argv(), None);

    // No chpasswd: a missing path, or a file that is not executable.
    let missing = LinuxUsers {
        chpasswd: Some("/nonexistent/chpasswd".into()),
        ..Default::default()
    };
    assert_eq!(
        missing
            .set_password("alice", b"pw", false)
            .unwrap_err()
            .to_string(),
        "cannot find 'passwd' program in PATH"
    );
    chmod(&c.dir.path().join("chpasswd"), 0o644);
    assert_eq!(
        c.users()
            .set_password("alice", b"pw", false)
            .unwrap_err()
            .to_string(),
        "cannot find 'passwd' program in PATH"
    );
    assert_eq!(c.argv(), None);
}

#[test]
fn chpasswd_that_ignores_its_input_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chpasswd");
    common::write_script(&script, "#!/bin/sh\nexit 0\n");
    let users = LinuxUsers {
        chpasswd: Some(script),
        ..Default::default()
    };
    // Larger than a pipe buffer: the write fails with EPIPE, the status decides.
    let big = vec![b'x'; 1 << 20];
    users.set_password("alice", &big, false).unwrap();
}
