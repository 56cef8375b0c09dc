//! The assets service alone. Without a Kafka broker (issue 4) it cannot hear the tokens service,
//! so assets are not marked tokenized; the `libertum` binary runs all services together.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = libertum_platform::config::Settings::from_env()?;
    libertum_platform::telemetry::init(&settings);
    let store = std::sync::Arc::new(libertum_store::RedbStore::open(
        &settings.data_dir,
        "assets",
    )?);
    let cache = std::sync::Arc::new(libertum_store::MemoryCache::new(settings.cache_entries));
    let assets = libertum_assets::Assets::open(store, cache).await?;
    tracing::warn!(
        "running alone on embedded defaults: events of the other services are not received"
    );
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/assets", assets.router())
        .split_for_parts();
    let router = libertum_platform::server::stack(
        router.merge(libertum_platform::health::routes(assets.probes())),
    );
    let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "assets listening");
    libertum_platform::server::serve(
        listener,
        router,
        libertum_platform::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
