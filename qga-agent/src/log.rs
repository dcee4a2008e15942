//! A small logger in qemu-ga's format: `<secs>.<usecs>: <level>: <message>`.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes log lines to a file or stderr. Errors and criticals always; warnings too
/// (they explain refused stops and auto-thaws); everything with `verbose`.
#[derive(Debug)]
pub struct Log {
    file: Option<Mutex<File>>,
    verbose: bool,
}

impl Log {
    /// Logs to `file` (appending) or stderr.
    pub fn new(file: Option<File>, verbose: bool) -> Self {
        Log {
            file: file.map(Mutex::new),
            verbose,
        }
    }

    fn write(&self, level: &str, msg: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:06}: {level}: {msg}\n",
            now.as_secs(),
            now.subsec_micros()
        );
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    /// An error.
    pub fn error(&self, msg: &str) {
        self.write("error", msg);
    }

    /// A critical error.
    pub fn critical(&self, msg: &str) {
        self.write("critical", msg);
    }

    /// A warning.
    pub fn warning(&self, msg: &str) {
        self.write("warning", msg);
    }

    /// Informational, with `verbose` only.
    pub fn info(&self, msg: &str) {
        if self.verbose {
            self.write("info", msg);
        }
    }

    /// Debug, with `verbose` only.
    pub fn debug(&self, msg: &str) {
        if self.verbose {
            self.write("debug", msg);
        }
    }
}
