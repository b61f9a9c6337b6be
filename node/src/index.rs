//! The in-memory text index and the ask ranking.
//!
//! Per world, an inverted index (term → postings) over each atom's payload text and labels,
//! scored with BM25. The index is not persisted: it is rebuilt from sled at start-up in the
//! background (`/readyz` answers 503 and `/index/status` shows progress meanwhile) and updated on
//! every remember after the write is durable.
//!
//! Ranking of an ask (see [`Index::search`]):
//!
//! 1. Candidates are the atoms that contain at least one question term (all atoms of the world
//!    when the question has no searchable term), restricted by the filter.
//! 2. `score = relevance + W_IMPORTANCE·importance + links + W_RECENCY·recency`, where relevance
//!    is BM25 normalised to 0..1 over the candidates, links is `−W_SUPERSEDED` when the atom was
//!    superseded, `−W_CONTRADICTED` per contradiction and `+W_CONFIRMED` per confirmation (each
//!    counted up to three times), and recency is 0..1 between the oldest and newest candidate.
//!    Ties go to the newer atom.
//!
//! Memory: the index estimates its own size. With `max_ram_mb` set it gets half of it; past that
//! share new atoms are still stored, filtered and listed, but their text is not indexed, and
//! `/health` says how many atoms are affected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::model::{Atom, AtomKind, CompiledFilter, LinkKind};

/// Reported as `embedder_version` in `/index/status`: the text scorer in use.
pub const EMBEDDER_VERSION: &str = "bm25-v1";
/// BM25 term-frequency saturation.
pub const BM25_K1: f32 = 1.2;
/// BM25 length normalisation.
pub const BM25_B: f32 = 0.75;
/// Weight of importance (relevance is 0..1).
pub const W_IMPORTANCE: f32 = 0.3;
/// Penalty for a superseded atom.
pub const W_SUPERSEDED: f32 = 0.6;
/// Penalty per contradiction.
pub const W_CONTRADICTED: f32 = 0.25;
/// Bonus per confirmation.
pub const W_CONFIRMED: f32 = 0.15;
/// Weight of recency.
pub const W_RECENCY: f32 = 0.1;
/// How many of a world's most recent atoms [`Index::recent`] ranks.
pub const FALLBACK_RECENT: usize = 1000;
/// Label terms count this many times (a label is a strong hint).
const LABEL_TF: u32 = 2;
/// Longest indexed token, in characters.
const MAX_TOKEN_CHARS: usize = 40;

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for", "from",
    "had", "has", "have", "how", "in", "is", "it", "its", "of", "on", "or", "that", "the", "their",
    "there", "this", "to", "was", "were", "what", "when", "where", "which", "who", "why", "will",
    "with",
];

/// Splits text into normalised terms (lower case, alphanumeric runs, stop words dropped, a light
/// plural strip) and calls `f` for each.
pub fn tokenize(text: &str, mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        buf.clear();
        for c in word.chars().take(MAX_TOKEN_CHARS) {
            buf.extend(c.to_lowercase());
        }
        let chars = buf.chars().count();
        if chars < 2 && !buf.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if STOP_WORDS.contains(&buf.as_str()) {
            continue;
        }
        let term = if chars >= 4
            && buf.ends_with('s')
            && !buf.ends_with("ss")
            && !buf.ends_with("us")
            && !buf.ends_with("is")
        {
            &buf[..buf.len() - 1]
        } else {
            buf.as_str()
        };
        f(term);
    }
}

/// The searchable text of a payload: its string values when it is JSON, else the raw text.
pub fn payload_text(payload: &str) -> String {
    fn collect(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            serde_json::Value::Number(n) => {
                out.push_str(&n.to_string());
                out.push(' ');
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
            serde_json::Value::Object(map) => map.values().for_each(|i| collect(i, out)),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
            let mut out = String::new();
            collect(&v, &mut out);
            out
        }
        Ok(serde_json::Value::String(s)) => s,
        _ => payload.to_owned(),
    }
}

/// Link effects received by an atom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkEffects {
    superseded: bool,
    contradicted: u16,
    confirmed: u16,
}

impl LinkEffects {
    fn apply(&mut self, kind: LinkKind) {
        match kind {
            LinkKind::Supersedes => self.superseded = true,
            LinkKind::Contradicts => self.contradicted = self.contradicted.saturating_add(1),
            LinkKind::Confirms => self.confirmed = self.confirmed.saturating_add(1),
            LinkKind::References => {}
        }
    }

