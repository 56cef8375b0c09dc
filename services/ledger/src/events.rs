//! `/v1/events`: every recorded event for outside consumers, as webhook subscriptions (see
//! [`crate::webhooks`]) and as a stream of server-sent events.
//!
//! What is delivered is the ledger's entries: one per event of the assets and tokens services,
//! in the ledger's order, each with its postings and hash, named by its sequence number, so
//! that "from sequence N" means the same to a webhook's replay, the stream's `Last-Event-ID`
//! and `GET /v1/ledger/entries`. A subscription is its owner's: it carries only what they may
//! read (staff every event; an investor the events that touch their own accounts or record).
//!
//! Subscriptions and their dead letters are rows of the ledger's store (`w{id}`,
//! `x{id}|{seq}`), and each one's delivery position is a checkpoint (`webhook:{id}`): shared by
//! every replica, and kept across restarts.

use std::{collections::BTreeSet, convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use libertum_domain::ledger;
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal, Role},
    extract::{Json, PageQuery, Path, Query},
};
use libertum_store::{Engine, EventStore};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{api::EntryView, history, state::LedgerState, webhooks};

const JSON_PROBLEM: &str = "application/problem+json";

/// The most subscriptions one principal keeps.
pub const PER_OWNER: usize = 20;
/// The most subscriptions in all.
pub const IN_ALL: usize = 2_000;

#[derive(Clone)]
pub struct EventsState {
    pub engine: Engine<LedgerState>,
    pub webhooks: libertum_platform::config::WebhookSettings,
}

pub fn router(state: EventsState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(subscribe, list))
        .routes(routes!(get_one, unsubscribe))
        .routes(routes!(replay))
        .routes(routes!(dead_letters))
        .routes(routes!(stream))
        .with_state(state)
}

/// What a principal may see of the events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "investor_id")]
pub enum Sees {
    /// Staff who read the ledger: every event.
    Everything,
    /// An investor: the events that post to or from their accounts (`investor:`, `held:`,
    /// `withheld:`), or whose subject is their record.
    Investor(String),
}

impl Sees {
    /// What `principal` may see, or 403.
    pub fn of(principal: &Principal) -> Result<Sees, ApiError> {
        principal.allow(Operation::EventsSubscribe)?;
        if principal
            .roles
            .iter()
            .any(|r| *r != Role::Investor && Operation::LedgerRead.roles().contains(r))
        {
            return Ok(Sees::Everything);
        }
        match &principal.investor {
            Some(investor) => Ok(Sees::Investor(investor.clone())),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "an investor's token without its investor_id claim sees no events",
            )),
        }
    }

    pub fn sees(&self, entry: &ledger::Entry) -> bool {
        match self {
            Sees::Everything => true,
            Sees::Investor(id) => {
                let own = |account: &str| {
                    account.split_once(':').is_some_and(|(kind, who)| {
                        who == id && matches!(kind, "investor" | "held" | "withheld")
                    })
                };
                entry.subject == *id || entry.postings.iter().any(|p| own(&p.from) || own(&p.to))
            }
        }
    }
}

/// Which events: by type (none: every type) and token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub event_types: BTreeSet<String>,
    #[serde(default)]
    pub token_id: Option<String>,
}

impl Filter {
    fn validate(&self) -> Result<(), ApiError> {
        if self.event_types.len() > 50 {
            return Err(ApiError::invalid("event_types", "at most 50 event types"));
        }
        if let Some(bad) = self.event_types.iter().find(|t| {
            !t.starts_with("libertum.") || t.len() > 100 || !t.bytes().all(|b| b.is_ascii_graphic())
        }) {
            return Err(ApiError::invalid(
                "event_types",
                format!("{bad} is not an event type such as libertum.token.transferred.v1"),
            ));
        }
        if self
            .token_id
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > 100)
        {
            return Err(ApiError::invalid(
                "token_id",
                "a token id is 1-100 characters",
            ));
        }
        Ok(())
    }

    pub fn matches(&self, entry: &ledger::Entry) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&entry.event_type))
            && self.token_id.as_deref().is_none_or(|t| {
                entry.subject == t
                    || entry.token.as_ref().is_some_and(|(id, _)| id.as_str() == t)
                    || entry.postings.iter().any(|p| p.unit == t)
            })
    }
}

