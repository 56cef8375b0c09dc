//! `/v1/tokens/{token_id}/movements`: a token's movements and their reversal (see
//! `libertum_domain::token::reversal`).
//!
//! Movements are read from the index of the token's partition, where each one's record was
//! written with its event, never from memory; a reversed one is joined with the row that
//! names its reversal.

use std::sync::Arc;

use axum::{extract::State, response::Response};
use libertum_domain::token::{self, keys};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{Path, Posted, Query, page_limit},
};
use libertum_store::{Engine, EventStore};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    api::{JSON_PROBLEM, operate_one, token_not_found},
    dto::*,
    state::TokensState,
};

type AppState = Engine<TokensState>;

/// The most rows one page reads while looking for movements not reversed.
const SCAN_AT_MOST: usize = 10_000;

/// The stores a token's index rows are in: its partition's, and the registry's for what it
/// did before the service's writes were partitioned.
fn stores_of<'a>(engine: &'a AppState, token_id: &str) -> Vec<&'a Arc<dyn EventStore>> {
    let partition = engine.partition_of_key(token_id);
    let mut stores = vec![engine.store_of(partition)];
    if partition != 0 {
        stores.push(engine.store_of(0));
    }
    stores
}

/// The rows of `low..=high` in every store of the token, in key order, at most `limit`.
async fn rows(
    stores: &[&Arc<dyn EventStore>],
    low: &str,
    high: &str,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut found = Vec::new();
    for store in stores {
        found.extend(
            store
                .index_range(low, high, limit)
                .await
                .map_err(ApiError::unavailable)?,
        );
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.dedup_by(|a, b| a.0 == b.0);
    found.truncate(limit);
    Ok(found)
}

/// The rows of `low..=high` of `token_id`'s index, in key order, at most `limit`.
pub(crate) async fn rows_of(
    engine: &AppState,
    token_id: &str,
    low: &str,
    high: &str,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    rows(&stores_of(engine, token_id), low, high, limit).await
}

fn decode(key: &str, bytes: &[u8]) -> Result<token::Movement, ApiError> {
    token::Movement::from_row(bytes)
        .ok_or_else(|| ApiError::unavailable(format!("index row {key} is unreadable")))
}

/// The version a row's key ends with (`…|{version:016x}`).
fn version_of(key: &str) -> u64 {
    key.rsplit('|')
        .next()
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// The reversals of the token's movements `low..=high`: `(original, reversal)` by version.
async fn reversals(
    stores: &[&Arc<dyn EventStore>],
    token_id: &str,
    low: u64,
    high: u64,
) -> Result<std::collections::BTreeMap<u64, u64>, ApiError> {
    let rows = rows(
        stores,
        &keys::reversal(token_id, low),
        &keys::reversal(token_id, high),
        usize::MAX,
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, value)| Some((version_of(&key), keys::seq_of(&value)?)))
        .collect())
}

/// The movement that took `token_id` to `version`, with its reversal if it was reversed;
/// `None` if no event of the token moved anything at that version.
pub(crate) async fn find(
    engine: &AppState,
    token_id: &str,
    version: u64,
) -> Result<Option<token::Movement>, ApiError> {
    if engine.read().await.0.token(token_id).is_none() {
        return Err(token_not_found(token_id));
    }
    let stores = stores_of(engine, token_id);
    let key = keys::movement(token_id, version);
    let Some((key, bytes)) = rows(&stores, &key, &key, 1).await?.pop() else {
        return Ok(None);
    };
    let mut movement = decode(&key, &bytes)?;
    movement.reversed_by = reversals(&stores, token_id, version, version)
        .await?
        .remove(&version);
    Ok(Some(movement))
}

/// Gives each reversal of a batch the record of the movement it reverses, from the index: the
/// caller names the movement, never describes it.
pub(crate) async fn fill_reversals(
    engine: &AppState,
    token_id: &str,
    operations: &mut [token::Operation],
) -> Result<(), ApiError> {
    for operation in operations {
        if let token::Operation::Reverse {
            version, original, ..
        } = operation
        {
            *original = find(engine, token_id, *version).await?;
        }
    }
    Ok(())
}

