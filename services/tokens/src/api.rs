//! `/v1/tokens`: token classes, investors, movements, cap tables and distributions.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use libertum_domain::{Id, Timestamp, token};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{IfMatch, Json, PageQuery, Path, Posted, Query, etag},
    into_response, json_reply,
};
use libertum_store::{Engine, Submission};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    dto::*,
    state::{Command, TokensState},
};

type AppState = Engine<TokensState>;
type Idempotency = Option<(String, String)>;

pub fn router(engine: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(get_token))
        .routes(routes!(update_rules))
        .routes(routes!(register_investor, list_investors))
        .routes(routes!(get_investor, update_investor))
        .routes(routes!(issue))
        .routes(routes!(transfer))
        .routes(routes!(check_transfer))
        .routes(routes!(redeem))
        .routes(routes!(forced_transfer))
        .routes(routes!(freeze))
        .routes(routes!(unfreeze))
        .routes(routes!(pause))
        .routes(routes!(unpause))
        .routes(routes!(batch))
        .routes(routes!(crate::import::import))
        .routes(routes!(holders))
        .routes(routes!(holding))
        .routes(routes!(distribute, list_distributions))
        .routes(routes!(crate::holds::place, crate::holds::list))
        .routes(routes!(crate::holds::get))
        .routes(routes!(crate::holds::post))
        .routes(routes!(crate::holds::void))
        .routes(routes!(crate::holds::confirm_payment))
        .routes(routes!(crate::holds::reject_payment))
        .routes(routes!(crate::approvals::approve, crate::approvals::list))
        .routes(routes!(crate::approvals::revoke))
        .routes(routes!(crate::ocf::export))
        .routes(routes!(crate::movements::list))
        .routes(routes!(crate::movements::get))
        .routes(routes!(crate::movements::reverse))
        .routes(routes!(crate::classes::list))
        .routes(routes!(crate::classes::define))
        .routes(routes!(crate::classes::convert))
        .with_state(engine)
}

pub(crate) fn new_id(prefix: &str) -> Id {
    Id::from(format!("{prefix}_{}", uuid::Uuid::now_v7().simple()))
}

pub(crate) async fn submit(
    engine: &AppState,
    actor: String,
    command: token::Command,
    idempotency: Idempotency,
    reply: libertum_store::ReplyFn<TokensState>,
) -> Result<Response, ApiError> {
    let reply = engine
        .submit(Submission {
            command: Some(Command {
                actor: Id::from(actor),
                command,
            }),
            idempotency,
            checkpoint: None,
            reply,
            partition: None,
            span: tracing::Span::current(),
        })
        .await?;
    Ok(into_response(reply))
}

fn token_reply(id: Id, status: StatusCode) -> libertum_store::ReplyFn<TokensState> {
    Box::new(move |state: &TokensState, _| match state.0.token(&id) {
        Some(t) => json_reply(status, &TokenView::from(t)),
        None => json_reply(StatusCode::NOT_FOUND, &serde_json::json!({})),
    })
}

fn investor_reply(id: Id, status: StatusCode) -> libertum_store::ReplyFn<TokensState> {
    Box::new(move |state: &TokensState, _| match state.0.investor(&id) {
        Some(i) => json_reply(status, &InvestorView::from(i)),
        None => json_reply(StatusCode::NOT_FOUND, &serde_json::json!({})),
    })
}

/// Applies one operation (or a batch) and answers with what it recorded.
async fn operate(
    engine: &AppState,
    actor: String,
    token_id: String,
    command: token::Command,
    idempotency: Idempotency,
) -> Result<Response, ApiError> {
    let id = Id::from(token_id);
    let reply = Box::new(move |state: &TokensState, events: &[token::Event]| {
        let token = state.0.token(&id);
        json_reply(
            StatusCode::OK,
            &OperationResult {
                token_id: id.to_string(),
                version: token.map_or(0, |t| t.version),
                total_supply: token.map_or_else(Default::default, |t| t.total_supply),
                events,
            },
        )
    });
    submit(engine, actor, command, idempotency, reply).await
}

/// Applies one operation to one token.
pub(crate) async fn operate_one(
    engine: &AppState,
    actor: String,
    token_id: String,
    operation: token::Operation,
    idempotency: Idempotency,
) -> Result<Response, ApiError> {
    let command = op(&token_id, operation);
    operate(engine, actor, token_id, command, idempotency).await
}

