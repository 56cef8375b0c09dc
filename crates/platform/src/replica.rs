//! Any replica answers any request: writes go to the replica that owns them, reads can wait for
//! a position the client saw (read-your-writes).
//!
//! - [`forward`] finds the partition a write (any method but GET, HEAD and OPTIONS) belongs
//!   to (the service's [`Route`]), runs it here if this replica owns that partition's writes,
//!   and otherwise sends it to the owner named by the partition's lease and relays the
//!   answer. During a takeover it waits (up to [`FORWARD_WAIT`]) for a new owner. A write that an
//!   owner refused with `not_owner` (it lost the lease before deciding, or the lease had moved
//!   on: a replica never forwards a forwarded write) was not executed, so it is sent on to the
//!   owner the lease names when read again; a write whose owner did not answer is answered 503, to be retried
//!   with its `Idempotency-Key`, since it may have been executed.
//! - Every write's response carries `Libertum-Position`, the position of its partition's log
//!   that includes it (`N` for partition 0, `P:N` for partition P). A read with
//!   `Libertum-Min-Position` waits (up to [`READ_WAIT`]) until this replica's state includes
//!   that position, so a client sees its own writes whichever replica answers.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use libertum_store::{Owner, Ownership, Position, ownership::Partitions, trace};

use crate::error::ApiError;

/// Response header: the log position whose state includes the write.
pub const POSITION: &str = "libertum-position";
/// Request header: the least log position a read must see.
pub const MIN_POSITION: &str = "libertum-min-position";
/// Response header of a `not_owner` refusal: nothing was executed.
pub const NOT_OWNER: &str = "libertum-not-owner";
/// Request header a forwarding replica adds, once per hop.
pub const FORWARDED_BY: &str = "libertum-forwarded-by";

/// How long a write waits for an owner during a takeover.
pub const FORWARD_WAIT: Duration = Duration::from_secs(15);
/// How long a read waits for the position it asks for.
pub const READ_WAIT: Duration = Duration::from_secs(5);

/// Which partition a write belongs to, from its method, path, headers and body.
pub type Route = Arc<dyn Fn(&axum::http::request::Parts, &[u8]) -> usize + Send + Sync>;

/// The partition a write was placed in, for a handler that makes a new id there (a creation
/// has no id to route by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition(pub usize);

/// Sends writes to the owner of their partition.
#[derive(Clone)]
pub struct Forwarder {
    partitions: Partitions,
    route: Route,
    client: reqwest::Client,
    /// For imports, streamed both ways for as long as they take (no overall timeout).
    streaming: reqwest::Client,
}

impl Forwarder {
    pub fn new(partitions: Partitions, route: Route) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let streaming = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        // From zero, so that the first forwarded write is an increase.
        metrics::counter!(FORWARDED, "service" => partitions.service()).increment(0);
        Forwarder {
            partitions,
            route,
            client,
            streaming,
        }
    }
}

const NO_OWNER_NOW: &str =
    "no replica owns this service's writes right now; retry with the same Idempotency-Key";

