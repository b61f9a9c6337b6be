//! Wire types: the original DWBase's JSON shapes (NewAtom, Atom, Question, Answer, AtomFilter,
//! world management) plus the field validation that turns a bad value into a 422 naming it.

use serde::{Deserialize, Deserializer, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What an atom records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtomKind {
    /// Something seen.
    Observation,
    /// Something thought.
    Reflection,
    /// Something intended.
    Plan,
    /// Something done.
    Action,
    /// Something said.
    Message,
}

/// How an atom relates to an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// The target is replaced by this atom (ranks the target lower).
    Supersedes,
    /// Plain reference (no ranking effect).
    References,
    /// This atom agrees with the target (ranks the target higher).
    Confirms,
    /// This atom disagrees with the target (ranks the target lower).
    Contradicts,
}

/// A typed link to another atom by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The id of the linked atom.
    pub target: String,
    /// The relation.
    pub kind: LinkKind,
}

/// Deserializes `null` as the type's default (clients send `"flags": null`).
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// The body of `POST /remember`. Missing `timestamp`, `vector`, `flags`, `labels` and `links`
/// take their defaults; an empty timestamp means now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAtom {
    /// The world (namespace) the atom belongs to.
    pub world: String,
    /// The agent that produced it.
    pub worker: String,
    /// What it records.
    pub kind: AtomKind,
    /// RFC 3339 time; empty means now.
    #[serde(default, deserialize_with = "null_as_default")]
    pub timestamp: String,
    /// 0..1; values above `importance_cap` are clamped to the cap.
    pub importance: f64,
    /// Opaque payload, usually JSON text.
    pub payload_json: String,
    /// Optional embedding (stored, not used for ranking).
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Free-form flags (filters match all listed flags).
    #[serde(default, deserialize_with = "null_as_default")]
    pub flags: Vec<String>,
    /// Free-form labels (indexed for text relevance; filters match all listed labels).
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<String>,
    /// Links to earlier atoms.
    #[serde(default, deserialize_with = "null_as_default")]
    pub links: Vec<Link>,
}

/// A stored atom: a [`NewAtom`] plus its id. Atoms are immutable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Atom {
    /// Unique forever (a ULID); kept when the atom is replicated to peers.
    pub id: String,
    /// The world (namespace) the atom belongs to.
    pub world: String,
    /// The agent that produced it.
    pub worker: String,
    /// What it records.
    pub kind: AtomKind,
    /// RFC 3339 time.
    pub timestamp: String,
    /// 0..1.
    pub importance: f64,
    /// Opaque payload, usually JSON text.
    pub payload_json: String,
    /// Optional embedding.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Flags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub flags: Vec<String>,
    /// Labels.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<String>,
    /// Links to earlier atoms.
    #[serde(default, deserialize_with = "null_as_default")]
    pub links: Vec<Link>,
}

impl Atom {
    /// Builds the stored form of `new` with `id`; `timestamp` must already be resolved.
    pub fn from_new(id: String, new: NewAtom) -> Self {
        Atom {
            id,
            world: new.world,
            worker: new.worker,
            kind: new.kind,
            timestamp: new.timestamp,
            importance: new.importance,
            payload_json: new.payload_json,
            vector: new.vector,
            flags: new.flags,
            labels: new.labels,
            links: new.links,
        }
    }

    /// The timestamp as Unix milliseconds (0 if it does not parse).
    pub fn timestamp_ms(&self) -> i64 {
        parse_timestamp(&self.timestamp).map_or(0, unix_ms)
    }
}