    /// The original DWBase's rank score: importance, −1 if superseded, −0.3 per contradiction,
    /// +0.2 per confirmation.
    fn original_score(self, importance: f32) -> f32 {
        let mut s = importance;
        if self.superseded {
            s -= 1.0;
        }
        s - 0.3 * f32::from(self.contradicted) + 0.2 * f32::from(self.confirmed)
    }

    fn score(self) -> f32 {
        let mut s = 0.0;
        if self.superseded {
            s -= W_SUPERSEDED;
        }
        s -= W_CONTRADICTED * f32::from(self.contradicted.min(3));
        s += W_CONFIRMED * f32::from(self.confirmed.min(3));
        s
    }
}

/// What ranking and filtering read for every candidate: kept small (24 bytes) and apart from
/// the rest so a query touches few cache lines.
#[derive(Debug)]
struct DocMeta {
    ts_ms: i64,
    importance: f32,
    links: LinkEffects,
    kind: AtomKind,
}

/// What only the winners (id) and label/flag filters read.
#[derive(Debug)]
struct DocInfo {
    id: Box<str>,
    labels: Vec<String>,
    flags: Vec<String>,
}

/// One term occurrence: the document, how often the term occurs in it, and the document's
/// length (so BM25 never has to look the document up).
#[derive(Debug, Clone, Copy)]
struct Posting {
    doc: u32,
    tf: u16,
    len: u16,
}

#[derive(Debug, Default)]
struct WorldIndex {
    docs: Vec<DocMeta>,
    info: Vec<DocInfo>,
    postings: HashMap<Box<str>, Vec<Posting>>,
    total_len: u64,
    version: u64,
    unindexed: u64,
}

#[derive(Default)]
struct Inner {
    worlds: HashMap<String, WorldIndex>,
    /// id → (world, doc number).
    ids: HashMap<Box<str>, (String, u32)>,
    /// Effects of links whose target has not arrived yet (swarm order, rebuild order).
    pending: HashMap<Box<str>, LinkEffects>,
    approx_bytes: u64,
    unindexed: u64,
}

/// Progress of the start-up rebuild.
#[derive(Debug, Default)]
struct Rebuild {
    rebuilding: AtomicBool,
    ready: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
    started: Mutex<Option<Instant>>,
    last_rebuilt: Mutex<Option<String>>,
    last_duration_ms: AtomicU64,
}

/// Index-wide figures for `/health` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    /// Atoms in the index.
    pub docs: u64,
    /// Distinct terms (summed over worlds).
    pub terms: u64,
    /// Estimated memory use in bytes.
    pub approx_bytes: u64,
    /// The index's memory share in bytes (0 = no cap).
    pub budget_bytes: u64,
    /// Atoms whose text was not indexed because the share was used up.
    pub unindexed_docs: u64,
    /// Whether the start-up rebuild has finished.
    pub ready: bool,
    /// Whether the rebuild is running.
    pub rebuilding: bool,
    /// Rebuild progress 0..1.
    pub progress: f64,
    /// How long the running rebuild has taken so far (0 when none runs), in ms.
    pub rebuild_lag_ms: u64,
    /// When the last rebuild finished (RFC 3339).
    pub last_rebuilt: Option<String>,
    /// How long the last rebuild took, in ms.
    pub last_rebuild_ms: u64,
}

/// One world's entry in `/index/status`.
#[derive(Debug, Clone, Serialize)]
pub struct WorldIndexStatus {
    /// The world.
    pub world: String,
    /// Bumped on every change to the world's index.
    pub version: u64,
    /// The scorer ([`EMBEDDER_VERSION`]).
    pub embedder_version: String,
    /// When the start-up rebuild finished (RFC 3339), if it has.
    pub last_rebuilt: Option<String>,
    /// Whether the index can answer for this world.
    pub ready: bool,
    /// Whether the start-up rebuild is running.
    pub rebuilding: bool,
    /// Rebuild progress 0..1 (node-wide).
    pub progress: f64,
    /// Atoms indexed in this world.
    pub docs: u64,
    /// Distinct terms in this world.
    pub terms: u64,
    /// Atoms whose text was not indexed (memory share used up).
    pub unindexed_docs: u64,
}

