//! One error type for every handler, rendered as RFC 9457 problem+json with a stable code.

use std::borrow::Cow;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use libertum_domain::{Error as DomainError, ErrorKind};
use libertum_store::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; ends with the code.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine code, e.g. `kyc_not_verified`.
    pub code: String,
    /// The request field at fault, as a path such as `operations[2].amount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error a handler returns.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub detail: String,
    pub field: Option<String>,
    /// The real cause of a 5xx, logged by the middleware and never sent.
    pub internal: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Cow::Borrowed(code),
            detail: detail.into(),
            field: None,
            internal: None,
        }
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail).at(field)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// A failure of ours: the client learns only that it happened.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: Cow::Borrowed("internal_error"),
            detail: "an internal error occurred; it has been logged".into(),
            field: None,
            internal: Some(cause.to_string()),
        }
    }

    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: Cow::Borrowed("unavailable"),
            detail: "the service cannot take this request right now; retry with the same Idempotency-Key".into(),
            field: None,
            internal: Some(cause.to_string()),
        }
    }

    fn title(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "Malformed request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not found",
            405 => "Method not allowed",
            409 => "Refused in the current state",
            412 => "Precondition failed",
            413 => "Request too large",
            415 => "Unsupported media type",
            422 => "Invalid request",
            428 => "Precondition required",
            429 => "Too many requests",
            503 => "Unavailable",
            s if s >= 500 => "Internal error",
            _ => "Request failed",
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::Refused => StatusCode::CONFLICT,
            ErrorKind::Stale => StatusCode::PRECONDITION_FAILED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        };
        ApiError {
            status,
            code: Cow::Borrowed(e.code),
            detail: e.message,
            field: e.field.map(Cow::into_owned),
            internal: None,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Refused(e) => e.into(),
            EngineError::IdempotencyMismatch => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was first used with a different request",
            )
            .at("Idempotency-Key"),
            EngineError::Unavailable(cause) => ApiError::unavailable(cause),
            EngineError::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_write",
                "another writer changed this service's data first; nothing was changed; retry with the same Idempotency-Key",
            ),
            EngineError::NotOwner => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_owner",
                "this replica does not own this service's writes; nothing was changed; retry with the same Idempotency-Key",
            ),
        }
    }
}

/// The cause of a 5xx, left in the response for the logging middleware.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            type_uri: format!("https://docs.libertum.dev/problems/{}", self.code),
            title: self.title().into(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone().into_owned(),
            field: self.field.clone(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.code == "not_owner" {
            // The forwarding middleware sends such a write on to the owner.
            response
                .headers_mut()
                .insert(crate::replica::NOT_OWNER, HeaderValue::from_static("true"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(cause) = self.internal {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}
