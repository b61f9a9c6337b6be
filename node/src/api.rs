//! HTTP routes, the JSON body extractor and the middleware stack.
//!
//! Layers, outermost first: request id (kept from the request or a new ULID) → tracing span
//! carrying it → request id echoed on the response → metrics (route template, method, status,
//! refusals) → authentication → the route.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::error::{ApiError, Refusal};
use crate::metrics::{HttpLabels, RouteLabels};
use crate::model::{Atom, NewAtom, Question, ReplayRequest, WorldManage, WorldPolicy};
use crate::node::Node;

/// Header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Optional header naming the worker an ask is rate-limited as (else the client address).
pub const WORKER_HEADER: &str = "x-dwbase-worker";
/// Routes that never need the API key (probes and scrapes).
pub const OPEN_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// A JSON body read under `max_body_bytes` whose errors are JSON too: 413 for too large, 400
/// for malformed JSON, 422 naming the field for a missing or bad field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Node> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Node) -> Result<Self, ApiError> {
        let limit = node.config().node.security.max_body_bytes;
        let buf = read_body(req, limit, body_timeout(node)).await?;
        parse_json(&buf).map(ApiJson)
    }
}

/// How long a request may take to send its body (`node.limits.body_timeout_secs`).
fn body_timeout(node: &Node) -> Duration {
    Duration::from_secs(node.config().node.limits.body_timeout_secs.max(1))
}

/// Reads a request body of at most `limit` bytes (413 JSON past it, before reading when the
/// declared length is already too large) within `timeout` (408 past it: a client trickling
/// its body must not hold a connection for ever).
pub async fn read_body(req: Request, limit: u64, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    tokio::time::timeout(timeout, read_body_inner(req, limit))
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}

async fn read_body_inner(req: Request, limit: u64) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_json(format!("reading body: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::body_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses JSON, mapping serde errors to 400 (syntax) or 422 (a field, named by its path).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_json("request body is empty; expected a JSON document"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => {
            de.end().map_err(|e| ApiError::bad_json(format!("invalid JSON: {e}")))?;
            Ok(value)
        }
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let message = inner.to_string();
                    Err(ApiError::invalid_field(field_of(&path, &message), message))
                }
                _ => Err(ApiError::bad_json(format!("invalid JSON: {inner}"))),
            }
        }
    }
}

/// The field a serde data error is about: the path, or for "missing field `x`" the path + x.
fn field_of(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    match (path, missing) {
        (".", Some(name)) => name,
        (p, Some(name)) => format!("{p}.{name}"),
        (".", None) => "body".to_owned(),
        (p, None) => p.to_owned(),
    }
}

/// Builds the router with every route and layer.
pub fn router(node: Node) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
        let id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
    })
    // 503 (not ready) and 507 (disk cap) are refusals the node chose and already explained
    // in its own log and in the JSON body: not errors worth an ERROR line each time.
    .on_failure(
        |class: tower_http::classify::ServerErrorsFailureClass,
         latency: Duration,
         _span: &tracing::Span| match class {
            tower_http::classify::ServerErrorsFailureClass::StatusCode(s)
                if s == StatusCode::SERVICE_UNAVAILABLE || s == StatusCode::INSUFFICIENT_STORAGE =>
            {
                tracing::debug!(status = %s, ?latency, "request refused")
            }
            other => tracing::error!(classification = %other, ?latency, "request failed"),
        },
    );
    Router::new()
        .route("/remember", post(remember))
        .route("/ask", post(ask))
        .route("/replay", post(replay))
        .route("/atoms/{id}", get(get_atom))
        .route("/worlds", get(worlds))
        .route("/worlds/manage", post(manage_world))
        .route("/worlds/policy", post(world_policy))
        .route("/index/status", get(index_status))
        .route("/admin/snapshot", post(crate::snapshot::snapshot_route))
        .route("/swarm/ingest", post(swarm_ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(middleware::from_fn_with_state(node.clone(), track))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeUlidRequestId))
        .with_state(node)
}

/// Request ids for requests that come without one: a ULID.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUlidRequestId;

impl MakeRequestId for MakeUlidRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string()).ok().map(RequestId::new)
    }
}