/// Filter for ask and replay. Every key is optional (the original required all seven).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AtomFilter {
    /// Ignored by ask and replay, which use the request's `world` (kept for compatibility).
    #[serde(default)]
    pub world: Option<String>,
    /// Atom kinds to keep (any of); empty or absent keeps all.
    #[serde(default, deserialize_with = "null_as_default")]
    pub kinds: Vec<AtomKind>,
    /// Labels an atom must all carry.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<String>,
    /// Flags an atom must all carry.
    #[serde(default, deserialize_with = "null_as_default")]
    pub flags: Vec<String>,
    /// Keep atoms at or after this RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
    /// Keep atoms at or before this RFC 3339 time.
    #[serde(default)]
    pub until: Option<String>,
    /// Most atoms to return (ask default 10; replay default all).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A filter with its times parsed, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct CompiledFilter {
    /// Kinds to keep (empty = all).
    pub kinds: Vec<AtomKind>,
    /// Labels that must all be present.
    pub labels: Vec<String>,
    /// Flags that must all be present.
    pub flags: Vec<String>,
    /// Lower bound, Unix ms, inclusive.
    pub since_ms: Option<i64>,
    /// Upper bound, Unix ms, inclusive.
    pub until_ms: Option<i64>,
    /// Limit, if any.
    pub limit: Option<usize>,
}

impl CompiledFilter {
    /// Whether an atom with these properties passes.
    pub fn matches(&self, kind: AtomKind, ts_ms: i64, labels: &[String], flags: &[String]) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && self.labels.iter().all(|l| labels.contains(l))
            && self.flags.iter().all(|f| flags.contains(f))
            && self.since_ms.is_none_or(|s| ts_ms >= s)
            && self.until_ms.is_none_or(|u| ts_ms <= u)
    }

    /// Whether the stored atom passes.
    pub fn matches_atom(&self, atom: &Atom) -> bool {
        self.matches(atom.kind, atom.timestamp_ms(), &atom.labels, &atom.flags)
    }
}

impl AtomFilter {
    /// Parses the times; a bad one is a field error naming `filter.since` / `filter.until`.
    pub fn compile(&self) -> Result<CompiledFilter, FieldError> {
        let time = |field: &'static str, value: &Option<String>| -> Result<_, FieldError> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) => parse_filter_time(v).map(|t| Some(unix_ms(t))).ok_or_else(|| {
                    FieldError::new(
                        field,
                        format!(
                            "{v:?} is not a time: use RFC 3339 (2026-01-01T10:00:00Z), a date \
                             (2026-01-01) or a time in UTC (2026-01-01T10:00)"
                        ),
                    )
                }),
            }
        };
        Ok(CompiledFilter {
            kinds: self.kinds.clone(),
            labels: self.labels.clone(),
            flags: self.flags.clone(),
            since_ms: time("filter.since", &self.since)?,
            until_ms: time("filter.until", &self.until)?,
            limit: self.limit,
        })
    }
}

/// The body of `POST /ask`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// The world to search.
    pub world: String,
    /// Free text; ranked against payload text and labels.
    pub text: String,
    /// Optional filter.
    #[serde(default)]
    pub filter: Option<AtomFilter>,
}

/// The answer to an ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The world searched.
    pub world: String,
    /// The question text.
    pub text: String,
    /// Best atoms first.
    pub supporting_atoms: Vec<Atom>,
    /// Anything the caller should know (index rebuilding, archived world, no match).
    pub warnings: Vec<String>,
}

/// The body of `POST /replay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// The world to replay.
    pub world: String,
    /// Optional filter; `limit` keeps the first N in append order.
    #[serde(default)]
    pub filter: Option<AtomFilter>,
}

/// Actions of `POST /worlds/manage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorldAction {
    /// Create (or update the description/labels of) a world.
    Create,
    /// Archive: hidden from `/worlds`, remember refused with 409, reads still work.
    Archive,
    /// Undo archive.
    Resume,
}

/// The body of `POST /worlds/manage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldManage {
    /// What to do.
    pub action: WorldAction,
    /// The world.
    pub world: String,
    /// Description (create only).
    #[serde(default)]
    pub description: Option<String>,
    /// Labels (create only).
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<String>,
}

