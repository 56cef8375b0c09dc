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
    extract::{PageQuery, Path, Posted, Query},
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

    /// Whether `account` is one of investor `id`'s own (of any share class:
    /// `investor:{id}:{class}`).
    fn owns(id: &str, account: &str) -> bool {
        account.split_once(':').is_some_and(|(kind, rest)| {
            let who = rest.split_once(':').map_or(rest, |(who, _class)| who);
            who == id && matches!(kind, "investor" | "held" | "withheld")
        })
    }

    pub fn sees(&self, entry: &ledger::Entry) -> bool {
        match self {
            Sees::Everything => true,
            Sees::Investor(id) => {
                entry.subject == *id
                    || entry
                        .postings
                        .iter()
                        .any(|p| Self::owns(id, &p.from) || Self::owns(id, &p.to))
            }
        }
    }

    /// What of `entry` they may read: an investor gets only the postings to or from their own
    /// accounts (a distribution posts to every holder: the others' are not theirs to learn).
    pub fn view(&self, entry: &ledger::Entry) -> EntryView {
        let mut view = EntryView::from(entry);
        if let Sees::Investor(id) = self {
            view.postings
                .retain(|p| Self::owns(id, &p.from) || Self::owns(id, &p.to));
        }
        view
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
    /// Replays asked so far. Each starts an epoch with a stored position of its own (stored
    /// positions only ever grow), after `replay_after`.
    #[serde(default)]
    pub replays: u64,
    #[serde(default)]
    pub replay_after: u64,
    /// The fingerprints of the `Idempotency-Key` requests that made it and asked its latest
    /// replay.
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub replay_request: Option<String>,
    /// From its deletion mark (`y{id}`: written once, never rewritten), not from this row.
    #[serde(skip)]
    pub deleted: bool,
}

impl Subscription {
    pub fn wants(&self, entry: &ledger::Entry) -> bool {
        self.sees.sees(entry) && self.filter.matches(entry)
    }

    /// The name of its current epoch's stored position.
    pub fn checkpoint(&self) -> String {
        format!("webhook:{}#{}", self.id, self.replays)
    }

    /// Where its current epoch starts, before a position is stored.
    pub fn epoch_start(&self) -> u64 {
        match self.replays {
            0 => self.start_after,
            _ => self.replay_after,
        }
    }

    /// How far its current epoch got: the last sequence number delivered or dead-lettered.
    pub async fn position(
        &self,
        store: &dyn EventStore,
    ) -> Result<u64, libertum_store::StoreError> {
        Ok(store
            .checkpoint(&self.checkpoint())
            .await?
            .unwrap_or(self.epoch_start()))
    }
}

pub fn row_key(id: &str) -> String {
    format!("w{id}")
}

/// The checkpoint that says when the subscriptions last changed (milliseconds since the epoch):
/// the dispatcher reads this one value every second, and all of them only when it moved.
pub const CHANGED: &str = "webhook-subscriptions";

/// Records that the subscriptions changed (after the change is stored). A later change always
/// records a greater value: stored positions only grow.
async fn changed(store: &dyn EventStore) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    if let Err(error) = store
        .save_checkpoint(CHANGED, u64::try_from(now).unwrap_or_default())
        .await
    {
        // The dispatcher reads every subscription at least once a minute anyway.
        tracing::warn!(%error, "the subscriptions' change could not be recorded");
    }
}

/// A subscription's deletion mark.
fn deleted_key(id: &str) -> String {
    format!("y{id}")
}

pub fn dead_letter_key(id: &str, seq: u64) -> String {
    format!("x{id}|{seq:016x}")
}

/// Every row of `low..=high`, page by page.
async fn every_row(
    store: &dyn EventStore,
    low: &str,
    high: &str,
) -> Result<Vec<(String, Vec<u8>)>, libertum_store::StoreError> {
    let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
    let mut from = low.to_owned();
    loop {
        let page = store.index_range(&from, high, 1_000).await?;
        let more = page.len() == 1_000;
        if let Some((last, _)) = page.last() {
            // The smallest key after `last`.
            from = format!("{last}\u{1}");
        }
        rows.extend(page);
        if !more {
            return Ok(rows);
        }
    }
}

/// Every subscription stored, the deleted ones marked.
pub async fn all(store: &dyn EventStore) -> Result<Vec<Subscription>, libertum_store::StoreError> {
    let deleted: std::collections::HashSet<String> = every_row(store, "y", "y~")
        .await?
        .into_iter()
        .map(|(key, _)| key[1..].to_owned())
        .collect();
    Ok(every_row(store, "w", "w~")
        .await?
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice::<Subscription>(&bytes).ok())
        .map(|mut s| {
            s.deleted = deleted.contains(&s.id);
            s
        })
        .collect())
}

