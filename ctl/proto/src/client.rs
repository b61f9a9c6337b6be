//! The client end of the control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::codec::{self, Hello};
use crate::error::{ClientError, HandshakeError};
use crate::messages::{Request, Response};

/// How long a single request may wait for its answer. Deploys answer once nodes are spawned,
/// which is quick; stops wait for nodes to exit, so they pass their own timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a supervisor, past the handshake.
pub struct Client {
    framed: Framed<Stream, LengthDelimitedCodec>,
    socket: PathBuf,
    /// The supervisor's hello.
    pub server: Hello,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("server", &self.server)
            .finish()
    }
}

/// Builds the OS name of a socket path.
pub fn socket_name(path: &Path) -> std::io::Result<interprocess::local_socket::Name<'_>> {
    #[cfg(unix)]
    {
        use interprocess::local_socket::{GenericFilePath, ToFsName};
        path.to_fs_name::<GenericFilePath>()
    }
    #[cfg(windows)]
    {
        // Named pipes live in their own namespace: name the pipe after the path's file name
        // plus the root hash that the path already carries.
        use interprocess::local_socket::{GenericNamespaced, ToNsName};
        let name = format!("dwbase-{}", path.to_string_lossy().replace(['\\', '/', ':'], "-"));
        name.to_ns_name::<GenericNamespaced>().map(|n| n.into_owned())
    }
}

/// How long dialling (not the handshake) may take, busy retries included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// Dials the socket and completes the handshake.
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io { socket: socket.to_owned(), source };
        // Look at the path itself before dialling: a planted link to another root's socket
        // must not let a command act on that root.
        if crate::fsutil::check_socket(socket)? == crate::fsutil::SocketPath::Missing {
            return Err(ClientError::NotRunning { socket: socket.to_owned() });
        }
        let name = socket_name(socket).map_err(io)?;
        // A full listen backlog (many clients connecting at once) answers EAGAIN right away
        // on Unix sockets: that is "busy", not "broken" — try again until the deadline.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let stream = match tokio::time::timeout(left, Stream::connect(name.clone())).await {
                Err(_) => return Err(ClientError::Timeout(CONNECT_TIMEOUT)),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    return Err(ClientError::NotRunning { socket: socket.to_owned() })
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Ok(Err(e)) => return Err(io(e)),
                Ok(Ok(s)) => Some(s),
            };
            if let Some(stream) = stream {
                let mut framed = codec::framed(stream);
                match codec::client_handshake(&mut framed, codec::HANDSHAKE_TIMEOUT).await {
                    Ok(server) => return Ok(Self { framed, socket: socket.to_owned(), server }),
                    Err(e @ HandshakeError::VersionMismatch { .. }) => {
                        return Err(ClientError::VersionMismatch {
                            socket: socket.to_owned(),
                            source: e,
                        })
                    }
                    // A supervisor that is going away (killed: its last thread still holds
                    // the listener for a moment, and the queued connection is reset) — dial
                    // again: the next attempt is refused (not running) or meets its successor.
                    Err(e) if is_hang_up(&e) => {}
                    Err(e) => {
                        return Err(ClientError::Handshake { socket: socket.to_owned(), source: e })
                    }
                }
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(ClientError::Timeout(CONNECT_TIMEOUT));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request without waiting for the answer (for streams).
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        codec::send(&mut self.framed, "request", req)
            .await
            .map_err(|source| ClientError::Io { socket: self.socket.clone(), source })
    }

    /// Receives the next response; `Err(Closed)` if the supervisor hung up.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        match codec::recv(&mut self.framed, "response").await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ClientError::Closed),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(ClientError::Io { socket: self.socket.clone(), source: e })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                Err(ClientError::Closed)
            }
            Err(source) => Err(ClientError::Io { socket: self.socket.clone(), source }),
        }
    }

    /// Sends a request and waits up to `timeout` for its one answer.
    pub async fn request_with_timeout(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        self.send(req).await?;
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Sends a request and waits for its one answer (default timeout).
    pub async fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.request_with_timeout(req, DEFAULT_REQUEST_TIMEOUT).await
    }
}

/// Whether a handshake failed because the other end went away (reset, closed, broken pipe)
/// rather than answering something wrong.
fn is_hang_up(e: &HandshakeError) -> bool {
    match e {
        HandshakeError::Closed => true,
        HandshakeError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}