fn op(token_id: &str, operation: token::Operation) -> token::Command {
    token::Command::Operate {
        token_id: Id::from(token_id),
        operation,
    }
}

pub(crate) const JSON_PROBLEM: &str = "application/problem+json";

/// The class a request names, as operations carry it (`default` is the default class).
pub(crate) fn class_of(class: Option<String>) -> Option<Id> {
    token::class::normalized(class.map(Id::from))
}

/// Create the token class of an approved asset. The asset becomes tokenized when the assets
/// service receives this service's `token.created` event.
#[utoipa::path(post, path = "", tag = "tokens", request_body = TokenForCreate,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = TokenView), (status = 409, body = Problem, content_type = JSON_PROBLEM), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn create_token(
    State(engine): State<AppState>,
    principal: Principal,
    posted: Posted<TokenForCreate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::TokenCreate)?;
    let actor = principal.subject;
    let b = posted.body;
    let id = new_id("tok");
    let partitioned = engine.partitions() > 1;
    let spec = token::TokenSpec {
        id: id.clone(),
        asset_id: Id::from(b.asset_id),
        symbol: b.symbol,
        name: b.name.trim().to_owned(),
        decimals: b.decimals,
        max_supply: b.max_supply,
        unit_price: b.unit_price,
        currency: b.currency,
        rules: b.rules.into(),
    };
    if !partitioned {
        return submit(
            &engine,
            actor,
            token::Command::CreateToken(spec),
            posted.idempotency,
            token_reply(id, StatusCode::CREATED),
        )
        .await;
    }
    // Partitioned: the registry claims the asset and the symbol, then the owner of the
    // token's partition opens it; the answer waits (a little) for that, so that what follows
    // finds the token.
    let claimed = id.clone();
    let reply = Box::new(move |state: &TokensState, _: &[token::Event]| {
        match state
            .0
            .claimed_token(&claimed)
            .or_else(|| state.0.token(&claimed).cloned())
        {
            Some(t) => json_reply(StatusCode::CREATED, &TokenView::from(&t)),
            None => json_reply(StatusCode::NOT_FOUND, &serde_json::json!({})),
        }
    });
    let response = submit(
        &engine,
        actor,
        token::Command::ClaimToken(spec),
        posted.idempotency,
        reply,
    )
    .await?;
    if response.status() == StatusCode::CREATED {
        let partition = engine.partition_of_key(&id);
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        while engine.read().await.0.token(&id).is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            // Another replica opens it: its log is looked at now, not at the next round.
            let _ = engine.look_at(partition).await;
        }
    }
    Ok(response)
}

/// How long a partitioned token creation waits for the token to be opened in its partition
/// before it answers (it is opened anyway).
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// List token classes in creation order.
#[utoipa::path(get, path = "", tag = "tokens", params(PageQuery), responses((status = 200, body = Page<TokenView>)))]
async fn list_tokens(
    State(engine): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<Page<TokenView>>, ApiError> {
    principal.allow(Operation::TokenRead)?;
    let staff = principal.is_staff();
    let (limit, after) = (q.limit()?, q.position()? as usize);
    let state = engine.read().await;
    let items: Vec<TokenView> = state
        .0
        .tokens()
        .skip(after)
        .take(limit)
        .map(|t| TokenView::seen_by(t, staff))
        .collect();
    let next = (state.0.tokens().nth(after.saturating_add(limit)).is_some())
        .then(|| after.saturating_add(limit).to_string());
    Ok(axum::Json(Page {
        items,
        next_cursor: next,
    }))
}

fn with_etag(mut response: Response, version: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// Get a token class.
#[utoipa::path(get, path = "/{token_id}", tag = "tokens", params(("token_id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn get_token(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::TokenRead)?;
    let state = engine.read().await;
    let t = state
        .0
        .token(&token_id)
        .ok_or_else(|| token_not_found(&token_id))?;
    let view = TokenView::seen_by(t, principal.is_staff());
    Ok(with_etag(
        into_response(json_reply(StatusCode::OK, &view)),
        t.version,
    ))
}

pub(crate) fn token_not_found(id: &str) -> ApiError {
    ApiError::not_found("token_not_found", format!("token {id} does not exist"))
}

/// Replace a token's compliance rules. Needs `If-Match`.
#[utoipa::path(put, path = "/{token_id}/rules", tag = "tokens", request_body = RulesDto,
    params(("token_id" = String, Path), ("If-Match" = String, Header)),
    responses((status = 200, body = TokenView), (status = 412, body = Problem, content_type = JSON_PROBLEM), (status = 428, body = Problem, content_type = JSON_PROBLEM)))]
