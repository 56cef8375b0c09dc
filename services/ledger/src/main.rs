//! The ledger service alone. Without a Kafka broker (issue 4) it receives no events; the
//! `libertum` binary runs all services together.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = libertum_platform::config::Settings::from_env()?;
    libertum_platform::telemetry::init(&settings);
    let store = std::sync::Arc::new(libertum_store::RedbStore::open(
        &settings.data_dir,
        "ledger",
    )?);
    let ledger = libertum_ledger::Ledger::open(store, settings.tokens_url.clone()).await?;
    tracing::warn!(
        "running alone on embedded defaults: events of the other services are not received"
    );
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/ledger", ledger.router())
        .split_for_parts();
    let router = libertum_platform::server::stack(
        router.merge(libertum_platform::health::routes(ledger.probes())),
    );
    let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "ledger listening");
    libertum_platform::server::serve(
        listener,
        router,
        libertum_platform::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
