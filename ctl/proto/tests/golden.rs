//! Golden bytes of the wire format. If one of these fails, the change is not append-only:
//! either put it back, or bump PROTOCOL_VERSION and update the bytes on purpose.

use std::path::PathBuf;

use dwbase_proto::codec::{self, Hello};
use dwbase_proto::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn hello_layout_is_fixed() {
    let h = Hello { protocol_version: 1, build_version: "0.2.0".into() };
    assert_eq!(hex(&h.to_bytes()), "4457424153450001010000000500302e322e30");
    assert_eq!(Hello::from_bytes(&h.to_bytes()).unwrap(), h);
}

#[test]
fn protocol_version_is_pinned() {
    assert_eq!(PROTOCOL_VERSION, 4, "bumping the version? update these golden bytes too");
}

fn devnet_spec() -> DevnetSpec {
    DevnetSpec {
        nodes: 3,
        base_port: 7000,
        swarm: true,
        tls: true,
        template: Some(Template { path: PathBuf::from("/t.toml"), text: "x".into() }),
        restart_policy: RestartPolicy::OnFailure,
        env: vec![("DWBASE_MAX_RAM_MB".into(), "64".into())],
        stop_timeout_ms: 10_000,
        liveness: Some(LivenessSpec { period_ms: 5000, timeout_ms: 2000, failures: 3 }),
        options: DeployOptions { dry_run: true, prune: false, ready_timeout_ms: 30_000 },
    }
}

#[test]
fn request_variant_indexes_are_pinned() {
    let cases: Vec<(Request, &str)> = vec![
        (Request::Ping, "00"),
        (Request::Status, "01"),
        (Request::DeployDevnet(devnet_spec()), "0203fb581b010101072f742e746f6d6c01780101114457424153455f4d41585f52414d5f4d42023634fb102701fb8813fbd007030100fb3075"),
        (
            Request::DeployLocal(LocalSpec {
                config: None,
                restart_policy: RestartPolicy::Always,
                env: vec![],
                stop_timeout_ms: 5,
                liveness: None,
                options: DeployOptions::default(),
            }),
            "0300000005000000fb3075",
        ),
        (Request::Restart(NodeRef { node: "node-b".into() }), "04066e6f64652d62"),
        (
            Request::Stop(StopSpec { nodes: vec![], group: Some(Group::Devnet), timeout_ms: None }),
            "0500010000",
        ),
        (Request::Shutdown(ShutdownSpec { stop_nodes: true }), "0601"),
        (
            Request::Logs(LogsSpec {
                node: None,
                tail: Some(50),
                follow: true,
                since_unix_ms: None,
            }),
            "07000132 0100",
        ),
        (Request::Events(EventsSpec { group: Some(Group::Local) }), "080101"),
    ];
    for (req, want) in cases {
        let got = hex(&codec::encode("request", &req).unwrap());
        assert_eq!(got, want.replace(' ', ""), "{req:?}");
        let back: Request =
            codec::decode("request", &codec::encode("request", &req).unwrap()).unwrap();
        assert_eq!(back, req);
    }
}

#[test]
fn response_variant_indexes_are_pinned() {
    let plan = Plan {
        group: Group::Devnet,
        steps: vec![PlanStep {
            node: "node-a".into(),
            action: PlanAction::Replace,
            port: 7000,
            changes: vec!["env".into()],
        }],
    };
    let cases: Vec<(Response, &str)> = vec![
        (Response::Done(Done { message: "ok".into() }), "02026f6b"),
        (Response::Error(ErrorReply::new(ErrorKind::PortInUse, "x")), "0302017800"),
        (Response::Error(ErrorReply::new(ErrorKind::RolloutFailed, "x")), "0307017800"),
        (
            Response::LogLine(LogLine { node: "a".into(), at_unix_ms: 1, text: "hi".into() }),
            "0401610202 6869",
        ),
        (Response::EndOfStream(EndOfStream::NodeStopped), "0501"),
        (Response::EndOfStream(EndOfStream::Failed("e".into())), "05030165"),
        (Response::EndOfStream(EndOfStream::Evicted), "0504"),
        (Response::Plan(plan), "060001066e6f64652d6102fb581b0103656e76"),
        (
            Response::Event(Event {
                at_unix_ms: 1,
                node: "a".into(),
                group: Group::Devnet,
                kind: EventKind::Spawned { pid: 7 },
                status: None,
            }),
            "0702016100010700",
        ),
    ];
    for (resp, want) in cases {
        let got = hex(&codec::encode("response", &resp).unwrap());
        assert_eq!(got, want.replace(' ', ""), "{resp:?}");
    }
}

#[test]
fn exit_kind_variant_indexes_are_pinned() {
    // ExitKind travels inside Status (NodeStatus.last_exit); Unknown was appended last.
    let cases: Vec<(ExitKind, &str)> =
        vec![(ExitKind::Code(3), "0006"), (ExitKind::Signal(9), "0112"), (ExitKind::Unknown, "02")];
    for (kind, want) in cases {
        let last = LastExit { kind, at_unix_ms: 1, cause: ExitCause::Liveness, reason: None };
        let got = hex(&codec::encode("last exit", &last).unwrap());
        assert_eq!(got, format!("{want}020200"), "{kind:?}");
        let back: LastExit =
            codec::decode("last exit", &codec::encode("last exit", &last).unwrap()).unwrap();
        assert_eq!(back, last);
    }
    // Protocol 4: the node's last words follow (an Option<String>).
    let said = LastExit {
        kind: ExitKind::Code(1),
        at_unix_ms: 1,
        cause: ExitCause::Unexpected,
        reason: Some("full".into()),
    };
    assert_eq!(hex(&codec::encode("last exit", &said).unwrap()), "00020200010466756c6c");
    assert_eq!(ExitKind::Unknown.to_string(), "exit status unknown");
    // In state.json (serde_json) it is the string "unknown".
    assert_eq!(serde_json::to_string(&ExitKind::Unknown).unwrap(), "\"unknown\"");
}

#[test]
fn garbage_and_trailing_bytes_are_errors_not_panics() {
    assert!(codec::decode::<Request>("request", &[0xff, 0xff, 0xff]).is_err());
    assert!(codec::decode::<Request>("request", &[]).is_err());
    // A valid Ping followed by junk is rejected as trailing bytes.
    assert!(matches!(
        codec::decode::<Request>("request", &[0x00, 0x01]),
        Err(CodecError::Trailing { .. })
    ));
    // A string length far beyond the frame must not allocate or panic.
    assert!(codec::decode::<Request>(
        "request",
        &[0x04, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
    )
    .is_err());
}