async fn update_rules(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    IfMatch(version): IfMatch,
    Json(rules): Json<RulesDto>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::TokenRulesUpdate)?;
    let actor = principal.subject;
    let id = Id::from(token_id);
    let command = token::Command::UpdateRules {
        token_id: id.clone(),
        expected_version: version,
        rules: rules.into(),
    };
    submit(
        &engine,
        actor,
        command,
        None,
        token_reply(id, StatusCode::OK),
    )
    .await
}

/// Onboard an investor.
#[utoipa::path(post, path = "/investors", tag = "investors", request_body = InvestorForCreate,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = InvestorView), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn register_investor(
    State(engine): State<AppState>,
    principal: Principal,
    posted: Posted<InvestorForCreate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::InvestorRegister)?;
    let actor = principal.subject;
    let b = posted.body;
    let id = new_id("inv");
    let profile = token::InvestorProfile {
        identity_ref: b.identity_ref.trim().to_owned(),
        country: b.country,
        kyc_status: b.kyc_status,
        kyc_expires_on: b.kyc_expires_on,
        accredited: b.accredited,
        wallet: b.wallet,
    };
    submit(
        &engine,
        actor,
        token::Command::RegisterInvestor {
            id: id.clone(),
            profile,
        },
        posted.idempotency,
        investor_reply(id, StatusCode::CREATED),
    )
    .await
}

/// List investors in onboarding order.
#[utoipa::path(get, path = "/investors", tag = "investors", params(PageQuery), responses((status = 200, body = Page<InvestorView>)))]
async fn list_investors(
    State(engine): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<Page<InvestorView>>, ApiError> {
    principal.allow(Operation::InvestorList)?;
    let (limit, after) = (q.limit()?, q.position()? as usize);
    let state = engine.read().await;
    let items: Vec<InvestorView> = state
        .0
        .investors()
        .skip(after)
        .take(limit)
        .map(InvestorView::from)
        .collect();
    let next = (state
        .0
        .investors()
        .nth(after.saturating_add(limit))
        .is_some())
    .then(|| after.saturating_add(limit).to_string());
    Ok(axum::Json(Page {
        items,
        next_cursor: next,
    }))
}

/// Get an investor.
#[utoipa::path(get, path = "/investors/{investor_id}", tag = "investors", params(("investor_id" = String, Path)),
    responses((status = 200, body = InvestorView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn get_investor(
    State(engine): State<AppState>,
    principal: Principal,
    Path(investor_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.allow_own(Operation::InvestorRead, &investor_id)?;
    let state = engine.read().await;
    let i = state.0.investor(&investor_id).ok_or_else(|| {
        ApiError::not_found(
            "investor_not_found",
            format!("investor {investor_id} does not exist"),
        )
    })?;
    Ok(with_etag(
        into_response(json_reply(StatusCode::OK, &InvestorView::from(i))),
        i.version,
    ))
}

/// Change an investor's KYC, country, accreditation or wallet. Needs `If-Match`.
#[utoipa::path(patch, path = "/investors/{investor_id}", tag = "investors", request_body = InvestorForUpdate,
    params(("investor_id" = String, Path), ("If-Match" = String, Header)),
    responses((status = 200, body = InvestorView), (status = 412, body = Problem, content_type = JSON_PROBLEM), (status = 428, body = Problem, content_type = JSON_PROBLEM)))]
async fn update_investor(
    State(engine): State<AppState>,
    principal: Principal,
    Path(investor_id): Path<String>,
    IfMatch(version): IfMatch,
    Json(b): Json<InvestorForUpdate>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::InvestorUpdate)?;
    let actor = principal.subject;
    let current = {
        let state = engine.read().await;
        state.0.investor(&investor_id).map(|i| i.profile.clone())
    }
    .ok_or_else(|| {
        ApiError::not_found(
            "investor_not_found",
            format!("investor {investor_id} does not exist"),
        )
    })?;
    let profile = token::InvestorProfile {
        identity_ref: b
            .identity_ref
            .map_or(current.identity_ref, |r| r.trim().to_owned()),
        country: b.country.unwrap_or(current.country),
        kyc_status: b.kyc_status.unwrap_or(current.kyc_status),
        kyc_expires_on: b.kyc_expires_on.or(current.kyc_expires_on),
        accredited: b.accredited.unwrap_or(current.accredited),
        wallet: b.wallet.or(current.wallet),
    };
    let id = Id::from(investor_id);
    let command = token::Command::UpdateInvestor {
        id: id.clone(),
        expected_version: version,
        profile,
    };
    submit(
        &engine,
        actor,
        command,
        None,
        investor_reply(id, StatusCode::OK),
    )
    .await
}

/// Issue (mint) tokens to an eligible investor.
#[utoipa::path(post, path = "/{token_id}/issuances", tag = "movements", request_body = IssueRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "refused by a compliance rule; `code` names it")))]
async fn issue(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<IssueRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Issue)?;
    let actor = principal.subject;
    let b = posted.body;
    operate_one(
        &engine,
        actor,
        token_id,
        token::Operation::Issue {
            to: Id::from(b.to),
            amount: b.amount,
            class: class_of(b.class),
        },
        posted.idempotency,
    )
    .await
}

