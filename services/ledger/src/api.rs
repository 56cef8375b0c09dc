//! `/v1/ledger`: entries, balances and cap tables at any point, verification, reconciliation.

use axum::{extract::State, http::StatusCode};
use libertum_domain::{
    Amount, Timestamp,
    ledger::{self, AsOf},
};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{Path, Query, cursor_position, page_limit},
};
use libertum_store::{Engine, EventStore};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{history, reconcile, state::LedgerState};

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine<LedgerState>,
    pub tokens_url: String,
    pub http: reqwest::Client,
}

pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_entries))
        .routes(routes!(get_entry))
        .routes(routes!(head))
        .routes(routes!(balance))
        .routes(routes!(cap_table))
        .routes(routes!(verify))
        .routes(routes!(reconcile::reconcile))
        .with_state(state)
}

const JSON_PROBLEM: &str = "application/problem+json";

#[derive(Debug, Serialize, ToSchema)]
pub struct PostingView {
    pub from: String,
    pub to: String,
    /// A token id, or a currency code for money.
    pub unit: String,
    #[schema(value_type = String)]
    pub amount: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub actor: String,
    pub postings: Vec<PostingView>,
    /// A reversing entry: the movement it reverses (in the hashed bytes), and that movement's
    /// entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses: Option<ReversesView>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReversesView {
    pub token_id: String,
    /// The token's version the reversed movement made.
    pub version: u64,
    /// The entry that recorded the reversed movement (`GET /v1/ledger/entries/{seq}`); absent
    /// in webhooks and the event stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl EntryView {
    /// The entry's view, with the sequence number of the entry it reverses looked up.
    async fn of(app: &AppState, entry: &ledger::Entry) -> Result<EntryView, ApiError> {
        let mut view = EntryView::from(entry);
        if let Some(reversed) = &entry.reverses {
            let seq =
                history::seq_of_token_version(&app.engine, &reversed.token_id, reversed.version)
                    .await?;
            view.reverses = Some(ReversesView {
                token_id: reversed.token_id.to_string(),
                version: reversed.version,
                seq,
            });
        }
        Ok(view)
    }
}

impl From<&ledger::Entry> for EntryView {
    fn from(e: &ledger::Entry) -> Self {
        EntryView {
            seq: e.seq,
            at: e.at,
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            subject: e.subject.clone(),
            actor: e.actor.clone(),
            postings: e
                .postings
                .iter()
                .map(|p| PostingView {
                    from: p.from.clone(),
                    to: p.to.clone(),
                    unit: p.unit.clone(),
                    amount: p.amount,
                })
                .collect(),
            reverses: e.reverses.as_ref().map(|r| ReversesView {
                token_id: r.token_id.to_string(),
                version: r.version,
                seq: None,
            }),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryPage {
    pub items: Vec<EntryView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntryQuery {
    /// Entries of this token: its events and every posting in it.
    pub token_id: Option<String>,
    /// Entries with a posting from or to this account, e.g. `investor:inv_...`.
    pub account: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|s| Timestamp::parse(s, &time::format_description::well_known::Rfc3339))
        .transpose()
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("{field} must be an RFC 3339 time such as 2026-01-31T23:59:59Z"),
            )
        })
}

