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

use crate::{ApiError, auth::Authenticator, error::InternalCause, extract::MAX_BODY, http_metrics};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` with request ids, logs, metrics, the body limit and problem+json fallbacks,
/// and adds `/metrics`.
pub fn stack(router: Router) -> Router {
    // Install the recorder before the first request: until it exists, every metric is dropped.
    let _ = http_metrics::recorder();
    router
        .route("/metrics", axum::routing::get(http_metrics::render))
        .fallback(|| async { ApiError::not_found("route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
    axum::serve(listener, router)
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

/// Requires a valid bearer token on every route of `routes` (see [`crate::auth`]).
pub fn protect(routes: Router, auth: Arc<Authenticator>) -> Router {
    routes.layer(middleware::from_fn_with_state(
        auth,
        crate::auth::authenticate,
    ))
}

/// A service's routes, behind authentication, with its anonymous health endpoints, `/metrics`
/// and the middleware stack.
pub fn service_router(
    routes: Router,
    probes: Vec<crate::health::Probe>,
    auth: Arc<Authenticator>,
) -> Router {
    stack(protect(routes, auth).merge(crate::health::routes(probes)))
}

/// Serves one service on `settings.http_addr`: its routes, health over `probes`, `/metrics`,
/// until SIGTERM or Ctrl-C, then drains in-flight requests.
pub async fn serve_alone(
    settings: &crate::config::Settings,
    name: &str,
    routes: Router,
    probes: Vec<crate::health::Probe>,
) -> std::io::Result<()> {
    let router = service_router(routes, probes, crate::auth::authenticator(settings)?);
    let listener = TcpListener::bind(settings.http_addr).await?;
    tracing::info!(service = name, addr = %listener.local_addr()?, "listening");
    serve(listener, router, shutdown_signal()).await
}
