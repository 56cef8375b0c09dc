//! `/v1/assets`: the HTTP side of the registry.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use libertum_domain::{Amount, Country, Currency, Id, asset};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{IfMatch, Json, Path, Posted, Query, cursor_position, etag, page_limit},
    into_response, json_reply,
};
use libertum_store::{Engine, Submission};
use serde::{Deserialize, Serialize};
use time::Date;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::{AssetsState, Command, cache_key};

type AppState = Engine<AssetsState>;

pub fn router(engine: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(get_one, update))
        .routes(routes!(add_document))
        .routes(routes!(add_valuation))
        .routes(routes!(transition))
        .with_state(engine)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationDto {
    #[schema(example = "Friedrichstrasse 123")]
    pub address: String,
    #[schema(example = "Berlin")]
    pub city: String,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[schema(value_type = String, example = "DE")]
    pub country: Country,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetForCreate {
    #[schema(example = "Friedrichstrasse 123 residential building")]
    pub name: String,
    /// Open set, for example `real_estate`.
    #[schema(example = "real_estate")]
    pub kind: String,
    pub location: LocationDto,
    /// The legal owner, usually the SPV.
    #[schema(example = "Friedrich 123 SPV GmbH")]
    pub legal_owner: String,
    pub description: Option<String>,
}

/// Fields to change; absent ones keep their value. Only a draft can be edited.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetForUpdate {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub location: Option<LocationDto>,
    pub legal_owner: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentForCreate {
    #[schema(example = "Title deed")]
    pub title: String,
    /// For example `title_deed`, `appraisal`, `spv_articles`.
    #[schema(example = "title_deed")]
    pub kind: String,
    /// SHA-256 of the file, 64 lower-case hex characters.
    pub sha256: String,
    pub size_bytes: u64,
    #[schema(example = "application/pdf")]
    pub media_type: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValuationForCreate {
    /// Minor units, as a string of digits.
    #[schema(value_type = String, example = "250000000")]
    pub amount: Amount,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    #[schema(value_type = String, format = Date, example = "2026-01-15")]
    pub effective_date: Date,
    pub appraiser: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    #[schema(value_type = String, example = "submit")]
    pub action: asset::Action,
    /// Required to reject, suspend or retire.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub title: String,
    pub kind: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub added_at: time::OffsetDateTime,
    pub added_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ValuationView {
    #[schema(value_type = String)]
    pub amount: Amount,
    #[schema(value_type = String)]
    pub currency: Currency,
    #[schema(value_type = String, format = Date)]
    pub effective_date: Date,
    pub appraiser: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: time::OffsetDateTime,
    pub recorded_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusChangeView {
    #[schema(value_type = String)]
    pub from: asset::Status,
    #[schema(value_type = String)]
    pub to: asset::Status,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: time::OffsetDateTime,
    pub actor: String,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssetView {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub location: LocationDto,
    pub legal_owner: String,
    pub description: Option<String>,
    /// draft, submitted, approved, rejected, tokenized, suspended or retired.
    #[schema(value_type = String)]
    pub status: asset::Status,
    pub token_id: Option<String>,
    pub documents: Vec<DocumentView>,
    pub valuations: Vec<ValuationView>,
    pub history: Vec<StatusChangeView>,
    /// Also the ETag.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: time::OffsetDateTime,
}

impl From<&asset::Asset> for AssetView {
    fn from(a: &asset::Asset) -> Self {
        let p = &a.profile;
        AssetView {
            id: a.id.to_string(),
            name: p.name.clone(),
            kind: p.kind.clone(),
            location: LocationDto {
                address: p.location.address.clone(),
                city: p.location.city.clone(),
                postal_code: p.location.postal_code.clone(),
                country: p.location.country,
            },
            legal_owner: p.legal_owner.clone(),
            description: p.description.clone(),
            status: a.status,
            token_id: a.token_id.as_ref().map(Id::to_string),
            documents: a
                .documents
                .iter()
                .map(|d| DocumentView {
                    id: d.id.to_string(),
                    title: d.title.clone(),
                    kind: d.kind.clone(),
                    sha256: d.sha256.clone(),
                    size_bytes: d.size_bytes,
                    media_type: d.media_type.clone(),
                    added_at: d.added_at,
                    added_by: d.added_by.clone(),
                })
                .collect(),
            valuations: a
                .valuations
                .iter()
                .map(|v| ValuationView {
                    amount: v.amount,
                    currency: v.currency,
                    effective_date: v.effective_date,
                    appraiser: v.appraiser.clone(),
                    recorded_at: v.recorded_at,
                    recorded_by: v.recorded_by.clone(),
                })
                .collect(),
            history: a
                .history
                .iter()
                .map(|h| StatusChangeView {
                    from: h.from,
                    to: h.to,
                    at: h.at,
                    actor: h.actor.clone(),
                    reason: h.reason.clone(),
                })
                .collect(),
            version: a.version,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssetPage {
    pub items: Vec<AssetView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// draft, submitted, approved, rejected, tokenized, suspended or retired.
    #[param(value_type = Option<String>)]
    pub status: Option<asset::Status>,
    pub kind: Option<String>,
    /// Case-insensitive text in the name, description, city or legal owner.
    pub text: Option<String>,
    /// 1-200, default 50.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

fn new_id(prefix: &str) -> Id {
    Id::from(format!("{prefix}_{}", uuid::Uuid::now_v7().simple()))
}

fn location(l: LocationDto) -> asset::Location {
    asset::Location {
        address: l.address,
        city: l.city,
        postal_code: l.postal_code,
        country: l.country,
    }
}

/// Submits `command` and answers with the asset it touched.
async fn run(
    engine: &AppState,
    actor: String,
    command: asset::Command,
    id: Id,
    status: StatusCode,
    idempotency: Option<(String, String)>,
) -> Result<Response, ApiError> {
    let reply = engine
        .submit(Submission {
            command: Some(Command { actor, command }),
            idempotency,
            checkpoint: None,
            reply: Box::new(move |state: &AssetsState, _| match state.0.get(&id) {
                Some(a) => json_reply(status, &AssetView::from(a)),
                None => json_reply(StatusCode::NOT_FOUND, &serde_json::json!({})),
            }),
            partition: None,
            span: tracing::Span::current(),
        })
        .await?;
    Ok(into_response(reply))
}

/// Register an asset, as a draft.
#[utoipa::path(post, path = "", tag = "assets", request_body = AssetForCreate,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the first response")),
    responses((status = 201, body = AssetView), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn register(
    State(engine): State<AppState>,
    principal: Principal,
    placed: Option<axum::Extension<libertum_platform::replica::Partition>>,
    posted: Posted<AssetForCreate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::AssetRegister)?;
    let actor = principal.subject;
    let b = posted.body;
    let profile = asset::profile(
        &b.name,
        &b.kind,
        location(b.location),
        &b.legal_owner,
        b.description.as_deref(),
    )?;
    // In the partition the forwarding layer placed the request in (the one whose owner runs
    // this), else anywhere.
    let id = match placed {
        Some(axum::Extension(partition)) => Id::from(libertum_store::partition::new_id(
            "ast",
            partition.0,
            engine.partitions(),
        )),
        None => new_id("ast"),
    };
    run(
        &engine,
        actor,
        asset::Command::Register {
            id: id.clone(),
            profile,
        },
        id,
        StatusCode::CREATED,
        posted.idempotency,
    )
    .await
}

/// List assets, filtered, in registration order.
#[utoipa::path(get, path = "", tag = "assets", params(ListQuery),
    responses((status = 200, body = AssetPage), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list(
    State(engine): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<AssetPage>, ApiError> {
    principal.allow(Operation::AssetRead)?;
    let limit = page_limit(q.limit)?;
    let after = cursor_position(q.cursor.as_deref())?;
    let filter = asset::Filter {
        status: q.status,
        kind: q.kind,
        text: q.text,
    };
    let state = engine.read().await;
    let (items, next) = state.0.list(&filter, after, limit);
    Ok(axum::Json(AssetPage {
        items: items.into_iter().map(AssetView::from).collect(),
        next_cursor: next.map(|c| c.to_string()),
    }))
}

/// Get one asset. Served from the read cache, which every change of the asset invalidates.
#[utoipa::path(get, path = "/{id}", tag = "assets", params(("id" = String, Path)),
    responses((status = 200, body = AssetView, headers(("ETag" = String))), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_one(
    State(engine): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::AssetRead)?;
    let key = cache_key(&id);
    let cache = engine.cache().cloned();
    if let Some(cache) = &cache
        && let Some(hit) = cache.get(&key).await
    {
        return Ok(cached_response(hit));
    }
    // Versioned: the cache keeps a value only if it is newer than any invalidation it saw, so
    // a stale representation can never be put back after one, from this replica or another.
    let state = engine.read().await;
    let asset = state.0.get(&id).ok_or_else(|| {
        ApiError::not_found("asset_not_found", format!("asset {id} does not exist"))
    })?;
    let mut value = format!("{}\n", asset.version).into_bytes();
    serde_json::to_writer(&mut value, &AssetView::from(asset)).map_err(ApiError::internal)?;
    let value = Bytes::from(value);
    if let Some(cache) = &cache {
        // The asset's version is its subject version: an invalidation by a newer event keeps
        // this from landing if this replica's state is behind.
        cache.put(&key, asset.version, value.clone()).await;
    }
    Ok(cached_response(value))
}

/// A cached entry is `version\njson`.
fn cached_response(value: Bytes) -> Response {
    let split = value.iter().position(|b| *b == b'\n').unwrap_or(0);
    let version = std::str::from_utf8(&value[..split])
        .unwrap_or("0")
        .to_owned();
    let body = value.slice(split + 1..);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, tag);
    }
    response
}

/// Edit a draft asset. Needs `If-Match` with the version being changed.
#[utoipa::path(patch, path = "/{id}", tag = "assets", request_body = AssetForUpdate,
    params(("id" = String, Path), ("If-Match" = String, Header, description = "the ETag of the version being changed")),
    responses((status = 200, body = AssetView), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 412, body = Problem, content_type = "application/problem+json"), (status = 428, body = Problem, content_type = "application/problem+json")))]
async fn update(
    State(engine): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
    Json(b): Json<AssetForUpdate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::AssetUpdate)?;
    let actor = principal.subject;
    let current = {
        let state = engine.read().await;
        state.0.get(&id).map(|a| a.profile.clone())
    }
    .ok_or_else(|| ApiError::not_found("asset_not_found", format!("asset {id} does not exist")))?;
    let profile = asset::profile(
        b.name.as_deref().unwrap_or(&current.name),
        b.kind.as_deref().unwrap_or(&current.kind),
        b.location.map(location).unwrap_or(current.location),
        b.legal_owner.as_deref().unwrap_or(&current.legal_owner),
        b.description.as_deref().or(current.description.as_deref()),
    )?;
    let id = Id::from(id);
    let mut response = run(
        &engine,
        actor,
        asset::Command::Update {
            id: id.clone(),
            expected_version: version,
            profile,
        },
        id,
        StatusCode::OK,
        None,
    )
    .await?;
    if let Ok(tag) = HeaderValue::from_str(&etag(version + 1)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    Ok(response)
}

/// Attach a document (by content hash) to a draft asset.
#[utoipa::path(post, path = "/{id}/documents", tag = "assets", request_body = DocumentForCreate,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = AssetView), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn add_document(
    State(engine): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    posted: Posted<DocumentForCreate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::AssetDocumentAdd)?;
    let actor = principal.subject;
    let b = posted.body;
    let id = Id::from(id);
    let document = asset::DocumentForCreate {
        title: b.title,
        kind: b.kind,
        sha256: b.sha256,
        size_bytes: b.size_bytes,
        media_type: b.media_type,
    };
    let command = asset::Command::AddDocument {
        id: id.clone(),
        document_id: new_id("doc"),
        document,
    };
    run(
        &engine,
        actor,
        command,
        id,
        StatusCode::CREATED,
        posted.idempotency,
    )
    .await
}

/// Append a valuation to the asset's history.
#[utoipa::path(post, path = "/{id}/valuations", tag = "assets", request_body = ValuationForCreate,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = AssetView), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn add_valuation(
    State(engine): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    posted: Posted<ValuationForCreate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::AssetValuationAdd)?;
    let actor = principal.subject;
    let b = posted.body;
    let id = Id::from(id);
    let valuation = asset::ValuationForCreate {
        amount: b.amount,
        currency: b.currency,
        effective_date: b.effective_date,
        appraiser: b.appraiser,
    };
    run(
        &engine,
        actor,
        asset::Command::AddValuation {
            id: id.clone(),
            valuation,
        },
        id,
        StatusCode::CREATED,
        posted.idempotency,
    )
    .await
}

/// Move the asset through its lifecycle: submit, approve, reject, reopen, suspend, reactivate or retire.
/// `tokenized` follows only from a token class being created for an approved asset.
#[utoipa::path(post, path = "/{id}/transitions", tag = "assets", request_body = TransitionRequest,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = AssetView), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn transition(
    State(engine): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    posted: Posted<TransitionRequest>,
) -> Result<Response, ApiError> {
    principal.allow(match posted.body.action {
        asset::Action::Submit | asset::Action::Reopen => Operation::AssetSubmit,
        _ => Operation::AssetReview,
    })?;
    let actor = principal.subject;
    let b = posted.body;
    let id = Id::from(id);
    let command = asset::Command::Transition {
        id: id.clone(),
        action: b.action,
        reason: b.reason,
    };
    run(
        &engine,
        actor,
        command,
        id,
        StatusCode::OK,
        posted.idempotency,
    )
    .await
}