/// A webhook subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    /// The subject of the principal who made it.
    pub owner: String,
    pub sees: Sees,
    pub url: String,
    /// `whsec_` and the base64 of the key the deliveries are signed with.
    pub secret: String,
    #[serde(flatten)]
    pub filter: Filter,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// Where delivery starts: after this sequence number.
    pub start_after: u64,
    /// Replays asked so far, and where the latest starts.
    #[serde(default)]
    pub replays: u64,
    #[serde(default)]
    pub replay_from: u64,
    #[serde(default)]
    pub deleted: bool,
}

impl Subscription {
    pub fn wants(&self, entry: &ledger::Entry) -> bool {
        self.sees.sees(entry) && self.filter.matches(entry)
    }
}

pub fn row_key(id: &str) -> String {
    format!("w{id}")
}

pub fn checkpoint_name(id: &str) -> String {
    format!("webhook:{id}")
}

pub fn dead_letter_key(id: &str, seq: u64) -> String {
    format!("x{id}|{seq:016x}")
}

/// Every subscription stored, deleted ones included.
pub async fn all(store: &dyn EventStore) -> Result<Vec<Subscription>, libertum_store::StoreError> {
    let rows = store.index_range("w", "w~", IN_ALL * 2).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
        .collect())
}

async fn save(store: &dyn EventStore, subscription: &Subscription) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(subscription).map_err(ApiError::internal)?;
    store
        .put_index(vec![(row_key(&subscription.id), bytes)])
        .await
        .map_err(ApiError::unavailable)
}

/// The caller's subscription `id`; 404 for anyone else's.
async fn own(
    store: &dyn EventStore,
    principal: &Principal,
    id: &str,
) -> Result<Subscription, ApiError> {
    Sees::of(principal)?;
    let key = row_key(id);
    let found = store
        .index_last(&key, &key)
        .await
        .map_err(ApiError::unavailable)?
        .and_then(|(_, bytes)| serde_json::from_slice::<Subscription>(&bytes).ok());
    match found {
        Some(s)
            if !s.deleted
                && (s.owner == principal.subject
                    || principal.roles.contains(&Role::PlatformAdmin)) =>
        {
            Ok(s)
        }
        _ => Err(ApiError::not_found(
            "subscription_not_found",
            format!("there is no subscription {id} of yours"),
        )),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// Where each event is POSTed: `https://` (`http://` and private addresses only where the
    /// service allows them, for development).
    #[schema(example = "https://example.com/hooks/libertum")]
    pub url: String,
    /// Only events of these types (all if absent or empty), e.g.
    /// `["libertum.token.transferred.v1"]`.
    #[serde(default)]
    pub event_types: BTreeSet<String>,
    /// Only events of this token (its own events and those posting in it).
    #[serde(default)]
    pub token_id: Option<String>,
    /// Deliver from this sequence number on (every earlier event the subscriber may see is
    /// delivered first); absent: from the next event.
    #[serde(default)]
    pub from_seq: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub token_id: Option<String>,
    /// Only on creation: the signing secret (`whsec_…`) for verifying the deliveries'
    /// `webhook-signature` (Standard Webhooks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `everything`, or `investor` (their own events only).
    pub sees: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    /// The sequence number delivered (or dead-lettered) last, as far as is stored.
    pub delivered_seq: Option<u64>,
}

impl SubscriptionView {
    fn new(s: &Subscription, secret: bool, delivered_seq: Option<u64>) -> Self {
        SubscriptionView {
            id: s.id.clone(),
            url: s.url.clone(),
            event_types: s.filter.event_types.iter().cloned().collect(),
            token_id: s.filter.token_id.clone(),
            secret: secret.then(|| s.secret.clone()),
            sees: match s.sees {
                Sees::Everything => "everything",
                Sees::Investor(_) => "investor",
            },
            created_at: s.created_at,
            delivered_seq,
        }
    }
}

fn random_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out
}

/// Subscribe a URL to the events you may read (Standard Webhooks: each delivery is signed with
/// `webhook-id`, `webhook-timestamp` and `webhook-signature`, retried with backoff, and kept in
/// the dead letters if it never succeeds). The answer holds the signing secret, once.
#[utoipa::path(post, path = "/subscriptions", tag = "events", request_body = SubscriptionRequest,
    responses((status = 201, body = SubscriptionView),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "`too_many_subscriptions`"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM, description = "`invalid_field`, `webhook_url_not_allowed`")))]
