//! The ledger service: the append-only, hash-chained, double-entry record of every event, with
//! balances and cap tables at any point, chain verification and reconciliation.

mod api;
mod audit;
mod events;
mod history;
mod reconcile;
mod state;
pub mod webhooks;

use std::sync::Arc;

use libertum_domain::{Id, asset, ledger, token};
use libertum_events::{ASSETS_SOURCE, CloudEvent, TOKENS_SOURCE, Topics};
use libertum_platform::health::{self, Probe};
use libertum_store::{
    Consumer, Delivery, Engine, EventBus, EventStore, SnapshotPolicy, StoreError, Verdict,
};
use utoipa_axum::router::OpenApiRouter;

pub use state::LedgerState;

#[derive(Clone)]
pub struct Ledger {
    engine: Engine<LedgerState>,
    tokens_url: String,
}

impl Ledger {
    /// `tokens_url` is the tokens service's base URL, for reconciliation.
    pub async fn open(
        store: Arc<dyn EventStore>,
        tokens_url: String,
        snapshots: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Self::describe();
        let engine = Engine::start_with("ledger", store, None, snapshots).await?;
        Ok(Ledger { engine, tokens_url })
    }

    /// [`Ledger::open`] as one of several replicas sharing `store`: it follows the log and
    /// writes only while it owns the writes (see `libertum_store::Ownership`).
    pub async fn open_replica(
        store: Arc<dyn EventStore>,
        tokens_url: String,
        snapshots: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Self::describe();
        let engine = Engine::start_replica("ledger", store, None, snapshots).await?;
        Ok(Ledger { engine, tokens_url })
    }

    /// The metrics recorder and the ledger's metric descriptions, before anything counts.
    fn describe() {
        let _ = libertum_platform::http_metrics::recorder();
        audit::describe();
    }

    pub fn router(&self) -> OpenApiRouter {
        api::router(api::AppState {
            engine: self.engine.clone(),
            tokens_url: self.tokens_url.clone(),
            http: reqwest::Client::new(),
        })
        .layer(axum::middleware::from_fn_with_state(
            libertum_platform::replica::waiter(self.engine.clone()),
            libertum_platform::replica::read_your_writes,
        ))
    }

    /// `/v1/events`: webhook subscriptions and the event stream.
    pub fn events_router(
        &self,
        webhooks: libertum_platform::config::WebhookSettings,
    ) -> OpenApiRouter {
        events::router(events::EventsState {
            engine: self.engine.clone(),
            webhooks,
        })
        .layer(axum::middleware::from_fn_with_state(
            libertum_platform::replica::waiter(self.engine.clone()),
            libertum_platform::replica::read_your_writes,
        ))
    }

    /// Delivers the webhooks until told to stop: run it once per service, where the ledger's
    /// writes are owned (`Background::owned_task`).
    pub fn dispatcher(
        &self,
        settings: libertum_platform::config::WebhookSettings,
    ) -> impl Fn(
        tokio::sync::watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    + Send
    + Sync
    + 'static {
        let engine = self.engine.clone();
        move |stop| Box::pin(webhooks::dispatch(engine.clone(), settings, stop))
    }

    /// One consumer per topic it records.
    pub fn consumers(&self, bus: Arc<dyn EventBus>, topics: &Topics) -> Vec<Consumer<LedgerState>> {
        vec![
            Consumer::new(
                "ledger",
                &topics.assets,
                self.engine.clone(),
                bus.clone(),
                decode_asset_event,
            ),
            Consumer::new(
                "ledger",
                &topics.tokens,
                self.engine.clone(),
                bus,
                decode_token_event,
            ),
        ]
    }

    /// Waits for the writer to finish and release the store; call once nothing else holds the service.
    pub async fn close(self) {
        self.engine.close().await;
    }

    /// Verifies the whole chain as stored and records the outcome (`libertum_ledger_chain_valid`);
    /// run periodically by the binaries (`LIBERTUM_LEDGER_VERIFY_INTERVAL_SECONDS`).
    pub async fn audit(self) {
        let result = api::verify_store(self.engine.store().as_ref()).await;
        audit::verified(&result);
        match result {
            Ok(view) if view.valid => {
                tracing::info!(
                    entries = view.entries_checked,
                    head_seq = view.head_seq,
                    "ledger chain verified"
                )
            }
            Ok(view) => tracing::error!(
                first_broken_seq = view.first_broken_seq,
                problem = view.problem.as_deref().unwrap_or_default(),
                "the ledger chain is broken"
            ),
            Err(error) => {
                tracing::warn!(error = %error.detail, "the ledger chain could not be verified")
            }
        }
    }

    pub fn probes(&self) -> Vec<Probe> {
        vec![health::engine_probe("ledger.store", self.engine.clone())]
    }

    pub fn engine(&self) -> &Engine<LedgerState> {
        &self.engine
    }
}

fn incoming(
    event: &CloudEvent,
    postings: Vec<ledger::Posting>,
    token: Option<(Id, u64)>,
    reverses: Option<ledger::Reversed>,
) -> ledger::Incoming {
    ledger::Incoming {
        event_id: event.id.clone(),
        event_type: event.ty.clone(),
        subject: event.subject.clone(),
        at: event.time,
        actor: event.actor.clone(),
        postings,
        token,
        subject_version: event.subject_version(),
        reverses,
    }
}

fn decode_asset_event(delivery: &Delivery) -> Verdict<ledger::Incoming> {
    let event = match CloudEvent::decode(&delivery.payload, ASSETS_SOURCE, "asset") {
        Ok(event) => event,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    // The data must be a well-formed asset event about the subject, or it is not recorded.
    match event.data::<asset::Event>() {
        Ok(data) if data.asset_id.as_str() == event.subject => {
            Verdict::Apply(incoming(&event, Vec::new(), None, None))
        }
        Ok(_) => Verdict::Reject("the event's subject is not its asset".into()),
        Err(e) => Verdict::Reject(e.to_string()),
    }
}

fn decode_token_event(delivery: &Delivery) -> Verdict<ledger::Incoming> {
    let event = match CloudEvent::decode(&delivery.payload, TOKENS_SOURCE, "token") {
        Ok(event) => event,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    let data: token::Event = match event.data() {
        Ok(data) => data,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    if data.change.key().as_str() != event.subject {
        return Verdict::Reject("the event's subject is not its key".into());
    }
    let token = data
        .change
        .token_id()
        .map(|id| (id.clone(), event.subject_version()));
    Verdict::Apply(incoming(
        &event,
        ledger::postings_for(&data),
        token,
        ledger::Reversed::by(&data),
    ))
}
