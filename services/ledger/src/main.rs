//! The ledger service alone. Without a Kafka broker (issue 4) it receives no events; the
//! `libertum` binary runs all services together.

use std::sync::Arc;

use libertum_platform::{config::Settings, server, telemetry};
use libertum_store::RedbStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(&settings);
    let store = Arc::new(RedbStore::open(&settings.data_dir, "ledger")?);
    let ledger = libertum_ledger::Ledger::open(store, settings.tokens_url.clone()).await?;
    let (routes, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/ledger", ledger.router())
        .split_for_parts();
    server::serve_alone(&settings, "ledger", routes, ledger.probes()).await?;
    Ok(())
}