async fn track(State(node): State<Node>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let m = node.metrics();
    m.http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method,
            status: response.status().as_u16(),
        })
        .inc();
    match response.extensions().get::<Refusal>() {
        Some(Refusal::Reason(reason)) => m.refuse(reason),
        Some(Refusal::RateLimited) => {
            m.rate_limited.get_or_create(&RouteLabels { route }).inc();
        }
        None => {}
    }
    response
}

async fn authenticate(State(node): State<Node>, req: Request, next: Next) -> Response {
    if node.api_key().is_some()
        && !OPEN_ROUTES.contains(&req.uri().path())
        && !authorized(&node, req.headers())
    {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

/// Whether the request carries the node's API key (true when the node has none).
pub fn authorized(node: &Node, headers: &HeaderMap) -> bool {
    let Some(key) = node.api_key() else { return true };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is matched without regard
/// to case (RFC 7235 §2.1), so `bearer` and `BEARER` work too.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares in time that depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn remember(
    State(node): State<Node>,
    ApiJson(new): ApiJson<NewAtom>,
) -> Result<Json<String>, ApiError> {
    node.remember(new).await.map(Json)
}

async fn ask(
    State(node): State<Node>,
    headers: HeaderMap,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(question): ApiJson<Question>,
) -> Result<Response, ApiError> {
    let client = headers
        .get(WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|w| format!("worker:{w}"))
        .or_else(|| connect.map(|Extension(ConnectInfo(addr))| format!("ip:{}", addr.ip())))
        .unwrap_or_else(|| "anonymous".to_owned());
    node.limits()
        .ask
        .check(&client)
        .map_err(|secs| ApiError::rate_limited(&format!("ask ({client})"), secs))?;
    // Ranking holds the index lock and reads sled: keep it off the async workers.
    let n = node.clone();
    let answer = read_blocking(&node, move || n.ask(question)).await?;
    Ok(Json(answer).into_response())
}

/// Runs a read of the store on a blocking thread (sled can block a read on a failing disk or
/// once it is wedged; the async workers must go on serving the probes). A read that makes no
/// progress for [`crate::storage::READ_STALL`] is answered 503 `storage_stalled` (it goes on
/// in the background and counts toward `/healthz`'s verdict), and while a read has been stuck
/// for [`crate::storage::COMMIT_STALL`] new ones are answered so at once: no read hangs.
async fn read_blocking<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    use crate::storage::{COMMIT_STALL, READ_STALL};
    let stalled = |secs: f64| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_stalled",
            format!(
                "the store has not answered a read for {secs:.0}s (disk stalled or store \
                 stuck); retry later. /healthz fails while it lasts, so a supervisor restarts \
                 the node"
            ),
        )
    };
    if let Some(d) = node.store().reads_stuck_for().filter(|d| *d >= COMMIT_STALL) {
        return Err(stalled(d.as_secs_f64()));
    }
    let op = node.store().read_op();
    let runner = op.clone();
    let mut task = tokio::task::spawn_blocking(move || runner.run(f));
    loop {
        match tokio::time::timeout(Duration::from_millis(100), &mut task).await {
            Ok(joined) => {
                return joined.map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?
            }
            Err(_) if op.stuck_for() >= READ_STALL => {
                return Err(stalled(op.stuck_for().as_secs_f64()))
            }
            Err(_) => {}
        }
    }
}

async fn replay(
    State(node): State<Node>,
    ApiJson(req): ApiJson<ReplayRequest>,
) -> Result<Json<Vec<Atom>>, ApiError> {
    let n = node.clone();
    read_blocking(&node, move || n.replay(req)).await.map(Json)
}

async fn get_atom(
    State(node): State<Node>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Atom>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid_field("id", e.body_text()))?;
    let n = node.clone();
    read_blocking(&node, move || n.get_atom(&id)).await.map(Json)
}

async fn worlds(State(node): State<Node>) -> Json<Vec<String>> {
    Json(node.worlds())
}

async fn manage_world(
    State(node): State<Node>,
    ApiJson(req): ApiJson<WorldManage>,
) -> Result<Response, ApiError> {
    let (record, created) = node.manage_world(req).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(record)).into_response())
}

async fn world_policy(
    State(node): State<Node>,
    ApiJson(policy): ApiJson<WorldPolicy>,
) -> Result<Response, ApiError> {
    let record = node.set_policy(policy).await?;
    Ok(Json(record).into_response())
}

