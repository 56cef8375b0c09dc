//! Extractors that turn every malformed request into the same problem+json shape.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, header, request::Parts},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::ApiError;

/// The largest accepted request body.
pub const MAX_BODY: usize = 256 * 1024;
/// The largest body of a bulk request (`…/batches`: up to 8,000 operations).
pub const MAX_BULK_BODY: usize = 4 * 1024 * 1024;

/// The largest body a request to `path` may carry: [`MAX_BULK_BODY`] for a batch,
/// [`MAX_BODY`] otherwise. (An import, `…/imports`, is read as a stream, line by line.)
pub fn body_limit(path: &str) -> usize {
    if path.ends_with("/batches") {
        MAX_BULK_BODY
    } else {
        MAX_BODY
    }
}

/// Whether a request to `path` is a streaming import, whose body is read line by line by its
/// handler rather than whole beforehand.
pub fn is_import(path: &str) -> bool {
    path.ends_with("/imports")
}
const MAX_KEY: usize = 255;

/// A JSON body, parsed strictly: `application/json`, unknown fields refused (by the DTO), the
/// path of the offending field named in the error.
pub struct Json<T>(pub T);

/// Parses `bytes` as JSON into `T`, strictly, naming the offending field of an error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = known_path(e.path());
        let inner = e.into_inner();
        let status = if inner.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        let code = if inner.is_data() {
            "invalid_field"
        } else {
            "invalid_json"
        };
        let message = inner.to_string();
        // A missing field's path is its parent: name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            ("", None) => None,
            ("", Some(name)) => Some(name.to_owned()),
            (parent, Some(name)) => Some(format!("{parent}.{name}")),
            (path, None) => Some(path.to_owned()),
        };
        let error = ApiError::new(status, code, message);
        match field {
            Some(field) => error.at(field),
            None => error,
        }
    })?;
    // Nothing but whitespace may follow the value.
    de.end()
        .map_err(|e| ApiError::bad_request("invalid_json", format!("{e}")))?;
    Ok(value)
}

/// The path of the offending value as far as it is known: `location.city`, `items[2].amount`;
/// empty at the top level. Where the parser stopped before it could tell (a malformed body),
/// the unknown part is left out rather than named `?`.
fn known_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => break,
        }
    }
    out
}

async fn json_bytes(req: Request) -> Result<Bytes, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        ));
    }
    let limit = body_limit(req.uri().path());
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| body_too_large(limit))
}

/// 413: a body over `limit` bytes.
pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body must be at most {limit} bytes"),
    )
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(req).await?;
        parse(&bytes).map(Json)
    }
}

/// A POST body with its optional `Idempotency-Key` and the fingerprint of the request, so a
/// retry gets the first response and a different request under the same key is refused.
pub struct Posted<T> {
    pub body: T,
    /// `(key, SHA-256 of method, path and body)`.
    pub idempotency: Option<(String, String)>,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Posted<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let key = idempotency_key(req.headers())?;
        // Keys belong to the caller who sent them: another principal's same key is another key,
        // so no one can replay, or block, someone else's request by guessing its key.
        let caller = req
            .extensions()
            .get::<crate::auth::Principal>()
            .map(|p| p.subject.clone())
            .unwrap_or_default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let bytes = json_bytes(req).await?;
        let body = parse(&bytes)?;
        let idempotency = key.map(|key| {
            (
                scoped_key(&caller, &path, &key),
                fingerprint(&[method.as_str().as_bytes(), path.as_bytes(), &bytes]),
            )
        });
        Ok(Posted { body, idempotency })
    }
}

/// The key a request's `Idempotency-Key` is stored under. Keys belong to the caller who sent
/// them: another principal's same key is another key, so no one can replay, or block, someone
/// else's request by guessing its key. Keys are scoped by caller and path so one key cannot
/// collide across either; the caller's length first keeps the parts apart whatever characters
/// they hold.
pub fn scoped_key(caller: &str, path: &str, key: &str) -> String {
    format!("{}:{caller}{path}#{key}", caller.len())
}

/// The SHA-256 of `parts`, newline-separated, in hex: what tells a retry from another request.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// The request's `Idempotency-Key`, if any, checked: 1-255 visible ASCII characters.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1-{MAX_KEY} visible ASCII characters"),
        )
        .at("Idempotency-Key")
    })
}

/// The version a client last saw, from `If-Match: "3"`; required on updates.
pub struct IfMatch(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "if_match_required",
                "updates need If-Match with the ETag of the version being changed",
            )
            .at("If-Match"));
        };
        value
            .to_str()
            .ok()
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|v| v.parse().ok())
            .map(IfMatch)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_if_match", "If-Match must be an ETag such as \"3\"")
                    .at("If-Match")
            })
    }
}

/// The ETag header value of a version.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Query parameters, parsed strictly into `T`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters, parsed into `T`; a segment that does not parse (`/entries/abc` for a
/// number, invalid UTF-8) is a problem like any other, not axum's plain-text rejection.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// A page request: `limit` (1-200, default 50) and an opaque `cursor` from the previous page.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<usize, ApiError> {
        page_limit(self.limit)
    }

    pub fn position(&self) -> Result<u64, ApiError> {
        cursor_position(self.cursor.as_deref())
    }
}

/// A page size: 1-200, default 50.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(50),
        Some(l) if (1..=200).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 200",
        )),
    }
}

/// A cursor as a position, 0 for the first page.
pub fn cursor_position(cursor: Option<&str>) -> Result<u64, ApiError> {
    match cursor {
        None => Ok(0),
        Some(c) => c.parse().map_err(|_| {
            ApiError::invalid(
                "cursor",
                "cursor must come from a previous page's next_cursor",
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn trailing_bytes_after_the_body_are_refused() {
        assert!(parse::<Body>(br#"{"name":"a"}  "#).is_ok());
        let e = parse::<Body>(br#"{"name":"a"}garbage"#).expect_err("trailing bytes");
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn the_offending_field_is_named() {
        let e = parse::<Body>(br#"{"name":"a","colour":"red"}"#).expect_err("unknown field");
        assert_eq!((e.code.as_ref(), e.status.as_u16()), ("invalid_field", 422));
        let e = parse::<Body>(br#"{"name":5}"#).expect_err("wrong type");
        assert_eq!(e.field.as_deref(), Some("name"));
        // A malformed body names the field only as far as the parser got, never a `?`.
        let e = parse::<Body>(br#"{"name":"#).expect_err("truncated");
        assert_eq!(e.code, "invalid_json");
        assert!(
            e.field.as_deref().is_none_or(|f| !f.contains('?')),
            "{:?}",
            e.field
        );
        let e = parse::<Body>(br#"{"name" 5}"#).expect_err("no colon");
        assert!(!format!("{:?}", e.field).contains('?'), "{:?}", e.field);
        let e = parse::<Body>(br#"{}"#).expect_err("missing");
        assert_eq!(
            (e.code.as_ref(), e.field.as_deref()),
            ("invalid_field", Some("name"))
        );
    }
}
