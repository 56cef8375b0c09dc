//! `/v1/tokens/{token_id}/classes` and `/conversions`: a token's share classes (see
//! `libertum_domain::token::class`).
//!
//! A class is defined (or its name and rules changed) by a compliance officer; units move
//! between classes of one holder by a token agent's conversion. Every movement names its
//! class in the `class` field of its request (absent: the default class).

use axum::{extract::State, response::Response};
use libertum_domain::{Id, token};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{Path, Posted},
};
use libertum_store::Engine;

use crate::{
    api::{JSON_PROBLEM, class_of, operate_one, token_not_found},
    dto::*,
    state::TokensState,
};

type AppState = Engine<TokensState>;

/// A token's share classes: each defined class with its rules and, for staff, how much of it
/// (and of the default class) exists.
#[utoipa::path(get, path = "/{token_id}/classes", tag = "classes", params(("token_id" = String, Path)),
    responses((status = 200, body = ClassList), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn list(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
) -> Result<axum::Json<ClassList>, ApiError> {
    principal.allow(Operation::TokenRead)?;
    let staff = principal.is_staff();
    let state = engine.read().await;
    let token = state
        .0
        .token(&token_id)
        .ok_or_else(|| token_not_found(&token_id))?;
    let mut classes: Vec<ClassView> = token.classes.values().map(ClassView::from).collect();
    if !staff {
        for class in &mut classes {
            class.supply = None;
        }
    }
    Ok(axum::Json(ClassList {
        token_id: token_id.clone(),
        default_supply: staff.then(|| token.class_supply(None)),
        classes,
    }))
}

/// Define a share class of the token (at most 16), or change its name and rules. A class's
/// rules are checked on top of the token's, each with the token rule's reason code: its
/// eligibility (`accreditation_required`, `country_not_allowed`), its maximum balance
/// (`max_balance_exceeded`) and supply (`supply_cap_exceeded`), and its lock-up
/// (`lockup_active`).
#[utoipa::path(put, path = "/{token_id}/classes/{class}", tag = "classes", request_body = ClassRequest,
    params(("token_id" = String, Path), ("class" = String, Path, description = "1-32 letters, digits, '-' or '_'; not `default`"),
        ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "`too_many_classes`, or `class_supply_above_cap`: more of the class exists than the cap asked"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn define(
    State(engine): State<AppState>,
    principal: Principal,
    Path((token_id, class)): Path<(String, String)>,
    posted: Posted<ClassRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::ClassDefine)?;
    let b = posted.body;
    let operation = token::Operation::DefineClass {
        class: Id::from(class),
        name: b.name,
        rules: b.rules.into(),
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

/// Convert `amount` of a holder's units from one share class to another: the holding's
/// total and the token's supply do not change. Refused while the token is paused or the
/// holder frozen, for units on hold, and where the class joined does not admit the holder
/// or has no room (its own rules and codes). Not reversible: convert back instead.
#[utoipa::path(post, path = "/{token_id}/conversions", tag = "classes", request_body = ConversionRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult),
        (status = 404, body = Problem, content_type = JSON_PROBLEM, description = "no such token, investor or class"),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "refused by a rule; `code` names it"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn convert(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<ConversionRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Convert)?;
    let b = posted.body;
    let operation = token::Operation::Convert {
        investor_id: Id::from(b.investor_id),
        from_class: class_of(b.from_class),
        to_class: class_of(b.to_class),
        amount: b.amount,
        reason: b.reason,
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