/// The body of `POST /worlds/policy` (stored, shown in world records; not enforced yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorldPolicy {
    /// The world the policy applies to.
    pub world: String,
    /// Days to keep atoms.
    #[serde(default)]
    pub retention_days: Option<u64>,
    /// Least importance worth keeping.
    #[serde(default)]
    pub min_importance: Option<f64>,
    /// Peers allowed to receive the world.
    #[serde(default, deserialize_with = "null_as_default")]
    pub replication_allow: Vec<String>,
    /// Peers never to receive the world.
    #[serde(default, deserialize_with = "null_as_default")]
    pub replication_deny: Vec<String>,
}

/// What the node knows about a world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldRecord {
    /// The world's name.
    pub world: String,
    /// Description given at create.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels given at create.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Whether the world is archived.
    #[serde(default)]
    pub archived: bool,
    /// When the node first saw the world (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// The stored policy, if any.
    #[serde(default)]
    pub policy: Option<WorldPolicy>,
}

/// A request field that failed validation (→ 422 naming the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`importance`, `links[0].target`, `filter.since`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Longest accepted world or worker name.
pub const MAX_NAME_LEN: usize = 256;

/// Checks a world name: non-empty, at most [`MAX_NAME_LEN`] bytes, no control characters.
pub fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(FieldError::new(field, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

impl NewAtom {
    /// Validates fields and fills defaults: an empty timestamp becomes now, importance above
    /// `importance_cap` is clamped to it. Importance outside 0..1 is refused.
    pub fn validate(&mut self, importance_cap: f64) -> Result<(), FieldError> {
        check_name("world", &self.world)?;
        check_name("worker", &self.worker)?;
        if !self.importance.is_finite() || !(0.0..=1.0).contains(&self.importance) {
            return Err(FieldError::new(
                "importance",
                format!("{} is outside 0..1", self.importance),
            ));
        }
        if self.importance > importance_cap {
            self.importance = importance_cap;
        }
        let ts = self.timestamp.trim();
        if ts.is_empty() {
            self.timestamp = now_rfc3339();
        } else if parse_timestamp(ts).is_none() {
            return Err(FieldError::new(
                "timestamp",
                format!("{ts:?} is not an RFC 3339 timestamp (or empty for now)"),
            ));
        }
        for (i, link) in self.links.iter().enumerate() {
            if link.target.trim().is_empty() {
                return Err(FieldError::new(format!("links[{i}].target"), "must not be empty"));
            }
        }
        Ok(())
    }
}

impl Atom {
    /// Validates an atom received from a peer (same rules as [`NewAtom::validate`], plus an id).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.id.trim().is_empty() || self.id.len() > MAX_NAME_LEN {
            return Err(FieldError::new("id", "must be a non-empty id"));
        }
        check_name("world", &self.world)?;
        check_name("worker", &self.worker)?;
        if !self.importance.is_finite() || !(0.0..=1.0).contains(&self.importance) {
            return Err(FieldError::new("importance", "outside 0..1"));
        }
        if parse_timestamp(&self.timestamp).is_none() {
            return Err(FieldError::new("timestamp", "not an RFC 3339 timestamp"));
        }
        Ok(())
    }
}

/// Parses an RFC 3339 timestamp.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).ok()
}

/// A filter time (`since`, `until`): RFC 3339, or what the original DWBase's replay compared
/// as text against its RFC 3339 timestamps — a date (`2026-01-01`) or a time without zone
/// (`2026-01-01T10:00`, `…:30`, `….5`, a space instead of `T`), taken as UTC.
pub fn parse_filter_time(s: &str) -> Option<OffsetDateTime> {
    use time::macros::format_description;
    if let Some(t) = parse_timestamp(s) {
        return Some(t);
    }
    let t = s.trim().replacen(' ', "T", 1);
    if let Ok(d) = time::Date::parse(&t, format_description!("[year]-[month]-[day]")) {
        return Some(d.midnight().assume_utc());
    }
    [
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"),
    ]
    .into_iter()
    .find_map(|fmt| time::PrimitiveDateTime::parse(&t, fmt).ok().map(|dt| dt.assume_utc()))
}