async fn index_status(State(node): State<Node>) -> Response {
    Json(node.index_status()).into_response()
}

/// Smallest body limit of `POST /swarm/ingest` (batches are bigger than single atoms).
pub const INGEST_MIN_LIMIT: u64 = 8 << 20;

/// Body of `POST /swarm/ingest`: one atom or an array of atoms.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum IngestBody {
    Many(Vec<Atom>),
    One(Box<Atom>),
}

async fn swarm_ingest(State(node): State<Node>, req: Request) -> Result<Response, ApiError> {
    // Peers send batches of atoms that were each accepted under max_body_bytes.
    let limit = node.config().node.security.max_body_bytes.saturating_mul(2).max(INGEST_MIN_LIMIT);
    let body = read_body(req, limit, body_timeout(&node)).await?;
    // Parse as Vec first to get field paths for the common (array) case.
    let atoms = match parse_json::<Vec<Atom>>(&body) {
        Ok(atoms) => atoms,
        Err(first) => match parse_json::<IngestBody>(&body) {
            Ok(IngestBody::One(atom)) => vec![*atom],
            Ok(IngestBody::Many(atoms)) => atoms,
            Err(_) => return Err(first),
        },
    };
    let outcome = node.ingest(atoms).await?;
    Ok(Json(outcome).into_response())
}

/// Liveness: 200 while the node can make progress, 503 when its commit path is stuck (a
/// batch apply or flush running for [`crate::storage::COMMIT_STALL`]), so that the supervisor
/// or kubelet restarts it. A full disk is not a liveness failure: writes are refused at once
/// and resume by themselves (that is `/readyz`'s business).
async fn healthz(State(node): State<Node>) -> Response {
    match node.liveness() {
        Ok(()) => Json(serde_json::json!({ "status": "alive" })).into_response(),
        Err(stall) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "stuck",
                "reason": "commit_stalled",
                "stuck": stall.what,
                "stuck_for_seconds": stall.stuck_for.as_secs(),
                "message": stall.to_string(),
            })),
        )
            .into_response(),
    }
}

/// `/readyz` needs no key (probes carry none), so without the key it says only ready or not and
/// the names of the reasons: no disk figures, paths or ids. With the key (or on a node without
/// one) it answers the full health report, as the original did.
async fn readyz(State(node): State<Node>, headers: HeaderMap) -> Response {
    let full = authorized(&node, &headers);
    let report = tokio::task::spawn_blocking(move || node.health()).await;
    match report {
        Ok(report) => {
            let status =
                if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            if full {
                (status, Json(report)).into_response()
            } else {
                let brief = serde_json::json!({
                    "status": report.status,
                    "ready": report.ready,
                    "reasons": report.reason_codes,
                });
                (status, Json(brief)).into_response()
            }
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal", e.to_string())
            .into_response(),
    }
}

async fn health(State(node): State<Node>) -> Response {
    match tokio::task::spawn_blocking(move || node.health()).await {
        Ok(report) => {
            let status = if report.health == "unhealthy" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (status, Json(report)).into_response()
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal", e.to_string())
            .into_response(),
    }
}

/// Classic Prometheus text unless `Accept` asks for OpenMetrics (see [`crate::metrics`]).
async fn metrics(State(node): State<Node>, headers: HeaderMap) -> Response {
    let format = crate::metrics::negotiate(
        headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()),
    );
    let text =
        tokio::task::spawn_blocking(move || node.metrics_as(format)).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], text)
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// How long [`crate::server::serve`] waits for in-flight requests after the shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths() {
        let e = parse_json::<NewAtom>(br#"{"world":"w"}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("worker")));
        let e = parse_json::<NewAtom>(
            br#"{"world":"w","worker":"a","kind":"dream","importance":0.5,"payload_json":""}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("kind"));
        let e = parse_json::<NewAtom>(br#"{"world":"w","worker":"a","kind":"plan","importance":0.5,"payload_json":"","links":[{"target":"x","kind":"likes"}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("links[0].kind"));
        let e = parse_json::<NewAtom>(br#"{"world": "#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "bad_json"));
        let e = parse_json::<NewAtom>(b"1").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        let e = parse_json::<Question>(br#"{"world":"w","text":"t"} x"#).unwrap_err();
        assert_eq!(e.code, "bad_json");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER \t abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
