//! `/v1/tokens/{token_id}/holds`: two-phase transfers and settlements against payment (see
//! `libertum_domain::token::hold`).
//!
//! A pending hold is in its token, in memory; a closed one is read from the index of its
//! token's partition, where its record was written with the event that closed it.

use axum::{extract::State, http::StatusCode, response::Response};
use libertum_domain::{
    Id,
    token::{self, keys},
};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{PageQuery, Path, Posted, Query},
    json_reply,
};
use libertum_store::Engine;

use crate::{
    api::{JSON_PROBLEM, new_id, operate_one, seen_by, submit, token_not_found},
    dto::*,
    state::TokensState,
};

type AppState = Engine<TokensState>;

/// Gives each hold and approval a batch makes its id: the service names them, never the
/// caller.
pub(crate) fn name_holds(operations: &mut [token::Operation]) {
    for operation in operations {
        match operation {
            token::Operation::PlaceHold { hold_id, .. } => *hold_id = new_id("hld"),
            token::Operation::ApproveTransfer { approval_id, .. } => *approval_id = new_id("apr"),
            _ => {}
        }
    }
}

/// A hold of `token_id`: pending (from memory) or closed (from the index); `None` if the token
/// never had it.
pub(crate) async fn find(
    engine: &AppState,
    token_id: &str,
    hold_id: &str,
) -> Result<Option<token::HoldRecord>, ApiError> {
    {
        let state = engine.read().await;
        let token = state
            .0
            .token(token_id)
            .ok_or_else(|| token_not_found(token_id))?;
        if let Some(record) = token.holds.get(hold_id) {
            return Ok(Some(record.clone()));
        }
    }
    let key = keys::closed_hold(token_id, hold_id);
    let store = engine.store_of(engine.partition_of_key(token_id));
    let Some((_, bytes)) = store
        .index_last(&key, &key)
        .await
        .map_err(ApiError::unavailable)?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ApiError::unavailable(format!("the record of hold {hold_id} is unreadable: {e}"))
    })
}

fn hold_not_found(hold_id: &str) -> ApiError {
    ApiError::not_found("hold_not_found", format!("hold {hold_id} does not exist"))
}

/// Refuses at once a hold the token never had (404). Whether it is still pending is the
/// writer's to decide: a retry under the same `Idempotency-Key` of a request that closed it
/// must get its first answer back, not a refusal.
async fn must_exist(engine: &AppState, token_id: &str, hold_id: &str) -> Result<(), ApiError> {
    match find(engine, token_id, hold_id).await? {
        None => Err(hold_not_found(hold_id)),
        Some(_) => Ok(()),
    }
}

/// Closes (or settles) a pending hold with `operation`, which `op` allows: who may is checked
/// before the hold is looked up, so a caller without the right learns nothing of it; a hold
/// no longer pending is refused by the writer (`hold_not_pending`).
async fn settle(
    engine: &AppState,
    principal: Principal,
    op: Operation,
    (token_id, hold_id): (String, String),
    operation: impl FnOnce(Id) -> token::Operation,
    idempotency: Option<(String, String)>,
) -> Result<Response, ApiError> {
    principal.allow(op)?;
    must_exist(engine, &token_id, &hold_id).await?;
    let operation = operation(Id::from(hold_id));
    operate_one(engine, principal.subject, token_id, operation, idempotency).await
}

/// Place a hold: reserve `amount` of `from`'s balance for `to` until `expires_at`, under
/// every rule a transfer is checked by (but the receiver's maximum balance and the holder
/// count, checked when it is posted). With `payment`, it is a settlement instruction: the
/// tokens move only when a payment agent confirms the cash leg.
#[utoipa::path(post, path = "/{token_id}/holds", tag = "holds", request_body = HoldRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = HoldView),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "refused by a compliance rule; `code` names it"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn place(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<HoldRequest>,
) -> Result<Response, ApiError> {
    principal.allow_own(Operation::HoldPlace, &posted.body.from)?;
    let staff = principal.is_staff();
    let b = posted.body;
    let hold_id = new_id("hld");
    let operation = token::Operation::PlaceHold {
        hold_id: hold_id.clone(),
        from: Id::from(b.from),
        to: Id::from(b.to),
        amount: b.amount,
        expires_at: b.expires_at,
        payment: b.payment.map(Into::into),
        class: crate::api::class_of(b.class),
    };
    let command = token::Command::Operate {
        token_id: Id::from(token_id.as_str()),
        operation,
    };
    let reply = Box::new(move |state: &TokensState, _: &[token::Event]| {
        match state.0.token(&token_id).and_then(|t| t.holds.get(&hold_id)) {
            Some(record) => json_reply(StatusCode::CREATED, &HoldView::from(record)),
            None => json_reply(StatusCode::NOT_FOUND, &serde_json::json!({})),
        }
    });
    submit(
        &engine,
        principal.subject,
        command,
        posted.idempotency,
        reply,
    )
    .await
    .map_err(|e| seen_by(staff, e))
}