async fn save(store: &dyn EventStore, subscription: &Subscription) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(subscription).map_err(ApiError::internal)?;
    store
        .put_index(vec![(row_key(&subscription.id), bytes)])
        .await
        .map_err(ApiError::unavailable)
}

/// Subscription `id` as stored, deleted or not; `None` if there is none.
async fn stored(store: &dyn EventStore, id: &str) -> Result<Option<Subscription>, ApiError> {
    let key = row_key(id);
    let Some((_, bytes)) = store
        .index_last(&key, &key)
        .await
        .map_err(ApiError::unavailable)?
    else {
        return Ok(None);
    };
    let mark = deleted_key(id);
    let deleted = store
        .index_last(&mark, &mark)
        .await
        .map_err(ApiError::unavailable)?
        .is_some();
    Ok(serde_json::from_slice::<Subscription>(&bytes)
        .ok()
        .map(|s| Subscription { deleted, ..s }))
}

fn not_yours(id: &str) -> ApiError {
    ApiError::not_found(
        "subscription_not_found",
        format!("there is no subscription {id} of yours"),
    )
}

/// The caller's live subscription `id` (any, to the platform admin); 404 for anyone else's.
async fn own(
    store: &dyn EventStore,
    principal: &Principal,
    id: &str,
) -> Result<Subscription, ApiError> {
    Sees::of(principal)?;
    match stored(store, id).await? {
        Some(s)
            if !s.deleted
                && (s.owner == principal.subject
                    || principal.roles.contains(&Role::PlatformAdmin)) =>
        {
            Ok(s)
        }
        _ => Err(not_yours(id)),
    }
}

/// The head of the ledger: the last sequence number recorded.
async fn head(app: &EventsState) -> u64 {
    app.engine.read().await.journal.head().0
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
    /// delivered first), at most the next one; absent: from the next event.
    #[serde(default)]
    pub from_seq: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub token_id: Option<String>,
    /// Only when it is made (and to a retry under the same `Idempotency-Key`): the signing
    /// secret (`whsec_…`) for verifying the deliveries' `webhook-signature` (Standard Webhooks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `everything`, or `investor` (their own events only).
    pub sees: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    /// The sequence number delivered (or dead-lettered) last in the current replay epoch, as
    /// far as is stored.
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

fn hex_sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn replayed(mut response: Response) -> Response {
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    response
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used with another request",
    )
}

/// Subscribe a URL to the events you may read (Standard Webhooks: each delivery is signed with
/// `webhook-id`, `webhook-timestamp` and `webhook-signature`, retried with backoff, and kept in
/// the dead letters if it never succeeds). The answer holds the signing secret, once; with an
/// `Idempotency-Key`, a retry gets the same subscription (and secret) back.
#[utoipa::path(post, path = "/subscriptions", tag = "events", request_body = SubscriptionRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = SubscriptionView),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "`too_many_subscriptions`"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM, description = "`invalid_field`, `webhook_url_not_allowed`, `idempotency_key_reused`")))]
async fn subscribe(
    State(app): State<EventsState>,
    principal: Principal,
    posted: Posted<SubscriptionRequest>,
) -> Result<Response, ApiError> {
    let sees = Sees::of(&principal)?;
    let store = app.engine.store().as_ref();
    // With a key, the subscription's id follows from it (and the caller): a retry finds it.
    let (id, request) = match &posted.idempotency {
        Some((key, fingerprint)) => (
            format!("sub_{}", &hex_sha256(key)[..32]),
            Some(fingerprint.clone()),
        ),
        None => (format!("sub_{}", uuid::Uuid::now_v7().simple()), None),
    };
    if request.is_some()
        && let Some(earlier) = stored(store, &id).await?
    {
        if earlier.request != request || earlier.deleted {
            return Err(key_reused());
        }
        let view = SubscriptionView::new(&earlier, true, None);
        return Ok(replayed(
            (StatusCode::CREATED, axum::Json(view)).into_response(),
        ));
    }
    let b = posted.body;
    let url = webhooks::check_url(&b.url, app.webhooks.private_targets).await?;
    let filter = Filter {
        event_types: b.event_types,
        token_id: b.token_id,
    };
    filter.validate()?;
    let head = head(&app).await;
    if b.from_seq.is_some_and(|from| from == 0 || from > head + 1) {
        return Err(ApiError::invalid(
            "from_seq",
            format!(
                "from_seq is a sequence number from 1 to {} (the next one)",
                head + 1
            ),
        ));
    }
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
    let subscription = Subscription {
        id,
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
        replay_after: 0,
        request,
        replay_request: None,
        deleted: false,
    };
    save(store, &subscription).await?;
    changed(store).await;
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
                .checkpoint(&s.checkpoint())
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
        .checkpoint(&s.checkpoint())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(axum::Json(SubscriptionView::new(&s, false, delivered)))
}

