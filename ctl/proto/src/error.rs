//! Errors of the wire contract.

use std::path::PathBuf;

/// Encoding or decoding a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload could not be encoded.
    #[error("encoding a {what}: {message}")]
    Encode {
        /// What was being encoded (e.g. "request").
        what: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// The payload could not be decoded: garbage, truncated, or from another protocol version.
    #[error("decoding a {what}: {message}")]
    Decode {
        /// What was being decoded (e.g. "response").
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The payload decoded but left bytes over: the peer speaks another layout.
    #[error("decoding a {what}: {extra} trailing bytes")]
    Trailing {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// The handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The first frame did not start with [`crate::MAGIC`].
    #[error("the peer is not a dwbase endpoint (bad magic in the handshake)")]
    BadMagic,
    /// The first frame was too short or malformed.
    #[error("malformed handshake frame ({0})")]
    Malformed(&'static str),
    /// Both sides are dwbase, but of different protocol versions.
    #[error(
        "protocol version mismatch: the supervisor speaks protocol v{theirs} (dwbase {their_build}), \
         this dwbase speaks v{ours} (dwbase {our_build})"
    )]
    VersionMismatch {
        /// Our protocol version.
        ours: u32,
        /// Our build version.
        our_build: String,
        /// The peer's protocol version.
        theirs: u32,
        /// The peer's build version.
        their_build: String,
    },
    /// The peer did not complete the handshake in time.
    #[error("the peer did not complete the handshake within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection closed during the handshake.
    #[error("the connection closed during the handshake")]
    Closed,
    /// An I/O error during the handshake.
    #[error("handshake I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Talking to the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No supervisor listens on the socket (missing file, or nobody accepts).
    #[error("no supervisor is running at {socket}")]
    NotRunning {
        /// The socket that was dialled.
        socket: PathBuf,
    },
    /// The supervisor speaks another protocol version.
    #[error(
        "{source}\n  the supervisor at {socket} was started by another dwbase build; restart it with \
         this one: `dwbase supervisor restart` (nodes keep running), or `dwbase deploy stop` then \
         deploy again"
    )]
    VersionMismatch {
        /// The socket that was dialled.
        socket: PathBuf,
        /// The mismatch itself.
        #[source]
        source: HandshakeError,
    },
    /// The handshake failed for another reason.
    #[error("handshake with the supervisor at {socket}: {source}")]
    Handshake {
        /// The socket that was dialled.
        socket: PathBuf,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// The supervisor closed the connection before answering.
    #[error(
        "the supervisor closed the connection before answering (it may have exited; see its log)"
    )]
    Closed,
    /// No answer in time.
    #[error("the supervisor did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A frame could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An I/O error on the socket.
    #[error("talking to the supervisor at {socket}: {source}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The socket path is not a socket of ours (a symlink, another user's, a plain file):
    /// never dialled.
    #[error(transparent)]
    Unsafe(#[from] crate::fsutil::UnsafePath),
}
