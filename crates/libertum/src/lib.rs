//! The whole product in one process: the three services on one address. On embedded defaults
//! (a redb store per service under the data directory, the in-process bus, an in-memory cache)
//! unless `LIBERTUM_MONGODB_URI`, `LIBERTUM_KAFKA_BROKERS` or `LIBERTUM_REDIS_URL` name the
//! production backends.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use libertum_adapters::wire::{self, Background};
use libertum_assets::Assets;
use libertum_ledger::Ledger;
use libertum_platform::{
    config::Settings,
    health::{self, Probe},
    server,
};
use libertum_store::{EventBus, InProcessBus};
use libertum_tokens::Tokens;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Libertum",
        description = "Tokenization of real-world assets: the asset registry, token classes with compliance, and the hash-chained ledger. Amounts are strings of digits in minor units. Errors are RFC 9457 problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "assets", description = "real-world assets, documents, valuations, lifecycle"),
        (name = "tokens", description = "token classes of approved assets and their rules"),
        (name = "investors", description = "investors and their eligibility"),
        (name = "movements", description = "issue, transfer, redeem, freeze, pause, forced transfer, batches, dry run"),
        (name = "holds", description = "two-phase transfers: a hold reserves part of a balance until it is posted, voided or expires; with a cash leg, a settlement against payment confirmed by a payment agent"),
        (name = "classes", description = "share classes within a token (ERC-1400 partitions): each with its own rules and lock-up; every movement names its class; conversions between classes"),
        (name = "holders", description = "cap tables, now or as of any moment"),
        (name = "distributions", description = "pro-rata payments to holders"),
        (name = "ledger", description = "the append-only double-entry record, verification and reconciliation"),
        (name = "events", description = "every recorded event for outside consumers: webhook subscriptions (Standard Webhooks) with replay and dead letters, and a server-sent event stream")
    )
)]
struct ApiDoc;

/// The running product, built but not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: server::ConnectionLimits,
    background: Background,
    pub assets: Assets,
    pub tokens: Tokens,
    pub ledger: Ledger,
}

impl Application {
    /// Opens the stores, rebuilds every service's state, starts the consumers and binds the address.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.http_addr).await?;
        let addr = listener.local_addr()?;
        let tokens_url = if settings.tokens_url.is_empty() || settings.http_addr.port() == 0 {
            format!("http://{addr}")
        } else {
            settings.tokens_url.clone()
        };
        let _ = libertum_platform::http_metrics::recorder();

        // One process, one writer per service: one log each.
        let assets_backends = wire::backends(&settings, "assets", 1).await?;
        let tokens_backends = wire::backends(&settings, "tokens", 1).await?;
        let ledger_backends = wire::backends(&settings, "ledger", 1).await?;
        let (assets_store, tokens_store) =
            (assets_backends.store.clone(), tokens_backends.store.clone());

        let assets = Assets::open(
            assets_store.clone(),
            assets_backends.cache,
            assets_backends.snapshots,
        )
        .await?;
        let tokens = Tokens::open(
            tokens_store.clone(),
            tokens_backends.cache,
            tokens_backends.snapshots,
        )
        .await?;
        let ledger =
            Ledger::open(ledger_backends.store, tokens_url, ledger_backends.snapshots).await?;

        let mut background = Background::default();
        let topics = settings.backends.topics.clone();
        let bus: Arc<dyn EventBus> = match wire::kafka(&settings).await? {
            Some((kafka, bus)) => {
                background.probes.push(wire::kafka_probe("kafka", &kafka)?);
                background.relay(
                    "assets.relay",
                    &kafka,
                    std::slice::from_ref(&assets_store),
                    &topics.assets,
                )?;
                background.relay(
                    "tokens.relay",
                    &kafka,
                    std::slice::from_ref(&tokens_store),
                    &topics.tokens,
                )?;
                bus
            }
            None => {
                let bus = InProcessBus::new();
                bus.attach(&topics.assets, assets_store.clone());
                bus.attach(&topics.tokens, tokens_store.clone());
                Arc::new(bus)
            }
        };
        background.consumer("assets.consumer", assets.consumer(bus.clone(), &topics));
        background.consumer("tokens.consumer", tokens.consumer(bus.clone(), &topics));
        for (name, consumer) in ["ledger.assets_consumer", "ledger.tokens_consumer"]
            .into_iter()
            .zip(ledger.consumers(bus.clone(), &topics))
        {
            background.consumer(name, consumer);
        }
        let retention = Duration::from_secs(settings.idempotency_retention_hours * 3600);
        background.prune_idempotency(vec![assets_store, tokens_store], retention);
        if settings.ledger_verify_interval_seconds > 0 {
            let (ledger, every) = (ledger.clone(), settings.ledger_verify_interval_seconds);
            background.periodic(Duration::from_secs(every), move || ledger.clone().audit());
        }

        let mut probes: Vec<Probe> = Vec::new();
        probes.extend(assets.probes());
        probes.extend(tokens.probes());
        probes.extend(ledger.probes());
        probes.extend(assets_backends.probes);
        probes.extend(tokens_backends.probes);
        probes.extend(ledger_backends.probes);
        probes.append(&mut background.probes);

        let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .nest("/v1/assets", assets.router())
            .nest("/v1/tokens", tokens.router())
            .nest("/v1/ledger", ledger.router())
            .nest("/v1/events", ledger.events_router(settings.webhooks))
            .split_for_parts();
        background.owned_task(ledger.dispatcher(settings.webhooks));
        // Everything but health, metrics and the API's description needs a bearer token.
        let guard = server::Guard::new(&settings, assets_backends.limiter.clone())?;
        let auth = guard.auth.clone();
        let mut app = server::protect(api, guard)
            .merge(libertum_platform::openapi::docs(openapi))
            .merge(health::routes(probes, auth));
        if !server::serve_metrics_apart(&settings).await? {
            app = app.merge(server::metrics_routes());
        }
        let router = server::stack(app);
        tracing::info!(%addr, data_dir = %settings.data_dir.display(), "libertum built");
        Ok(Application {
            listener,
            router,
            limits: settings.connection_limits,
            background,
            assets,
            tokens,
            ledger,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` completes, drains in-flight requests, stops the consumers, and
    /// waits for the writers to commit what is queued and release the stores.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let result = server::serve(self.listener, self.router, self.limits, shutdown).await;
        self.background.stop().await;
        self.assets.close().await;
        self.tokens.close().await;
        self.ledger.close().await;
        result
    }
}
