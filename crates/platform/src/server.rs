//! The middleware stack every service's router gets, and serving with graceful shutdown.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, StatusCode},
    middleware,
    response::{IntoResponse, Response},
};
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
        .fallback(|| async { ApiError::not_found("route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(log_internal_errors))
        .layer(middleware::from_fn(http_metrics::track))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(DefaultOnRequest::new().level(tracing::Level::DEBUG))
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::debug!(status = res.status().as_u16(), latency_us = latency.as_micros() as u64, "response");
                }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// The headers a browser needs to treat the answers as data, on every answer, so that no proxy
/// has to add them: never sniffed, framed or sent as a referrer; JSON answers (the API's and its
/// problems) also never run anything and are never stored by a cache. HTML and scripts (the
/// Swagger UI of `libertum`) keep their own policy.
async fn security_headers(req: Request, next: middleware::Next) -> Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(req).await;
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
            v.starts_with("application/json") || v.starts_with("application/problem+json")
        });
    if json {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    response
}

/// Logs the hidden cause of every 5xx; the client only got a generic problem.
async fn log_internal_errors(req: Request, next: middleware::Next) -> Response {
    let response = next.run(req).await;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(status = response.status().as_u16(), cause = %cause, "request failed");
    }
    response.into_response()
}

/// Serves `router` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer's address goes into each request, for the per-address rate limit.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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

/// What stands before every route but health and metrics: authentication and rate limits.
#[derive(Clone)]
pub struct Guard {
    pub auth: Arc<Authenticator>,
    pub limits: RateLimits,
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
        Ok(Guard {
            auth: crate::auth::authenticator(settings)?,
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
pub fn protect(routes: Router, guard: Guard) -> Router {
    routes
        .layer(middleware::from_fn_with_state(
            guard.limits.clone(),
            crate::limit::per_principal,
        ))
        .layer(middleware::from_fn_with_state(
            guard.auth,
            crate::auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            guard.limits,
            crate::limit::per_address,
        ))
}

/// `GET /metrics`, anonymous: on the service's own address, or on an address of its own
/// (`LIBERTUM_METRICS_ADDR`) that only the monitoring network reaches.
pub fn metrics_routes() -> Router {
    Router::new().route("/metrics", axum::routing::get(http_metrics::render))
}

/// A service's routes, behind `guard`, with its anonymous health endpoints, `/metrics` and the
/// middleware stack.
pub fn service_router(routes: Router, probes: Vec<crate::health::Probe>, guard: Guard) -> Router {
    stack(
        protect(routes, guard)
            .merge(crate::health::routes(probes))
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

/// Serves one service on `settings.http_addr`: its routes, health over `probes`, `/metrics`,
/// until SIGTERM or Ctrl-C, then drains in-flight requests.
pub async fn serve_alone(
    settings: &crate::config::Settings,
    name: &str,
    routes: Router,
    probes: Vec<crate::health::Probe>,
    guard: Guard,
) -> std::io::Result<()> {
    let mut app = protect(routes, guard).merge(crate::health::routes(probes));
    if !serve_metrics_apart(settings).await? {
        app = app.merge(metrics_routes());
    }
    let router = stack(app);
    let listener = TcpListener::bind(settings.http_addr).await?;
    tracing::info!(service = name, addr = %listener.local_addr()?, "listening");
    serve(listener, router, shutdown_signal()).await
}
