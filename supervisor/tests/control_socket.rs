//! Control-socket hardening: garbage, an oversized length prefix, half a frame then silence,
//! a wrong protocol version, an undecodable request, 200 clients at once, another uid — the
//! daemon keeps serving everyone else (a Status request still answers).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use dwbase_proto::codec::Hello;
use dwbase_proto::{ErrorKind, Request, Response};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Reads until EOF (or error) and returns what came, failing after `deadline`.
async fn read_to_close(s: &mut UnixStream, deadline: Duration) -> Vec<u8> {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection within {deadline:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn still_serves(f: &Fixture) {
    let s = f.status().await;
    assert_eq!(s.supervisor.pid, std::process::id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    // Plain garbage: the length prefix it implies is far over MAX_FRAME_LEN.
    let mut s = UnixStream::connect(f.paths.socket()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await;
    still_serves(&f).await;

    // An explicit 4 GiB length.
    let mut s = UnixStream::connect(f.paths.socket()).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await;
    still_serves(&f).await;

    // A well-formed frame that is not a hello.
    let mut s = UnixStream::connect(f.paths.socket()).await.unwrap();
    s.write_all(&frame(b"not a hello at all")).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "no answer to a bad magic");
    still_serves(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_then_silence_times_out_without_blocking_others() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let mut s = UnixStream::connect(f.paths.socket()).await.unwrap();
    s.write_all(&100u32.to_be_bytes()).await.unwrap();
    s.write_all(b"DWBASE").await.unwrap();
    // Meanwhile everyone else is served.
    still_serves(&f).await;
    still_serves(&f).await;
    // And the silent one is dropped after the handshake timeout.
    let started = std::time::Instant::now();
    read_to_close(&mut s, Duration::from_secs(15)).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    still_serves(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_gets_our_hello_then_close() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let mut s = UnixStream::connect(f.paths.socket()).await.unwrap();
    let theirs = Hello { protocol_version: 999, build_version: "9.9.9".into() };
    s.write_all(&frame(&theirs.to_bytes())).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(got.len() > 4, "the server answers with its own hello first");
    let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
    let hello = Hello::from_bytes(&got[4..4 + len]).unwrap();
    assert_eq!(hello, Hello::ours());
    assert_eq!(got.len(), 4 + len, "nothing after the hello: the connection closes");
    still_serves(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_gets_bad_request_then_close() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    let mut s = UnixStream::connect(f.paths.socket()).await.unwrap();
    s.write_all(&frame(&Hello::ours().to_bytes())).await.unwrap();
    s.write_all(&frame(&[0xee, 0xee, 0xee, 0xee, 0xee])).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    // Skip the hello frame, decode the reply.
    let hl = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
    let rest = &got[4 + hl..];
    let rl = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let reply: Response = dwbase_proto::codec::decode("response", &rest[4..4 + rl]).unwrap();
    match reply {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::BadRequest),
        other => panic!("{other:?}"),
    }
    still_serves(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_at_once() {
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    // 200 connections that never say anything…
    let mut idle = vec![];
    for _ in 0..200 {
        idle.push(UnixStream::connect(f.paths.socket()).await.unwrap());
    }
    still_serves(&f).await;
    drop(idle);
    // …and 200 that all ask for status at the same moment.
    let socket = f.paths.socket();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move {
                let mut c = dwbase_proto::Client::connect(&socket).await?;
                c.request(&Request::Status).await
            })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            Ok(Response::Status(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    still_serves(&f).await;
}

/// Run by `another_uid_is_refused` as uid 65534 (a no-op in a normal test run).
#[test]
fn uid_check_client_helper() {
    let Some(socket) = std::env::var_os("DWBASE_TEST_UID_SOCKET") else { return };
    let mut s = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            println!("CONNECT-FAILED {e}");
            return;
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&frame(&Hello::ours().to_bytes()));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => println!("REFUSED"),
        Ok(_) => println!("ACCEPTED"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_is_refused() {
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !nix::unistd::geteuid().is_root() || !setpriv.exists() {
        eprintln!("skipped: needs root and setpriv (peer_allowed is unit-tested in server.rs)");
        return;
    }
    let f = Fixture::start(SLEEPER, quick_rules()).await;
    // Open the file-mode barrier so that only the peer-credential check is left.
    use std::os::unix::fs::PermissionsExt;
    for dir in [f.dir.path(), f.paths.root.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(f.paths.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["uid_check_client_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env("DWBASE_TEST_UID_SOCKET", f.paths.socket())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("CONNECT-FAILED") || !out.status.success() {
        eprintln!(
            "skipped: the other uid cannot run the test binary or reach the socket here\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(stdout.contains("REFUSED"), "{stdout}");
    still_serves(&f).await;
}
