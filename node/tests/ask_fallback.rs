//! Ask with no lexical match answers as the original DWBase did — the world's recent atoms
//! ranked by importance and links, then newest — with a warning saying so; with matches, the
//! relevance ranking is unchanged.

mod common;

use common::{atom, test_config, TestNode};
use serde_json::{json, Value};

fn ids(answer: &Value) -> Vec<String> {
    answer["supporting_atoms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_vague_question_gets_the_worlds_recent_important_atoms() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let minor = node.remember("ops", "the coffee machine was cleaned", 0.2).await;
    let major = node.remember("ops", "database failover to replica b", 0.9).await;
    let old = node.remember("ops", "deploy of version 41 finished", 0.7).await;
    let mut newer = atom("ops", "deploy of version 42 finished", 0.6);
    newer["links"] = json!([{"target": old, "kind": "supersedes"}]);
    let (status, _, newer_id) = node.post("/remember", &newer).await;
    assert_eq!(status, 200);
    let newer = newer_id.as_str().unwrap().to_owned();

    for question in ["What's happening?", "?"] {
        let (status, _, answer) =
            node.post("/ask", &json!({"world": "ops", "text": question})).await;
        assert_eq!(status, 200, "{answer}");
        // importance 0.9, 0.6, 0.2, then 0.7 − 1 (superseded).
        assert_eq!(
            ids(&answer),
            [major.clone(), newer.clone(), minor.clone(), old.clone()],
            "{question}: {answer}"
        );
        let warnings = answer["warnings"].to_string();
        assert!(warnings.contains("ranked as the original DWBase did"), "{question}: {warnings}");
    }
    // Filters and limits still apply to the fallback.
    let (_, _, answer) = node
        .post("/ask", &json!({"world": "ops", "text": "anything new?", "filter": {"limit": 1}}))
        .await;
    assert_eq!(ids(&answer), std::slice::from_ref(&major));

    // A question that matches keeps the relevance ranking and carries no such warning.
    let (_, _, answer) = node.post("/ask", &json!({"world": "ops", "text": "coffee"})).await;
    assert_eq!(ids(&answer), std::slice::from_ref(&minor));
    assert!(!answer["warnings"].to_string().contains("original"), "{answer}");

    // An unknown world still answers nothing, with its own warning.
    let (_, _, answer) = node.post("/ask", &json!({"world": "none", "text": "hello"})).await;
    assert!(ids(&answer).is_empty() && answer["warnings"].to_string().contains("no atoms"));
    node.stop().await.unwrap();
}
