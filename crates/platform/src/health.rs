//! `/healthz` (the process answers) and `/readyz` (what it depends on works).

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde::Serialize;

/// One dependency's state.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// `up`, `degraded` or `down`; only `down` makes the service unready.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub type CheckFuture = Pin<Box<dyn Future<Output = Check> + Send>>;

/// Something readiness depends on.
pub type Probe = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    checks: Vec<Check>,
}

/// A probe of a service's engine and store: down after a failed commit until the state is
/// rebuilt, or when the store cannot be read.
pub fn engine_probe<S: libertum_store::StateMachine>(
    name: &'static str,
    engine: libertum_store::Engine<S>,
) -> Probe {
    Arc::new(move || {
        let engine = engine.clone();
        Box::pin(async move {
            let ok = engine.healthy() && engine.store().head().await.is_ok();
            Check {
                name: name.into(),
                state: if ok { "up" } else { "down" },
                detail: Some(engine.store().describe()),
            }
        })
    })
}

/// The two health routes, over `probes`. `/readyz` answers anonymous callers with the status
/// alone; the checks (hosts, paths, driver errors) need a valid bearer token of a staff role.
pub fn routes(probes: Vec<Probe>, auth: Arc<crate::auth::Authenticator>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .with_state(Arc::new((probes, auth)))
}

async fn ready(
    State(state): State<Arc<(Vec<Probe>, Arc<crate::auth::Authenticator>)>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let (probes, auth) = state.as_ref();
    // All at once: readiness takes as long as the slowest probe, not their sum, so that a
    // dependency timing out does not make the whole answer miss a front's check timeout.
    let running: Vec<_> = probes.iter().map(|probe| tokio::spawn(probe())).collect();
    let mut checks = Vec::with_capacity(probes.len() + 1);
    for (probe, running) in probes.iter().zip(running) {
        checks.push(match running.await {
            Ok(check) => check,
            // A probe that panicked: asked again here, where its panic is reported.
            Err(_) => probe().await,
        });
    }
    let ready = checks.iter().all(|c| c.state != "down");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let staff = match crate::auth::bearer(&headers) {
        Some(token) => auth.authenticate(token).await.is_ok_and(|p| p.is_staff()),
        None => false,
    };
    let status_word = if ready { "ready" } else { "unready" };
    if !staff {
        return (status, Json(serde_json::json!({ "status": status_word })));
    }
    checks.push(Check {
        name: "auth".into(),
        state: "up",
        detail: Some(format!("{} signer", auth.signer())),
    });
    (
        status,
        Json(serde_json::json!(Readiness {
            status: status_word,
            checks,
        })),
    )
}