/// Entries in sequence order, filtered by token, account and time range.
#[utoipa::path(get, path = "/entries", tag = "ledger", params(EntryQuery),
    responses((status = 200, body = EntryPage), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn list_entries(
    State(app): State<AppState>,
    principal: Principal,
    Query(q): Query<EntryQuery>,
) -> Result<axum::Json<EntryPage>, ApiError> {
    principal.allow(Operation::LedgerRead)?;
    let limit = page_limit(q.limit)?;
    let after = cursor_position(q.cursor.as_deref())? as usize;
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    let matches = |e: &ledger::Entry| {
        q.token_id.as_deref().is_none_or(|t| {
            e.subject == t
                || e.token.as_ref().is_some_and(|(id, _)| id.as_str() == t)
                || e.postings.iter().any(|p| p.unit == t)
        }) && q
            .account
            .as_deref()
            .is_none_or(|a| e.postings.iter().any(|p| p.from == a || p.to == a))
            && from.is_none_or(|f| e.at >= f)
            && to.is_none_or(|t| e.at < t)
    };
    // The entries are read from the log, in chunks: a page costs what it scans, never the
    // whole history in memory.
    let (found, next) =
        history::entries(app.engine.store().as_ref(), after as u64, limit, matches).await?;
    let mut items = Vec::with_capacity(found.len());
    for entry in &found {
        items.push(EntryView::of(&app, entry).await?);
    }
    Ok(axum::Json(EntryPage {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// One entry by sequence number.
#[utoipa::path(get, path = "/entries/{seq}", tag = "ledger", params(("seq" = u64, Path)),
    responses((status = 200, body = EntryView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn get_entry(
    State(app): State<AppState>,
    principal: Principal,
    Path(seq): Path<u64>,
) -> Result<axum::Json<EntryView>, ApiError> {
    principal.allow(Operation::LedgerRead)?;
    let entry = history::entry_at(app.engine.store().as_ref(), seq)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("entry_not_found", format!("there is no entry {seq}"))
        })?;
    Ok(axum::Json(EntryView::of(&app, &entry).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Head {
    pub seq: u64,
    /// The hash of the latest entry: publish it to let anyone check later that history was not rewritten.
    pub hash: String,
}

/// The chain head.
#[utoipa::path(get, path = "/head", tag = "ledger", responses((status = 200, body = Head)))]
async fn head(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<Head>, ApiError> {
    principal.allow(Operation::LedgerRead)?;
    let (seq, hash) = app.engine.read().await.journal.head();
    Ok(axum::Json(Head { seq, hash }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    /// A token id or a currency code.
    pub unit: String,
    /// The balance after this entry.
    pub as_of_seq: Option<u64>,
    /// RFC 3339: the balance at the end of this moment.
    pub as_of: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceView {
    pub account: String,
    pub unit: String,
    /// Signed: issuance and distribution accounts go negative.
    #[schema(example = "-1000")]
    pub balance: String,
    pub as_of_seq: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub as_of: Option<Timestamp>,
}

fn as_of(seq: Option<u64>, at: Option<Timestamp>) -> Result<AsOf, ApiError> {
    match (seq, at) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "as_of",
            "give as_of_seq or as_of, not both",
        )),
        (Some(s), None) => Ok(AsOf::Seq(s)),
        (None, Some(t)) => Ok(AsOf::Time(t)),
        (None, None) => Ok(AsOf::Latest),
    }
}

/// The balance of an account (e.g. `investor:inv_...`, `held:inv_...` for what waits in an
/// investor's pending holds, `issuance:tok_...`) at any sequence or time.
#[utoipa::path(get, path = "/accounts/{account}/balance", tag = "ledger", params(("account" = String, Path), BalanceQuery),
    responses((status = 200, body = BalanceView), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn balance(
    State(app): State<AppState>,
    principal: Principal,
    Path(account): Path<String>,
    Query(q): Query<BalanceQuery>,
) -> Result<axum::Json<BalanceView>, ApiError> {
    // An investor's own accounts: their holdings, and what waits in their pending holds.
    match ledger::account_holder(&account) {
        Some(investor) => principal.allow_own(Operation::BalanceRead, investor)?,
        None => principal.allow(Operation::BalanceRead)?,
    }
    let at = parse_time("as_of", q.as_of.as_deref())?;
    let point = as_of(q.as_of_seq, at)?;
    let (reading, known) = {
        let state = app.engine.read().await;
        (
            history::Reading::new(point, state.journal.head().0),
            state.journal.account(&account, &q.unit),
        )
    };
    let balance = reading.balance(app.engine.store().as_ref(), known).await?;
    Ok(axum::Json(BalanceView {
        account,
        unit: q.unit,
        balance: balance.to_string(),
        as_of_seq: q.as_of_seq,
        as_of: at,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CapTableQuery {
    pub as_of_seq: Option<u64>,
    /// RFC 3339.
    pub as_of: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerHolder {
    pub investor_id: String,
    #[schema(value_type = String)]
    pub balance: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerCapTable {
    pub token_id: String,
    /// Minted minus redeemed, from the issuance and redemption accounts.
    #[schema(value_type = String)]
    pub total_supply: Amount,
    pub holders: Vec<LedgerHolder>,
}

/// A token's holders at any sequence or time, from the entries alone.
#[utoipa::path(get, path = "/tokens/{token_id}/cap-table", tag = "ledger", params(("token_id" = String, Path), CapTableQuery),
    responses((status = 200, body = LedgerCapTable), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn cap_table(
    State(app): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<CapTableQuery>,
) -> Result<axum::Json<LedgerCapTable>, ApiError> {
    principal.allow(Operation::LedgerRead)?;
    let at = parse_time("as_of", q.as_of.as_deref())?;
    let point = as_of(q.as_of_seq, at)?;
    Ok(axum::Json(
        ledger_cap_table(&app.engine, &token_id, point).await?,
    ))
}

/// A token's holders at `point`, from the journal and the ledger's index.
pub async fn ledger_cap_table(
    engine: &Engine<LedgerState>,
    token_id: &str,
    point: AsOf,
) -> Result<LedgerCapTable, ApiError> {
    let (total_supply, holders) = history::cap_table(engine, token_id, point).await?;
    Ok(LedgerCapTable {
        token_id: token_id.to_owned(),
        total_supply,
        holders: holders
            .into_iter()
            .map(|(investor_id, balance)| LedgerHolder {
                investor_id,
                balance,
            })
            .collect(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    pub valid: bool,
    pub entries_checked: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// The first entry whose sequence, previous hash or hash is wrong.
    pub first_broken_seq: Option<u64>,
    /// sequence_gap, prev_hash_mismatch, hash_mismatch or unreadable.
    pub problem: Option<String>,
}

/// Walk the whole chain as stored, recompute every hash, and name the first broken entry.
#[utoipa::path(get, path = "/verification", tag = "ledger", responses((status = 200, body = VerificationView)))]
async fn verify(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, axum::Json<VerificationView>), ApiError> {
    principal.allow(Operation::LedgerVerify)?;
    let result = verify_store(app.engine.store().as_ref()).await;
    crate::audit::verified(&result);
    let view = result?;
    Ok((StatusCode::OK, axum::Json(view)))
}

/// Reads the entries back from the store, not from memory: what is verified is what is kept.
/// The chain is walked as it is read, so memory does not grow with it.
pub async fn verify_store(store: &dyn EventStore) -> Result<VerificationView, ApiError> {
    let mut verifier = ledger::Verifier::default();
    let mut after = 0;
    let mut unreadable = None;
    'read: loop {
        let chunk = store
            .read(after, 4_096)
            .await
            .map_err(ApiError::unavailable)?;
        let Some((last, _)) = chunk.last() else { break };
        after = *last;
        for (position, bytes) in chunk {
            match history::entry(&bytes) {
                Some(entry) => {
                    if !verifier.push(&entry) {
                        break 'read;
                    }
                }
                None => {
                    unreadable = Some(position);
                    break 'read;
                }
            }
        }
    }
    let v = verifier.finish();
    Ok(match unreadable {
        Some(position) if v.valid => VerificationView {
            valid: false,
            entries_checked: v.entries_checked,
            head_seq: v.head_seq,
            head_hash: v.head_hash,
            first_broken_seq: Some(position),
            problem: Some("unreadable".into()),
        },
        _ => VerificationView {
            valid: v.valid,
            entries_checked: v.entries_checked,
            head_seq: v.head_seq,
            head_hash: v.head_hash,
            first_broken_seq: v.first_broken.as_ref().map(|b| b.seq),
            problem: v.first_broken.map(|b| b.problem),
        },
    })
}