/// Transfer tokens between investors, under every compliance rule.
#[utoipa::path(post, path = "/{token_id}/transfers", tag = "movements", request_body = TransferRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "refused by a compliance rule; `code` names it")))]
async fn transfer(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<TransferRequest>,
) -> Result<Response, ApiError> {
    principal.allow_own(Operation::Transfer, &posted.body.from)?;
    let staff = principal.is_staff();
    let actor = principal.subject;
    let b = posted.body;
    operate_one(
        &engine,
        actor,
        token_id,
        token::Operation::Transfer {
            from: Id::from(b.from),
            to: Id::from(b.to),
            amount: b.amount,
            class: class_of(b.class),
        },
        posted.idempotency,
    )
    .await
    .map_err(|e| seen_by(staff, e))
}

/// What a refusal tells its caller. To an investor, a refusal on the receiver's side (their
/// balance against the maximum, KYC, country, a freeze, or whether they exist at all) says only
/// `receiver_not_eligible`: another investor's data and an AML freeze are not theirs to learn.
/// Staff keep the detailed code.
pub(crate) fn seen_by(staff: bool, error: ApiError) -> ApiError {
    // `max_balance_exceeded` names the amount, but it is the receiver's balance it tells.
    let receivers = error.field.as_deref() == Some("to") || error.code == "max_balance_exceeded";
    if staff || !receivers || error.status.is_server_error() {
        return error;
    }
    ApiError::new(
        StatusCode::CONFLICT,
        "receiver_not_eligible",
        "the receiver cannot take this transfer",
    )
    .at("to")
}

/// Dry run: could this transfer happen now, and if not, which rule says no? Changes nothing.
#[utoipa::path(post, path = "/{token_id}/transfers/check", tag = "movements", request_body = TransferRequest,
    params(("token_id" = String, Path)),
    responses((status = 200, body = TransferCheck), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn check_transfer(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Json(b): Json<TransferRequest>,
) -> Result<axum::Json<TransferCheck>, ApiError> {
    principal.allow_own(Operation::TransferCheck, &b.from)?;
    let staff = principal.is_staff();
    let actor = principal.subject;
    let command = op(
        &token_id,
        token::Operation::Transfer {
            from: Id::from(b.from),
            to: Id::from(b.to),
            amount: b.amount,
            class: class_of(b.class),
        },
    );
    let ctx = token::Context {
        now: time::OffsetDateTime::now_utc(),
        actor: Id::from(actor),
    };
    let state = engine.read().await;
    match state.0.decide(&command, &ctx) {
        Ok(_) => Ok(axum::Json(TransferCheck {
            allowed: true,
            code: None,
            message: None,
            field: None,
        })),
        Err(e) if e.code == "token_not_found" => Err(e.into()),
        Err(e) => {
            let e = seen_by(staff, e.into());
            Ok(axum::Json(TransferCheck {
                allowed: false,
                code: Some(e.code.into_owned()),
                message: Some(e.detail),
                field: e.field,
            }))
        }
    }
}

/// Redeem (burn) an investor's tokens.
#[utoipa::path(post, path = "/{token_id}/redemptions", tag = "movements", request_body = RedeemRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
async fn redeem(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<RedeemRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Redeem)?;
    let actor = principal.subject;
    let b = posted.body;
    operate_one(
        &engine,
        actor,
        token_id,
        token::Operation::Redeem {
            from: Id::from(b.from),
            amount: b.amount,
            class: class_of(b.class),
        },
        posted.idempotency,
    )
    .await
}

