//! Property tests of the frame decoder and message decoding: arbitrary bytes never panic or
//! allocate without bound, and every message round-trips. Bounded case counts keep CI quick;
//! `PROPTEST_CASES=100000 cargo test -p dwbase-proto --test fuzz_decode` digs deeper.

use bytes::BytesMut;
use dwbase_proto::codec::{self, Hello};
use dwbase_proto::*;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn arb_policy() -> impl Strategy<Value = RestartPolicy> {
    prop_oneof![
        Just(RestartPolicy::Always),
        Just(RestartPolicy::OnFailure),
        Just(RestartPolicy::Never)
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let s = "[a-z0-9-]{0,12}";
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Status),
        (
            any::<u32>(),
            any::<u16>(),
            any::<bool>(),
            arb_policy(),
            proptest::collection::vec((s, s), 0..3),
            any::<u64>()
        )
            .prop_map(|(nodes, base_port, swarm, restart_policy, env, stop_timeout_ms)| {
                Request::DeployDevnet(DevnetSpec {
                    nodes,
                    base_port,
                    swarm,
                    tls: !swarm,
                    template: None,
                    restart_policy,
                    env,
                    stop_timeout_ms,
                    liveness: swarm.then_some(LivenessSpec::DEFAULT),
                    options: DeployOptions { dry_run: swarm, ..DeployOptions::default() },
                })
            }),
        s.prop_map(|node| Request::Restart(NodeRef { node })),
        (proptest::collection::vec(s, 0..4), proptest::option::of(any::<u64>())).prop_map(
            |(nodes, timeout_ms)| Request::Stop(StopSpec { nodes, group: None, timeout_ms })
        ),
        any::<bool>().prop_map(|stop_nodes| Request::Shutdown(ShutdownSpec { stop_nodes })),
        (
            proptest::option::of(s),
            proptest::option::of(any::<u32>()),
            any::<bool>(),
            proptest::option::of(any::<i64>())
        )
            .prop_map(|(node, tail, follow, since_unix_ms)| Request::Logs(LogsSpec {
                node,
                tail,
                follow,
                since_unix_ms
            })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Request>("request", &bytes);
        let _ = codec::decode::<Response>("response", &bytes);
        let _ = Hello::from_bytes(&bytes);
    }

    #[test]
    fn arbitrary_streams_never_panic_the_framer(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut codec = codec::frame_codec();
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until the framer needs more bytes or rejects the stream; it must never
        // panic, and never hand out a frame above the cap.
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            prop_assert!(frame.len() <= codec::MAX_FRAME_LEN);
            let _ = codec::decode::<Request>("request", &frame);
        }
    }

    #[test]
    fn requests_round_trip(req in arb_request()) {
        let bytes = codec::encode("request", &req).unwrap();
        let back: Request = codec::decode("request", &bytes).unwrap();
        prop_assert_eq!(back, req);
    }
}