/// A ranked result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Atom id.
    pub id: String,
    /// Final score.
    pub score: f32,
}

/// The result of [`Index::search`].
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    /// Best first, at most `limit`.
    pub hits: Vec<Hit>,
    /// Whether the question had searchable terms.
    pub had_terms: bool,
    /// Candidates before the limit.
    pub candidates: usize,
}

/// The node's text index.
pub struct Index {
    inner: RwLock<Inner>,
    budget_bytes: u64,
    rebuild: Rebuild,
}

const DOC_OVERHEAD: u64 = 160;
const TERM_OVERHEAD: u64 = 96;
const POSTING_BYTES: u64 = 8;

impl Index {
    /// A new, empty index with a memory share of `budget_bytes` (0 = no cap).
    pub fn new(budget_bytes: u64) -> Self {
        Self { inner: RwLock::new(Inner::default()), budget_bytes, rebuild: Rebuild::default() }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds atoms (idempotent by id). Returns how many were new.
    pub fn insert_many(&self, atoms: &[Atom]) -> usize {
        let mut inner = self.write();
        atoms.iter().filter(|a| insert(&mut inner, self.budget_bytes, a)).count()
    }

    /// Adds one atom (idempotent by id). Returns whether it was new.
    pub fn insert(&self, atom: &Atom) -> bool {
        insert(&mut self.write(), self.budget_bytes, atom)
    }

    /// Whether an atom is indexed.
    pub fn contains(&self, id: &str) -> bool {
        self.read().ids.contains_key(id)
    }

    /// Ranks `world`'s atoms for `question` (see the module docs) and returns the best `limit`.
    pub fn search(
        &self,
        world: &str,
        question: &str,
        filter: &CompiledFilter,
        limit: usize,
    ) -> SearchResult {
        let mut terms: Vec<String> = Vec::new();
        tokenize(question, |t| {
            if !terms.iter().any(|x| x == t) {
                terms.push(t.to_owned());
            }
        });
        let inner = self.read();
        let Some(wi) = inner.worlds.get(world) else {
            return SearchResult { had_terms: !terms.is_empty(), ..Default::default() };
        };
        let needs_sets = !filter.labels.is_empty() || !filter.flags.is_empty();
        let passes = |i: u32| {
            let d = &wi.docs[i as usize];
            if needs_sets {
                let info = &wi.info[i as usize];
                filter.matches(d.kind, d.ts_ms, &info.labels, &info.flags)
            } else {
                filter.matches(d.kind, d.ts_ms, &[], &[])
            }
        };

        // (doc, relevance)
        let mut candidates: Vec<(u32, f32)> = if terms.is_empty() {
            (0..wi.docs.len() as u32).filter(|&i| passes(i)).map(|i| (i, 0.0)).collect()
        } else {
            let n = wi.docs.len() as f32;
            let avgdl = if wi.docs.is_empty() { 1.0 } else { wi.total_len as f32 / n };
            let lists: Vec<&Vec<Posting>> =
                terms.iter().filter_map(|t| wi.postings.get(t.as_str())).collect();
            let mut pairs: Vec<(u32, f32)> =
                Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
            for list in &lists {
                let df = list.len() as f32;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                for p in list.iter() {
                    let (tf, dl) = (f32::from(p.tf), f32::from(p.len));
                    let s = idf * tf * (BM25_K1 + 1.0)
                        / (tf + BM25_K1 * (1.0 - BM25_B + BM25_B * dl / avgdl.max(1.0)));
                    pairs.push((p.doc, s));
                }
            }
            // Each list is in doc order; with several terms, sort and sum per doc.
            if lists.len() > 1 {
                pairs.sort_unstable_by_key(|p| p.0);
                pairs.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        kept.1 += later.1;
                    }
                    same
                });
            }
            pairs.retain(|(d, _)| passes(*d));
            pairs
        };
        let total = candidates.len();
        if candidates.is_empty() || limit == 0 {
            return SearchResult {
                hits: Vec::new(),
                had_terms: !terms.is_empty(),
                candidates: total,
            };
        }
        let max_rel = candidates.iter().map(|c| c.1).fold(0.0f32, f32::max);
        let (min_ts, max_ts) = candidates.iter().fold((i64::MAX, i64::MIN), |(lo, hi), c| {
            let ts = wi.docs[c.0 as usize].ts_ms;
            (lo.min(ts), hi.max(ts))
        });
        let span = (max_ts - min_ts).max(1) as f64;
        let mut scored: Vec<(f32, i64, u32)> = candidates
            .drain(..)
            .map(|(d, rel)| {
                let doc = &wi.docs[d as usize];
                let rel = if max_rel > 0.0 { rel / max_rel } else { 0.0 };
                let recency = ((doc.ts_ms - min_ts) as f64 / span) as f32;
                let score =
                    rel + W_IMPORTANCE * doc.importance + doc.links.score() + W_RECENCY * recency;
                (score, doc.ts_ms, d)
            })
            .collect();
        let order = |a: &(f32, i64, u32), b: &(f32, i64, u32)| {
            b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2))
        };
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit - 1, order);
            scored.truncate(limit);
        }
        scored.sort_unstable_by(order);
        let hits = scored
            .into_iter()
            .map(|(score, _, d)| Hit { id: wi.info[d as usize].id.to_string(), score })
            .collect();
        SearchResult { hits, had_terms: !terms.is_empty(), candidates: total }
    }

    /// The original DWBase's answer when nothing matches the question: the world's most recent
    /// atoms (up to [`FALLBACK_RECENT`], restricted by the filter), ranked as it ranked them —
    /// importance, −1 if superseded, −0.3 per contradiction, +0.2 per confirmation, then newer,
    /// then more important — best `limit` first.
    pub fn recent(&self, world: &str, filter: &CompiledFilter, limit: usize) -> Vec<Hit> {
        let inner = self.read();
        let Some(wi) = inner.worlds.get(world) else { return Vec::new() };
        let needs_sets = !filter.labels.is_empty() || !filter.flags.is_empty();
        let mut docs: Vec<u32> = (0..wi.docs.len() as u32)
            .filter(|&i| {
                let d = &wi.docs[i as usize];
                if needs_sets {
                    let info = &wi.info[i as usize];
                    filter.matches(d.kind, d.ts_ms, &info.labels, &info.flags)
                } else {
                    filter.matches(d.kind, d.ts_ms, &[], &[])
                }
            })
            .collect();
        let ts = |i: &u32| wi.docs[*i as usize].ts_ms;
        if docs.len() > FALLBACK_RECENT {
            docs.select_nth_unstable_by(FALLBACK_RECENT - 1, |a, b| ts(b).cmp(&ts(a)));
            docs.truncate(FALLBACK_RECENT);
        }
        let mut scored: Vec<(f32, i64, f32, u32)> = docs
            .into_iter()
            .map(|i| {
                let d = &wi.docs[i as usize];
                (d.links.original_score(d.importance), d.ts_ms, d.importance, i)
            })
            .collect();
        scored.sort_unstable_by(|a, b| {
            b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.total_cmp(&a.2)).then(b.3.cmp(&a.3))
        });
        scored
            .into_iter()
            .take(limit)
            .map(|(score, _, _, d)| Hit { id: wi.info[d as usize].id.to_string(), score })
            .collect()
    }

    /// Index-wide figures.
    pub fn stats(&self) -> IndexStats {
        let inner = self.read();
        let docs = inner.ids.len() as u64;
        let terms = inner.worlds.values().map(|w| w.postings.len() as u64).sum();
        let r = &self.rebuild;
        IndexStats {
            docs,
            terms,
            approx_bytes: inner.approx_bytes,
            budget_bytes: self.budget_bytes,
            unindexed_docs: inner.unindexed,
            ready: r.ready.load(Ordering::Relaxed),
            rebuilding: r.rebuilding.load(Ordering::Relaxed),
            progress: self.progress(),
            rebuild_lag_ms: self.rebuild_lag_ms(),
            last_rebuilt: r.last_rebuilt.lock().ok().and_then(|l| l.clone()),
            last_rebuild_ms: r.last_duration_ms.load(Ordering::Relaxed),
        }
    }

    /// Per-world status for `worlds` (worlds the store knows, indexed or not).
    pub fn world_status(&self, worlds: &[String]) -> Vec<WorldIndexStatus> {
        let inner = self.read();
        let ready = self.is_ready();
        let rebuilding = self.rebuild.rebuilding.load(Ordering::Relaxed);
        let progress = self.progress();
        let last = self.rebuild.last_rebuilt.lock().ok().and_then(|l| l.clone());
        worlds
            .iter()
            .map(|w| {
                let wi = inner.worlds.get(w);
                WorldIndexStatus {
                    world: w.clone(),
                    version: wi.map_or(0, |x| x.version),
                    embedder_version: EMBEDDER_VERSION.to_owned(),
                    last_rebuilt: last.clone(),
                    ready,
                    rebuilding,
                    progress,
                    docs: wi.map_or(0, |x| x.docs.len() as u64),
                    terms: wi.map_or(0, |x| x.postings.len() as u64),
                    unindexed_docs: wi.map_or(0, |x| x.unindexed),
                }
            })
            .collect()
    }

    /// Whether the start-up rebuild has finished.
    pub fn is_ready(&self) -> bool {
        self.rebuild.ready.load(Ordering::Relaxed)
    }

    /// Rebuild progress 0..1 (1 when ready).
    pub fn progress(&self) -> f64 {
        if self.is_ready() {
            return 1.0;
        }
        let total = self.rebuild.total.load(Ordering::Relaxed);
        let done = self.rebuild.done.load(Ordering::Relaxed);
        if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64).min(1.0)
        }
    }

    /// Milliseconds the running rebuild has taken so far (0 when none runs).
    pub fn rebuild_lag_ms(&self) -> u64 {
        if !self.rebuild.rebuilding.load(Ordering::Relaxed) {
            return 0;
        }
        self.rebuild
            .started
            .lock()
            .ok()
            .and_then(|s| s.map(|t| t.elapsed().as_millis() as u64))
            .unwrap_or(0)
    }

    /// Rebuilds from every atom `source` yields (in chunks), while remembers may insert
    /// concurrently. `stop` ends it early (shutdown); the index then stays not ready.
    pub fn rebuild<E>(
        &self,
        expected_total: u64,
        stop: &AtomicBool,
        source: impl FnOnce(&mut dyn FnMut(Vec<Atom>) -> bool) -> Result<(), E>,
    ) -> Result<bool, E> {
        let r = &self.rebuild;
        r.ready.store(false, Ordering::Relaxed);
        r.rebuilding.store(true, Ordering::Relaxed);
        r.done.store(0, Ordering::Relaxed);
        r.total.store(expected_total, Ordering::Relaxed);
        let started = Instant::now();
        if let Ok(mut s) = r.started.lock() {
            *s = Some(started);
        }
        let mut sink = |chunk: Vec<Atom>| {
            self.insert_many(&chunk);
            r.done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            !stop.load(Ordering::Relaxed)
        };
        let result = source(&mut sink);
        r.rebuilding.store(false, Ordering::Relaxed);
        result?;
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        r.last_duration_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Ok(mut l) = r.last_rebuilt.lock() {
            *l = Some(crate::model::now_rfc3339());
        }
        r.ready.store(true, Ordering::Relaxed);
        Ok(true)
    }
}