/// An agent's transfer without the holder's consent (recovery of a lost account), recorded as forced.
#[utoipa::path(post, path = "/{token_id}/forced-transfers", tag = "movements", request_body = ForcedTransferRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
async fn forced_transfer(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<ForcedTransferRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::ForcedTransfer)?;
    let actor = principal.subject;
    let b = posted.body;
    operate_one(
        &engine,
        actor,
        token_id,
        token::Operation::ForcedTransfer {
            from: Id::from(b.from),
            to: Id::from(b.to),
            amount: b.amount,
            reason: b.reason,
            class: class_of(b.class),
        },
        posted.idempotency,
    )
    .await
}

/// Freeze an investor in this token, fully or only `amount` of the balance.
#[utoipa::path(post, path = "/{token_id}/freezes", tag = "movements", request_body = FreezeRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
async fn freeze(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<FreezeRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Freeze)?;
    let actor = principal.subject;
    let b = posted.body;
    let investor_id = Id::from(b.investor_id);
    let operation = match b.amount {
        Some(amount) => token::Operation::FreezeAmount {
            investor_id,
            amount,
        },
        None => token::Operation::Freeze { investor_id },
    };
    operate_one(&engine, actor, token_id, operation, posted.idempotency).await
}

/// Lift a full freeze, or unfreeze `amount`.
#[utoipa::path(post, path = "/{token_id}/unfreezes", tag = "movements", request_body = FreezeRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
async fn unfreeze(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<FreezeRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Freeze)?;
    let actor = principal.subject;
    let b = posted.body;
    let investor_id = Id::from(b.investor_id);
    let operation = match b.amount {
        Some(amount) => token::Operation::UnfreezeAmount {
            investor_id,
            amount,
        },
        None => token::Operation::Unfreeze { investor_id },
    };
    operate_one(&engine, actor, token_id, operation, posted.idempotency).await
}

/// Pause every movement of the token.
#[utoipa::path(post, path = "/{token_id}/pause", tag = "movements", request_body = Empty,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
async fn pause(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<Empty>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Pause)?;
    let actor = principal.subject;
    operate_one(
        &engine,
        actor,
        token_id,
        token::Operation::Pause,
        posted.idempotency,
    )
    .await
}

/// Resume movements.
#[utoipa::path(post, path = "/{token_id}/unpause", tag = "movements", request_body = Empty,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = OperationResult), (status = 409, body = Problem, content_type = JSON_PROBLEM)))]
async fn unpause(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<Empty>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Pause)?;
    let actor = principal.subject;
    operate_one(
        &engine,
        actor,
        token_id,
        token::Operation::Unpause,
        posted.idempotency,
    )
    .await
}

/// Apply up to 8,000 operations of one token in order: all or nothing (the default), or each on
/// its own (`"mode": "independent"`), with each operation's outcome in the answer.
#[utoipa::path(post, path = "/{token_id}/batches", tag = "movements", request_body = BatchRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "`all_or_nothing`: an `OperationResult`; `independent`: a `BulkResult`", body = BatchAnswer),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "`all_or_nothing`: an operation was refused; `field` names it (`operations[i].…`)"),
        (status = 413, body = Problem, content_type = JSON_PROBLEM, description = "the body is over 4 MiB")))]
async fn batch(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<BatchRequest>,
) -> Result<Response, ApiError> {
    allow_operations(&principal, &posted.body.operations)?;
    let staff = principal.is_staff();
    let actor = principal.subject;
    let mode = posted.body.mode;
    let mut operations = posted.body.operations;
    crate::holds::name_holds(&mut operations);
    crate::movements::fill_reversals(&engine, &token_id, &mut operations).await?;
    let command = token::Command::Batch {
        token_id: Id::from(token_id.as_str()),
        operations,
        mode,
    };
    match mode {
        token::BatchMode::AllOrNothing => {
            operate(&engine, actor, token_id, command, posted.idempotency).await
        }
        token::BatchMode::Independent => {
            let reply = bulk_reply(Id::from(token_id), staff);
            submit(&engine, actor, command, posted.idempotency, reply).await
        }
    }
}

