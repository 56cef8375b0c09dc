//! The middleware stack every service's router gets, and serving with graceful shutdown.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, StatusCode},
    middleware,
    response::{IntoResponse, Response},
};
use libertum_store::trace;
use tokio::net::TcpListener;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnRequest, TraceLayer},
};

use crate::{
    ApiError, auth::Authenticator, error::InternalCause, extract::MAX_BODY, http_metrics,
    limit::RateLimits,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` with request ids, logs, metrics, the body limit, security headers and
/// problem+json fallbacks.
pub fn stack(router: Router) -> Router {
    // Install the recorder before the first request: until it exists, every metric is dropped.
    let _ = http_metrics::recorder();
    router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(answer))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
                    let span = tracing::info_span!("request", otel.name = %format_args!("{} {route}", req.method()), otel.kind = "server", method = %req.method(), path = %req.uri().path(), request_id = %id, trace_id = tracing::field::Empty);
                    // The caller's trace goes on here (W3C traceparent), and every log line of
                    // the request carries its id.
                    let traceparent = req.headers().get(trace::TRACEPARENT).and_then(|v| v.to_str().ok());
                    trace::continue_from(&span, traceparent);
                    if let Some(trace_id) = trace::trace_id(&span) {
                        span.record("trace_id", trace_id);
                    }
                    span
                })
                .on_request(DefaultOnRequest::new().level(tracing::Level::DEBUG))
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::debug!(status = res.status().as_u16(), latency_us = latency.as_micros() as u64, "response");
                }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(sane_request_id))
}

/// The longest client `X-Request-Id` that is kept (and echoed); a longer one, or one with
/// anything but letters, digits and `-_.:`, is replaced by a fresh id.
const MAX_REQUEST_ID: usize = 128;

async fn sane_request_id(mut req: Request, next: middleware::Next) -> Response {
    let sane = req.headers().get(&REQUEST_ID).is_none_or(|v| {
        let v = v.as_bytes();
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if !sane {
        req.headers_mut().remove(&REQUEST_ID);
    }
    next.run(req).await
}

/// Reads the whole body within `deadline` before any handler sees it, so a client trickling
/// its body cannot hold a connection and a handler: 408 after the deadline, 413 past the size
/// limit. It runs after authentication: an anonymous body is never read.
async fn read_whole(deadline: Duration, req: Request) -> Result<Request, Response> {
    use axum::http::{Method, header};
    let bodiless = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !req.headers().contains_key(header::CONTENT_LENGTH)
        && !req.headers().contains_key(header::TRANSFER_ENCODING);
    // An import's handler reads its body line by line, each read within the deadline.
    if bodiless || crate::extract::is_import(req.uri().path()) {
        return Ok(req);
    }
    let limit = crate::extract::body_limit(req.uri().path());
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Ok(Err(_)) => Err(crate::extract::body_too_large(limit).into_response()),
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the body did not arrive within {} s", deadline.as_secs()),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            Err(response)
        }
    }
}

/// The guard of every protected route, in one layer: the client address's limit, a valid
/// bearer token, the principal's limit, then the body read whole within its deadline.
async fn guarded(
    axum::extract::State(guard): axum::extract::State<Guard>,
    mut req: Request,
    next: middleware::Next,
) -> Response {
    if let Some(refusal) = crate::limit::per_address(&guard.limits, &req).await {
        return refusal;
    }
    if let Err(refusal) = crate::auth::authenticate(&guard.auth, &mut req).await {
        return refusal;
    }
    if let Some(refusal) = crate::limit::per_principal(&guard.limits, &req).await {
        return refusal;
    }
    match read_whole(guard.body_timeout, req).await {
        Ok(req) => next.run(req).await,
        Err(refusal) => refusal,
    }
}

/// What every answer goes through, in one layer (each layer costs every request its clones):
/// the request's metrics, the hidden cause of a 5xx logged, and the security headers.
async fn answer(req: Request, next: middleware::Next) -> Response {
    let response = http_metrics::track(req, next).await;
    log_internal_errors(&response);
    security_headers(response)
}

/// The headers a browser needs to treat the answers as data, on every answer, so that no proxy
/// has to add them: never sniffed, framed or sent as a referrer; JSON answers (the API's, its
/// problems and an import's NDJSON) also never run anything and are never stored by a cache. HTML and scripts (the
/// Swagger UI of `libertum`) keep their own policy.
fn security_headers(mut response: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json")
                || v.starts_with("application/problem+json")
                || v.starts_with("application/x-ndjson")
        });
    if json {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    } else {
        // The API page: its own scripts and styles (Swagger UI sets inline styles), its icons as
        // data: URIs, calls to this origin only; nothing from elsewhere, never framed.
        headers
            .entry(header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ));
    }
    response
}

/// Logs the hidden cause of every 5xx; the client only got a generic problem.
fn log_internal_errors(response: &Response) {
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(status = response.status().as_u16(), cause = %cause, "request failed");
    }
}

/// What keeps slow, idle or too many clients from holding the server (`LIBERTUM_HTTP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The whole request head must arrive within this; it is also how long an idle keep-alive
    /// connection is kept waiting for its next request.
    pub header_timeout: Duration,
    /// The whole request body must arrive within this.
    pub body_timeout: Duration,
    /// Connections served at once; beyond, new ones are closed at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

pub const HTTP_CONNECTIONS_OPEN: &str = "libertum_http_connections_open";
pub const HTTP_CONNECTIONS_REFUSED: &str = "libertum_http_connections_refused_total";

/// Serves `router` on `listener` (HTTP/1.1) within `limits` until `shutdown` completes, then
/// stops accepting and drains in-flight requests; idle connections close at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let _ = http_metrics::recorder();
    metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(0);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Every connection holds a receiver: the sender's `closed()` is all of them gone.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
            // Counted, and logged at debug only: a flood must not flood the log too.
            tracing::debug!(%peer, max = limits.max_connections, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                async move { tower::Service::call(&mut router, req.map(axum::body::Body::new)).await }
            },
        );
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            metrics::gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 * 1024);
            let mut connection =
                std::pin::pin!(http.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended");
                    }
                }
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
            metrics::gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// 1 for the signer whose tokens this process accepts (`kind` development or jwks), 0 for the other.
