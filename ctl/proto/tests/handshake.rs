//! The handshake over an in-memory pipe: matching versions pass, a mismatch is reported on
//! both sides with both versions, garbage and silence are errors, never hangs.

use std::time::Duration;

use dwbase_proto::codec::{self, Hello};
use dwbase_proto::HandshakeError;
use futures::{SinkExt, StreamExt};

#[tokio::test]
async fn matching_versions_shake_hands() {
    let (a, b) = tokio::io::duplex(1024);
    let (mut a, mut b) = (codec::framed(a), codec::framed(b));
    let server =
        tokio::spawn(async move { codec::server_handshake(&mut b, Duration::from_secs(2)).await });
    let theirs = codec::client_handshake(&mut a, Duration::from_secs(2)).await.unwrap();
    assert_eq!(theirs, Hello::ours());
    assert_eq!(server.await.unwrap().unwrap(), Hello::ours());
}

#[tokio::test]
async fn a_future_client_gets_our_hello_and_a_mismatch() {
    let (a, b) = tokio::io::duplex(1024);
    let (mut a, mut b) = (codec::framed(a), codec::framed(b));
    let server =
        tokio::spawn(async move { codec::server_handshake(&mut b, Duration::from_secs(2)).await });
    a.send(Hello { protocol_version: 99, build_version: "9.9.9".into() }.to_bytes()).await.unwrap();
    // The server still answers with its own hello so the client can name both versions.
    let frame = a.next().await.unwrap().unwrap();
    assert_eq!(Hello::from_bytes(&frame).unwrap(), Hello::ours());
    let err = server.await.unwrap().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HandshakeError::VersionMismatch { theirs: 99, .. }), "{msg}");
    assert!(msg.contains("9.9.9") && msg.contains("v99"), "{msg}");
}

#[tokio::test]
async fn garbage_first_frame_is_bad_magic() {
    let (a, b) = tokio::io::duplex(1024);
    let (mut a, mut b) = (codec::framed(a), codec::framed(b));
    a.send(bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n")).await.unwrap();
    let err = codec::server_handshake(&mut b, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, HandshakeError::BadMagic), "{err}");
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let (_a, b) = tokio::io::duplex(1024);
    let mut b = codec::framed(b);
    let err = codec::server_handshake(&mut b, Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn an_oversize_length_prefix_is_an_error() {
    use tokio::io::AsyncWriteExt;
    let (mut a, b) = tokio::io::duplex(1024);
    let mut b = codec::framed(b);
    a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let err = codec::server_handshake(&mut b, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, HandshakeError::Io(_)), "{err}");
}