/// A batch grants nothing by itself: each operation in it needs what it needs alone.
pub(crate) fn allow_operations(
    principal: &Principal,
    operations: &[token::Operation],
) -> Result<(), ApiError> {
    principal.allow(Operation::Batch)?;
    for op in operations {
        match op {
            token::Operation::Issue { .. } => principal.allow(Operation::Issue)?,
            token::Operation::Transfer { from, .. } => {
                principal.allow_own(Operation::Transfer, from.as_str())?
            }
            token::Operation::Redeem { .. } => principal.allow(Operation::Redeem)?,
            token::Operation::ForcedTransfer { .. } => {
                principal.allow(Operation::ForcedTransfer)?
            }
            token::Operation::Freeze { .. }
            | token::Operation::Unfreeze { .. }
            | token::Operation::FreezeAmount { .. }
            | token::Operation::UnfreezeAmount { .. } => principal.allow(Operation::Freeze)?,
            token::Operation::Pause | token::Operation::Unpause => {
                principal.allow(Operation::Pause)?
            }
            token::Operation::PlaceHold { from, .. } => {
                principal.allow_own(Operation::HoldPlace, from.as_str())?
            }
            token::Operation::PostHold { .. } | token::Operation::VoidHold { .. } => {
                principal.allow(Operation::HoldSettle)?
            }
            token::Operation::ConfirmPayment { .. } | token::Operation::RejectPayment { .. } => {
                principal.allow(Operation::PaymentConfirm)?
            }
            token::Operation::Reverse { .. } => principal.allow(Operation::MovementReverse)?,
            token::Operation::DefineClass { .. } => principal.allow(Operation::ClassDefine)?,
            token::Operation::Convert { .. } => principal.allow(Operation::Convert)?,
            token::Operation::ApproveTransfer { .. }
            | token::Operation::RevokeTransferApproval { .. } => {
                principal.allow(Operation::TransferApprove)?
            }
        }
    }
    Ok(())
}

