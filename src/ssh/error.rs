//! What can go wrong reaching a node, as distinct cases the operator can act on.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("{node}: unreachable at {address}: {reason}")]
    Unreachable {
        node: String,
        address: String,
        reason: String,
    },
    #[error("{node}: no SSH handshake within {}s", .after.as_secs_f32())]
    HandshakeTimeout { node: String, after: Duration },
    #[error(
        "{node}: HOST KEY MISMATCH: expected {expected}, the server offered {offered}; refusing to connect (marked untrusted)"
    )]
    HostKeyMismatch {
        node: String,
        expected: String,
        offered: String,
    },
    #[error("{node}: host key {offered} is not in known_hosts; refusing to connect")]
    HostKeyUnknown { node: String, offered: String },
    #[error("{node}: cannot check the host key: {reason}")]
    HostKeyUnchecked { node: String, reason: String },
    #[error("{node}: the server refused authentication as {user}: {reason}")]
    AuthRefused {
        node: String,
        user: String,
        reason: String,
    },
    #[error("{0}")]
    Credentials(String),
    #[error("{node}: command timed out after {}s: {command}", .after.as_secs_f32())]
    Timeout {
        node: String,
        command: String,
        after: Duration,
    },
    #[error("{node}: argument {index} contains a NUL byte and cannot be sent")]
    BadArgument { node: String, index: usize },
    #[error("{node}: SSH connection failed: {reason}")]
    Protocol { node: String, reason: String },
    /// The bastion failed, not the node; `source` names the bastion and how.
    #[error("{node}: cannot reach the node through the bastion: {source}")]
    ViaBastion { node: String, source: Box<SshError> },
    #[error("{node}: {limit} streams are already open on its connection; drop one first")]
    TooManyStreams { node: String, limit: usize },
    #[error(
        "{node}: {command}: the reader took nothing for {}s; the stream was closed so the node's connection is not held up",
        .after.as_secs_f32()
    )]
    StreamStalled {
        node: String,
        command: String,
        after: Duration,
    },
}

impl SshError {
    /// A short condition name for status and the store.
    pub fn condition(&self) -> &'static str {
        match self {
            SshError::Unreachable { .. } | SshError::HandshakeTimeout { .. } => "unreachable",
            SshError::HostKeyMismatch { .. } => "host-key-mismatch",
            SshError::HostKeyUnknown { .. } | SshError::HostKeyUnchecked { .. } => {
                "host-key-unknown"
            }
            SshError::AuthRefused { .. } | SshError::Credentials(_) => "auth-refused",
            SshError::Timeout { .. } => "timeout",
            SshError::BadArgument { .. } => "bad-argument",
            SshError::Protocol { .. } => "ssh-error",
            SshError::ViaBastion { source, .. } => match source.condition() {
                "unreachable" | "timeout" | "ssh-error" => "bastion-unreachable",
                "host-key-mismatch" | "host-key-unknown" => "bastion-untrusted",
                "auth-refused" => "bastion-auth-refused",
                _ => "bastion-error",
            },
            SshError::TooManyStreams { .. } => "busy",
            SshError::StreamStalled { .. } => "stream-stalled",
        }
    }
}
