//! Temporary probe (deleted after use).
use dwbase_node::index::Index;
use dwbase_node::model::{AtomFilter, Atom, AtomKind};
use std::time::Instant;
fn main() {
    let index = Index::new(0);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
    let words: Vec<String> = (0..3600).map(|i| format!("w{i}x")).collect();
    let mut atoms = Vec::new();
    for i in 0..100_000 {
        let n = 8 + next() % 12;
        let text: Vec<&str> = (0..n).map(|_| words[(next() % 3600) as usize].as_str()).collect();
        atoms.push(Atom { id: format!("{i:026}"), world: "b".into(), worker: "w".into(), kind: AtomKind::Observation,
            timestamp: "2024-01-01T00:00:00Z".into(), importance: 0.5, payload_json: serde_json::json!({"text": text.join(" ")}).to_string(),
            vector: None, flags: vec![], labels: vec!["topic-1".into()], links: vec![] });
    }
    let t = Instant::now();
    index.insert_many(&atoms);
    println!("insert 100k: {:?}", t.elapsed());
    let f = AtomFilter::default().compile().unwrap();
    let t = Instant::now();
    let n = 5000;
    let mut hits = 0;
    for _ in 0..n {
        let q = format!("{} {}", words[(next() % 3600) as usize], words[(next() % 3600) as usize]);
        hits += index.search("b", &q, &f, 10).candidates;
    }
    println!("search: {:?} per query, avg candidates {}", t.elapsed() / n, hits / n as usize);
}