/// Delete a subscription: nothing more is delivered to it. For good: it cannot come back.
#[utoipa::path(delete, path = "/subscriptions/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn unsubscribe(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = app.engine.store().as_ref();
    let s = own(store, &principal, &id).await?;
    store
        .put_index(vec![(deleted_key(&s.id), Vec::new())])
        .await
        .map_err(ApiError::unavailable)?;
    changed(store).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Deliver again every event the subscription wants from this sequence number on.
    pub from_seq: u64,
}

/// Deliver again, in order, every event the subscription wants from `from_seq` on (at least
/// once: the `webhook-id` of a message delivered before is the same). If delivery had not yet
/// reached `from_seq`, it goes on from where it was: nothing is skipped. It starts within a
/// second or two.
#[utoipa::path(post, path = "/subscriptions/{id}/replay", tag = "events", params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)), request_body = ReplayRequest,
    responses((status = 202, body = SubscriptionView), (status = 404, body = Problem, content_type = JSON_PROBLEM), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn replay(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
    posted: Posted<ReplayRequest>,
) -> Result<Response, ApiError> {
    let store = app.engine.store().as_ref();
    let mut s = own(store, &principal, &id).await?;
    let request = posted.idempotency.as_ref().map(|(_, f)| f.clone());
    if request.is_some() && s.replay_request == request {
        let view = SubscriptionView::new(&s, false, None);
        return Ok(replayed(
            (StatusCode::ACCEPTED, axum::Json(view)).into_response(),
        ));
    }
    let from_seq = posted.body.from_seq;
    let head = head(&app).await;
    if from_seq == 0 || from_seq > head + 1 {
        return Err(ApiError::invalid(
            "from_seq",
            format!("from_seq is a sequence number from 1 to {}", head + 1),
        ));
    }
    let position = s.position(store).await.map_err(ApiError::unavailable)?;
    s.replay_after = (from_seq - 1).min(position);
    s.replays += 1;
    s.replay_request = request;
    save(store, &s).await?;
    changed(store).await;
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
    responses((status = 200, body = DeadLetterPage), (status = 404, body = Problem, content_type = JSON_PROBLEM), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn dead_letters(
    State(app): State<EventsState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let limit = q.limit()?;
    let after = q.position()?;
    let from = after.checked_add(1).ok_or_else(|| {
        ApiError::invalid(
            "cursor",
            "cursor must come from a previous page's next_cursor",
        )
    })?;
    let store = app.engine.store().as_ref();
    let s = own(store, &principal, &id).await?;
    let rows = store
        .index_range(
            &dead_letter_key(&s.id, from),
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

/// The body a subscriber with `sees` gets for `entry`.
pub fn payload(entry: &ledger::Entry, sees: &Sees) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        ty: &entry.event_type,
        timestamp: entry.at,
        data: sees.view(entry),
    })
    .unwrap_or_default()
}

/// How long one stream stays open: the caller then reconnects (with `Last-Event-ID`, missing
/// nothing), presenting a bearer token that is still valid.
const STREAM_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The events as they are recorded, as server-sent events: `id` is the sequence number,
/// `event` the type, `data` the payload a webhook gets. Reconnect with `Last-Event-ID` to go on
/// where you stopped, missing nothing; a stream ends after 15 minutes (reconnect the same way).
#[utoipa::path(get, path = "/stream", tag = "events", params(StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "the id of the last event received")),
    responses((status = 200, content_type = "text/event-stream", description = "one event per recorded entry you may see"),
        (status = 400, body = Problem, content_type = JSON_PROBLEM),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
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
    let head = head(&app).await;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|id| *id <= head)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Last-Event-ID must be the id (a sequence number) of an event received",
                    )
                    .at("Last-Event-ID")
                })?,
        ),
    };
    if q.after.is_some_and(|after| after > head) {
        return Err(ApiError::invalid(
            "after",
            format!("after is a sequence number recorded: at most {head}"),
        ));
    }
    let after = last_event_id.or(q.after).unwrap_or(head);
    let store = app.engine.store().clone();
    let watch = store.watch_head();
    struct Reading {
        store: std::sync::Arc<dyn EventStore>,
        head: tokio::sync::watch::Receiver<u64>,
        after: u64,
        ready: std::collections::VecDeque<SseEvent>,
        sees: Sees,
        filter: Filter,
        until: tokio::time::Instant,
    }
    let reading = Reading {
        store,
        head: watch,
        after,
        ready: Default::default(),
        sees,
        filter,
        until: tokio::time::Instant::now() + STREAM_LIFETIME,
    };
    let events = futures::stream::unfold(reading, |mut r| async move {
        loop {
            if let Some(event) = r.ready.pop_front() {
                return Some((Ok::<_, Infallible>(event), r));
            }
            if tokio::time::Instant::now() >= r.until {
                return None;
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
                    let data = String::from_utf8(payload(&entry, &r.sees)).unwrap_or_default();
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
