//! Reconciliation: the ledger's balances against the tokens service's, compared at the same
//! token version, over HTTP (services share no database).

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, header},
};
use libertum_domain::{Amount, ledger::AsOf};
use libertum_platform::{
    ApiError,
    auth::{Operation, Principal},
    extract::Query,
};
use libertum_store::trace;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    api::{AppState, ledger_cap_table},
    history,
};

/// How long to wait for the ledger to catch up with a token's latest version.
const CATCH_UP: Duration = Duration::from_secs(5);

/// How many tokens one reconciliation compares at once: a platform-wide reconciliation of
/// many tokens stays well inside a proxy's timeout without flooding the tokens service.
const AT_ONCE: usize = 8;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReconcileQuery {
    /// Only this token; absent: every token.
    pub token_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Difference {
    pub investor_id: String,
    #[schema(value_type = String)]
    pub tokens_balance: Amount,
    #[schema(value_type = String)]
    pub ledger_balance: Amount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenReconciliation {
    pub token_id: String,
    /// matched, mismatched, or behind (the ledger had not reached the token's version in time).
    pub status: String,
    pub tokens_version: u64,
    pub ledger_version: u64,
    #[schema(value_type = String)]
    pub tokens_supply: Amount,
    #[schema(value_type = String)]
    pub ledger_supply: Amount,
    pub differences: Vec<Difference>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Reconciliation {
    /// True when every token matched.
    pub matched: bool,
    pub tokens: Vec<TokenReconciliation>,
}

#[derive(Deserialize)]
struct TokenPage {
    items: Vec<TokenItem>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct TokenItem {
    id: String,
}

#[derive(Deserialize)]
struct CapTable {
    version: Option<u64>,
    total_supply: Amount,
    holders: Vec<Holder>,
}

#[derive(Deserialize)]
struct Holder {
    investor_id: String,
    balance: Amount,
}

/// Percent-encodes everything but unreserved characters, for a path segment or query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs `path` from the tokens service on behalf of the caller, with the caller's own token: the
/// ledger gains no rights of its own there.
async fn get<T: serde::de::DeserializeOwned>(
    app: &AppState,
    path: &str,
    caller: Option<&HeaderValue>,
) -> Result<T, ApiError> {
    let url = format!("{}{path}", app.tokens_url);
    let mut request = app.http.get(&url);
    if let Some(authorization) = caller {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    if let Some(traceparent) = trace::traceparent(&tracing::Span::current()) {
        request = request.header(trace::TRACEPARENT, traceparent);
    }
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(ApiError::unavailable)?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(
            "token_not_found",
            "the tokens service knows no such token",
        ));
    }
    // The tokens service's refusal of the caller is the caller's answer here too.
    match response.status() {
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "the tokens service does not let this caller read its cap tables",
            ));
        }
        reqwest::StatusCode::TOO_MANY_REQUESTS => {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "the tokens service limits this caller's requests; retry later",
            ));
        }
        _ => {}
    }
    if !response.status().is_success() {
        return Err(ApiError::unavailable(format!(
            "GET {url} answered {}",
            response.status()
        )));
    }
    response.json().await.map_err(ApiError::unavailable)
}

/// Compare every holder's balance in the ledger with the tokens service's, at the same version.
#[utoipa::path(get, path = "/reconciliation", tag = "ledger", params(ReconcileQuery),
    responses((status = 200, body = Reconciliation), (status = 503, body = libertum_platform::Problem, content_type = "application/problem+json")))]
pub async fn reconcile(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<ReconcileQuery>,
) -> Result<axum::Json<Reconciliation>, ApiError> {
    principal.allow(Operation::LedgerVerify)?;
    let caller = headers.get(header::AUTHORIZATION);
    let ids = match q.token_id {
        Some(id) => vec![id],
        None => {
            let mut ids = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/v1/tokens?limit=200&cursor={}", encode(c)),
                    None => "/v1/tokens?limit=200".to_owned(),
                };
                let page: TokenPage = get(&app, &path, caller).await?;
                ids.extend(page.items.into_iter().map(|t| t.id));
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            ids
        }
    };
    let tokens: Vec<TokenReconciliation> = futures::stream::iter(ids)
        .map(|id| {
            let app = &app;
            async move { reconcile_one(app, &id, caller).await }
        })
        .buffered(AT_ONCE)
        .try_collect()
        .await?;
    for token in &tokens {
        crate::audit::reconciled(&token.status);
    }
    Ok(axum::Json(Reconciliation {
        matched: tokens.iter().all(|t| t.status == "matched"),
        tokens,
    }))
}

async fn reconcile_one(
    app: &AppState,
    token_id: &str,
    caller: Option<&HeaderValue>,
) -> Result<TokenReconciliation, ApiError> {
    let theirs: CapTable = get(
        app,
        &format!("/v1/tokens/{}/holders", encode(token_id)),
        caller,
    )
    .await?;
    let version = theirs.version.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let ledger_version = app.engine.read().await.journal.token_version(token_id);
        // Events of a token reach the ledger in order, so the ledger's cap table as of the entry
        // that took the token to the tokens service's version must be the same. If the ledger
        // is ahead (the token moved since), that earlier point is still the one to compare.
        let reached = ledger_version >= version;
        if reached || tokio::time::Instant::now() >= deadline {
            let seq = match reached {
                true => history::seq_of_token_version(&app.engine, token_id, version).await?,
                false => None,
            };
            let point = seq.map_or(AsOf::Latest, AsOf::Seq);
            let ours = ledger_cap_table(&app.engine, token_id, point).await?;
            let mut differences = Vec::new();
            let mut all: Vec<&str> = theirs
                .holders
                .iter()
                .map(|h| h.investor_id.as_str())
                .collect();
            all.extend(ours.holders.iter().map(|h| h.investor_id.as_str()));
            all.sort_unstable();
            all.dedup();
            for investor in all {
                let t = theirs
                    .holders
                    .iter()
                    .find(|h| h.investor_id == investor)
                    .map_or(Amount::ZERO, |h| h.balance);
                let l = ours
                    .holders
                    .iter()
                    .find(|h| h.investor_id == investor)
                    .map_or(Amount::ZERO, |h| h.balance);
                if t != l {
                    differences.push(Difference {
                        investor_id: investor.to_owned(),
                        tokens_balance: t,
                        ledger_balance: l,
                    });
                }
            }
            let status = if !reached {
                "behind"
            } else if differences.is_empty() && theirs.total_supply == ours.total_supply {
                "matched"
            } else {
                "mismatched"
            };
            return Ok(TokenReconciliation {
                token_id: token_id.to_owned(),
                status: status.into(),
                tokens_version: version,
                ledger_version,
                tokens_supply: theirs.total_supply,
                ledger_supply: ours.total_supply,
                differences,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