/// The refusal of a write this replica cannot place: no owner within the wait.
fn no_owner() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_owner",
        NO_OWNER_NOW.to_owned(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Whether `response` is an owner's refusal of a write it did not execute.
fn refused_not_owner(headers: &HeaderMap) -> bool {
    headers.contains_key(NOT_OWNER)
}

/// The forwarding middleware (see the module's description); it sits after authentication and
/// the body's reading, so only authenticated, complete writes travel between replicas.
pub async fn forward(State(forwarder): State<Forwarder>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    if crate::extract::is_import(request.uri().path()) {
        return forward_import(forwarder, request, next).await;
    }
    let (mut parts, body) = request.into_parts();
    // The body was read whole before (`body_within`): this takes what is buffered.
    let limit = crate::extract::body_limit(parts.uri.path());
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return crate::extract::body_too_large(limit).into_response();
    };
    let partition = (forwarder.route)(&parts, &bytes).min(forwarder.partitions.len() - 1);
    parts.extensions.insert(Partition(partition));
    let ownership = forwarder.partitions.of(partition);
    let hops = parts.headers.get_all(FORWARDED_BY).iter().count();
    let deadline = tokio::time::Instant::now() + FORWARD_WAIT;
    loop {
        if let Some(_in_flight) = ownership.accept() {
            let request = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
            let response = next.clone().run(request).await;
            if !refused_not_owner(response.headers()) {
                return response;
            }
            // This replica lost the writes and will learn it at its next look at the lease.
            tokio::time::sleep(ownership.settings().poll_every).await;
        }
        if hops > 0 {
            // Sent here by a replica whose view of the lease is behind (the partition moved):
            // nothing was executed; that replica looks at the lease again and sends it on, so
            // a write never wanders from replica to replica.
            return ApiError::from(libertum_store::EngineError::NotOwner).into_response();
        }
        if tokio::time::Instant::now() >= deadline {
            return no_owner();
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let owner = match ownership.owner(remaining).await {
            Some(Owner::At(owner)) => owner,
            Some(Owner::Here) => continue,
            None => {
                return no_owner();
            }
        };
        let outgoing =
            to_owner(&forwarder.client, &parts, &owner, ownership.replica()).body(bytes.clone());
        metrics::counter!(FORWARDED, "service" => ownership.service()).increment(1);
        match outgoing.send().await {
            Ok(answer) if !refused_not_owner(answer.headers()) => return relay(answer).await,
            // Refused unexecuted: the lease moved; it is read again from the store.
            Ok(_) => ownership.refresh().await,
            Err(error) if error.is_connect() => {
                tracing::debug!(%owner, %error, "the owner could not be reached; looking again");
            }
            Err(error) => {
                tracing::warn!(%owner, %error, "the owner did not answer a forwarded write");
                return ApiError::unavailable(format!("forwarded to {owner}: {error}"))
                    .into_response();
            }
        }
        tokio::time::sleep(ownership.settings().poll_every).await;
    }
}

/// Metric: writes this replica sent to the owner.
pub const FORWARDED: &str = "libertum_requests_forwarded_total";

fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// An import (see `crate::extract::is_import`): its body is a stream, read once, so it is run
/// here if this replica owns its partition, and otherwise streamed to the owner once, its
/// progress streamed back. It routes by its path (the token); a takeover during it breaks it
/// off, and the client sends it again with its `Idempotency-Key`: the chunks committed are
/// replayed, not applied again.
async fn forward_import(forwarder: Forwarder, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let partition = (forwarder.route)(&parts, &[]).min(forwarder.partitions.len() - 1);
    parts.extensions.insert(Partition(partition));
    let ownership = forwarder.partitions.of(partition);
    if let Some(_in_flight) = ownership.accept() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    if parts.headers.contains_key(FORWARDED_BY) {
        return ApiError::from(libertum_store::EngineError::NotOwner).into_response();
    }
    let owner = match ownership.owner(FORWARD_WAIT).await {
        Some(Owner::At(owner)) => owner,
        Some(Owner::Here) => {
            return match ownership.accept() {
                Some(_in_flight) => next.run(Request::from_parts(parts, body)).await,
                None => no_owner(),
            };
        }
        None => return no_owner(),
    };
    let outgoing = to_owner(&forwarder.streaming, &parts, &owner, ownership.replica())
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    metrics::counter!(FORWARDED, "service" => ownership.service()).increment(1);
    match outgoing.send().await {
        Ok(answer) => {
            let (status, headers) = (answer.status(), answer.headers().clone());
            let response = (status, Body::from_stream(answer.bytes_stream())).into_response();
            with_end_to_end(response, &headers)
        }
        Err(error) => {
            tracing::warn!(%owner, %error, "the owner did not take a forwarded import");
            ApiError::unavailable(format!("forwarded to {owner}: {error}")).into_response()
        }
    }
}

async fn relay(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => {
            return ApiError::unavailable(format!("the owner's answer broke off: {error}"))
                .into_response();
        }
    };
    with_end_to_end((status, body).into_response(), &headers)
}

