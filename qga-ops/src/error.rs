//! The crate's error type. Its `Display` is the reference agent's error text.

use std::io;

/// A failed guest operation. `Display` gives qemu-ga 7.2's text for the same
/// failure (`failed to open file '/x' (mode: 'r'): No such file or directory`),
/// OS errors as plain strerror text, so an agent can put it straight into a reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// A system call failed; `context` says what was being done.
    #[error("{context}: {}", strerror(.source))]
    Os {
        /// What failed, in the reference's words (`failed to read file`).
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A failure with no OS error behind it (invalid mode, unsupported operation).
    #[error("{0}")]
    Failed(String),
    /// The fsfreeze hook could not run or failed. After a thaw this means the
    /// filesystems *are* thawed; only the hook failed.
    #[error("{0}")]
    Hook(String),
}

impl OpsError {
    /// An OS error with context.
    pub fn os(context: impl Into<String>, source: io::Error) -> Self {
        OpsError::Os {
            context: context.into(),
            source,
        }
    }

    /// An error with a plain message.
    pub fn failed(msg: impl Into<String>) -> Self {
        OpsError::Failed(msg.into())
    }

    /// The errno behind this error, if any.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            OpsError::Os { source, .. } => source.raw_os_error(),
            OpsError::Failed(_) | OpsError::Hook(_) => None,
        }
    }

    /// True when the fsfreeze hook (not the freeze or thaw itself) failed.
    pub fn is_hook_failure(&self) -> bool {
        matches!(self, OpsError::Hook(_))
    }
}

impl Clone for OpsError {
    fn clone(&self) -> Self {
        match self {
            OpsError::Os { context, source } => OpsError::Os {
                context: context.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            OpsError::Failed(m) => OpsError::Failed(m.clone()),
            OpsError::Hook(m) => OpsError::Hook(m.clone()),
        }
    }
}

/// The C library's strerror text (what qemu-ga prints), without the
/// " (os error N)" suffix std adds to it.
pub(crate) fn strerror(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => {
            let suffix = format!(" (os error {code})");
            text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
        }
        None => text,
    }
}
