//! Shared helpers: the ledger service on a real socket over a fresh store, events fed to it
//! through its engine as its consumers would, and assertions on its answers.
#![allow(dead_code)]

use std::{ops::Deref, sync::Arc};

use libertum_domain::{Amount, Id, Timestamp, ledger, token};
use libertum_testkit::Http;
use tempfile::TempDir;

/// A running ledger service. Dropping it removes its data directory.
pub struct Server {
    pub api: Http,
    pub ledger: libertum_ledger::Ledger,
    _dir: TempDir,
}

impl Deref for Server {
    type Target = Http;

    fn deref(&self) -> &Self::Target {
        &self.api
    }
}

/// Starts the service the way `services/ledger/src/main.rs` does, on 127.0.0.1:0.
pub async fn spawn() -> Server {
    start(None).await
}

/// [`spawn`] with `/v1/events` served too and the webhooks delivered with `webhooks`.
pub async fn spawn_with_events(webhooks: libertum_platform::config::WebhookSettings) -> Server {
    start(Some(webhooks)).await
}

async fn start(webhooks: Option<libertum_platform::config::WebhookSettings>) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(libertum_store::RedbStore::open(dir.path(), "ledger").expect("store"));
    // Reconciliation is not exercised here; nothing listens on this address.
    let ledger =
        libertum_ledger::Ledger::open(store, "http://127.0.0.1:9".into(), Default::default())
            .await
            .expect("ledger service");
    let mut routes = utoipa_axum::router::OpenApiRouter::new().nest("/v1/ledger", ledger.router());
    if let Some(webhooks) = webhooks {
        routes = routes.nest("/v1/events", ledger.events_router(webhooks));
        // Runs as long as the test: the runtime ends it.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        std::mem::forget(stop);
        tokio::spawn(ledger.dispatcher(webhooks)(stopped));
    }
    let (router, _) = routes.split_for_parts();
    let router = libertum_platform::server::service_router(
        router,
        ledger.probes(),
        libertum_testkit::guard(),
    );
    Server {
        api: Http::new(libertum_testkit::serve(router).await),
        ledger,
        _dir: dir,
    }
}

/// Records `incoming` in `ledger` as the consumers do.
pub async fn feed_into(ledger: &libertum_ledger::Ledger, incoming: ledger::Incoming) {
    ledger
        .engine()
        .submit(libertum_store::Submission {
            command: Some(incoming),
            idempotency: None,
            checkpoint: None,
            reply: Box::new(|_, _| libertum_store::Reply::new(200, Default::default())),
            partition: None,
            span: tracing::Span::current(),
        })
        .await
        .expect("recorded");
}

impl Server {
    /// Records `incoming` as the consumers do.
    pub async fn feed(&self, incoming: ledger::Incoming) {
        feed_into(&self.ledger, incoming).await
    }
}

/// `2026-01-01T00:00:00Z` plus `minutes`.
pub fn at(minutes: i64) -> Timestamp {
    time::macros::datetime!(2026-01-01 00:00 UTC) + time::Duration::minutes(minutes)
}

/// A token event as the ledger's consumer turns it into an incoming entry: postings from the
/// domain's own mapping, the token's version from the envelope's `subjectversion`.
pub fn token_event(
    event_id: &str,
    minutes: i64,
    version: u64,
    change: token::Change,
) -> ledger::Incoming {
    let event = token::Event {
        at: at(minutes),
        actor: Id::from("agent-1"),
        change,
    };
    let token = event.change.token_id().map(|id| (id.clone(), version));
    ledger::Incoming {
        event_id: event_id.into(),
        event_type: format!("libertum.token.{}.v1", event.change.name()),
        subject: event.change.key().to_string(),
        at: event.at,
        actor: "agent-1".into(),
        postings: ledger::postings_for(&event),
        token,
        subject_version: version,
        reverses: ledger::Reversed::by(&event),
    }
}

pub fn issued(token: &str, to: &str, amount: u128) -> token::Change {
    token::Change::Issued {
        class: None,
        token_id: Id::from(token),
        to: Id::from(to),
        amount: Amount(amount),
        locked_until: None,
    }
}

pub fn transferred(token: &str, from: &str, to: &str, amount: u128) -> token::Change {
    token::Change::Transferred {
        class: None,
        token_id: Id::from(token),
        from: Id::from(from),
        to: Id::from(to),
        amount: Amount(amount),
        forced: false,
        reason: None,
        approval_id: None,
    }
}

pub fn redeemed(token: &str, from: &str, amount: u128) -> token::Change {
    token::Change::Redeemed {
        class: None,
        token_id: Id::from(token),
        from: Id::from(from),
        amount: Amount(amount),
    }
}

/// An asset event: recorded, without postings.
pub fn asset_event(event_id: &str, minutes: i64) -> ledger::Incoming {
    ledger::Incoming {
        event_id: event_id.into(),
        event_type: "libertum.asset.approved.v1".into(),
        subject: "ast_1".into(),
        at: at(minutes),
        actor: "reviewer-1".into(),
        postings: Vec::new(),
        token: None,
        subject_version: 1,
        reverses: None,
    }
}

/// The ledger of these tests:
///
/// | seq | minute | event                           |
/// |-----|--------|---------------------------------|
/// | 1   | 0      | asset approved                  |
/// | 2   | 10     | tok_1: issue 100 to inv_a       |
/// | 3   | 20     | tok_1: issue 50 to inv_b        |
/// | 4   | 30     | tok_1: inv_a sends 30 to inv_b  |
/// | 5   | 40     | tok_2: issue 7 to inv_a         |
/// | 6   | 50     | tok_1: inv_b redeems 20         |
pub async fn feed_sample(s: &Server) {
    s.feed(asset_event("ev1", 0)).await;
    s.feed(token_event("ev2", 10, 2, issued("tok_1", "inv_a", 100)))
        .await;
    s.feed(token_event("ev3", 20, 3, issued("tok_1", "inv_b", 50)))
        .await;
    s.feed(token_event(
        "ev4",
        30,
        4,
        transferred("tok_1", "inv_a", "inv_b", 30),
    ))
    .await;
    s.feed(token_event("ev5", 40, 2, issued("tok_2", "inv_a", 7)))
        .await;
    s.feed(token_event("ev6", 50, 5, redeemed("tok_1", "inv_b", 20)))
        .await;
}
