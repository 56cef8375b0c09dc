//! `/v1/tokens/{token_id}/transfer-approvals`: transfers an agent approves in advance, for
//! tokens whose rules require it (ERC-3643's conditional transfers).

use axum::{extract::State, http::StatusCode, response::Response};
use libertum_domain::{Id, token};
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

/// Approve one transfer in advance: where the token's rules require approval
/// (`transfer_approval_required`), a transfer or hold of exactly `amount` from `from` to `to`
/// passes once, checked by every other rule as usual, and uses the approval up.
#[utoipa::path(post, path = "/{token_id}/transfer-approvals", tag = "movements", request_body = TransferApprovalRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = TransferApprovalView),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "`too_many_approvals`: 10,000 are waiting"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn approve(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<TransferApprovalRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::TransferApprove)?;
    let staff = principal.is_staff();
    let b = posted.body;
    let approval_id = new_id("apr");
    let command = token::Command::Operate {
        token_id: Id::from(token_id.as_str()),
        operation: token::Operation::ApproveTransfer {
            approval_id: approval_id.clone(),
            from: Id::from(b.from),
            to: Id::from(b.to),
            amount: b.amount,
            class: crate::api::class_of(b.class),
        },
    };
    // From the event: the approval may be used up already by a transfer decided right after
    // it in the same group.
    let reply = Box::new(move |_: &TokensState, events: &[token::Event]| {
        let approval = events.iter().find_map(|e| match &e.change {
            token::Change::TransferApproved { approval, .. } if approval.id == approval_id => {
                Some(approval)
            }
            _ => None,
        });
        match approval {
            Some(a) => json_reply(
                StatusCode::CREATED,
                &TransferApprovalView::new(&token_id, a),
            ),
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

/// The approvals waiting to be used, in id order (the order they were made).
#[utoipa::path(get, path = "/{token_id}/transfer-approvals", tag = "movements",
    params(("token_id" = String, Path), PageQuery),
    responses((status = 200, body = Page<TransferApprovalView>), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn list(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<Page<TransferApprovalView>>, ApiError> {
    principal.allow(Operation::TransferApprove)?;
    let limit = q.limit()?;
    let state = engine.read().await;
    let token = state
        .0
        .token(&token_id)
        .ok_or_else(|| token_not_found(&token_id))?;
    let from = q
        .cursor
        .as_deref()
        .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut items: Vec<TransferApprovalView> = token
        .approvals
        .range::<str, _>((from, std::ops::Bound::Unbounded))
        .take(limit + 1)
        .map(|(_, a)| TransferApprovalView::new(&token_id, a))
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|a| a.id.clone()).unwrap_or_default()
    });
    Ok(axum::Json(Page { items, next_cursor }))
}

/// Withdraw an approval not used yet.
#[utoipa::path(post, path = "/{token_id}/transfer-approvals/{approval_id}/revocation", tag = "movements", request_body = Empty,
    params(("token_id" = String, Path), ("approval_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM, description = "no such token, or no such approval waiting")))]
pub(crate) async fn revoke(
    State(engine): State<AppState>,
    principal: Principal,
    Path((token_id, approval_id)): Path<(String, String)>,
    posted: Posted<Empty>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::TransferApprove)?;
    operate_one(
        &engine,
        principal.subject,
        token_id,
        token::Operation::RevokeTransferApproval {
            approval_id: Id::from(approval_id),
        },
        posted.idempotency,
    )
    .await
}
