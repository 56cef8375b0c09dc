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

/// The two health routes, over `probes`.
pub fn routes(probes: Vec<Probe>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .with_state(Arc::new(probes))
}

async fn ready(State(probes): State<Arc<Vec<Probe>>>) -> impl IntoResponse {
    let mut checks = Vec::with_capacity(probes.len());
    for probe in probes.iter() {
        checks.push(probe().await);
    }
    let ready = checks.iter().all(|c| c.state != "down");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "unready" },
            checks,
        }),
    )
}