pub const AUTH_SIGNER: &str = "libertum_auth_signer";

/// What stands before every route but health and metrics: authentication and rate limits.
#[derive(Clone)]
pub struct Guard {
    pub auth: Arc<Authenticator>,
    pub limits: RateLimits,
    /// How long an authenticated request's body may take to arrive.
    pub body_timeout: Duration,
    /// Sends writes to the replica that owns them (a service with several replicas).
    pub forward: Option<crate::replica::Forwarder>,
}

impl Guard {
    /// The authenticator and the limits `settings` ask for, counting in `limiter`.
    pub fn new(
        settings: &crate::config::Settings,
        limiter: Arc<dyn crate::limit::RateLimiter>,
    ) -> std::io::Result<Guard> {
        let _ = http_metrics::recorder();
        for scope in ["address", "principal"] {
            metrics::counter!(crate::limit::RATE_LIMITED, "scope" => scope).increment(0);
        }
        let auth = crate::auth::authenticator(settings)?;
        for kind in ["development", "jwks"] {
            let on = if kind == auth.signer() { 1.0 } else { 0.0 };
            metrics::gauge!(AUTH_SIGNER, "kind" => kind).set(on);
        }
        Ok(Guard {
            auth,
            forward: None,
            body_timeout: settings.connection_limits.body_timeout,
            limits: RateLimits {
                limiter,
                per_principal: settings.rate_limit_per_principal,
                per_address: settings.rate_limit_per_address,
                address_header: settings.client_address_header.clone(),
            },
        })
    }
}

/// Puts every route of `routes` behind `guard`: the client address's limit, then a valid
/// bearer token (see [`crate::auth`]), then the principal's limit.
/// Unknown routes and methods are answered behind the same guard, so that they count against
/// the client address's limit like any other request.
pub fn protect(routes: Router, guard: Guard) -> Router {
    let routes = match guard.forward.clone() {
        // Innermost: only authenticated, whole writes are forwarded.
        Some(forwarder) => routes.layer(middleware::from_fn_with_state(
            forwarder,
            crate::replica::forward,
        )),
        None => routes,
    };
    routes
        .fallback(|| async { ApiError::not_found("route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(guard, guarded))
}

/// `GET /metrics`, anonymous: on the service's own address, or on an address of its own
/// (`LIBERTUM_METRICS_ADDR`) that only the monitoring network reaches.
pub fn metrics_routes() -> Router {
    Router::new().route("/metrics", axum::routing::get(http_metrics::render))
}

/// A service's routes, behind `guard`, with its anonymous health endpoints, `/metrics` and the
/// middleware stack.
pub fn service_router(routes: Router, probes: Vec<crate::health::Probe>, guard: Guard) -> Router {
    let auth = guard.auth.clone();
    stack(
        protect(routes, guard)
            .merge(crate::health::routes(probes, auth))
            .merge(metrics_routes()),
    )
}

/// Serves `/metrics` on `LIBERTUM_METRICS_ADDR` when it is set, and says whether it did: then
/// the service's own address must not serve it.
pub async fn serve_metrics_apart(settings: &crate::config::Settings) -> std::io::Result<bool> {
    let Some(addr) = settings.metrics_addr else {
        return Ok(false);
    };
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let _ = http_metrics::recorder();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, metrics_routes()).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    Ok(true)
}

/// Serves one service on `settings.http_addr`: its routes, their OpenAPI description at
/// `/openapi.json` with the API page at `/docs` (both anonymous), health over `probes`,
/// `/metrics`, until `shutdown` completes (SIGTERM or Ctrl-C, and a replica's hand-over), then
/// drains in-flight requests.
pub async fn serve_alone(
    settings: &crate::config::Settings,
    name: &str,
    routes: Router,
    openapi: utoipa::openapi::OpenApi,
    probes: Vec<crate::health::Probe>,
    guard: Guard,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let auth = guard.auth.clone();
    let mut app = protect(routes, guard)
        .merge(crate::openapi::docs(openapi))
        .merge(crate::health::routes(probes, auth));
    if !serve_metrics_apart(settings).await? {
        app = app.merge(metrics_routes());
    }
    let router = stack(app);
    let listener = TcpListener::bind(settings.http_addr).await?;
    tracing::info!(service = name, addr = %listener.local_addr()?, "listening; the API page at /docs");
    serve(listener, router, settings.connection_limits, shutdown).await
}