/// The answer of an independent batch: each operation's outcome, as the writer left them in
/// the state next to the book (see `TokensState`), refusals told as a single request's would
/// be to `staff` or not.
pub(crate) fn bulk_reply(id: Id, staff: bool) -> libertum_store::ReplyFn<TokensState> {
    Box::new(move |state: &TokensState, events: &[token::Event]| {
        let token = state.0.token(&id);
        let version = token.map_or(0, |t| t.version);
        // The first applied operation's event made version `version - events + 1`.
        let mut next_version = version + 1 - events.len() as u64;
        let results: Vec<OperationOutcome> = state
            .1
            .iter()
            .enumerate()
            .map(|(index, outcome)| match outcome {
                None => {
                    next_version += 1;
                    OperationOutcome {
                        index,
                        status: "applied".into(),
                        version: Some(next_version - 1),
                        code: None,
                        message: None,
                        field: None,
                    }
                }
                Some(refusal) => {
                    let e = seen_by(staff, ApiError::from(refusal.clone()));
                    OperationOutcome {
                        index,
                        status: "refused".into(),
                        version: None,
                        code: Some(e.code.into_owned()),
                        message: Some(e.detail),
                        field: e.field,
                    }
                }
            })
            .collect();
        json_reply(
            StatusCode::OK,
            &BulkResult {
                token_id: id.to_string(),
                version,
                total_supply: token.map_or_else(Default::default, |t| t.total_supply),
                applied: events.len(),
                refused: results.len() - events.len(),
                results,
            },
        )
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    /// RFC 3339; the cap table at the end of this moment. Absent: now.
    pub as_of: Option<String>,
    /// At most this many holders (1-1,000), in investor id order. Absent: every holder.
    pub limit: Option<usize>,
    /// The holders after this investor id: the `next` of the previous page.
    pub after: Option<String>,
}

/// The most rows one page of a cap table holds.
const MAX_CAP_TABLE_PAGE: usize = 1_000;

/// Cuts sorted `rows` to a page of `limit` and returns the cursor of the next page (the last
/// row's id) when more rows follow.
fn page_end<T>(
    rows: &mut Vec<T>,
    limit: Option<usize>,
    id: impl Fn(&T) -> String,
) -> Option<String> {
    let limit = limit?;
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(id)
}

/// The cap table: holders, balances, frozen amounts and shares of supply, now or as of a
/// moment; all holders, or a page of them in investor id order (`limit`, `after`).
#[utoipa::path(get, path = "/{token_id}/holders", tag = "holders", params(("token_id" = String, Path), AsOfQuery),
    responses((status = 200, body = CapTable), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn holders(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<AsOfQuery>,
) -> Result<axum::Json<CapTable>, ApiError> {
    principal.allow(Operation::HoldersList)?;
    let as_of = q
        .as_of
        .map(|s| Timestamp::parse(&s, &time::format_description::well_known::Rfc3339))
        .transpose()
        .map_err(|_| {
            ApiError::invalid(
                "as_of",
                "as_of must be an RFC 3339 time such as 2026-01-31T23:59:59Z",
            )
        })?;
    let limit = match q.limit {
        None => None,
        Some(l) if (1..=MAX_CAP_TABLE_PAGE).contains(&l) => Some(l),
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_CAP_TABLE_PAGE}"),
            ));
        }
    };
    let after = q.after;
    if let Some(at) = as_of {
        let record = crate::history::balances_as_of(&engine, &token_id, at)
            .await?
            .ok_or_else(|| token_not_found(&token_id))?;
        let total: u128 = record.balances.iter().map(|(_, b)| b.0).sum();
        let mut balances: Vec<_> = record
            .balances
            .into_iter()
            .filter(|(id, _)| after.as_deref().is_none_or(|after| id.as_str() > after))
            .collect();
        balances.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let next = page_end(&mut balances, limit, |(id, _)| id.to_string());
        return Ok(axum::Json(CapTable {
            token_id: token_id.clone(),
            version: None,
            as_of: Some(at),
            total_supply: libertum_domain::Amount(total),
            next,
            holders: balances
                .into_iter()
                .map(|(id, b)| HolderRow {
                    investor_id: id.to_string(),
                    balance: b,
                    frozen_amount: Default::default(),
                    held: None,
                    frozen: false,
                    percentage: percentage(b.0, total),
                    classes: None,
                })
                .collect(),
        }));
    }
    // Under the state's lock only what the table needs is copied (ids are shared, not copied):
    // rendering a large table there would hold up the committer, and every reader queued
    // behind it. Holdings are kept in investor order, so a page is a range of them.
    let (version, total_supply, mut rows) = {
        let state = engine.read().await;
        let token = state
            .0
            .token(&token_id)
            .ok_or_else(|| token_not_found(&token_id))?;
        let held = token
            .holdings
            .ordered_after(after.as_deref())
            .filter(|(_, h)| !h.balance.is_zero() || h.frozen)
            .map(|(id, h)| {
                let classes = crate::dto::class_balances(token, h);
                (
                    id.clone(),
                    h.balance,
                    h.frozen_amount,
                    h.held,
                    h.frozen,
                    classes,
                )
            });
        // A page takes one row more than asked: it tells whether another page follows.
        let rows: Vec<_> = match limit {
            Some(limit) => held.take(limit + 1).collect(),
            None => held.collect(),
        };
        (token.version, token.total_supply, rows)
    };
    let next = page_end(&mut rows, limit, |row| row.0.to_string());
    let table = CapTable {
        token_id: token_id.clone(),
        version: Some(version),
        as_of: None,
        total_supply,
        next,
        holders: rows
            .into_iter()
            .map(
                |(id, balance, frozen_amount, held, frozen, classes)| HolderRow {
                    investor_id: id.to_string(),
                    balance,
                    frozen_amount,
                    held: Some(held),
                    frozen,
                    percentage: percentage(balance.0, total_supply.0),
                    classes,
                },
            )
            .collect(),
    };
    Ok(axum::Json(table))
}

