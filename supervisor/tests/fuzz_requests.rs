//! Property test of request handling on a live in-process supervisor: after a good handshake,
//! arbitrary frames — random bytes, truncated or mutated encodings of real requests — only
//! ever cost the sender its connection. After every case the supervisor still answers Status,
//! and nothing was spawned or stopped by the noise. Case count is bounded for CI; raise it
//! with `PROPTEST_CASES`.

mod support;

use std::time::Duration;

use dwbase_proto::codec::{self, Hello};
use dwbase_proto::{LogsSpec, NodeRef, Request, Response, StopSpec};
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use support::*;

/// Real requests whose encodings get cut and mutated. None of them changes anything when
/// decoded intact (no node exists), so a mutation that happens to decode is harmless too.
fn seeds() -> Vec<Vec<u8>> {
    let reqs = [
        Request::Ping,
        Request::Status,
        Request::Restart(NodeRef { node: "nope".into() }),
        Request::Stop(StopSpec { nodes: vec!["nope".into()], group: None, timeout_ms: Some(1) }),
        Request::Logs(LogsSpec {
            node: Some("nope".into()),
            tail: Some(3),
            follow: false,
            since_unix_ms: None,
        }),
    ];
    reqs.iter().map(|r| codec::encode("request", r).unwrap().to_vec()).collect()
}

fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (0..seeds.len(), any::<usize>(), any::<u8>(), any::<usize>()).prop_map(
            move |(i, at, byte, cut)| {
                let mut f = seeds[i].clone();
                let at = at % f.len();
                f[at] = byte;
                f.truncate(1 + cut % f.len());
                f
            }
        ),
    ]
}

#[test]
fn arbitrary_frames_after_the_handshake_never_hurt_the_daemon() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fixture = rt.block_on(Fixture::start(SLEEPER, quick_rules()));
    let config = ProptestConfig { cases: 150, ..ProptestConfig::default() };
    proptest!(config, |(frames in proptest::collection::vec(arb_frame(), 1..4))| {
        rt.block_on(async {
            let stream = tokio::net::UnixStream::connect(fixture.paths.socket()).await.unwrap();
            let mut framed = codec::framed(stream);
            framed.send(Hello::ours().to_bytes()).await.unwrap();
            let hello = framed.next().await.unwrap().unwrap();
            assert_eq!(Hello::from_bytes(&hello).unwrap(), Hello::ours());
            for f in frames {
                if framed.send(bytes::Bytes::from(f)).await.is_err() {
                    break; // the daemon already hung up on us: fine
                }
                // Whatever comes back must be a well-formed response (or a close).
                match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
                    Err(_) => panic!("no answer and no close within 10 s"),
                    Ok(None) | Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(frame))) => {
                        let _: Response = codec::decode("response", &frame).expect("the daemon only sends valid responses");
                    }
                }
            }
            let status = fixture.status().await;
            assert!(status.nodes.is_empty(), "noise must not deploy anything: {:?}", status.nodes);
        });
    });
    rt.block_on(async { fixture.shutdown.cancel() });
}
