//! The tokens service: token classes of approved assets, investors and their eligibility,
//! issuance, transfers, redemptions, freezes, holds and settlements against payment,
//! compliance, cap tables and distributions.

mod api;
mod approvals;
mod classes;
mod dto;
mod history;
mod holds;
mod import;
mod movements;
mod ocf;
mod state;

use std::sync::Arc;

use libertum_domain::{Id, asset, token};
use libertum_events::{ASSETS_SOURCE, CloudEvent, Topics};
use libertum_platform::health::{self, Probe};
use libertum_store::{
    Cache, Consumer, Delivery, Engine, EventBus, EventStore, SnapshotPolicy, StoreError, Verdict,
};
use utoipa_axum::router::OpenApiRouter;

pub use state::{Command, TokensState};

#[derive(Clone)]
pub struct Tokens {
    engine: Engine<TokensState>,
}

impl Tokens {
    pub async fn open(
        store: Arc<dyn EventStore>,
        cache: Arc<dyn Cache>,
        snapshots: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Ok(Tokens {
            engine: Engine::start_with("tokens", store, Some(cache), snapshots).await?,
        })
    }

    /// [`Tokens::open`] over one log per partition (`stores`, the registry's first): as one
    /// of several `replica`s sharing them, it follows every log and writes a partition only
    /// while it owns it (see `libertum_store::ownership`); else as their sole writer.
    pub async fn open_partitioned(
        stores: Vec<Arc<dyn EventStore>>,
        cache: Arc<dyn Cache>,
        snapshots: SnapshotPolicy,
        replica: bool,
    ) -> Result<Self, StoreError> {
        let engine =
            Engine::start_partitioned("tokens", stores, Some(cache), snapshots, replica).await?;
        Ok(Tokens { engine })
    }

    /// Which partition a write belongs to: a token's own, from the id in its path; the
    /// registry's for investors and for a new token class (whose asset and symbol must be
    /// unique across partitions: it is claimed there, then opened in its own).
    pub fn route(partitions: usize) -> libertum_platform::replica::Route {
        Arc::new(move |parts, _body| {
            let first = parts
                .uri
                .path()
                .strip_prefix("/v1/tokens")
                .unwrap_or("")
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("");
            match first {
                "" | "investors" => 0,
                token => libertum_store::partition::of(token, partitions),
            }
        })
    }

    /// The routes under `/v1/tokens`.
    pub fn router(&self) -> OpenApiRouter {
        api::router(self.engine.clone()).layer(axum::middleware::from_fn_with_state(
            libertum_platform::replica::waiter(self.engine.clone()),
            libertum_platform::replica::read_your_writes,
        ))
    }

    /// Learns from the assets service's events which assets are approved.
    pub fn consumer(&self, bus: Arc<dyn EventBus>, topics: &Topics) -> Consumer<TokensState> {
        Consumer::new(
            "tokens",
            &topics.assets,
            self.engine.clone(),
            bus,
            decode_asset_event,
        )
    }

    /// Waits for the writer to finish and release the store; call once nothing else holds the service.
    pub async fn close(self) {
        self.engine.close().await;
    }

    pub fn probes(&self) -> Vec<Probe> {
        vec![health::engine_probe("tokens.store", self.engine.clone())]
    }

    pub fn engine(&self) -> &Engine<TokensState> {
        &self.engine
    }
}

fn decode_asset_event(delivery: &Delivery) -> Verdict<Command> {
    let event = match CloudEvent::decode(&delivery.payload, ASSETS_SOURCE, "asset") {
        Ok(event) => event,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    let data: asset::Event = match event.data() {
        Ok(data) => data,
        Err(e) => return Verdict::Reject(e.to_string()),
    };
    if data.asset_id.as_str() != event.subject {
        return Verdict::Reject("the event's subject is not its asset".into());
    }
    let to = match data.change {
        asset::Change::StatusChanged { to, .. } => to,
        // Who issues the asset's tokens, for what is exported about them (Open Cap Format).
        asset::Change::Registered { profile } | asset::Change::Updated { profile } => {
            return Verdict::Apply(Command {
                actor: Id::from(data.actor),
                command: token::Command::ObserveAssetIssuer {
                    asset_id: data.asset_id,
                    issuer: token::AssetIssuer {
                        legal_owner: profile.legal_owner,
                        country: profile.location.country,
                        name: profile.name,
                    },
                    sequence: event.subject_version(),
                },
            });
        }
        _ => return Verdict::Skip,
    };
    let state = match to {
        asset::Status::Approved => token::AssetState::Approved,
        // This service marks it tokenized itself when it creates the token class; hearing it
        // again matters after a suspension: the asset was reactivated.
        asset::Status::Tokenized => token::AssetState::Tokenized,
        asset::Status::Suspended => token::AssetState::Suspended,
        asset::Status::Retired => token::AssetState::Retired,
        _ => token::AssetState::Unavailable,
    };
    Verdict::Apply(Command {
        actor: Id::from(data.actor),
        command: token::Command::ObserveAsset {
            asset_id: data.asset_id,
            state,
            // The asset's version: a re-published older event is recognised as such.
            sequence: event.subject_version(),
        },
    })
}