/// One investor's position in the token: balance, freezes, lock-up and what can move now.
#[utoipa::path(get, path = "/{token_id}/holders/{investor_id}", tag = "holders",
    params(("token_id" = String, Path), ("investor_id" = String, Path)),
    responses((status = 200, body = HoldingView), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn holding(
    State(engine): State<AppState>,
    principal: Principal,
    Path((token_id, investor_id)): Path<(String, String)>,
) -> Result<axum::Json<HoldingView>, ApiError> {
    principal.allow_own(Operation::HoldingRead, &investor_id)?;
    let now = time::OffsetDateTime::now_utc();
    let state = engine.read().await;
    let token = state
        .0
        .token(&token_id)
        .ok_or_else(|| token_not_found(&token_id))?;
    if state.0.investor(&investor_id).is_none() {
        return Err(ApiError::not_found(
            "investor_not_found",
            format!("investor {investor_id} does not exist"),
        ));
    }
    let h = token.holding(&investor_id).cloned().unwrap_or_default();
    Ok(axum::Json(HoldingView {
        token_id,
        investor_id,
        balance: h.balance,
        frozen: h.frozen,
        frozen_amount: h.frozen_amount,
        held: h.held,
        available: h.available(),
        locked: h.locked(now),
        transferable: token.transferable(&h, now),
        sent_today: h.sent_today(now),
        sent_this_month: h.sent_this_month(now),
        classes: crate::dto::class_balances(token, &h),
    }))
}

/// Pay `total` to the holders at `record_date`, pro rata, by the largest remainder method:
/// the parts add up to the total exactly.
#[utoipa::path(post, path = "/{token_id}/distributions", tag = "distributions", request_body = DistributionRequest,
    params(("token_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = DistributionView), (status = 409, body = Problem, content_type = JSON_PROBLEM), (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
async fn distribute(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    posted: Posted<DistributionRequest>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::Distribute)?;
    let actor = principal.subject;
    let b = posted.body;
    let distribution = token::DistributionSpec {
        id: new_id("dst"),
        total: b.total,
        currency: b.currency,
        record_date: b.record_date,
        memo: b.memo,
    };
    // The holders' balances at the record date come from the history on disk; the writer only
    // decides with them.
    let record_balances =
        crate::history::balances_as_of(&engine, &token_id, distribution.record_date)
            .await?
            .unwrap_or(token::RecordBalances {
                taken_at: time::OffsetDateTime::now_utc(),
                balances: Vec::new(),
            });
    let command = token::Command::Distribute {
        token_id: Id::from(token_id.as_str()),
        distribution,
        record_balances,
    };
    let reply = Box::new(move |_: &TokensState, events: &[token::Event]| {
        let paid = events.iter().find_map(|e| match &e.change {
            token::Change::DistributionPaid {
                distribution,
                allocations,
                ..
            } => Some(distribution_view(&token_id, distribution, allocations)),
            _ => None,
        });
        json_reply(StatusCode::CREATED, &paid)
    });
    submit(&engine, actor, command, posted.idempotency, reply).await
}

/// The distributions paid to this token's holders, oldest first, with every allocation.
#[utoipa::path(get, path = "/{token_id}/distributions", tag = "distributions", params(("token_id" = String, Path), PageQuery),
    responses((status = 200, body = Page<DistributionView>), (status = 404, body = Problem, content_type = JSON_PROBLEM)))]
async fn list_distributions(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<Page<DistributionView>>, ApiError> {
    principal.allow(Operation::DistributionsList)?;
    let (limit, after) = (q.limit()?, q.position()? as usize);
    let state = engine.read().await;
    state
        .0
        .token(&token_id)
        .ok_or_else(|| token_not_found(&token_id))?;
    let all = state.0.distributions(&token_id);
    let items = all
        .iter()
        .skip(after)
        .take(limit)
        .map(|d| distribution_view(&token_id, &d.spec, &d.allocations))
        .collect();
    let next =
        (all.len() > after.saturating_add(limit)).then(|| after.saturating_add(limit).to_string());
    Ok(axum::Json(Page {
        items,
        next_cursor: next,
    }))
}

fn distribution_view(
    token_id: &str,
    d: &token::DistributionSpec,
    allocations: &[token::Allocation],
) -> DistributionView {
    DistributionView {
        id: d.id.to_string(),
        token_id: token_id.to_owned(),
        total: d.total,
        currency: d.currency,
        record_date: d.record_date,
        memo: d.memo.clone(),
        allocations: allocations
            .iter()
            .map(|a| AllocationView {
                investor_id: a.investor_id.to_string(),
                balance: a.balance,
                amount: a.amount,
                withheld: a.withheld,
            })
            .collect(),
    }
}