/// Unix milliseconds of a time.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The current UTC time as RFC 3339 with millisecond precision.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339 (UTC, milliseconds).
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_example_parses() {
        let json = r#"{"world":"demo","worker":"agent-a","kind":"observation","timestamp":"","importance":0.5,"payload_json":"{\"text\":\"hi\"}","vector":null,"flags":[],"labels":["x"],"links":[{"target":"01J","kind":"confirms"}]}"#;
        let mut a: NewAtom = serde_json::from_str(json).unwrap();
        a.validate(1.0).unwrap();
        assert!(parse_timestamp(&a.timestamp).is_some());
        assert_eq!(a.links[0].kind, LinkKind::Confirms);
    }

    #[test]
    fn optional_fields_default_and_null_is_accepted() {
        let json = r#"{"world":"w","worker":"a","kind":"plan","importance":1,"payload_json":"x","flags":null}"#;
        let a: NewAtom = serde_json::from_str(json).unwrap();
        assert!(a.flags.is_empty() && a.labels.is_empty() && a.links.is_empty());
        assert_eq!(a.vector, None);
        assert_eq!(a.timestamp, "");
    }

    #[test]
    fn importance_range_and_cap() {
        let base = r#"{"world":"w","worker":"a","kind":"plan","payload_json":"x","importance":"#;
        let mut a: NewAtom = serde_json::from_str(&format!("{base}1.5}}")).unwrap();
        assert_eq!(a.validate(1.0).unwrap_err().field, "importance");
        let mut a: NewAtom = serde_json::from_str(&format!("{base}-0.1}}")).unwrap();
        assert_eq!(a.validate(1.0).unwrap_err().field, "importance");
        let mut a: NewAtom = serde_json::from_str(&format!("{base}0.9}}")).unwrap();
        a.validate(0.5).unwrap();
        assert_eq!(a.importance, 0.5);
    }

    #[test]
    fn bad_timestamp_is_a_field_error() {
        let mut a: NewAtom = serde_json::from_str(
            r#"{"world":"w","worker":"a","kind":"plan","importance":0.1,"payload_json":"x","timestamp":"yesterday"}"#,
        )
        .unwrap();
        assert_eq!(a.validate(1.0).unwrap_err().field, "timestamp");
    }

    #[test]
    fn filter_subset_and_matching() {
        let f: AtomFilter =
            serde_json::from_str(r#"{"labels":["a"],"since":"2024-01-01T00:00:00Z"}"#).unwrap();
        let c = f.compile().unwrap();
        let t = unix_ms(parse_timestamp("2024-06-01T00:00:00Z").unwrap());
        assert!(c.matches(AtomKind::Plan, t, &["a".into(), "b".into()], &[]));
        assert!(!c.matches(AtomKind::Plan, t, &["b".into()], &[]));
        assert!(!c.matches(AtomKind::Plan, 0, &["a".into()], &[]));
        let bad = AtomFilter { until: Some("soon".into()), ..Default::default() };
        assert_eq!(bad.compile().unwrap_err().field, "filter.until");
    }

    /// What the original CLI sent as `--since` and the original node compared as text.
    #[test]
    fn filter_times_take_the_originals_prefixes_as_utc() {
        let ms = |s: &str| unix_ms(parse_timestamp(s).unwrap());
        for (given, meant) in [
            ("2026-01-02", "2026-01-02T00:00:00Z"),
            ("2026-01-02T03:04", "2026-01-02T03:04:00Z"),
            ("2026-01-02 03:04:05", "2026-01-02T03:04:05Z"),
            ("2026-01-02T03:04:05.5", "2026-01-02T03:04:05.5Z"),
            ("2026-01-02T03:04:05+02:00", "2026-01-02T01:04:05Z"),
        ] {
            let f = AtomFilter { since: Some(given.into()), ..Default::default() };
            assert_eq!(f.compile().unwrap().since_ms, Some(ms(meant)), "{given}");
        }
    }
}
