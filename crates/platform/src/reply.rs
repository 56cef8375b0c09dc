//! Turning engine replies and read models into responses.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use libertum_store::Reply;
use serde::Serialize;

/// A reply built inside the engine: `status` and the JSON of `value`.
pub fn json_reply(status: StatusCode, value: &impl Serialize) -> Reply {
    Reply::new(
        status.as_u16(),
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// The HTTP response of an engine reply; a replay says so in `Idempotent-Replayed`.
pub fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = (status, reply.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if reply.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if reply.position > 0 {
        let position = libertum_store::Position {
            partition: reply.partition,
            at: reply.position,
        };
        if let Ok(value) = HeaderValue::from_str(&position.to_string()) {
            headers.insert(crate::replica::POSITION, value);
        }
    }
    response
}
