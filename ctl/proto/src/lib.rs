//! The wire contract between the `dwbase` CLI and `dwbase-supervisor`.
//!
//! Everything both ends must agree on lives here, so that every protocol change is one
//! reviewable diff: the [`messages`] (one enum per direction, append-only), the [`codec`]
//! (the only file that names bincode), the [`client`], the on-disk [`paths`] and the
//! durable [`state`] file that the CLI falls back to when no supervisor runs.

pub mod client;
pub mod codec;
pub mod error;
pub mod fsutil;
pub mod lock;
pub mod messages;
pub mod notify;
pub mod paths;
pub mod process;
pub mod state;
pub mod status_doc;

pub use client::Client;
pub use error::{ClientError, CodecError, HandshakeError};
pub use messages::*;
pub use paths::Paths;

/// Magic bytes that open every handshake frame. A peer that sends anything else is not a
/// dwbase client or supervisor and is dropped.
pub const MAGIC: [u8; 8] = *b"DWBASE\x00\x01";

/// Version of the request/response protocol. Bump it whenever a change is not append-only
/// (a field added to an existing variant counts: bincode is positional).
pub const PROTOCOL_VERSION: u32 = 4;

/// Version of the build, carried in the handshake so a mismatch message can name both sides.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
