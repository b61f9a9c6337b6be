//! The one error shape every route answers with: `{"error": code, "message": text, ...}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::model::FieldError;
use crate::storage::StorageError;

/// Why a request was refused, for `dwbase_refused_total{reason}` and
/// `dwbase_rate_limited_total{route}`. The metrics layer reads it from the response extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Counted in `dwbase_refused_total{reason}` with this reason.
    Reason(&'static str),
    /// Counted in `dwbase_rate_limited_total{route}`.
    RateLimited,
}

/// An API error: status, machine-readable code, human message and optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (`bad_json`, `invalid_field`, `rate_limited`, ...).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The offending request field, for 400/422.
    pub field: Option<String>,
    /// Seconds to wait, for 429 (also sent as `Retry-After`).
    pub retry_after_secs: Option<u64>,
    /// Refusal category for metrics.
    pub refusal: Option<Refusal>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A new error with no field, no refusal category.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            refusal: None,
        }
    }

    fn refused(mut self, reason: &'static str) -> Self {
        self.refusal = Some(Refusal::Reason(reason));
        self
    }

    /// 400: the body is not valid JSON.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_json", message).refused("bad_request")
    }

    /// 422: a field is missing or has a bad value.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            .refused("bad_request");
        e.field = Some(field.into());
        e
    }

    /// 413: the body is larger than `max_body_bytes`.
    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than max_body_bytes ({limit} bytes)"),
        )
        .refused("body_too_large")
    }

    /// 408: the body did not arrive within `node.limits.body_timeout_secs`.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}s (node.limits.body_timeout_secs)",
                timeout.as_secs()
            ),
        )
        .refused("body_timeout")
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key; send `Authorization: Bearer <key>`",
        )
        .refused("unauthorized")
    }

    /// 403: the world is not in `read_worlds` / `write_worlds`.
    pub fn world_not_allowed(world: &str, list: &str) -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "world_not_allowed",
            format!("world {world:?} is not in node.security.{list}"),
        )
        .refused("world_not_allowed");
        e.field = Some("world".into());
        e
    }

    /// 409: remember into an archived world.
    pub fn archived(world: &str) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "world_archived",
            format!("world {world:?} is archived; resume it to write (POST /worlds/manage)"),
        )
        .refused("archived");
        e.field = Some("world".into());
        e
    }

    /// 507: the data dir is over `max_disk_mb`, or its filesystem below the reserve.
    pub fn disk_full(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", message).refused("disk_full")
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(what: &str, retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{what} rate limit exceeded; retry after {retry_after_secs}s"),
        );
        e.retry_after_secs = Some(retry_after_secs);
        e.refusal = Some(Refusal::RateLimited);
        e
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: storage failed.
    ///
    /// "No space left" (below the reserve, or ENOSPC inside the store) is a 507 `disk_full`
    /// with the reason; a write that timed out is a 503 `storage_timeout`; any other storage
    /// failure a 503 `storage_unavailable`. Every one says what happened and what brings
    /// writes back.
    pub fn storage(e: &StorageError) -> Self {
        match e {
            StorageError::NoRoom(_) => {
                tracing::debug!(error = %e, "write refused: below the disk reserve");
                Self::disk_full(e.to_string())
            }
            _ if e.is_no_space() => {
                tracing::warn!(error = %e, "write refused: no space left");
                Self::disk_full(e.to_string())
            }
            StorageError::CommitTimeout | StorageError::LockTimeout => {
                tracing::warn!(error = %e, "write timed out");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_timeout", e.to_string())
                    .refused("storage")
            }
            StorageError::Failed { .. } => {
                tracing::debug!(error = %e, "write refused: the store is stopped");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string())
                    .refused("storage")
            }
            _ => {
                tracing::error!(error = %e, "storage error");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string())
            }
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid_field(e.field, e.message)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ApiError::storage(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
            retry_after_secs: self.retry_after_secs,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(refusal) = self.refusal {
            response.extensions_mut().insert(refusal);
        }
        response
    }
}