/// The pending holds of a token, in id order (closed ones are read one by one, or from the
/// events).
#[utoipa::path(get, path = "/{token_id}/holds", tag = "holds", params(("token_id" = String, Path), PageQuery),
    responses((status = 200, body = Page<HoldView>), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn list(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<Page<HoldView>>, ApiError> {
    principal.allow(Operation::HoldRead)?;
    let limit = q.limit()?;
    let after = q.cursor.clone();
    let state = engine.read().await;
    let token = state
        .0
        .token(&token_id)
        .ok_or_else(|| token_not_found(&token_id))?;
    let from = after
        .as_deref()
        .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut items: Vec<HoldView> = token
        .holds
        .range::<str, _>((from, std::ops::Bound::Unbounded))
        .take(limit + 1)
        .map(|(_, record)| HoldView::from(record))
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|h| h.id.clone()).unwrap_or_default()
    });
    Ok(axum::Json(Page { items, next_cursor }))
}

/// A hold, pending or closed. An investor sees only the holds they send or receive.
#[utoipa::path(get, path = "/{token_id}/holds/{hold_id}", tag = "holds",
    params(("token_id" = String, Path), ("hold_id" = String, Path)),
    responses((status = 200, body = HoldView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn get(
    State(engine): State<AppState>,
    principal: Principal,
    Path((token_id, hold_id)): Path<(String, String)>,
) -> Result<axum::Json<HoldView>, ApiError> {
    // Staff whose roles do not read holds learn nothing of this one.
    let staff = principal.is_staff();
    if staff {
        principal.allow(Operation::HoldRead)?;
    }
    let record = find(&engine, &token_id, &hold_id)
        .await?
        .ok_or_else(|| hold_not_found(&hold_id))?;
    if !staff {
        principal
            .allow_own(Operation::HoldRead, &record.hold.from)
            .or_else(|_| principal.allow_own(Operation::HoldRead, &record.hold.to))?;
    }
    Ok(axum::Json(HoldView::from(&record)))
}

/// Post a pending hold: move `amount` of it (all of it if absent) to its receiver, checked
/// again as a transfer now; the rest goes back to the sender. A settlement against payment
/// is posted only by its payment confirmation.
#[utoipa::path(post, path = "/{token_id}/holds/{hold_id}/post", tag = "holds", request_body = HoldPostRequest,
    params(("token_id" = String, Path), ("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "not pending, expired, a settlement awaiting payment, or refused by a compliance rule")))]
pub(crate) async fn post(
    State(engine): State<AppState>,
    principal: Principal,
    Path(path): Path<(String, String)>,
    posted: Posted<HoldPostRequest>,
) -> Result<Response, ApiError> {
    let body = posted.body;
    settle(
        &engine,
        principal,
        Operation::HoldSettle,
        path,
        |hold_id| token::Operation::PostHold {
            hold_id,
            amount: body.amount,
        },
        posted.idempotency,
    )
    .await
}

/// Void a pending hold: everything goes back to the sender.
#[utoipa::path(post, path = "/{token_id}/holds/{hold_id}/void", tag = "holds", request_body = HoldVoidRequest,
    params(("token_id" = String, Path), ("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn void(
    State(engine): State<AppState>,
    principal: Principal,
    Path(path): Path<(String, String)>,
    posted: Posted<HoldVoidRequest>,
) -> Result<Response, ApiError> {
    let body = posted.body;
    settle(
        &engine,
        principal,
        Operation::HoldSettle,
        path,
        |hold_id| token::Operation::VoidHold {
            hold_id,
            reason: body.reason,
        },
        posted.idempotency,
    )
    .await
}

/// A payment agent confirms a settlement's cash leg: the tokens move in the same event,
/// checked again as a transfer now.
#[utoipa::path(post, path = "/{token_id}/holds/{hold_id}/payment-confirmation", tag = "holds", request_body = PaymentConfirmationRequest,
    params(("token_id" = String, Path), ("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn confirm_payment(
    State(engine): State<AppState>,
    principal: Principal,
    Path(path): Path<(String, String)>,
    posted: Posted<PaymentConfirmationRequest>,
) -> Result<Response, ApiError> {
    let body = posted.body;
    settle(
        &engine,
        principal,
        Operation::PaymentConfirm,
        path,
        |hold_id| token::Operation::ConfirmPayment {
            hold_id,
            confirmation: body.confirmation,
        },
        posted.idempotency,
    )
    .await
}

/// A payment agent rejects a settlement's cash leg: the hold is voided.
#[utoipa::path(post, path = "/{token_id}/holds/{hold_id}/payment-rejection", tag = "holds", request_body = HoldVoidRequest,
    params(("token_id" = String, Path), ("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn reject_payment(
    State(engine): State<AppState>,
    principal: Principal,
    Path(path): Path<(String, String)>,
    posted: Posted<HoldVoidRequest>,
) -> Result<Response, ApiError> {
    let body = posted.body;
    settle(
        &engine,
        principal,
        Operation::PaymentConfirm,
        path,
        |hold_id| token::Operation::RejectPayment {
            hold_id,
            reason: body.reason,
        },
        posted.idempotency,
    )
    .await
}
