//! The tokens service alone. Without a Kafka broker (issue 4) it cannot hear the assets service,
//! so no asset is known approved; the `libertum` binary runs all services together.

use std::sync::Arc;

use libertum_platform::{config::Settings, server, telemetry};
use libertum_store::{MemoryCache, RedbStore};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(&settings);
    let store = Arc::new(RedbStore::open(&settings.data_dir, "tokens")?);
    let tokens =
        libertum_tokens::Tokens::open(store, Arc::new(MemoryCache::new(settings.cache_entries)))
            .await?;
    let (routes, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/tokens", tokens.router())
        .split_for_parts();
    server::serve_alone(&settings, "tokens", routes, tokens.probes()).await?;
    Ok(())
}
