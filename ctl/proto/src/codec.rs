//! Framing and encoding. The only file that names bincode.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes
//! ([`LengthDelimitedCodec`], capped at [`MAX_FRAME_LEN`]). The first frame each way is a
//! [`Hello`] with a fixed, bincode-free layout so that a peer of any later version can still
//! read it and say "version mismatch" instead of failing to decode. Every later frame is one
//! bincode-encoded [`crate::Request`] or [`crate::Response`].

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::error::{CodecError, HandshakeError};
use crate::{BUILD_VERSION, MAGIC, PROTOCOL_VERSION};

/// Largest frame either side accepts. A status of 1000 nodes is well under this; a larger
/// length prefix is garbage or hostile and closes the connection.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// How long a peer has to send its handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Byte limit given to bincode when decoding, so a lying length inside a payload cannot
/// make it allocate more than a frame could hold.
const DECODE_LIMIT: usize = MAX_FRAME_LEN;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<DECODE_LIMIT>()
}

/// The length-delimited codec both ends use.
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// Wraps a stream in the frame codec.
pub fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> Framed<S, LengthDelimitedCodec> {
    Framed::new(stream, frame_codec())
}

/// Encodes one message.
pub fn encode<T: Serialize>(what: &'static str, msg: &T) -> Result<Bytes, CodecError> {
    bincode::serde::encode_to_vec(msg, config())
        .map(Bytes::from)
        .map_err(|e| CodecError::Encode { what, message: e.to_string() })
}

/// Decodes one message; the whole frame must be consumed.
pub fn decode<T: DeserializeOwned>(what: &'static str, frame: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(frame, config())
        .map_err(|e| CodecError::Decode { what, message: e.to_string() })?;
    if used != frame.len() {
        return Err(CodecError::Trailing { what, extra: frame.len() - used });
    }
    Ok(msg)
}

/// The first frame of a connection, both ways.
///
/// Layout (fixed forever): magic (8 bytes) | protocol version (u32 LE) | build version
/// length (u16 LE) | build version (UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub protocol_version: u32,
    /// The sender's build version.
    pub build_version: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours() -> Self {
        Self { protocol_version: PROTOCOL_VERSION, build_version: BUILD_VERSION.to_owned() }
    }

    /// The frame bytes.
    pub fn to_bytes(&self) -> Bytes {
        let build = self.build_version.as_bytes();
        let build = &build[..build.len().min(u16::MAX as usize)];
        let mut b = BytesMut::with_capacity(14 + build.len());
        b.put_slice(&MAGIC);
        b.put_u32_le(self.protocol_version);
        b.put_u16_le(build.len() as u16);
        b.put_slice(build);
        b.freeze()
    }

    /// Parses a hello frame.
    pub fn from_bytes(frame: &[u8]) -> Result<Self, HandshakeError> {
        if frame.len() < MAGIC.len() || frame[..MAGIC.len()] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let rest = &frame[MAGIC.len()..];
        if rest.len() < 6 {
            return Err(HandshakeError::Malformed("too short"));
        }
        let protocol_version = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = u16::from_le_bytes([rest[4], rest[5]]) as usize;
        let build =
            rest.get(6..6 + len).ok_or(HandshakeError::Malformed("build version cut short"))?;
        let build_version = String::from_utf8_lossy(build).into_owned();
        Ok(Self { protocol_version, build_version })
    }

    fn check(&self) -> Result<(), HandshakeError> {
        if self.protocol_version == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                our_build: BUILD_VERSION.to_owned(),
                theirs: self.protocol_version,
                their_build: self.build_version.clone(),
            })
        }
    }
}

async fn read_hello<S>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    timeout: Duration,
) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, framed.next()).await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(None) => Err(HandshakeError::Closed),
        Ok(Some(Err(e))) => Err(HandshakeError::Io(e)),
        Ok(Some(Ok(frame))) => Hello::from_bytes(&frame),
    }
}

/// Client side: send our hello, read the server's, and check the versions.
pub async fn client_handshake<S>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    timeout: Duration,
) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed.send(Hello::ours().to_bytes()).await?;
    let theirs = read_hello(framed, timeout).await?;
    theirs.check()?;
    Ok(theirs)
}

/// Server side: read the client's hello (within `timeout`), always answer with ours — so an
/// older or newer client can print a precise mismatch — then check the versions.
pub async fn server_handshake<S>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    timeout: Duration,
) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let theirs = read_hello(framed, timeout).await?;
    framed.send(Hello::ours().to_bytes()).await?;
    theirs.check()?;
    Ok(theirs)
}

/// Sends one message as a frame.
pub async fn send<S, T>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    what: &'static str,
    msg: &T,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(what, msg).map_err(std::io::Error::other)?;
    framed.send(bytes).await
}

/// Receives one message; `Ok(None)` when the peer closed cleanly between frames.
pub async fn recv<S, T>(
    framed: &mut Framed<S, LengthDelimitedCodec>,
    what: &'static str,
) -> std::io::Result<Option<T>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    match framed.next().await {
        None => Ok(None),
        Some(Err(e)) => Err(e),
        Some(Ok(frame)) => decode(what, &frame)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    }
}