/// `response` with the end-to-end headers of the owner's answer.
fn with_end_to_end(mut response: Response, headers: &HeaderMap) -> Response {
    for (name, value) in headers {
        if !hop_by_hop(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// The request that sends a write on to its owner: the caller's end-to-end headers, this hop's
/// trace in place of the caller's `traceparent`, and this replica in `Libertum-Forwarded-By`.
fn to_owner(
    client: &reqwest::Client,
    parts: &axum::http::request::Parts,
    owner: &str,
    replica: &str,
) -> reqwest::RequestBuilder {
    let url = format!(
        "http://{owner}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut outgoing = client.request(parts.method.clone(), &url);
    let traceparent = trace::traceparent(&tracing::Span::current());
    for (name, value) in &parts.headers {
        let replaced = traceparent.is_some() && name == trace::TRACEPARENT;
        if !hop_by_hop(name) && !replaced {
            outgoing = outgoing.header(name, value);
        }
    }
    if let Some(traceparent) = &traceparent {
        outgoing = outgoing.header(trace::TRACEPARENT, traceparent);
    }
    outgoing.header(FORWARDED_BY, replica)
}

/// Waits until a replica's state includes a position; says whether it does within the bound.
pub type WaitApplied =
    Arc<dyn Fn(Position, Duration) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The read-your-writes middleware: a read with `Libertum-Min-Position` is answered once this
/// replica's state includes that position, or 503 `position_not_reached` after [`READ_WAIT`].
pub async fn read_your_writes(
    State(wait): State<WaitApplied>,
    request: Request,
    next: Next,
) -> Response {
    let Some(value) = request.headers().get(MIN_POSITION) else {
        return next.run(request).await;
    };
    let Some(position) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<Position>().ok())
    else {
        return ApiError::bad_request(
            "invalid_header",
            "Libertum-Min-Position must be a log position from Libertum-Position (N, or P:N)",
        )
        .at(MIN_POSITION)
        .into_response();
    };
    if !wait(position, READ_WAIT).await {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "position_not_reached",
            format!(
                "this replica has not applied position {position} within {} s; retry",
                READ_WAIT.as_secs()
            ),
        )
        .at(MIN_POSITION)
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    next.run(request).await
}

/// The read-your-writes wait of an engine.
pub fn waiter<S: libertum_store::StateMachine>(engine: libertum_store::Engine<S>) -> WaitApplied {
    Arc::new(move |position, within| {
        let engine = engine.clone();
        Box::pin(async move { engine.wait_applied(position, within).await })
    })
}

/// A readiness probe of a replica's leases: which partitions it owns, and down while it is
/// leaving (so no new request is sent to it).
pub fn ownership_probe(name: &str, partitions: Partitions) -> crate::health::Probe {
    let name = name.to_owned();
    Arc::new(move || {
        let (name, partitions) = (name.clone(), partitions.clone());
        Box::pin(async move {
            let detail = if partitions.leaving() {
                "leaving: handing the writes over".to_owned()
            } else if partitions.len() == 1 {
                describe_one(partitions.of(0))
            } else {
                let owned: Vec<String> = partitions
                    .all()
                    .iter()
                    .filter(|p| p.is_owner())
                    .map(|p| p.partition().to_string())
                    .collect();
                format!(
                    "owns {} of {} partitions ({}); its share is {}",
                    owned.len(),
                    partitions.len(),
                    if owned.is_empty() {
                        "none".to_owned()
                    } else {
                        owned.join(", ")
                    },
                    partitions.fair_share()
                )
            };
            crate::health::Check {
                name,
                state: if partitions.leaving() { "down" } else { "up" },
                detail: Some(detail),
            }
        })
    })
}

fn describe_one(ownership: &Ownership) -> String {
    match ownership.lease() {
        Some(lease) if ownership.is_owner() => {
            format!("owner of the writes (epoch {})", lease.epoch)
        }
        Some(lease) => format!(
            "follower; the writes are owned by {} at {} (epoch {})",
            lease.holder, lease.address, lease.epoch
        ),
        None => "follower; no replica owns the writes yet".to_owned(),
    }
}