async fn subscribe(
    State(app): State<EventsState>,
    principal: Principal,
    Json(b): Json<SubscriptionRequest>,
) -> Result<Response, ApiError> {
    let sees = Sees::of(&principal)?;
    let url = webhooks::check_url(&b.url, app.webhooks.private_targets).await?;
    let filter = Filter {
        event_types: b.event_types,
        token_id: b.token_id,
    };
    filter.validate()?;
    if b.from_seq == Some(0) {
        return Err(ApiError::invalid("from_seq", "sequence numbers start at 1"));
    }
    let store = app.engine.store().as_ref();
    let existing = all(store).await.map_err(ApiError::unavailable)?;
    let live: Vec<&Subscription> = existing.iter().filter(|s| !s.deleted).collect();
    if live.len() >= IN_ALL
        || live.iter().filter(|s| s.owner == principal.subject).count() >= PER_OWNER
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_subscriptions",
            format!(
                "at most {PER_OWNER} subscriptions per caller ({IN_ALL} in all): delete one first"
            ),
        ));
    }
    let head = app.engine.read().await.journal.head().0;
    let subscription = Subscription {
        id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
        owner: principal.subject.clone(),
        sees,
        url: url.to_string(),
        secret: format!(
            "whsec_{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes())
        ),
        filter,
        created_at: time::OffsetDateTime::now_utc(),
        start_after: b.from_seq.map_or(head, |from| from - 1),
        replays: 0,
        replay_from: 0,
        deleted: false,
    };
    save(store, &subscription).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(SubscriptionView::new(&subscription, true, None)),
    )
        .into_response())
}

/// Your subscriptions (every one, to the platform admin).
#[utoipa::path(get, path = "/subscriptions", tag = "events",
    responses((status = 200, body = Vec<SubscriptionView>)))]
async fn list(
    State(app): State<EventsState>,
    principal: Principal,
) -> Result<axum::Json<Vec<SubscriptionView>>, ApiError> {
    Sees::of(&principal)?;
    let admin = principal.roles.contains(&Role::PlatformAdmin);
    let store = app.engine.store().as_ref();
    let mut views = Vec::new();
    for s in all(store).await.map_err(ApiError::unavailable)? {
        if !s.deleted && (admin || s.owner == principal.subject) {
            let delivered = store
                .checkpoint(&checkpoint_name(&s.id))
                .await
                .map_err(ApiError::unavailable)?;
            views.push(SubscriptionView::new(&s, false, delivered));
        }
    }
    Ok(axum::Json(views))
}

/// One of your subscriptions, with how far it was delivered.
#[utoipa::path(get, path = "/subscriptions/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn get_one(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let store = app.engine.store().as_ref();
    let s = own(store, &principal, &id).await?;
    let delivered = store
        .checkpoint(&checkpoint_name(&s.id))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(axum::Json(SubscriptionView::new(&s, false, delivered)))
}

/// Delete a subscription: nothing more is delivered to it.
#[utoipa::path(delete, path = "/subscriptions/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn unsubscribe(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = app.engine.store().as_ref();
    let mut s = own(store, &principal, &id).await?;
    s.deleted = true;
    save(store, &s).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Deliver again every event the subscription wants from this sequence number on.
    pub from_seq: u64,
}

/// Deliver again, in order, every event the subscription wants from `from_seq` on (at least
/// once: the `webhook-id` of a message delivered before is the same). It starts within a
/// second or two.
#[utoipa::path(post, path = "/subscriptions/{id}/replay", tag = "events", params(("id" = String, Path)), request_body = ReplayRequest,
    responses((status = 202, body = SubscriptionView), (status = 404, body = Problem, content_type = JSON_PROBLEM), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn replay(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(b): Json<ReplayRequest>,
) -> Result<Response, ApiError> {
    let store = app.engine.store().as_ref();
    let mut s = own(store, &principal, &id).await?;
    let head = app.engine.read().await.journal.head().0;
    if b.from_seq == 0 || b.from_seq > head + 1 {
        return Err(ApiError::invalid(
            "from_seq",
            format!("from_seq is a sequence number from 1 to {}", head + 1),
        ));
    }
    s.replays += 1;
    s.replay_from = b.from_seq;
    save(store, &s).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(SubscriptionView::new(&s, false, None)),
    )
        .into_response())
}

