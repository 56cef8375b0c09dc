//! The assets service: the registry of real-world assets, their documents, valuations and
//! approval lifecycle.

mod api;
mod state;

use std::sync::Arc;

use libertum_events::{CloudEvent, TOKENS_SOURCE, Topics};
use libertum_platform::health::{self, Probe};
use libertum_store::{
    Cache, Consumer, Engine, EventBus, EventStore, SnapshotPolicy, StoreError, Verdict,
};
use utoipa_axum::router::OpenApiRouter;

pub use state::AssetsState;

/// The service: its engine, ready to be routed and fed.
#[derive(Clone)]
pub struct Assets {
    engine: Engine<AssetsState>,
}

impl Assets {
    /// Rebuilds the registry from `store` and starts its writer.
    pub async fn open(
        store: Arc<dyn EventStore>,
        cache: Arc<dyn Cache>,
        snapshots: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Ok(Assets {
            engine: Engine::start_with("assets", store, Some(cache), snapshots).await?,
        })
    }

    /// [`Assets::open`] over one log per partition (`stores`, the registry's first): as one
    /// of several `replica`s sharing them, it follows every log and writes a partition only
    /// while it owns it (see `libertum_store::ownership`); else as their sole writer.
    pub async fn open_partitioned(
        stores: Vec<Arc<dyn EventStore>>,
        cache: Arc<dyn Cache>,
        snapshots: SnapshotPolicy,
        replica: bool,
    ) -> Result<Self, StoreError> {
        let engine =
            Engine::start_partitioned("assets", stores, Some(cache), snapshots, replica).await?;
        Ok(Assets { engine })
    }

    /// Which partition a write belongs to: an asset's own, from the id in its path; a new
    /// asset's, from its `Idempotency-Key` (else its body), so that a retry lands in the same
    /// partition and is recognised.
    pub fn route(partitions: usize) -> libertum_platform::replica::Route {
        Arc::new(move |parts, body| {
            let path = parts.uri.path();
            let first = path
                .strip_prefix("/v1/assets")
                .unwrap_or("")
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("");
            if !first.is_empty() {
                return libertum_store::partition::of(first, partitions);
            }
            match parts.headers.get("idempotency-key") {
                Some(key) => libertum_store::partition::of(
                    &String::from_utf8_lossy(key.as_bytes()),
                    partitions,
                ),
                None => libertum_store::partition::of(&String::from_utf8_lossy(body), partitions),
            }
        })
    }

    /// The routes under `/v1/assets`, with their OpenAPI description.
    pub fn router(&self) -> OpenApiRouter {
        api::router(self.engine.clone()).layer(axum::middleware::from_fn_with_state(
            libertum_platform::replica::waiter(self.engine.clone()),
            libertum_platform::replica::read_your_writes,
        ))
    }

    /// Learns from the tokens service's events which assets were tokenized (a partitioned
    /// service runs one per partition: see `Consumer::for_partition`).
    pub fn consumer(&self, bus: Arc<dyn EventBus>, topics: &Topics) -> Consumer<AssetsState> {
        Consumer::new(
            "assets",
            &topics.tokens,
            self.engine.clone(),
            bus,
            decode_token_event,
        )
    }

    /// Waits for the writer to finish and release the store; call once nothing else holds the service.
    pub async fn close(self) {
        self.engine.close().await;
    }

    pub fn probes(&self) -> Vec<Probe> {
        vec![health::engine_probe("assets.store", self.engine.clone())]
    }

    pub fn engine(&self) -> &Engine<AssetsState> {
        &self.engine
    }
}

fn decode_token_event(delivery: &libertum_store::Delivery) -> Verdict<state::Command> {
    use libertum_domain::{asset, token};
    let event = match CloudEvent::decode(&delivery.payload, TOKENS_SOURCE, "token") {
        Ok(event) => event,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    if event.ty != "libertum.token.created.v1" {
        return Verdict::Skip;
    }
    match event.data::<token::Event>() {
        Ok(token::Event {
            change: token::Change::TokenCreated { spec, .. },
            ..
        }) if spec.id.as_str() != event.subject => {
            Verdict::Reject("the event's subject is not its token".into())
        }
        Ok(token::Event {
            change: token::Change::TokenCreated { spec, .. },
            actor,
            ..
        }) => Verdict::Apply(state::Command {
            actor: actor.to_string(),
            command: asset::Command::MarkTokenized {
                id: spec.asset_id,
                token_id: spec.id,
            },
        }),
        Ok(_) => Verdict::Reject("a token.created event without a token spec".into()),
        Err(e) => Verdict::Reject(e.to_string()),
    }
}
