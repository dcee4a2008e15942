//! Real FIFREEZE/FITHAW/FITRIM, as root, on an ext4 image this test creates and
//! loop-mounts itself. Only that mountpoint is ever frozen or trimmed (explicit
//! list). Skips, saying why, when it cannot run (not root, no loop devices, no
//! mkfs.ext4); with QGA_REQUIRE_ROOT_TESTS=1 (CI) a skip is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use qga_ops::{FsFreeze, LinuxFsFreeze, LinuxTrim, Trim};

fn skip(why: &str) {
    if std::env::var_os("QGA_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("loop-mount freeze test cannot run: {why} (QGA_REQUIRE_ROOT_TESTS=1)");
    }
    eprintln!("SKIPPED loop-mount freeze test: {why}");
}

fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A loop-mounted ext4 image; thawed, unmounted and detached on drop, even when the
/// test panics.
struct LoopMount {
    mountpoint: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl LoopMount {
    fn create() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let base = dir.path().canonicalize().map_err(|e| e.to_string())?;
        let image = base.join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| e.to_string())?;
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])?;
        let device = sh("losetup", &["-f", "--show", image.to_str().unwrap()])?;
        let mountpoint = base.join("mnt");
        std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let lm = LoopMount {
            mountpoint,
            device,
            _dir: dir,
        };
        sh("mount", &[&lm.device, lm.mountpoint.to_str().unwrap()])?;
        Ok(lm)
    }

    fn path(&self) -> String {
        self.mountpoint.to_str().unwrap().to_owned()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Thaw only our mountpoint (it may be frozen if the test failed midway).
        let _ = sh("fsfreeze", &["-u", &self.path()]);
        let _ = sh("umount", &[&self.path()]);
        let _ = sh("losetup", &["-d", &self.device]);
    }
}

fn setup() -> Option<LoopMount> {
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1)
        != 0
    {
        skip("not running as root");
        return None;
    }
    if !Path::new("/dev/loop-control").exists() {
        skip("no /dev/loop-control");
        return None;
    }
    match LoopMount::create() {
        Ok(m) => Some(m),
        Err(e) => {
            skip(&e);
            None
        }
    }
}

fn write_hook(dir: &Path, exit: i32) -> PathBuf {
    let log = dir.join("hook.log");
    let hook = dir.join("hook.sh");
    common::write_script(
        &hook,
        &format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nexit {exit}\n",
            log.display()
        ),
    );
    hook
}

#[test]
fn freeze_blocks_writes_until_thaw_and_trim_reports_bytes() {
    let Some(lm) = setup() else { return };
    let mnt = lm.path();
    let hooks = tempfile::tempdir().unwrap();
    let freeze = LinuxFsFreeze {
        hook: Some(write_hook(hooks.path(), 0)),
        ..Default::default()
    };

    // Only the listed mountpoint: exactly one filesystem frozen.
    assert_eq!(freeze.freeze(Some(std::slice::from_ref(&mnt))).unwrap(), 1);
    // Frozen twice: the kernel says EBUSY, which is skipped, not an error.
    assert_eq!(
        LinuxFsFreeze::default()
            .freeze(Some(std::slice::from_ref(&mnt)))
            .unwrap(),
        0
    );

    // A write with fsync must not complete while frozen.
    let (tx, rx) = mpsc::channel();
    let file = lm.mountpoint.join("data");
    let writer = std::thread::spawn(move || {
        let r = std::fs::write(&file, vec![7u8; 1 << 20])
            .and_then(|()| std::fs::File::open(&file)?.sync_all());
        let _ = tx.send(r.is_ok());
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "write completed on a frozen filesystem"
    );

    // Thaw walks every mount; only ours was frozen.
    assert_eq!(freeze.thaw().unwrap(), 1);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "write did not complete after thaw"
    );
    writer.join().unwrap();
    let log = std::fs::read_to_string(hooks.path().join("hook.log")).unwrap();
    assert_eq!(log, "freeze\nthaw\n");

    // Trim the same filesystem only, after deleting the data so there is free space.
    std::fs::remove_file(lm.mountpoint.join("data")).unwrap();
    let results = LinuxTrim::default()
        .trim(Some(0), Some(std::slice::from_ref(&mnt)))
        .unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].path, mnt);
    assert_eq!(results[0].error, None);
    assert!(results[0].trimmed.unwrap() > 0, "{results:?}");
}

#[test]
fn a_failing_freeze_hook_freezes_nothing() {
    let Some(lm) = setup() else { return };
    let hooks = tempfile::tempdir().unwrap();
    let freeze = LinuxFsFreeze {
        hook: Some(write_hook(hooks.path(), 3)),
        ..Default::default()
    };
    let err = freeze.freeze(Some(&[lm.path()])).unwrap_err();
    assert_eq!(err.to_string(), "fsfreeze hook has failed with status 3");
    // Not frozen: a sync write completes at once.
    std::fs::write(lm.mountpoint.join("x"), b"x").unwrap();
    std::fs::File::open(lm.mountpoint.join("x"))
        .unwrap()
        .sync_all()
        .unwrap();
}

#[test]
fn a_hook_that_cannot_run_is_reported() {
    let freeze = LinuxFsFreeze {
        hook: Some("/nonexistent/hook".into()),
        ..Default::default()
    };
    // The hook is checked before any filesystem is touched, so this is safe anywhere.
    assert_eq!(
        freeze.freeze(Some(&[])).unwrap_err().to_string(),
        "can't access fsfreeze hook '/nonexistent/hook': No such file or directory"
    );
}
