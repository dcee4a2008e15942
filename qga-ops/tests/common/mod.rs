//! Helpers shared by qga-ops' integration tests.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes an executable script without this process ever holding a writable
/// descriptor to it. Tests run in parallel threads: a script written here with
/// `fs::write` can be open for writing just when another thread forks to run its
/// own program, and until that child execs it keeps the descriptor, so running
/// the script then fails with `ETXTBSY` ("Text file busy"). A short-lived `sh`
/// writes it instead.
pub fn write_script(path: &Path, text: &str) {
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run sh to write a script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "writing {}: {status}", path.display());
}
