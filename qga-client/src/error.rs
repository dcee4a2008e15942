//! The client's error type.

use std::io;

use qga_proto::{ErrorClass, QgaError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The agent answered with an error.
    #[error("agent error: {0}")]
    Agent(QgaError),
    /// No (matching) reply in time. The client resyncs before its next call.
    #[error("timed out waiting for the agent")]
    Timeout,
    /// [`Client::exec_wait`](crate::Client::exec_wait) gave up waiting: the program
    /// `pid` is still running, or its end is not known yet. Poll it with
    /// [`Client::exec_status`](crate::Client::exec_status).
    #[error("guest process {pid} still running when the time was up")]
    ExecTimeout {
        /// The program's pid in the guest.
        pid: i64,
    },
    /// The agent closed the connection.
    #[error("connection closed by the agent")]
    Closed,
    /// Reading or writing the stream failed.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    /// The agent's answer made no sense (or a request could not be built).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Reading the local source or writing the local destination of a copy
    /// ([`Client::copy_to_guest`](crate::Client::copy_to_guest),
    /// [`Client::copy_from_guest`](crate::Client::copy_from_guest)) failed.
    #[error("local i/o error: {0}")]
    Local(#[source] io::Error),
    /// The agent could not be reached: `target` names what was tried (the unix
    /// socket's path, the vsock address, the hybrid vsock socket and port).
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// What was tried, e.g. `unix socket /run/qga.sock` or `vsock 3:1234`.
        target: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    pub(crate) fn io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }

    pub(crate) fn connect(target: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let target = target.into();
        move |source| ClientError::Connect { target, source }
    }

    pub(crate) fn protocol(e: impl std::fmt::Display) -> Self {
        ClientError::Protocol(e.to_string())
    }

    /// The agent answered, refusing the request (its class and description).
    pub fn agent_error(&self) -> Option<&QgaError> {
        match self {
            ClientError::Agent(e) => Some(e),
            _ => None,
        }
    }

    /// The agent does not know or has disabled the command (class CommandNotFound).
    pub fn is_command_not_found(&self) -> bool {
        matches!(self, ClientError::Agent(e) if e.class == ErrorClass::CommandNotFound)
    }

    /// The agent could not be reached or did not answer: no connection, closed,
    /// I/O failure or timeout (as opposed to an answer that refused the request).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout
                | ClientError::Closed
                | ClientError::Io(_)
                | ClientError::Connect { .. }
        )
    }
}