fn insert(inner: &mut Inner, budget: u64, atom: &Atom) -> bool {
    if inner.ids.contains_key(atom.id.as_str()) {
        return false;
    }
    let mut tf: HashMap<String, u32> = HashMap::new();
    let mut len = 0u32;
    tokenize(&payload_text(&atom.payload_json), |t| {
        *tf.entry(t.to_owned()).or_insert(0) += 1;
        len += 1;
    });
    for label in &atom.labels {
        tokenize(label, |t| {
            *tf.entry(t.to_owned()).or_insert(0) += LABEL_TF;
            len += LABEL_TF;
        });
    }
    let wi = inner.worlds.entry(atom.world.clone()).or_default();
    let new_terms: u64 = tf
        .keys()
        .filter(|t| !wi.postings.contains_key(t.as_str()))
        .map(|t| TERM_OVERHEAD + t.len() as u64)
        .sum();
    let meta_bytes = DOC_OVERHEAD
        + atom.id.len() as u64
        + atom.labels.iter().chain(&atom.flags).map(|s| s.len() as u64 + 24).sum::<u64>();
    let text_bytes = tf.len() as u64 * POSTING_BYTES + new_terms;
    let index_text = budget == 0 || inner.approx_bytes + meta_bytes + text_bytes <= budget;

    let doc_no = wi.docs.len() as u32;
    let links = inner.pending.remove(atom.id.as_str()).unwrap_or_default();
    // Re-borrow after touching `inner.pending`.
    let wi = inner.worlds.get_mut(&atom.world).expect("world just inserted");
    if index_text {
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        for (term, count) in tf {
            wi.postings.entry(term.into_boxed_str()).or_default().push(Posting {
                doc: doc_no,
                tf: u16::try_from(count).unwrap_or(u16::MAX),
                len: len16,
            });
        }
        wi.total_len += u64::from(len);
    } else {
        wi.unindexed += 1;
    }
    wi.docs.push(DocMeta {
        ts_ms: atom.timestamp_ms(),
        importance: atom.importance as f32,
        links,
        kind: atom.kind,
    });
    wi.info.push(DocInfo {
        id: atom.id.clone().into_boxed_str(),
        labels: atom.labels.clone(),
        flags: atom.flags.clone(),
    });
    wi.version += 1;
    inner.ids.insert(atom.id.clone().into_boxed_str(), (atom.world.clone(), doc_no));
    inner.approx_bytes += meta_bytes + if index_text { text_bytes } else { 0 };
    if !index_text {
        inner.unindexed += 1;
    }

    // This atom's links change how its targets rank.
    for link in &atom.links {
        if link.kind == LinkKind::References || link.target == atom.id {
            continue;
        }
        match inner.ids.get(link.target.as_str()) {
            Some((world, doc)) => {
                let (world, doc) = (world.clone(), *doc as usize);
                if let Some(target) = inner.worlds.get_mut(&world).and_then(|w| w.docs.get_mut(doc))
                {
                    target.links.apply(link.kind);
                }
                if let Some(w) = inner.worlds.get_mut(&world) {
                    w.version += 1;
                }
            }
            None => {
                inner
                    .pending
                    .entry(link.target.clone().into_boxed_str())
                    .or_default()
                    .apply(link.kind);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AtomFilter, Link};

    fn atom(id: &str, text: &str, importance: f64, ts: &str) -> Atom {
        Atom {
            id: id.into(),
            world: "w".into(),
            worker: "a".into(),
            kind: AtomKind::Observation,
            timestamp: ts.into(),
            importance,
            payload_json: serde_json::json!({ "text": text }).to_string(),
            vector: None,
            flags: vec![],
            labels: vec![],
            links: vec![],
        }
    }

    const T0: &str = "2024-01-01T00:00:00Z";
    const T1: &str = "2024-01-02T00:00:00Z";

    fn ids(index: &Index, q: &str) -> Vec<String> {
        let f = AtomFilter::default().compile().unwrap();
        index.search("w", q, &f, 10).hits.into_iter().map(|h| h.id).collect()
    }

    #[test]
    fn tokenizer_normalises() {
        let mut out = Vec::new();
        tokenize("The Cats sat on 2 MATS, glass-house!", |t| out.push(t.to_owned()));
        assert_eq!(out, ["cat", "sat", "2", "mat", "glass", "house"]);
        assert_eq!(payload_text(r#"{"text":"hi","n":[1,"x"]}"#).split_whitespace().count(), 3);
        assert_eq!(payload_text("plain words"), "plain words");
    }

    #[test]
    fn relevant_outranks_irrelevant_but_important() {
        let index = Index::new(0);
        index.insert(&atom("relevant", "the deploy failed on node b", 0.1, T0));
        index.insert(&atom("important", "quarterly budget meeting notes", 1.0, T1));
        index.insert(&atom("weak", "node restarted after a failure of something", 0.9, T1));
        let got = ids(&index, "why did the deploy fail on node b?");
        assert_eq!(got[0], "relevant", "{got:?}");
        assert!(!got.contains(&"important".to_owned()), "irrelevant atoms are not candidates");
    }

    #[test]
    fn more_important_wins_between_equally_relevant() {
        let index = Index::new(0);
        index.insert(&atom("low", "disk is full", 0.1, T0));
        index.insert(&atom("high", "disk is full", 0.9, T0));
        assert_eq!(ids(&index, "disk full"), ["high", "low"]);
    }

    #[test]
    fn link_semantics_change_rank() {
        let index = Index::new(0);
        index.insert(&atom("old", "the api port is 8080", 0.5, T0));
        index.insert(&atom("base", "the api port is 8080", 0.5, T0));
        // Same text, same time: `old` vs `base` differ only by links below.
        let mut newer = atom("new", "port changed", 0.5, T1);
        newer.links = vec![Link { target: "old".into(), kind: LinkKind::Supersedes }];
        index.insert(&newer);
        assert_eq!(ids(&index, "api port 8080")[..2], ["base", "old"]);

        let index = Index::new(0);
        index.insert(&atom("x", "the api port is 8080", 0.5, T0));
        index.insert(&atom("y", "the api port is 8080", 0.5, T0));
        let mut c = atom("c", "no", 0.5, T1);
        c.links = vec![Link { target: "x".into(), kind: LinkKind::Contradicts }];
        index.insert(&c);
        assert_eq!(ids(&index, "api port 8080")[..2], ["y", "x"], "contradicted ranks lower");

        let index = Index::new(0);
        index.insert(&atom("x", "the api port is 8080", 0.5, T0));
        index.insert(&atom("y", "the api port is 8080", 0.5, T0));
        let mut c = atom("c", "yes", 0.5, T1);
        c.links = vec![Link { target: "x".into(), kind: LinkKind::Confirms }];
        index.insert(&c);
        assert_eq!(ids(&index, "api port 8080")[..2], ["x", "y"], "confirmed ranks higher");
    }

    #[test]
    fn links_arriving_before_their_target_still_count() {
        let index = Index::new(0);
        let mut c = atom("c", "no", 0.5, T1);
        c.links = vec![Link { target: "x".into(), kind: LinkKind::Supersedes }];
        index.insert(&c);
        index.insert(&atom("x", "port 8080", 0.5, T0));
        index.insert(&atom("y", "port 8080", 0.5, T0));
        assert_eq!(ids(&index, "port 8080"), ["y", "x"]);
    }

    #[test]
    fn recency_breaks_ties_and_filters_apply() {
        let index = Index::new(0);
        index.insert(&atom("older", "same words", 0.5, T0));
        let mut newer = atom("newer", "same words", 0.5, T1);
        newer.flags = vec!["tag".into()];
        index.insert(&newer);
        assert_eq!(ids(&index, "same words"), ["newer", "older"]);
        let f = AtomFilter { flags: vec!["tag".into()], ..Default::default() }.compile().unwrap();
        let hits = index.search("w", "same", &f, 10).hits;
        assert_eq!(hits.len(), 1);
        let f = AtomFilter { limit: Some(1), ..Default::default() }.compile().unwrap();
        assert_eq!(index.search("w", "", &f, 1).hits.len(), 1, "no terms: all atoms rank");
        assert!(index.search("other", "same", &f, 10).hits.is_empty());
    }

    #[test]
    fn recent_ranks_as_the_original() {
        let index = Index::new(0);
        index.insert(&atom("old-important", "a", 0.9, T0));
        index.insert(&atom("new-minor", "b", 0.2, T1));
        index.insert(&atom("new-same", "c", 0.2, "2024-01-03T00:00:00Z"));
        let mut sup = atom("superseder", "d", 0.5, T1);
        sup.links = vec![Link { target: "old-important".into(), kind: LinkKind::Supersedes }];
        index.insert(&sup);
        let f = AtomFilter::default().compile().unwrap();
        let got: Vec<String> = index.recent("w", &f, 10).into_iter().map(|h| h.id).collect();
        // 0.5; 0.2 (newer first); 0.9 − 1 for being superseded.
        assert_eq!(got, ["superseder", "new-same", "new-minor", "old-important"]);
        assert_eq!(index.recent("w", &f, 2).len(), 2);
        assert!(index.recent("nope", &f, 2).is_empty());
    }

    #[test]
    fn insert_is_idempotent_and_budget_degrades() {
        let index = Index::new(0);
        assert!(index.insert(&atom("a", "x y z", 0.5, T0)));
        assert!(!index.insert(&atom("a", "x y z", 0.5, T0)));
        assert_eq!(index.stats().docs, 1);

        let small = Index::new(2_000);
        for i in 0..100 {
            small.insert(&atom(&format!("id{i}"), &format!("word{i} common"), 0.5, T0));
        }
        let stats = small.stats();
        assert_eq!(stats.docs, 100, "every atom is still listed");
        assert!(stats.unindexed_docs > 0, "text indexing stops at the budget");
    }
}