fn movement_not_found(version: u64) -> ApiError {
    ApiError::not_found(
        "movement_not_found",
        format!("no movement made version {version} of this token"),
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MovementQuery {
    /// `true`: only the movements reversed; `false`: only those not reversed.
    pub reversed: Option<bool>,
    /// 1-200, 50 by default.
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A token's movements in the order they happened. With `reversed=false` a page may hold
/// fewer than `limit` items (it reads at most 10,000 rows): follow `next_cursor` until it is
/// absent.
#[utoipa::path(get, path = "/{token_id}/movements", tag = "movements",
    params(("token_id" = String, Path), MovementQuery),
    responses((status = 200, body = Page<MovementView>), (status = 404, body = Problem, content_type = JSON_PROBLEM), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn list(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<MovementQuery>,
) -> Result<axum::Json<Page<MovementView>>, ApiError> {
    principal.allow(Operation::MovementRead)?;
    let limit = page_limit(q.limit)?;
    // (A version's successor must exist: the greatest is no cursor.)
    let after: u64 = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse()
            .ok()
            .filter(|c: &u64| *c < u64::MAX)
            .ok_or_else(|| {
                ApiError::invalid(
                    "cursor",
                    "cursor must come from a previous page's next_cursor",
                )
            })?,
    };
    if engine.read().await.0.token(&token_id).is_none() {
        return Err(token_not_found(&token_id));
    }
    let stores = stores_of(&engine, &token_id);
    let mut items: Vec<token::Movement> = Vec::with_capacity(limit + 1);
    let mut next = None;
    match q.reversed {
        Some(true) => {
            let (low, high) = keys::reversals_after(&token_id, after);
            for (key, value) in rows(&stores, &low, &high, limit + 1).await? {
                let version = version_of(&key);
                let at = keys::movement(&token_id, version);
                let Some((key, bytes)) = rows(&stores, &at, &at, 1).await?.pop() else {
                    continue;
                };
                let mut movement = decode(&key, &bytes)?;
                movement.reversed_by = keys::seq_of(&value);
                items.push(movement);
            }
        }
        _ => {
            let mut from = after;
            // `from` only grows to versions read back, never the greatest.
            let mut read = 0;
            while items.len() <= limit {
                let chunk = if q.reversed.is_some() {
                    1_000
                } else {
                    limit + 1
                };
                let (low, high) = keys::movements_after(&token_id, from);
                let found = rows(&stores, &low, &high, chunk).await?;
                let Some(last) = found.last().map(|(key, _)| version_of(key)) else {
                    break;
                };
                let reversed = reversals(&stores, &token_id, from + 1, last).await?;
                for (key, bytes) in &found {
                    let mut movement = decode(key, bytes)?;
                    movement.reversed_by = reversed.get(&movement.version).copied();
                    if q.reversed == Some(false) && movement.reversed_by.is_some() {
                        continue;
                    }
                    items.push(movement);
                    if items.len() > limit {
                        break;
                    }
                }
                read += found.len();
                from = last;
                if found.len() < chunk || items.len() > limit {
                    break;
                }
                if read >= SCAN_AT_MOST {
                    // A page's cost is bounded: the caller goes on from here.
                    next = Some(last.to_string());
                    break;
                }
            }
        }
    }
    if items.len() > limit {
        items.truncate(limit);
        next = items.last().map(|m| m.version.to_string());
    }
    Ok(axum::Json(Page {
        items: items
            .iter()
            .map(|m| MovementView::new(&token_id, m))
            .collect(),
        next_cursor: next,
    }))
}

/// One movement of a token, by the version its event made.
#[utoipa::path(get, path = "/{token_id}/movements/{version}", tag = "movements",
    params(("token_id" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = MovementView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn get(
    State(engine): State<AppState>,
    principal: Principal,
    Path((token_id, version)): Path<(String, u64)>,
) -> Result<axum::Json<MovementView>, ApiError> {
    principal.allow(Operation::MovementRead)?;
    let movement = find(&engine, &token_id, version)
        .await?
        .ok_or_else(|| movement_not_found(version))?;
    Ok(axum::Json(MovementView::new(&token_id, &movement)))
}

/// Reverse a movement, once, with a reason: the same amount goes back the other way between
/// the same accounts (an issuance is taken out of the supply, a redemption issued again), as a
/// new movement that names the original. It is checked against the rules as they are now
/// (pause, freezes, the balance free to move, eligibility, supply cap, limits of the one who
/// gets the tokens back), and refused, changing nothing, if it would break one.
#[utoipa::path(post, path = "/{token_id}/movements/{version}/reversal", tag = "movements", request_body = ReversalRequest,
    params(("token_id" = String, Path), ("version" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM, description = "no such token, or no movement at that version"),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "already reversed, a reversal itself, or refused by a rule; `code` names it"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn reverse(
    State(engine): State<AppState>,
    principal: Principal,
    Path((token_id, version)): Path<(String, u64)>,
    posted: Posted<ReversalRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::MovementReverse)?;
    // A movement's row never changes once written; whether it may still be reversed is the
    // writer's to decide, so that a retry under the same Idempotency-Key gets its first
    // answer back.
    let original = find(&engine, &token_id, version).await?;
    let operation = token::Operation::Reverse {
        version,
        reason: posted.body.reason,
        original,
    };
    operate_one(
        &engine,
        principal.subject,
        token_id,
        operation,
        posted.idempotency,
    )
    .await
}