/// An event whose delivery failed every attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub seq: u64,
    pub event_id: String,
    pub event_type: String,
    pub attempts: u32,
    /// What the last attempt got: a status, or why no answer came.
    pub error: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: time::OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

/// The events that could not be delivered to this subscription, oldest first. Replay from a
/// dead letter's `seq` to send them again.
#[utoipa::path(get, path = "/subscriptions/{id}/dead-letters", tag = "events", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = DeadLetterPage), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn dead_letters(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let limit = q.limit()?;
    let after = q.position()?;
    let store = app.engine.store().as_ref();
    let s = own(store, &principal, &id).await?;
    let rows = store
        .index_range(
            &dead_letter_key(&s.id, after + 1),
            &format!("x{}|~", s.id),
            limit + 1,
        )
        .await
        .map_err(ApiError::unavailable)?;
    let mut items: Vec<DeadLetter> = rows
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map_or(String::new(), |d| d.seq.to_string())
    });
    Ok(axum::Json(DeadLetterPage { items, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only these event types, comma-separated.
    pub event_types: Option<String>,
    /// Only events of this token.
    pub token_id: Option<String>,
    /// Start after this sequence number (the `Last-Event-ID` header, if sent, wins); absent:
    /// from the next event.
    pub after: Option<u64>,
}

/// What a delivery carries (Standard Webhooks' payload): the event type, its time, and the
/// ledger entry.
#[derive(Serialize)]
pub struct Payload<'a> {
    #[serde(rename = "type")]
    pub ty: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: time::OffsetDateTime,
    pub data: EntryView,
}

pub fn payload(entry: &ledger::Entry) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        ty: &entry.event_type,
        timestamp: entry.at,
        data: EntryView::from(entry),
    })
    .unwrap_or_default()
}

/// The events as they are recorded, as server-sent events: `id` is the sequence number,
/// `event` the type, `data` the payload a webhook gets. Reconnect with `Last-Event-ID` to go on
/// where you stopped, missing nothing.
#[utoipa::path(get, path = "/stream", tag = "events", params(StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "the id of the last event received")),
    responses((status = 200, content_type = "text/event-stream", description = "one event per recorded entry you may see"),
        (status = 400, body = Problem, content_type = JSON_PROBLEM)))]
async fn stream(
    State(app): State<EventsState>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let sees = Sees::of(&principal)?;
    let filter = Filter {
        event_types: q
            .event_types
            .as_deref()
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        token_id: q.token_id,
    };
    filter.validate()?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Last-Event-ID must be the id (a sequence number) of an event received",
                    )
                    .at("Last-Event-ID")
                })?,
        ),
    };
    let after = match last_event_id.or(q.after) {
        Some(after) => after,
        None => app.engine.read().await.journal.head().0,
    };
    let store = app.engine.store().clone();
    let head = store.watch_head();
    struct Reading {
        store: std::sync::Arc<dyn EventStore>,
        head: tokio::sync::watch::Receiver<u64>,
        after: u64,
        ready: std::collections::VecDeque<SseEvent>,
        sees: Sees,
        filter: Filter,
    }
    let reading = Reading {
        store,
        head,
        after,
        ready: Default::default(),
        sees,
        filter,
    };
    let events = futures::stream::unfold(reading, |mut r| async move {
        loop {
            if let Some(event) = r.ready.pop_front() {
                return Some((Ok::<_, Infallible>(event), r));
            }
            let chunk = match r.store.read(r.after, 256).await {
                Ok(chunk) => chunk,
                Err(error) => {
                    // The client reconnects with Last-Event-ID and misses nothing.
                    tracing::warn!(%error, "the event stream could not read the log");
                    return None;
                }
            };
            if chunk.is_empty() {
                // Until the log grows (or a while, to notice a head another replica moved).
                let _ = tokio::time::timeout(Duration::from_millis(500), r.head.changed()).await;
                continue;
            }
            for (position, bytes) in chunk {
                r.after = position;
                let Some(entry) = history::entry(&bytes) else {
                    continue;
                };
                if r.sees.sees(&entry) && r.filter.matches(&entry) {
                    let data = String::from_utf8(payload(&entry)).unwrap_or_default();
                    r.ready.push_back(
                        SseEvent::default()
                            .id(position.to_string())
                            .event(entry.event_type.clone())
                            .data(data),
                    );
                }
            }
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // A proxy in front (ingress-nginx) passes each event on at once instead of buffering.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}
