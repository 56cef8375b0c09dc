//! The assets service alone. Without a Kafka broker (issue 4) it cannot hear the tokens service,
//! so assets are not marked tokenized; the `libertum` binary runs all services together.

use std::sync::Arc;

use libertum_platform::{config::Settings, server, telemetry};
use libertum_store::{MemoryCache, RedbStore};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(&settings);
    let store = Arc::new(RedbStore::open(&settings.data_dir, "assets")?);
    let assets =
        libertum_assets::Assets::open(store, Arc::new(MemoryCache::new(settings.cache_entries)))
            .await?;
    let (routes, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/assets", assets.router())
        .split_for_parts();
    server::serve_alone(&settings, "assets", routes, assets.probes()).await?;
    Ok(())
}
